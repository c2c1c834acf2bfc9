//! What each Unix signal does to the running agent. Owns the signal dispositions of the
//! process and nothing else: it never stops tasks itself, it cancels a token that `app`
//! waits on.
//!
//! - SIGTERM, SIGINT: stop cleanly (stop polling, drain, spill what the broker has not
//!   acknowledged to the buffer, publish `offline`), exit 0.
//! - SIGHUP: logged and ignored. Configuration reload does not exist yet; until it does, a
//!   SIGHUP (`systemctl kill -s HUP`, a closing terminal, a habit from other daemons) must not
//!   end the agent and lose what it holds in memory.
//! - SIGUSR1, SIGUSR2: fieldlink gives them no meaning; logged and ignored for the same
//!   reason (their default action would kill the agent without a spill).
//! - SIGPIPE: ignored by the Rust runtime before `main`, so a write to a closed socket or
//!   pipe is an `EPIPE` error the code handles, never a silent death.
//! - SIGQUIT and SIGKILL keep their default actions (a core dump on request; no choice).
//!
//! An early SIGHUP: the agent cannot install a handler before its async runtime exists, so
//! `main` blocks SIGHUP as its first act ([`hold_sighup`]); a SIGHUP sent while the config is
//! read stays pending, and is delivered (and logged) once [`agent`] has installed the handler,
//! before the agent reports READY.

use tokio::signal::unix::{signal, SignalKind};
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

/// The agent's signal handling (see the module doc). Must run inside the runtime, before the
/// agent reports READY. Returns a token cancelled by the first SIGTERM or SIGINT.
pub fn agent() -> anyhow::Result<CancellationToken> {
    let token = stop_on_signals()?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(()) = hup.recv() => tracing::warn!(
                    signal = "SIGHUP",
                    "configuration reload is not supported yet: the running configuration stays \
                     in effect; restart the service to apply changes (systemctl restart fieldlink)"
                ),
                Some(()) = usr1.recv() => ignored("SIGUSR1"),
                Some(()) = usr2.recv() => ignored("SIGUSR2"),
                else => break,
            }
        }
    });
    // The handler is in place: a SIGHUP that arrived during start-up is delivered now, and
    // logged by the task above.
    release_sighup();
    Ok(token)
}

fn ignored(name: &str) {
    tracing::warn!(
        signal = name,
        "signal ignored: fieldlink gives it no meaning; stop the agent with SIGTERM \
         (systemctl stop fieldlink)"
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
