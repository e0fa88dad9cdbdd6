//! Character-device backends as actors: where a serial port's bytes go and come from.
//!
//! One actor per backend (`null`, `file:`, `stdio`, `pty`, `tcp:`/`telnet:` client or
//! server, `unix:`, `vc`: a text console on the display). A front end (a UART host, a
//! virtio console) sends [`ChardevMsg::Write`] with bytes the guest emitted and receives
//! [`FrontendEvent`]s: bytes typed by the user, and connect/disconnect of a socket client.
//! Like QEMU, a server backend serves one client at a time; output with nobody connected
//! is dropped. Writes from vCPU threads use
//! `try_send` through [`ChardevSink`], so a stuck terminal never stalls the guest.

pub mod telnet;
pub mod tty;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::runtime::{
    mailbox, reply_channel, spawn_supervised, Addr, Mailbox, MessageKind, Placement, Registry,
    Reply, Restart,
};

pub use telnet::TelnetFilter;

/// Where the bytes go (resolved from the command line by the binary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Null,
    Stdio {
        signals: bool,
    },
    File(PathBuf),
    Pty,
    TcpServer {
        addr: std::net::SocketAddr,
        wait: bool,
        telnet: bool,
        nodelay: bool,
    },
    TcpClient {
        addr: std::net::SocketAddr,
        telnet: bool,
        nodelay: bool,
    },
    UnixServer {
        path: PathBuf,
        wait: bool,
    },
    UnixClient {
        path: PathBuf,
    },
    /// A listening socket (unix or TCP) inherited as descriptor `fd` from the process that
    /// started troupe (`-chardev socket,fd=N,server=on`, as libvirt passes them).
    ListenerFd {
        fd: i32,
        wait: bool,
    },
    /// A text console on the display (`vc`): see [`crate::display::console`].
    Vc(crate::display::console::VcPort),
}

/// A listening socket taken over from an inherited descriptor.
pub enum InheritedListener {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
}

/// Take over the listening socket `fd` (a duplicate of it, so the number stays valid):
/// refused unless it is a listening unix or TCP socket. Returns the listener and its
/// `info chardev` label (`unix:PATH,server=on`, `tcp:ADDR,server=on`). Needs a tokio
/// runtime (the listener is registered with its reactor).
pub fn adopt_listener(fd: i32) -> std::io::Result<(InheritedListener, String)> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let not_listening = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("descriptor {fd} is not a listening socket"),
        )
    };
    let mut accepting: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `accepting`; a bad fd is an error.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut accepting as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::ENOTSOCK) {
            not_listening()
        } else {
            e
        });
    }
    if accepting == 0 {
        return Err(not_listening());
    }
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor; `fd` is left as it was.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `dup` is a fresh descriptor nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(dup) };
    let std_unix = std::os::unix::net::UnixListener::from(owned);
    if let Ok(addr) = std_unix.local_addr() {
        std_unix.set_nonblocking(true)?;
        let path = addr
            .as_pathname()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        return Ok((
            InheritedListener::Unix(tokio::net::UnixListener::from_std(std_unix)?),
            format!("unix:{path},server=on"),
        ));
    }
    // Not a unix socket: the same descriptor as TCP.
    let std_tcp = std::net::TcpListener::from(OwnedFd::from(std_unix));
    let addr = std_tcp.local_addr().map_err(|_| not_listening())?;
    std_tcp.set_nonblocking(true)?;
    Ok((
        InheritedListener::Tcp(tokio::net::TcpListener::from_std(std_tcp)?),
        format!("tcp:{addr},server=on"),
    ))
}

#[derive(Debug, thiserror::Error)]
pub enum ChardevError {
    /// A text console's end was already opened by another chardev.
    #[error("chardev {id}: text console {console} is already in use")]
    VcTaken { id: String, console: String },
    #[error("chardev {id}: cannot open {what}: {source}")]
    Open {
        id: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Messages to a chardev actor.
pub enum ChardevMsg {
    /// Bytes for the user/peer.
    Write(Vec<u8>),
    /// Answer once everything queued before this has been written (used before exit).
    Flush(Reply<()>),
}

impl MessageKind for ChardevMsg {
    fn kind(&self) -> &'static str {
        match self {
            Self::Write(_) => "write",
            Self::Flush(_) => "flush",
        }
    }
}

/// What a chardev tells its front end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendEvent {
    Input(Vec<u8>),
    Connected,
    Disconnected,
}

