//! What each Unix signal does to the running agent. Owns the signal dispositions of the
//! process and nothing else: it never stops or reloads anything itself, it cancels a token
//! and sends reload requests that `app` waits on.
//!
//! - SIGTERM, SIGINT: stop cleanly (stop polling, drain, spill what the broker has not
//!   acknowledged to the buffer, publish `offline`), exit 0.
//! - SIGHUP: reload the configuration (`systemctl reload fieldlink`). SIGHUPs that arrive
//!   while a reload runs make one more reload after it, never a queue of them.
//! - SIGUSR1, SIGUSR2: fieldlink gives them no meaning; logged and ignored (their default
//!   action would kill the agent without a spill, losing what it holds in memory).
//! - SIGPIPE: ignored by the Rust runtime before `main`, so a write to a closed socket or
//!   pipe is an `EPIPE` error the code handles, never a silent death.
//! - SIGQUIT and SIGKILL keep their default actions (a core dump on request; no choice).
//!
//! An early SIGHUP: the agent cannot install a handler before its async runtime exists, so
//! `main` blocks SIGHUP as its first act ([`hold_sighup`]); a SIGHUP sent while the config is
//! read stays pending, and is delivered once [`agent`] has installed the handler, before the
//! agent reports READY: it asks for a reload, which runs once the agent is READY (the file
//! may have changed after it was read).

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Blocks SIGHUP in the calling thread (call it first in `main`, before any thread exists, so
/// every later thread inherits the mask). A SIGHUP then waits, pending, instead of killing the
/// process with its default action.
pub fn hold_sighup() {
    set_sighup_mask(libc::SIG_BLOCK);
}

/// Undoes [`hold_sighup`]: a pending SIGHUP is delivered now, to whatever disposition is in
/// place (the default, which ends a one-shot command whose terminal hung up, or the agent's
/// handler).
pub fn release_sighup() {
    set_sighup_mask(libc::SIG_UNBLOCK);
}

fn set_sighup_mask(how: libc::c_int) {
    // SAFETY: sigemptyset/sigaddset fill a sigset_t we own; pthread_sigmask only changes the
    // calling thread's mask. They cannot fail with these arguments (a valid signal number
    // and `how`), so their results carry nothing to handle.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// What the agent's signals ask of it.
#[derive(Debug)]
pub struct AgentSignals {
    /// Cancelled by the first SIGTERM or SIGINT.
    pub stop: CancellationToken,
    /// One message per reload to run (SIGHUP).
    pub reload: mpsc::Receiver<()>,
}

/// The agent's signal handling (see the module doc). Must run inside the runtime, before the
/// agent reports READY.
pub fn agent() -> anyhow::Result<AgentSignals> {
    let stop = stop_on_signals()?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    // One slot: a reload asked for while one is waiting is the same reload.
    let (reload_tx, reload) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(()) = hup.recv() => {
                    tracing::debug!(signal = "SIGHUP", "configuration reload asked for");
                    let _ = reload_tx.try_send(());
                }
                Some(()) = usr1.recv() => ignored("SIGUSR1"),
                Some(()) = usr2.recv() => ignored("SIGUSR2"),
                else => break,
            }
        }
    });
    // The handler is in place: a SIGHUP that arrived during start-up is delivered now, and
    // becomes a reload request.
    release_sighup();
    Ok(AgentSignals { stop, reload })
}

fn ignored(name: &str) {
    tracing::warn!(
        signal = name,
        "signal ignored: fieldlink gives it no meaning; stop the agent with SIGTERM \
         (systemctl stop fieldlink), reload its configuration with SIGHUP (systemctl reload \
         fieldlink)"
    );
}

/// A token cancelled by the first SIGTERM or SIGINT (the demo's handling; the agent's is
/// [`agent`]).
pub fn stop_on_signals() -> anyhow::Result<CancellationToken> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "stopping: draining the queue and publishing offline"
        );
        trigger.cancel();
    });
    Ok(token)
}
