//! A fault proxy: a TCP forwarder on 127.0.0.1:0 in front of a real peer, that on command
//! passes, blackholes, refuses, delays or throttles, and resets live connections.
//!
//! Semantics, chosen to match what a cellular gateway meets:
//! - `Blackhole` stops forwarding both ways on every live connection and keeps both sockets
//!   open (a silently dead path). A connection blackholed once stays dead for good, even after
//!   `Pass`, as behind a NAT that forgot it; only new connections benefit from `Pass`. New
//!   connections accepted while blackholed get no upstream and no bytes.
//! - `Refuse` accepts new connections and resets them at once (RST); live ones are untouched.
//! - `Delay(d)` holds each chunk `d` before forwarding; `Throttle(n)` forwards at most about
//!   `n` bytes per second in each direction. Both apply to live connections too.
//! - [`Proxy::reset_all`] resets (RST, SO_LINGER 0) both sides of every live connection.
//!
//! Observability: connections accepted, bytes each way, and the moment of the last byte
//! forwarded from the peer to the client.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Pass,
    Blackhole,
    Refuse,
    Delay(Duration),
    /// Bytes per second, each direction.
    Throttle(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Client (the agent) to the upstream peer (the broker).
    Up,
    Down,
}

#[derive(Default)]
struct Stats {
    accepted: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    last_down: Mutex<Option<Instant>>,
}

struct Shared {
    upstream: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Bumped by `reset_all`; connections born before the bump reset themselves.
    resets: watch::Sender<u64>,
    stats: Stats,
    /// Sockets of blackholed connections, kept open until the proxy is dropped.
    graveyard: Mutex<Vec<Box<dyn std::any::Any + Send>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:upstream_port`.
    pub async fn start(upstream_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream: SocketAddr::from(([127, 0, 0, 1], upstream_port)),
            mode: watch::channel(Mode::Pass).0,
            resets: watch::channel(0).0,
            stats: Stats::default(),
            graveyard: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        shared.tasks.lock().unwrap().push(accept);
        Proxy { port, shared }
    }

    pub fn set(&self, mode: Mode) {
        self.shared.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.shared.mode.borrow()
    }

    /// Closes the sockets of blackholed connections (both sides), as a NAT that forgot a
    /// flow answers the next packet with a reset: the peers learn the path is gone.
    pub fn drop_blackholed(&self) {
        for parked in self.shared.graveyard.lock().unwrap().drain(..) {
            if let Some(client) = parked.downcast_ref::<TcpStream>() {
                rst(client);
            } else if let Some((from, to)) =
                parked.downcast_ref::<(OwnedReadHalf, OwnedWriteHalf)>()
            {
                rst(from.as_ref());
                rst(to.as_ref());
            }
        }
    }

    /// Resets both sides of every live connection (RST, not FIN).
    pub fn reset_all(&self) {
        self.shared.resets.send_modify(|n| *n += 1);
    }

    pub fn accepted(&self) -> u64 {
        self.shared.stats.accepted.load(Ordering::SeqCst)
    }

    pub fn bytes_up(&self) -> u64 {
        self.shared.stats.bytes_up.load(Ordering::SeqCst)
    }

    pub fn bytes_down(&self) -> u64 {
        self.shared.stats.bytes_down.load(Ordering::SeqCst)
    }

    /// When the last byte from the upstream peer was written to a client.
    pub fn last_byte_down(&self) -> Option<Instant> {
        *self.shared.stats.last_down.lock().unwrap()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for t in self.shared.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        self.shared.graveyard.lock().unwrap().clear();
    }
}

fn rst(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        shared.stats.accepted.fetch_add(1, Ordering::SeqCst);
        let _ = client.set_nodelay(true);
        let mode = *shared.mode.borrow();
        match mode {
            Mode::Refuse => {
                rst(&client);
                drop(client);
            }
            Mode::Blackhole => shared.graveyard.lock().unwrap().push(Box::new(client)),
            _ => {
                let task = tokio::spawn(connect_upstream(client, shared.clone()));
                shared.tasks.lock().unwrap().push(task);
            }
        }
    }
}

async fn connect_upstream(client: TcpStream, shared: Arc<Shared>) {
    let upstream = match TcpStream::connect(shared.upstream).await {
        Ok(s) => s,
        Err(_) => {
            rst(&client);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let born = *shared.resets.borrow();
    let (client_rd, client_wr) = client.into_split();
    let (up_rd, up_wr) = upstream.into_split();
    let a = tokio::spawn(pump(client_rd, up_wr, Dir::Up, born, shared.clone()));
    let b = tokio::spawn(pump(up_rd, client_wr, Dir::Down, born, shared.clone()));
    let mut tasks = shared.tasks.lock().unwrap();
    tasks.retain(|t| !t.is_finished());
    tasks.push(a);
    tasks.push(b);
}

/// Forwards one direction until EOF, an error, a reset, or a blackhole (which parks both
/// halves in the graveyard so the sockets stay open and silent).
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    dir: Dir,
    born: u64,
    shared: Arc<Shared>,
) {
    let mut mode_rx = shared.mode.subscribe();
    let mut resets_rx = shared.resets.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let mode = *mode_rx.borrow_and_update();
        if mode == Mode::Blackhole {
            shared.graveyard.lock().unwrap().push(Box::new((from, to)));
            return;
        }
        if *resets_rx.borrow_and_update() != born {
            rst(from.as_ref());
            rst(to.as_ref());
            return;
        }
        let limit = match mode {
            // Small reads so the throttle paces evenly.
            Mode::Throttle(bps) => ((bps / 10).max(1) as usize).min(buf.len()),
            _ => buf.len(),
        };
        let n = tokio::select! {
            _ = mode_rx.changed() => continue,
            _ = resets_rx.changed() => continue,
            r = from.read(&mut buf[..limit]) => match r {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
        };
        // The mode may have changed while the read was pending: a blackhole eats the chunk.
        let mode = *mode_rx.borrow();
        match mode {
            Mode::Blackhole => continue,
            Mode::Delay(d) => tokio::time::sleep(d).await,
            _ => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        let stats = &shared.stats;
        match dir {
            Dir::Up => stats.bytes_up.fetch_add(n as u64, Ordering::SeqCst),
            Dir::Down => {
                *stats.last_down.lock().unwrap() = Some(Instant::now());
                stats.bytes_down.fetch_add(n as u64, Ordering::SeqCst)
            }
        };
        if let Mode::Throttle(bps) = mode {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / bps.max(1) as f64)).await;
        }
    }
}