/// Counters for `info chardev` and tests.
#[derive(Debug, Default)]
pub struct ChardevStats {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub read: AtomicU64,
}

/// Handle to one chardev.
#[derive(Clone)]
pub struct ChardevHandle {
    pub id: String,
    /// `info chardev` filename, QEMU style (`stdio`, `pty:/dev/pts/3`, `tcp:...,server=on`).
    pub label: String,
    addr: Addr<ChardevMsg>,
    stats: Arc<ChardevStats>,
}

impl ChardevHandle {
    /// Queue bytes; never blocks. Returns false (and counts) when they had to be dropped.
    pub fn try_write(&self, bytes: Vec<u8>) -> bool {
        let n = bytes.len() as u64;
        match self.addr.try_send(ChardevMsg::Write(bytes)) {
            Ok(()) => true,
            Err(_) => {
                self.stats.dropped.fetch_add(n, Ordering::Relaxed);
                false
            }
        }
    }

    pub async fn write(&self, bytes: Vec<u8>) {
        let _ = self.addr.send(ChardevMsg::Write(bytes)).await;
    }

    /// Wait until everything written so far has reached the backend.
    pub async fn flush(&self) {
        let (tx, rx) = reply_channel(&self.id);
        if self.addr.send(ChardevMsg::Flush(tx)).await.is_ok() {
            let _ = rx.recv().await;
        }
    }

    pub fn stats(&self) -> &ChardevStats {
        &self.stats
    }

    /// A `ByteSink` for a device model.
    pub fn sink(&self) -> Box<dyn devices::ByteSink> {
        Box::new(ChardevSink(self.clone()))
    }
}

/// The device-facing end: posts transmit bytes without blocking.
pub struct ChardevSink(pub ChardevHandle);

impl devices::ByteSink for ChardevSink {
    fn write_bytes(&mut self, data: &[u8]) {
        self.0.try_write(data.to_vec());
    }
}

type BoxRead = Box<dyn AsyncRead + Unpin + Send>;
type BoxWrite = Box<dyn AsyncWrite + Unpin + Send>;

enum Listener {
    Tcp(tokio::net::TcpListener, bool),
    Unix(tokio::net::UnixListener),
}

struct ChardevActor {
    id: String,
    mailbox: Mailbox<ChardevMsg>,
    frontend: mpsc::Sender<FrontendEvent>,
    stats: Arc<ChardevStats>,
    backend: Backend,
    telnet: bool,
}

