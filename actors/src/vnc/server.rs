//! The listening side: binding (`display..=to`), the accept loops (RFB and WebSocket), the
//! client table with QEMU's share policy and connection limits, and password state.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use super::keymap::Keymap;
use super::{
    ClientCtx, PasswordExpiry, SharePolicy, VncClientInfo, VncError, VncHandle, VncInfo,
    VncOptions, VncServerInfo,
};
use crate::display::input::InputSink;
use crate::display::DisplayHandle;
use crate::runtime::{spawn_supervised, spawn_task, Placement, Registry, Restart};

/// Clients still in the handshake beyond this many: the oldest is dropped (QEMU does the
/// same with its connection limit), so a flood of idle sockets cannot pile up.
const MAX_CONNECTING: usize = 32;

/// Where a client is in its life (QEMU's share modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareMode {
    Connecting,
    Shared,
    Exclusive,
}

pub struct ClientEntry {
    pub id: u64,
    pub addr: SocketAddr,
    pub websocket: bool,
    pub mode: ShareMode,
    /// Told to disconnect (another client took exclusive access, or shutdown).
    pub kick: Arc<Notify>,
}

#[derive(Default)]
struct Password {
    password: Option<String>,
    expires: Option<SystemTime>,
}

/// State shared by the accept loops, the sessions and [`VncHandle`].
pub struct Shared {
    pub opts: VncOptions,
    pub display: DisplayHandle,
    pub keymap: Keymap,
    pub rfb_addr: SocketAddr,
    pub ws_addr: Option<SocketAddr>,
    password: Mutex<Password>,
    clients: Mutex<Vec<ClientEntry>>,
    next_id: AtomicU64,
    /// Connections accepted so far (names each connection's actor).
    connections: AtomicU64,
    shutdown: watch::Sender<bool>,
}

impl Shared {
    fn clients(&self) -> MutexGuard<'_, Vec<ClientEntry>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pw(&self) -> MutexGuard<'_, Password> {
        self.password.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn auth_name(&self) -> &'static str {
        if self.opts.password {
            "vnc"
        } else {
            "none"
        }
    }

    pub fn set_password(&self, pw: &str) -> Result<(), VncError> {
        if !self.opts.password {
            return Err(VncError::PasswordAuthDisabled);
        }
        self.pw().password = Some(pw.to_string());
        Ok(())
    }

    pub fn expire_password(&self, when: PasswordExpiry) -> Result<(), VncError> {
        self.pw().expires = match when {
            PasswordExpiry::Now => Some(SystemTime::now()),
            PasswordExpiry::Never => None,
            PasswordExpiry::At(t) => Some(t),
        };
        Ok(())
    }

    /// The password to check a response against, if one is set and has not expired.
    pub fn current_password(&self) -> Option<String> {
        let g = self.pw();
        if let Some(t) = g.expires {
            if SystemTime::now() >= t {
                return None;
            }
        }
        g.password.clone()
    }

    pub fn info(&self) -> VncInfo {
        let auth = self.auth_name();
        let mut servers = Vec::new();
        if let Some(ws) = self.ws_addr {
            servers.push(VncServerInfo {
                addr: ws,
                websocket: true,
                auth,
            });
        }
        servers.push(VncServerInfo {
            addr: self.rfb_addr,
            websocket: false,
            auth,
        });
        let clients = self
            .clients()
            .iter()
            .rev()
            .filter(|c| c.mode != ShareMode::Connecting)
            .map(|c| VncClientInfo {
                addr: c.addr,
                websocket: c.websocket,
            })
            .collect();
        VncInfo {
            servers,
            clients,
            auth,
        }
    }

    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
        for c in self.clients().iter() {
            c.kick.notify_one();
        }
    }

    pub fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// A new connection: add it as connecting, dropping the oldest connecting client
    /// when there are too many.
    pub fn add_client(&self, addr: SocketAddr, websocket: bool) -> (u64, Arc<Notify>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let kick = Arc::new(Notify::new());
        let mut g = self.clients();
        let connecting = g.iter().filter(|c| c.mode == ShareMode::Connecting).count();
        if connecting >= MAX_CONNECTING {
            if let Some(old) = g.iter().find(|c| c.mode == ShareMode::Connecting) {
                tracing::warn!(client = %old.addr, "too many VNC connections handshaking; dropping the oldest");
                old.kick.notify_one();
            }
        }
        g.push(ClientEntry {
            id,
            addr,
            websocket,
            mode: ShareMode::Connecting,
            kick: kick.clone(),
        });
        (id, kick)
    }

    pub fn remove_client(&self, id: u64) {
        self.clients().retain(|c| c.id != id);
    }

    /// ClientInit: apply the share policy to client `id` asking for `shared`.
    pub fn client_init(&self, id: u64, shared: bool) -> Result<(), VncError> {
        let mut g = self.clients();
        let mode = if shared || self.opts.share == SharePolicy::Ignore {
            ShareMode::Shared
        } else {
            ShareMode::Exclusive
        };
        match self.opts.share {
            SharePolicy::Ignore => {}
            SharePolicy::AllowExclusive => {
                if mode == ShareMode::Exclusive {
                    for c in g
                        .iter()
                        .filter(|c| c.id != id && c.mode != ShareMode::Connecting)
                    {
                        c.kick.notify_one();
                    }
                } else if g
                    .iter()
                    .any(|c| c.id != id && c.mode == ShareMode::Exclusive)
                {
                    return Err(VncError::Share("another client has exclusive access"));
                }
            }
            SharePolicy::ForceShared => {
                if mode == ShareMode::Exclusive {
                    return Err(VncError::Share(
                        "exclusive access refused (share=force-shared): connect as a shared client",
                    ));
                }
            }
        }
        let shared_now = g
            .iter()
            .filter(|c| c.id != id && c.mode == ShareMode::Shared)
            .count();
        if mode == ShareMode::Shared && shared_now >= self.opts.max_clients {
            return Err(VncError::Share("too many clients connected"));
        }
        if let Some(c) = g.iter_mut().find(|c| c.id == id) {
            c.mode = mode;
        }
        Ok(())
    }
}

