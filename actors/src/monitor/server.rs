//! Monitor front ends: listeners (TCP with or without telnet, unix sockets) that serve
//! any number of clients at once, each connection its own supervised actor; chardev-backed
//! monitors (stdio, pty, file, client sockets); and the monitor half of a mux.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::fdpass::{FdStream, PassedFds};
use super::hmp::{self, HmpSession};
use super::qmp::{self, Frame};
use super::readline::{Event, Readline};
use super::{commands, MonitorContext, QEMU_VERSION};
use crate::chardev::telnet::{escape_iac, SERVER_GREETING};
use crate::chardev::{spawn_chardev, Backend, FrontendEvent, TelnetFilter};
use crate::runtime::{spawn_supervised, spawn_task, Placement, Registry, Restart};

pub const PROMPT: &str = "(qemu) ";

/// Most simultaneous connections on one monitor listener; more are told so and closed.
pub const MAX_SESSIONS: usize = 1024;

pub fn banner() -> String {
    let (a, b, c) = QEMU_VERSION;
    format!("QEMU {a}.{b}.{c} monitor - type 'help' for more information\r\n")
}

/// HMP or QMP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Hmp,
    Qmp,
}

/// Where a monitor talks.
pub enum MonitorBackend {
    Tcp {
        addr: std::net::SocketAddr,
        telnet: bool,
        /// Block start-up until the first client connects (QEMU's `wait=on`).
        wait: bool,
    },
    Unix {
        path: PathBuf,
        wait: bool,
    },
    /// A listening socket inherited as a descriptor (`-chardev socket,fd=N,server=on`).
    ListenerFd {
        fd: i32,
        wait: bool,
    },
    /// A chardev that is not a listening socket (stdio, pty, file, client sockets).
    Chardev(Backend),
    /// The monitor side of a mux shared with a serial port.
    Mux(super::mux::MuxMonitor),
}

pub struct MonitorSpec {
    /// `monitor0`, `qmp1`, ...: the actor id and the `info chardev` label.
    pub id: String,
    pub protocol: Protocol,
    pub pretty: bool,
    pub backend: MonitorBackend,
}

/// A started monitor: what `info chardev` shows and where a listener really listens.
#[derive(Debug, Clone)]
pub struct StartedMonitor {
    pub id: String,
    pub filename: String,
    pub local_addr: Option<std::net::SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("monitor {id}: cannot listen on {what}: {source}")]
    Listen {
        id: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Chardev(#[from] crate::chardev::ChardevError),
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A connection, and the descriptors its client passes (Unix sockets only).
type Conn = (Box<dyn Stream>, Option<Arc<PassedFds>>);

type Accepted<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Conn>> + Send + 'a>>;

/// A listening socket monitors accept clients from.
trait Listen: Send + Sync + 'static {
    fn next(&self) -> Accepted<'_>;
}

impl Listen for tokio::net::TcpListener {
    fn next(&self) -> Accepted<'_> {
        Box::pin(async move {
            let (s, _) = self.accept().await?;
            // QEMU leaves Nagle on and every answer waits ~40 ms for a delayed ACK.
            let _ = s.set_nodelay(true);
            Ok((Box::new(s) as Box<dyn Stream>, None))
        })
    }
}

impl Listen for tokio::net::UnixListener {
    fn next(&self) -> Accepted<'_> {
        Box::pin(async move {
            let (s, _) = self.accept().await?;
            let (s, fds) = FdStream::new(s);
            Ok((Box::new(s) as Box<dyn Stream>, Some(fds)))
        })
    }
}

