//! Delayed ACKs on the broker socket while a burst of publishes is being acknowledged.
//!
//! After a second of silence Linux answers the first segments it receives with an ACK each
//! ("quick ACK" mode, up to 16 segments). A broker that writes each PUBACK on its own (as
//! mosquitto does) then sees every one acknowledged at once, so its Nagle never holds the
//! next one back: on a broker on the same host (the common setup of a gateway bridging a
//! local mosquitto upstream) the PUBACKs of a device's 24 readings came back in a train of
//! 4-byte segments, each answered by an ACK of ours and some waking the agent. With our ACKs
//! delayed, the broker sends the first PUBACK alone and holds the rest until our next
//! publish carries the ACK (or our delayed ACK goes, ≤ 40 ms): 5 × 24 at 1 s, 13 packets a
//! second on the link instead of 21, 2 of them ACKs of ours instead of ~8 (tcpdump).
//!
//! `TCP_QUICKACK = 0` is not sticky (the kernel goes back to quick ACKs after its delayed
//! ACK timer fires), so it is set before every burst of writes. It delays only our ACKs: what
//! we send is not held back (TCP_NODELAY stays on). What the broker sends us after a PUBACK
//! (a command) may wait for our delayed ACK behind the broker's own Nagle, at most the 40 ms
//! of Linux's delayed ACK, once per burst.

use std::os::fd::{BorrowedFd, RawFd};

use socket2::SockRef;

/// The broker socket, while the connection that owns it lives; `None` when it could not be
/// told apart (then nothing is set and ACKs keep the kernel's defaults).
#[derive(Debug, Clone, Copy)]
pub(super) struct AckPacing(Option<RawFd>);

impl AckPacing {
    /// `candidates`: the new sockets leading to the broker's port; only a single one is
    /// taken to be ours.
    pub(super) fn new(candidates: &[RawFd]) -> AckPacing {
        match candidates {
            [fd] => AckPacing(Some(*fd)),
            _ => AckPacing(None),
        }
    }

    /// Call right before writing a burst whose acknowledgements will come back.
    pub(super) fn before_burst(&self) {
        let Some(fd) = self.0 else {
            return;
        };
        // SAFETY: the descriptor is the socket of the connection whose driver calls this,
        // open as long as that driver runs. A failure only leaves the kernel's ACK timing as
        // it was.
        let socket = unsafe { BorrowedFd::borrow_raw(fd) };
        let _ = SockRef::from(&socket).set_quickack(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn quickack(stream: &std::net::TcpStream) -> bool {
        SockRef::from(stream).quickack().unwrap()
    }

    #[test]
    fn a_burst_on_the_one_broker_socket_delays_its_acks() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(
            quickack(&stream),
            "a new connection starts in quick ACK mode"
        );
        AckPacing::new(&[stream.as_raw_fd()]).before_burst();
        assert!(!quickack(&stream));
    }

    #[test]
    fn sockets_that_cannot_be_told_apart_are_left_alone() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let b = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        AckPacing::new(&[a.as_raw_fd(), b.as_raw_fd()]).before_burst();
        AckPacing::new(&[]).before_burst();
        assert!(quickack(&a) && quickack(&b));
    }
}
