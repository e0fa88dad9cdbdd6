//! `-netdev socket`: Ethernet frames over a TCP connection to another VMM, the way QEMU
//! sends them (each frame as its length, 4 bytes big-endian, then its bytes), so troupe
//! and QEMU VMs can share a link without root. `listen=` takes one peer at a time (the
//! next when the last one goes); `connect=` connects at start. A reader thread takes whole
//! frames off the connection for the NIC (a bounded queue and a "frames ready" eventfd,
//! as user mode does); the NIC's frames go to a writer thread through a bounded queue.
//! When the peer or the guest does not keep up, frames are dropped and counted.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};

use crate::runtime::{fault_point, spawn_thread, Registry, Restart, ThreadSpec};
use vmm_sys_util::eventfd::EventFd;

/// Frames queued in each direction.
const QUEUE: usize = 256;
/// The largest frame a peer may announce (QEMU's NET_BUFSIZE: 4 KiB + 64 KiB).
const MAX_FRAME: usize = 4096 + 65_536;

/// How the connection is made.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    Listen(SocketAddr),
    Connect(SocketAddr),
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("could not listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("could not connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What the threads share: the connection in use, for the writer and for closing.
struct Link {
    stream: Mutex<Option<Arc<TcpStream>>>,
    listener: Option<TcpListener>,
    closed: AtomicBool,
}

/// The NIC's end of a socket backend.
pub struct SocketPort {
    /// Readable when frames from the peer are queued.
    pub ready: Arc<EventFd>,
    from_peer: Receiver<Vec<u8>>,
    to_peer: Option<Sender<Vec<u8>>>,
    /// Frames dropped (either way) because a queue was full or no peer was connected.
    pub dropped: Arc<AtomicU64>,
    link: Arc<Link>,
}

impl SocketPort {
    /// Clear the "frames ready" signal before draining with [`Self::recv`].
    pub fn ack(&self) {
        let _ = self.ready.read();
    }

    /// The next frame from the peer, if any.
    pub fn recv(&self) -> Option<Vec<u8>> {
        self.from_peer.try_recv().ok()
    }

    /// A frame for the peer (dropped and counted if the writer is behind).
    pub fn send(&self, frame: &[u8]) {
        let queued = self
            .to_peer
            .as_ref()
            .is_some_and(|tx| tx.try_send(frame.to_vec()).is_ok());
        if !queued {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for SocketPort {
    fn drop(&mut self) {
        // The writer ends when its queue closes; the reader and the acceptor when their
        // sockets are shut down.
        self.link.closed.store(true, Ordering::Relaxed);
        drop(self.to_peer.take());
        if let Some(s) = lock(&self.link.stream).as_ref() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        if let Some(l) = &self.link.listener {
            // SAFETY: shutdown on a descriptor the listener owns; it wakes accept().
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Open the socket (`listen=` binds now, `connect=` connects now) and start its threads:
/// actors `sock-<id>` (the reader) and `sockw-<id>` (the writer), both restartable. They
/// hold nothing a restart loses but the connection a panic broke: the reader rebuilt
/// accepts the next peer (`listen=`; a `connect=` reader has no next peer and ends), the
/// writer takes the same queue up again.
pub fn start(registry: &Registry, id: &str, mode: Mode) -> Result<SocketPort, SocketError> {
    let (listener, first) = match mode {
        Mode::Listen(a) => (
            Some(TcpListener::bind(a).map_err(|e| SocketError::Listen(a, e))?),
            None,
        ),
        Mode::Connect(a) => (
            None,
            Some(TcpStream::connect(a).map_err(|e| SocketError::Connect(a, e))?),
        ),
    };
    let ready = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
    let dropped = Arc::new(AtomicU64::new(0));
    let (to_nic, from_peer) = crossbeam_channel::bounded::<Vec<u8>>(QUEUE);
    let (to_peer, for_peer) = crossbeam_channel::bounded::<Vec<u8>>(QUEUE);
    let link = Arc::new(Link {
        stream: Mutex::new(None),
        listener,
        closed: AtomicBool::new(false),
    });
    let reader = Reader {
        to_nic,
        ready: ready.clone(),
        dropped: dropped.clone(),
        link: link.clone(),
    };
    let mut first = first;
    let rl = link.clone();
    spawn_thread(
        registry,
        ThreadSpec::new(format!("sock-{id}"), "nic-backend", Restart::Always).wake(move || {
            // A reader waits in read or accept: shutting the connection down wakes it (the
            // listener stays, so a rebuilt reader accepts the next peer).
            if let Some(s) = lock(&rl.stream).as_ref() {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }),
        move || reader.run(first.take()),
    )?;
    let (wl, wd) = (link.clone(), dropped.clone());
    spawn_thread(
        registry,
        ThreadSpec::new(format!("sockw-{id}"), "nic-backend", Restart::Always),
        move || write_loop(&for_peer, &wl, &wd),
    )?;
    Ok(SocketPort {
        ready,
        from_peer,
        to_peer: Some(to_peer),
        dropped,
        link,
    })
}

struct Reader {
    to_nic: Sender<Vec<u8>>,
    ready: Arc<EventFd>,
    dropped: Arc<AtomicU64>,
    link: Arc<Link>,
}

impl Reader {
    /// Serve `first` (connect=), or each peer the listener accepts in turn.
    fn run(&self, first: Option<TcpStream>) {
        if let Some(s) = first {
            self.serve(s);
            return;
        }
        let Some(l) = &self.link.listener else {
            return;
        };
        while !self.link.closed.load(Ordering::Relaxed) {
            fault_point();
            match l.accept() {
                Ok((s, _)) => {
                    self.serve(s);
                    fault_point();
                }
                Err(_) if self.link.closed.load(Ordering::Relaxed) => return,
                Err(e) => {
                    tracing::warn!("-netdev socket: accept: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
    }

    /// Frames from one peer until it goes (or breaks the framing).
    fn serve(&self, s: TcpStream) {
        let _ = s.set_nodelay(true);
        let s = Arc::new(s);
        *lock(&self.link.stream) = Some(s.clone());
        let mut r = std::io::BufReader::with_capacity(1 << 16, &*s);
        loop {
            let mut len = [0u8; 4];
            if r.read_exact(&mut len).is_err() {
                break;
            }
            let n = u32::from_be_bytes(len) as usize;
            if n > MAX_FRAME {
                tracing::warn!("-netdev socket: the peer sent a {n}-byte frame; disconnecting");
                break;
            }
            let mut f = vec![0u8; n];
            if r.read_exact(&mut f).is_err() {
                break;
            }
            match self.to_nic.try_send(f) {
                Ok(()) => {
                    let _ = self.ready.write(1);
                }
                Err(_) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        *lock(&self.link.stream) = None;
    }
}

/// Frames from the NIC to whichever peer is connected (none: dropped).
fn write_loop(frames: &Receiver<Vec<u8>>, link: &Link, dropped: &AtomicU64) {
    let mut out = Vec::with_capacity(4 + MAX_FRAME);
    while let Ok(f) = frames.recv() {
        fault_point();
        let stream = lock(&link.stream).clone();
        let Some(s) = stream else {
            dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        out.clear();
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(&f);
        // More frames waiting go out in the same write.
        while out.len() < 1 << 16 {
            match frames.try_recv() {
                Ok(g) => {
                    out.extend_from_slice(&(g.len() as u32).to_be_bytes());
                    out.extend_from_slice(&g);
                }
                Err(_) => break,
            }
        }
        if (&*s).write_all(&out).is_err() {
            dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