/// Bind `host:port`, std-side (so `start` needs no `.await`).
fn bind(host: &str, port: u32) -> Result<std::net::TcpListener, VncError> {
    let port16 = u16::try_from(port).map_err(|_| VncError::Port(port))?;
    let h = if host.is_empty() { "0.0.0.0" } else { host };
    let addr = (h, port16)
        .to_socket_addrs()
        .map_err(|_| VncError::Resolve(h.to_string()))?
        .next()
        .ok_or_else(|| VncError::Resolve(h.to_string()))?;
    let l = std::net::TcpListener::bind(addr).map_err(|source| VncError::Bind {
        addr: addr.to_string(),
        source,
    })?;
    l.set_nonblocking(true).map_err(VncError::Io)?;
    Ok(l)
}

/// A server's shared state with no listener, for sessions served over a pipe (the fuzz
/// target's).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn detached(opts: VncOptions, display: DisplayHandle) -> Arc<Shared> {
    let keymap = Keymap::for_layout(&opts.keymap).unwrap_or_else(|(k, _)| k);
    let (shutdown, _) = watch::channel(false);
    Arc::new(Shared {
        rfb_addr: SocketAddr::from(([127, 0, 0, 1], 5900)),
        ws_addr: None,
        opts,
        display,
        keymap,
        password: Mutex::new(Password::default()),
        clients: Mutex::new(Vec::new()),
        next_id: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        shutdown,
    })
}

/// Start the VNC server: bind, register as actor `vnc`, and serve `display` with input
/// going to `input`. Must be called from inside `rt` or with `rt` given.
pub fn start(
    rt: &tokio::runtime::Handle,
    registry: &Registry,
    opts: VncOptions,
    display: DisplayHandle,
    input: Arc<dyn InputSink>,
) -> Result<VncHandle, VncError> {
    let last = opts.to.unwrap_or(opts.display).max(opts.display);
    let mut listener = None;
    let mut err = None;
    for d in opts.display..=last {
        match bind(&opts.host, 5900 + u32::from(d)) {
            Ok(l) => {
                listener = Some(l);
                break;
            }
            Err(e @ VncError::Bind { .. }) => err = Some(e),
            Err(e) => return Err(e),
        }
    }
    let Some(listener) = listener else {
        return Err(err.unwrap_or(VncError::Port(5900 + u32::from(opts.display))));
    };
    let ws = match opts.websocket {
        Some(p) => Some(bind(&opts.host, u32::from(p))?),
        None => None,
    };
    let keymap = match Keymap::for_layout(&opts.keymap) {
        Ok(k) => k,
        Err((k, warning)) => {
            tracing::warn!("{warning}");
            crate::report!("troupe: warning: {warning}");
            k
        }
    };
    let (shutdown, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        rfb_addr: listener.local_addr().map_err(VncError::Io)?,
        ws_addr: match &ws {
            Some(w) => Some(w.local_addr().map_err(VncError::Io)?),
            None => None,
        },
        opts,
        display,
        keymap,
        password: Mutex::new(Password::default()),
        clients: Mutex::new(Vec::new()),
        next_id: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        shutdown,
    });
    let _guard = rt.enter();
    let listener = Arc::new(TcpListener::from_std(listener).map_err(VncError::Io)?);
    let ws = match ws {
        Some(w) => Some(Arc::new(TcpListener::from_std(w).map_err(VncError::Io)?)),
        None => None,
    };
    let entry = registry.register("vnc", "vnc", Placement::Runtime, || 0);
    let sh = shared.clone();
    let rt2 = rt.clone();
    let reg = registry.clone();
    spawn_supervised(
        rt,
        entry,
        Restart::Always,
        move || {
            let ctx = (
                sh.clone(),
                input.clone(),
                listener.clone(),
                ws.clone(),
                rt2.clone(),
                reg.clone(),
            );
            async move {
                let (sh, input, listener, ws, rt, reg) = ctx;
                accept_loop(sh, input, listener, ws, rt, reg).await;
            }
        },
        |_| {},
    );
    Ok(VncHandle { shared })
}

async fn accept_one(
    l: &Option<Arc<TcpListener>>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    input: Arc<dyn InputSink>,
    listener: Arc<TcpListener>,
    ws: Option<Arc<TcpListener>>,
    rt: tokio::runtime::Handle,
    registry: Registry,
) {
    let mut stop = shared.shutdown_rx();
    loop {
        let (res, websocket) = tokio::select! {
            r = listener.accept() => (r, false),
            r = accept_one(&ws) => (r, true),
            _ = stop.wait_for(|s| *s) => return,
        };
        let (sock, addr) = match res {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("VNC accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        // Each connection is an actor of its own, listed while it lasts; a panic in one
        // closes that connection only (the viewer reconnects) and counts as a restart
        // of `vnc`.
        let actor = format!(
            "vnc.client{}",
            shared.connections.fetch_add(1, Ordering::Relaxed)
        );
        let ctx = ClientCtx {
            shared: shared.clone(),
            input: input.clone(),
            registry: registry.clone(),
            actor: actor.clone(),
        };
        spawn_task(
            &rt,
            &registry,
            &actor,
            "vnc-client",
            Some("vnc"),
            super::client::serve(sock, addr, websocket, ctx),
        );
    }
}
