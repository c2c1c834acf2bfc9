//! TCP_USER_TIMEOUT on the broker socket that rumqttc opened.
//!
//! rumqttc 0.25 offers no socket hook, so after each CONNACK we look through /proc/self/fd for
//! TCP sockets that did not exist before the connect attempt and whose peer port is the
//! broker's, and set the option on them. Chosen over an in-process forwarder because it keeps
//! rumqttc's own TLS and socket (no extra copy, no loopback listener another local user could
//! race to connect to while it carries our client certificate). Owns nothing but that lookup;
//! it never reads or writes the sockets.
//!
//! Races are harmless: a listed fd closed meanwhile fails with EBADF; one reused for another
//! socket is skipped unless it also leads to the broker's port, where the timeout is wanted.

use std::collections::HashSet;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use socket2::SockAddr;

/// The sockets this process held before a connect attempt, by fd and inode.
#[derive(Debug, Default)]
pub struct SocketSnapshot(HashSet<(RawFd, String)>);

pub fn snapshot() -> SocketSnapshot {
    SocketSnapshot(sockets().into_iter().collect())
}

fn sockets() -> Vec<(RawFd, String)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let entry = entry.ok()?;
        let fd: RawFd = entry.file_name().to_str()?.parse().ok()?;
        let target = std::fs::read_link(entry.path()).ok()?;
        let target = target.to_str()?.to_owned();
        target.starts_with("socket:").then_some((fd, target))
    })
    .collect()
}

fn peer_port(fd: RawFd) -> Option<u16> {
    // SAFETY: getpeername writes at most `len` bytes into the storage socket2 provides; a
    // stale fd only makes it fail.
    let (_, addr) = unsafe {
        SockAddr::try_init(|storage, len| {
            if libc::getpeername(fd, storage.cast(), len) == -1 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        })
    }
    .ok()?;
    addr.as_socket().map(|a| a.port())
}

fn set_user_timeout(fd: RawFd, timeout: Duration) -> io::Result<()> {
    let ms: libc::c_uint = timeout.as_millis().try_into().unwrap_or(libc::c_uint::MAX);
    // SAFETY: passes a pointer to a live c_uint and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&ms as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets TCP_USER_TIMEOUT on the sockets opened since `before` that lead to `broker_port`.
/// Returns the descriptors of those it was set on.
pub fn apply_since(before: &SocketSnapshot, broker_port: u16, timeout: Duration) -> Vec<RawFd> {
    sockets()
        .into_iter()
        .filter(|s| !before.0.contains(s))
        .filter(|(fd, _)| peer_port(*fd) == Some(broker_port))
        .filter(|(fd, _)| set_user_timeout(*fd, timeout).is_ok())
        .map(|(fd, _)| fd)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_timeout_of(stream: &std::net::TcpStream) -> Option<Duration> {
        socket2::SockRef::from(stream).tcp_user_timeout().unwrap()
    }

    #[test]
    fn only_new_sockets_to_the_broker_port_get_the_timeout() {
        let broker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = broker.local_addr().unwrap().port();
        let old = std::net::TcpStream::connect(broker.local_addr().unwrap()).unwrap();
        let before = snapshot();
        let new = std::net::TcpStream::connect(broker.local_addr().unwrap()).unwrap();
        let unrelated = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();

        use std::os::fd::AsRawFd;
        assert_eq!(
            apply_since(&before, port, Duration::from_millis(4500)),
            [new.as_raw_fd()]
        );
        assert_eq!(user_timeout_of(&new), Some(Duration::from_millis(4500)));
        assert_eq!(user_timeout_of(&old), None);
        assert_eq!(user_timeout_of(&unrelated), None);
    }
}