/// Open the backend (binding sockets, creating the pty, waiting for the first client when
/// `wait` is set, like QEMU) and start its actor. `frontend` receives input and
/// connection events.
pub async fn spawn_chardev(
    rt: &tokio::runtime::Handle,
    registry: &Registry,
    id: &str,
    backend: Backend,
    frontend: mpsc::Sender<FrontendEvent>,
) -> Result<ChardevHandle, ChardevError> {
    let (addr, mb) = mailbox::<ChardevMsg>(id, 1024);
    let stats = Arc::new(ChardevStats::default());
    let open_err = |what: String| {
        let id = id.to_string();
        move |source| ChardevError::Open { id, what, source }
    };
    let mut initial: Option<(BoxRead, BoxWrite)> = None;
    let mut listener = None;
    let label;
    let mut telnet = false;
    match &backend {
        Backend::Null => label = "null".to_string(),
        Backend::Vc(port) => {
            let stream = port.take().ok_or_else(|| ChardevError::VcTaken {
                id: id.to_string(),
                console: port.name.clone(),
            })?;
            label = "vc".into();
            let (r, w) = tokio::io::split(stream);
            initial = Some((Box::new(r), Box::new(w)));
        }
        Backend::Stdio { signals } => {
            tty::enter_raw_mode(*signals);
            label = "stdio".into();
            initial = Some((Box::new(tokio::io::stdin()), Box::new(tokio::io::stdout())));
        }
        Backend::File(p) => {
            let f = tokio::fs::File::create(p)
                .await
                .map_err(open_err(p.display().to_string()))?;
            label = format!("file:{}", p.display());
            initial = Some((Box::new(tokio::io::empty()), Box::new(f)));
        }
        Backend::Pty => {
            let (master, path) = tty::open_pty().map_err(open_err("a pty".into()))?;
            crate::report!("char device redirected to {path} (label {id})");
            label = format!("pty:{path}");
            let (r, w) = tokio::io::split(master);
            initial = Some((Box::new(r), Box::new(w)));
        }
        Backend::TcpServer {
            addr: sa,
            wait,
            telnet: t,
            nodelay,
        } => {
            let l = tokio::net::TcpListener::bind(sa)
                .await
                .map_err(open_err(format!("tcp:{sa}")))?;
            let local = l.local_addr().map_err(open_err(format!("tcp:{sa}")))?;
            telnet = *t;
            label = format!("{}:{local},server=on", if *t { "telnet" } else { "tcp" });
            if *wait {
                crate::report!("troupe: waiting for connection on: {label}");
                let (s, _) = l.accept().await.map_err(open_err(format!("tcp:{sa}")))?;
                let _ = s.set_nodelay(true);
                let (r, w) = s.into_split();
                initial = Some((Box::new(r), Box::new(w)));
            }
            listener = Some(Listener::Tcp(l, *nodelay));
        }
        Backend::TcpClient {
            addr: sa,
            telnet: t,
            nodelay,
        } => {
            let s = tokio::net::TcpStream::connect(sa)
                .await
                .map_err(open_err(format!("tcp:{sa}")))?;
            let _ = s.set_nodelay(*nodelay);
            telnet = *t;
            label = format!("tcp:{sa}");
            let (r, w) = s.into_split();
            initial = Some((Box::new(r), Box::new(w)));
        }
        Backend::UnixServer { path, wait } => {
            let _ = std::fs::remove_file(path);
            let l = tokio::net::UnixListener::bind(path)
                .map_err(open_err(format!("unix:{}", path.display())))?;
            label = format!("unix:{},server=on", path.display());
            if *wait {
                crate::report!("troupe: waiting for connection on: {label}");
                let (s, _) = l
                    .accept()
                    .await
                    .map_err(open_err(format!("unix:{}", path.display())))?;
                let (r, w) = s.into_split();
                initial = Some((Box::new(r), Box::new(w)));
            }
            listener = Some(Listener::Unix(l));
        }
        Backend::ListenerFd { fd, wait } => {
            let what = format!("fd={fd}");
            let (l, l_label) = adopt_listener(*fd).map_err(open_err(what.clone()))?;
            label = l_label;
            let l = match l {
                InheritedListener::Unix(l) => Listener::Unix(l),
                InheritedListener::Tcp(l) => Listener::Tcp(l, false),
            };
            listener = Some(l);
            if *wait {
                crate::report!("troupe: waiting for connection on: {label}");
                initial = accept(&listener).await;
            }
        }
        Backend::UnixClient { path } => {
            let s = tokio::net::UnixStream::connect(path)
                .await
                .map_err(open_err(format!("unix:{}", path.display())))?;
            label = format!("unix:{}", path.display());
            let (r, w) = s.into_split();
            initial = Some((Box::new(r), Box::new(w)));
        }
    }
    let entry = registry.register(id, "chardev", Placement::Runtime, {
        let a = addr.clone();
        move || a.depth()
    });
    let actor = Arc::new(tokio::sync::Mutex::new(Some((
        ChardevActor {
            id: id.to_string(),
            mailbox: mb,
            frontend,
            stats: stats.clone(),
            backend,
            telnet,
        },
        initial,
        listener,
    ))));
    // The actor is restartable: a panic drops the current connection, the listener and
    // mailbox survive in `actor`'s slot only for the first incarnation, so later ones
    // re-open from `backend` (for servers: bind again).
    spawn_supervised(
        rt,
        entry,
        Restart::Always,
        move || {
            let actor = actor.clone();
            async move {
                let taken = actor.lock().await.take();
                if let Some((a, conn, l)) = taken {
                    a.run(conn, l).await;
                }
            }
        },
        |_| {},
    );
    Ok(ChardevHandle {
        id: id.to_string(),
        label,
        addr,
        stats,
    })
}