/// Start one monitor. Listeners are bound before this returns (so a port in use is an
/// error at start-up, naming the option); with `wait`, the first client is awaited too.
pub async fn start(
    rt: &tokio::runtime::Handle,
    registry: &Registry,
    ctx: MonitorContext,
    spec: MonitorSpec,
) -> Result<StartedMonitor, MonitorError> {
    let MonitorSpec {
        id,
        protocol,
        pretty,
        backend,
    } = spec;
    let listen_err = |what: String| {
        let id = id.clone();
        move |source| MonitorError::Listen { id, what, source }
    };
    let server = Server {
        rt: rt.clone(),
        registry: registry.clone(),
        ctx,
        id: id.clone(),
        protocol,
        pretty,
        active: Arc::new(AtomicUsize::new(0)),
        next: Arc::new(AtomicUsize::new(0)),
    };
    match backend {
        MonitorBackend::Tcp { addr, telnet, wait } => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(listen_err(format!("tcp:{addr}")))?;
            let local = l.local_addr().map_err(listen_err(format!("tcp:{addr}")))?;
            let filename = format!(
                "{}:{}:{},server=on{}",
                if telnet { "telnet" } else { "tcp" },
                local.ip(),
                local.port(),
                if telnet { ",telnet=on" } else { "" }
            );
            server.listen(l, &filename, wait, telnet).await;
            Ok(StartedMonitor {
                id,
                filename,
                local_addr: Some(local),
            })
        }
        MonitorBackend::Unix { path, wait } => {
            // Like QEMU, a stale socket file from an earlier run is replaced.
            if std::fs::symlink_metadata(&path)
                .map(|m| {
                    use std::os::unix::fs::FileTypeExt;
                    m.file_type().is_socket()
                })
                .unwrap_or(false)
            {
                let _ = std::fs::remove_file(&path);
            }
            let what = format!("unix:{}", path.display());
            let l = tokio::net::UnixListener::bind(&path).map_err(listen_err(what.clone()))?;
            let filename = format!("{what},server=on");
            server.listen(l, &filename, wait, false).await;
            Ok(StartedMonitor {
                id,
                filename,
                local_addr: None,
            })
        }
        MonitorBackend::ListenerFd { fd, wait } => {
            let (l, filename) =
                crate::chardev::adopt_listener(fd).map_err(listen_err(format!("fd={fd}")))?;
            match l {
                crate::chardev::InheritedListener::Unix(l) => {
                    server.listen(l, &filename, wait, false).await
                }
                crate::chardev::InheritedListener::Tcp(l) => {
                    server.listen(l, &filename, wait, false).await
                }
            }
            Ok(StartedMonitor {
                id,
                filename,
                local_addr: None,
            })
        }
        MonitorBackend::Chardev(backend) => {
            let (tx, rx) = mpsc::channel(64);
            let h = spawn_chardev(rt, registry, &format!("{id}.chardev"), backend, tx).await?;
            let (mine, theirs) = tokio::io::duplex(1 << 16);
            let filename = h.label.clone();
            spawn_task(
                rt,
                registry,
                &format!("{id}.bridge"),
                "monitor",
                None,
                bridge(rx, h, theirs),
            );
            server.spawn_session((Box::new(mine), None), false, None);
            Ok(StartedMonitor {
                id,
                filename,
                local_addr: None,
            })
        }
        MonitorBackend::Mux(m) => {
            let filename = m.label.clone();
            server.spawn_session((Box::new(m.stream), None), false, Some(m.focus));
            Ok(StartedMonitor {
                id,
                filename,
                local_addr: None,
            })
        }
    }
}

/// Move bytes between a chardev actor and the in-memory stream a session reads.
async fn bridge(
    mut rx: mpsc::Receiver<FrontendEvent>,
    h: crate::chardev::ChardevHandle,
    theirs: tokio::io::DuplexStream,
) {
    let (mut r, mut w) = tokio::io::split(theirs);
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(FrontendEvent::Input(b)) => {
                    if w.write_all(&b).await.is_err() {
                        break;
                    }
                }
                Some(_) => {}
                None => break,
            },
            n = r.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => h.write(buf[..n].to_vec()).await,
            },
        }
    }
}

