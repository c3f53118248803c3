//! An in-process TCP proxy on loopback that tests use to cut, blackhole or half-drop a
//! link without root privileges.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Forward both ways.
    Pass = 0,
    /// Keep connections open but discard every byte both ways (a partition that TCP
    /// does not notice).
    Blackhole = 1,
    /// Forward client-to-server bytes, discard server-to-client bytes (lost replies).
    DropReplies = 2,
    /// Close every connection and refuse new ones.
    Cut = 3,
}

impl Mode {
    fn from_u8(v: u8) -> Mode {
        match v {
            1 => Mode::Blackhole,
            2 => Mode::DropReplies,
            3 => Mode::Cut,
            _ => Mode::Pass,
        }
    }
}

/// A proxy listening on 127.0.0.1 and forwarding to one target.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    /// Bumped on every mode change so connection tasks re-check it.
    changes: watch::Sender<u64>,
    forwarded_bytes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `target` on an ephemeral port.
    pub async fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let (changes, _) = watch::channel(0u64);
        let forwarded_bytes = Arc::new(AtomicU64::new(0));
        let task = {
            let mode = mode.clone();
            let changes = changes.clone();
            let forwarded = forwarded_bytes.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if Mode::from_u8(mode.load(Ordering::SeqCst)) == Mode::Cut {
                        drop(client);
                        continue;
                    }
                    let mode = mode.clone();
                    let rx = changes.subscribe();
                    let forwarded = forwarded.clone();
                    tokio::spawn(async move {
                        if let Ok(server) = TcpStream::connect(target).await {
                            let _ = client.set_nodelay(true);
                            let _ = server.set_nodelay(true);
                            pipe_both(client, server, mode, rx, forwarded).await;
                        }
                    });
                }
            })
        };
        Ok(Proxy {
            addr,
            mode,
            changes,
            forwarded_bytes,
            task,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes what the proxy does; applies to open connections at once.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
        self.changes.send_modify(|v| *v += 1);
    }

    /// Current mode.
    pub fn mode(&self) -> Mode {
        Mode::from_u8(self.mode.load(Ordering::SeqCst))
    }

    /// Bytes forwarded so far (both directions).
    pub fn forwarded_bytes(&self) -> u64 {
        self.forwarded_bytes.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.set_mode(Mode::Cut);
        self.task.abort();
    }
}

async fn pipe_both(
    client: TcpStream,
    server: TcpStream,
    mode: Arc<AtomicU8>,
    changes: watch::Receiver<u64>,
    forwarded: Arc<AtomicU64>,
) {
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pipe(
        cr,
        sw,
        mode.clone(),
        changes.clone(),
        forwarded.clone(),
        false,
    );
    let down = pipe(sr, cw, mode, changes, forwarded, true);
    tokio::select! {
        _ = up => {},
        _ = down => {},
    }
}

/// Copies one direction, consulting the mode for every chunk; ends when either side
/// closes or the mode becomes `Cut`.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<AtomicU8>,
    mut changes: watch::Receiver<u64>,
    forwarded: Arc<AtomicU64>,
    is_reply: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if Mode::from_u8(mode.load(Ordering::SeqCst)) == Mode::Cut {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let drop_it = match Mode::from_u8(mode.load(Ordering::SeqCst)) {
            Mode::Pass => false,
            Mode::Blackhole => true,
            Mode::DropReplies => is_reply,
            Mode::Cut => return,
        };
        if drop_it {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        forwarded.fetch_add(n as u64, Ordering::SeqCst);
    }
}