impl ChardevActor {
    async fn run(self, mut conn: Option<(BoxRead, BoxWrite)>, listener: Option<Listener>) {
        let mut mb = self.mailbox.open().await;
        let mut filter = TelnetFilter::default();
        if conn.is_some() {
            let _ = self.frontend.send(FrontendEvent::Connected).await;
            if self.telnet {
                if let Some((_, w)) = conn.as_mut() {
                    let _ = w.write_all(telnet::SERVER_GREETING).await;
                }
            }
        }
        let mut buf = vec![0u8; 4096];
        loop {
            let reading = conn.is_some();
            tokio::select! {
                msg = mb.recv() => {
                    let mut flushes = Vec::new();
                    let mut bytes = match msg {
                        Some(ChardevMsg::Write(b)) => b,
                        Some(ChardevMsg::Flush(r)) => { r.send(()); continue; }
                        None => return,
                    };
                    // Coalesce whatever else is queued into one write.
                    while bytes.len() < 64 * 1024 {
                        match mb.try_recv() {
                            Some(ChardevMsg::Write(more)) => bytes.extend_from_slice(&more),
                            Some(ChardevMsg::Flush(r)) => { flushes.push(r); break; }
                            None => break,
                        }
                    }
                    let n = bytes.len() as u64;
                    match conn.as_mut() {
                        Some((_, w)) => {
                            if self.telnet {
                                bytes = telnet::escape_iac(&bytes);
                            }
                            let ok = w.write_all(&bytes).await.is_ok() && w.flush().await.is_ok();
                            if ok {
                                self.stats.written.fetch_add(n, Ordering::Relaxed);
                            } else {
                                self.stats.dropped.fetch_add(n, Ordering::Relaxed);
                                if listener.is_some() {
                                    conn = None;
                                    let _ = self.frontend.send(FrontendEvent::Disconnected).await;
                                }
                            }
                        }
                        None => { self.stats.dropped.fetch_add(n, Ordering::Relaxed); }
                    }
                    for r in flushes { r.send(()); }
                }
                r = async { conn.as_mut().map(|(r, _)| r).expect("guarded").read(&mut buf).await }, if reading => {
                    match r {
                        Ok(0) | Err(_) => {
                            tracing::debug!(chardev = %self.id, "input closed");
                            let socket = matches!(
                                self.backend,
                                Backend::TcpServer { .. } | Backend::TcpClient { .. } | Backend::UnixServer { .. } | Backend::UnixClient { .. } | Backend::ListenerFd { .. }
                            );
                            if socket {
                                conn = None;
                                let _ = self.frontend.send(FrontendEvent::Disconnected).await;
                            } else {
                                // stdin closed (or a file, which has no input): keep
                                // writing, stop reading.
                                if let Some((_, w)) = conn.take() {
                                    conn = Some((Box::new(Pending), w));
                                }
                            }
                        }
                        Ok(n) => {
                            let data = if self.telnet {
                                let (data, reply) = filter.feed(&buf[..n]);
                                if !reply.is_empty() {
                                    if let Some((_, w)) = conn.as_mut() { let _ = w.write_all(&reply).await; }
                                }
                                data
                            } else {
                                buf[..n].to_vec()
                            };
                            self.stats.read.fetch_add(data.len() as u64, Ordering::Relaxed);
                            if !data.is_empty() && self.frontend.send(FrontendEvent::Input(data)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                accepted = accept(&listener), if conn.is_none() && listener.is_some() => {
                    if let Some(c) = accepted {
                        conn = Some(c);
                        filter = TelnetFilter::default();
                        if self.telnet {
                            if let Some((_, w)) = conn.as_mut() { let _ = w.write_all(telnet::SERVER_GREETING).await; }
                        }
                        let _ = self.frontend.send(FrontendEvent::Connected).await;
                    }
                }
            }
        }
    }
}

/// A reader that never yields (a file backend's missing input side).
struct Pending;

impl AsyncRead for Pending {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        _buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Pending
    }
}

async fn accept(l: &Option<Listener>) -> Option<(BoxRead, BoxWrite)> {
    match l {
        Some(Listener::Tcp(l, _nodelay)) => {
            let (s, _) = l.accept().await.ok()?;
            let _ = s.set_nodelay(true);
            let (r, w) = s.into_split();
            Some((Box::new(r), Box::new(w)))
        }
        Some(Listener::Unix(l)) => {
            let (s, _) = l.accept().await.ok()?;
            let (r, w) = s.into_split();
            Some((Box::new(r), Box::new(w)))
        }
        None => std::future::pending().await,
    }
}