#[derive(Clone)]
struct Server {
    rt: tokio::runtime::Handle,
    registry: Registry,
    ctx: MonitorContext,
    id: String,
    protocol: Protocol,
    pretty: bool,
    active: Arc<AtomicUsize>,
    next: Arc<AtomicUsize>,
}

impl Server {
    fn spawn_listener<F, Fut>(&self, factory: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let entry = self
            .registry
            .register(&self.id, "monitor", Placement::Runtime, || 0);
        spawn_supervised(&self.rt, entry, Restart::Always, factory, |_| {});
    }

    /// Serve clients of `l` from now on (after the first one, with `wait`).
    async fn listen(&self, l: impl Listen, filename: &str, wait: bool, telnet: bool) {
        if wait {
            crate::report!("QEMU waiting for connection on: disconnected:{filename}");
            if let Ok(c) = l.next().await {
                self.accept(c, telnet);
            }
        }
        let l = Arc::new(l);
        let srv = self.clone();
        self.spawn_listener(move || {
            let l = l.clone();
            let srv = srv.clone();
            async move {
                loop {
                    match l.next().await {
                        Ok(c) => srv.accept(c, telnet),
                        Err(e) => {
                            tracing::warn!("monitor accept failed: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        });
    }

    fn accept(&self, (s, fds): Conn, telnet: bool) {
        if self.active.load(Ordering::Relaxed) >= MAX_SESSIONS {
            tracing::warn!(monitor = %self.id, "too many monitor connections; refusing one");
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let id = format!("{}.refused{n}", self.id);
            spawn_task(
                &self.rt,
                &self.registry,
                &id,
                "monitor-session",
                None,
                async move {
                    let mut s = s;
                    let _ = s
                        .write_all(
                            format!(
                                "Error: too many monitor connections (at most {MAX_SESSIONS})\r\n"
                            )
                            .as_bytes(),
                        )
                        .await;
                    let _ = s.shutdown().await;
                },
            );
            return;
        }
        self.spawn_session((s, fds), telnet, None);
    }

    fn spawn_session(&self, (s, fds): Conn, telnet: bool, focus: Option<watch::Receiver<bool>>) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}.session{n}", self.id);
        self.active.fetch_add(1, Ordering::Relaxed);
        let active = Active(self.active.clone());
        let ctx = self.ctx.clone();
        let (protocol, pretty) = (self.protocol, self.pretty);
        // A session is its connection: a panic in it closes that connection only (the
        // user opens a new one) and counts as a restart of the monitor that listens.
        spawn_task(
            &self.rt,
            &self.registry,
            &id,
            "monitor-session",
            Some(&self.id),
            async move {
                let _active = active;
                match protocol {
                    Protocol::Hmp => serve_hmp(ctx, s, telnet, focus).await,
                    Protocol::Qmp => serve_qmp(ctx, s, fds, pretty).await,
                }
            },
        );
    }
}

/// One open session of a monitor, counted until the session ends (however it ends).
struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// HMP text uses `\n`; the wire gets `\r\n`.
fn crlf(text: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(text.len() + 8);
    for b in text.bytes() {
        if b == b'\n' {
            v.push(b'\r');
        }
        v.push(b);
    }
    v
}

async fn serve_hmp(
    ctx: MonitorContext,
    s: Box<dyn Stream>,
    telnet: bool,
    mut focus: Option<watch::Receiver<bool>>,
) {
    let (mut r, mut w) = tokio::io::split(s);
    let mut filter = telnet.then(TelnetFilter::default);
    let mut rl = Readline::new(PROMPT);
    let mut session = HmpSession::new();
    let mut out = Vec::new();
    if telnet {
        out.extend_from_slice(SERVER_GREETING);
    }
    let mut shown_banner = false;
    if focus.is_none() {
        out.extend_from_slice(banner().as_bytes());
        rl.start(PROMPT, false, &mut out);
        shown_banner = true;
    }
    let mut awaiting_password = false;
    let mut buf = vec![0u8; 16 * 1024];
    let complete = |line: &str| hmp::complete(line);
    loop {
        if !out.is_empty() {
            let bytes = std::mem::take(&mut out);
            let bytes = if telnet {
                escape_iac_keep_greeting(bytes)
            } else {
                bytes
            };
            if w.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let focus_changed = async {
            match focus.as_mut() {
                Some(f) => f.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let data = tokio::select! {
            n = r.read(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => buf[..n].to_vec(),
            },
            ok = focus_changed => {
                if !ok {
                    focus = None;
                    continue;
                }
                let on = focus.as_ref().is_some_and(|f| *f.borrow());
                if on {
                    if shown_banner {
                        out.extend_from_slice(b"\r\n");
                    } else {
                        out.extend_from_slice(banner().as_bytes());
                        shown_banner = true;
                    }
                    rl.start(PROMPT, false, &mut out);
                }
                continue;
            }
        };
        let data = match filter.as_mut() {
            Some(f) => {
                let (d, reply) = f.feed(&data);
                out.extend_from_slice(&reply);
                d
            }
            None => data,
        };
        for b in data {
            let Some(Event::Line(line)) = rl.feed(b, &complete, &mut out) else {
                continue;
            };
            // Echo first, then the answer.
            if awaiting_password {
                awaiting_password = false;
                if let Err(e) = commands::set_password(&ctx, "vnc", &line) {
                    out.extend_from_slice(crlf(&format!("Error: {}\n", e.desc())).as_slice());
                }
                rl.start(PROMPT, false, &mut out);
                continue;
            }
            if !out.is_empty() {
                let bytes = std::mem::take(&mut out);
                let bytes = if telnet {
                    escape_iac_keep_greeting(bytes)
                } else {
                    bytes
                };
                if w.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            let reply = hmp::run_line(&ctx, &mut session, &line).await;
            out.extend_from_slice(&crlf(&reply.text));
            if reply.password_prompt {
                awaiting_password = true;
                rl.start("Password: ", true, &mut out);
            } else {
                rl.start(PROMPT, false, &mut out);
            }
        }
    }
}

/// Escape IAC bytes in monitor output, leaving the telnet greeting (which starts the
/// first write) intact.
fn escape_iac_keep_greeting(bytes: Vec<u8>) -> Vec<u8> {
    if let Some(rest) = bytes.strip_prefix(SERVER_GREETING) {
        let mut v = SERVER_GREETING.to_vec();
        v.extend(escape_iac(rest));
        v
    } else {
        escape_iac(&bytes)
    }
}

async fn serve_qmp(
    ctx: MonitorContext,
    s: Box<dyn Stream>,
    passed: Option<Arc<PassedFds>>,
    pretty: bool,
) {
    let (mut r, mut w) = tokio::io::split(s);
    let Ok(mut events) = ctx.supervisor.subscribe().await else {
        return;
    };
    if w.write_all(qmp::to_wire(&qmp::greeting(), pretty).as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let mut negotiated = false;
    // The client enabled out-of-band execution in `qmp_capabilities`.
    let mut oob = false;
    let mut framer = qmp::Framer::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut frames = Vec::new();
    loop {
        tokio::select! {
            n = r.read(&mut buf) => {
                let n = match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                framer.feed(&buf[..n], &mut frames);
            }
            ev = events.recv() => {
                match ev {
                    Ok((when, n)) if negotiated => {
                        let (name, data) = commands::event_json(&n);
                        let line = qmp::to_wire(&qmp::event(&name, data, when), pretty);
                        if w.write_all(line.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
                continue;
            }
        }
        for f in frames.drain(..) {
            let reply = match f {
                Frame::Error(e) => qmp::error_reply(None, &commands::CmdError::Generic(e)),
                Frame::Message(m) => match qmp::parse_request(&m) {
                    Err((id, e)) => qmp::error_reply(id.as_ref(), &e),
                    Ok(req) => {
                        let id = req.id.as_ref();
                        if req.command == "qmp_capabilities" {
                            if negotiated {
                                qmp::error_reply(
                                    id,
                                    &commands::CmdError::CommandNotFound(
                                        "Capabilities negotiation is already complete, command ignored".into(),
                                    ),
                                )
                            } else {
                                negotiated = true;
                                oob = req
                                    .args
                                    .get("enable")
                                    .and_then(|e| e.as_array())
                                    .is_some_and(|e| e.iter().any(|c| c == "oob"));
                                // Events from before negotiation are not for this client.
                                while events.try_recv().is_ok() {}
                                qmp::return_reply(id, serde_json::json!({}))
                            }
                        } else if !negotiated {
                            qmp::error_reply(
                                id,
                                &commands::CmdError::CommandNotFound(
                                    "Expecting capabilities negotiation with 'qmp_capabilities'"
                                        .into(),
                                ),
                            )
                        } else if req.oob && !oob {
                            qmp::error_reply(
                                id,
                                &commands::CmdError::Generic(
                                    "QMP input member 'exec-oob' is unexpected".into(),
                                ),
                            )
                        } else if req.oob {
                            // No troupe command runs out of band (QEMU's run only with
                            // migration recovery).
                            qmp::error_reply(
                                id,
                                &commands::CmdError::Generic(format!(
                                    "The command {} does not support OOB",
                                    req.command
                                )),
                            )
                        } else if req.command == "human-monitor-command" {
                            human_monitor_command(&ctx, id, &req.args).await
                        } else if req.command == "getfd" {
                            // The descriptor came with this session's messages.
                            let res = commands::check_args("getfd", &req.args).and_then(|_| {
                                let name = req.args["fdname"].as_str().unwrap_or_default();
                                ctx.fds.getfd(passed.as_deref(), name)
                            });
                            match res {
                                Ok(()) => qmp::return_reply(id, serde_json::json!({})),
                                Err(e) => qmp::error_reply(id, &e),
                            }
                        } else {
                            match commands::execute(&ctx, &req.command, &req.args).await {
                                Ok(v) => qmp::return_reply(id, v),
                                Err(e) => qmp::error_reply(id, &e),
                            }
                        }
                    }
                },
            };
            // Events the command caused (STOP for `stop`) go out before its return, as in
            // QEMU.
            let mut wire = String::new();
            while let Ok((when, n)) = events.try_recv() {
                if negotiated {
                    let (name, data) = commands::event_json(&n);
                    wire.push_str(&qmp::to_wire(&qmp::event(&name, data, when), pretty));
                }
            }
            wire.push_str(&qmp::to_wire(&reply, pretty));
            if w.write_all(wire.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

/// QMP `human-monitor-command`: run an HMP line, return its output (with `\r\n`, as
/// QEMU's is).
async fn human_monitor_command(
    ctx: &MonitorContext,
    id: Option<&serde_json::Value>,
    args: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Value {
    if let Err(e) = commands::check_args("human-monitor-command", args) {
        return qmp::error_reply(id, &e);
    }
    let line = args
        .get("command-line")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let mut session = HmpSession::new();
    if let Some(cpu) = args.get("cpu-index") {
        match cpu.as_u64().filter(|&c| (c as usize) < ctx.topology.len()) {
            Some(c) => session.cpu = c as u32,
            None => {
                return qmp::error_reply(
                    id,
                    &commands::CmdError::Generic(
                        "Parameter 'cpu-index' expects a CPU number".into(),
                    ),
                )
            }
        }
    }
    let reply = hmp::run_line(ctx, &mut session, line).await;
    let text = String::from_utf8_lossy(&crlf(&reply.text)).into_owned();
    qmp::return_reply(id, serde_json::Value::String(text))
}
