//! The VNC server actor: RFB 3.3/3.7/3.8 over TCP (and over WebSocket), serving the
//! console surface from [`crate::display`] and turning clients' keys and pointer into
//! [`crate::display::input::InputEvent`]s.
//!
//! Shape: [`start`] binds the listeners and spawns the accept loop (a supervised,
//! restartable actor). Every connection gets its own task ([`client`]) that owns its
//! session state: the negotiated pixel format and encodings, a shadow copy of the surface
//! and the tiles the client has not seen yet. A second task per client reads the socket
//! and posts input straight to the [`InputSink`] and update requests into a coalescing
//! slot, so neither a slow network nor a flood of requests queues anything without bound.
//! [`VncHandle`] is what the monitor uses: passwords, `info vnc` / `query-vnc`.
//!
//! Compatibility: the handshake, security and failure rules, ServerInit and the
//! pseudo-encodings follow QEMU 7.2 byte for byte (see `shared/reference`); unlike QEMU,
//! a change on the surface reaches an idle client with a pending request at once (no
//! refresh timer backing off to 3 s).

mod client;
pub mod des;
pub mod encode;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub use crate::display::keymap;
pub mod pixel;
mod server;
pub mod tls;
pub mod websocket;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use server::start;

use crate::display::input::InputSink;
use crate::display::DisplayHandle;

/// Ways the VNC server or one of its clients can fail.
#[derive(Debug, thiserror::Error)]
pub enum VncError {
    /// A SetPixelFormat troupe cannot serve.
    #[error("unsupported pixel format: {0}")]
    PixelFormat(String),
    /// No port in the `display..=to` range could be bound.
    #[error("could not bind VNC server to {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The listen host does not resolve.
    #[error("VNC listen address '{0}' does not resolve")]
    Resolve(String),
    /// A port beyond 65535.
    #[error("VNC display {0} gives a port beyond 65535")]
    Port(u32),
    /// A socket error on one client.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The client's first 12 bytes are not `RFB xxx.yyy\n`.
    #[error("malformed protocol version {0:?}")]
    BadVersion(String),
    /// A version QEMU does not speak either.
    #[error("unsupported protocol version {0}.{1}")]
    UnsupportedVersion(u32, u32),
    /// The client chose a security type that was not offered.
    #[error("client chose security type {0}, not the one offered")]
    BadSecurityType(u8),
    /// Wrong password, no password set, or it expired.
    #[error("authentication failed ({0})")]
    AuthFailed(&'static str),
    /// The share policy refused this client or another client took exclusive access.
    #[error("{0}")]
    Share(&'static str),
    /// A client message type troupe does not know.
    #[error("unknown client message type {0}")]
    UnknownMessage(u8),
    /// A QEMU client message (255) with an unknown submessage.
    #[error("unknown QEMU client submessage {0}")]
    UnknownQemuMessage(u8),
    /// A ClientCutText beyond the limit.
    #[error("ClientCutText of {0} bytes exceeds the {CUT_TEXT_LIMIT}-byte limit")]
    CutTextTooLong(u32),
    /// The handshake did not finish in time.
    #[error("VeNCrypt version {0}.{1} (troupe speaks 0.2)")]
    VencryptVersion(u8, u8),
    #[error("client chose VeNCrypt subtype {0}, not the one offered")]
    VencryptSubtype(u32),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// Too many clients still handshaking: the oldest was dropped.
    #[error("too many connections still handshaking")]
    TooManyConnecting,
    /// `set_password` on a server started without `password=on`.
    #[error(
        "If you want use passwords please enable password auth using '-vnc ${{dpy}},password'."
    )]
    PasswordAuthDisabled,
    /// A bad `expire_password` time.
    #[error(
        "invalid password expiry time '{0}' (now, never, +SECONDS or SECONDS since the epoch)"
    )]
    BadExpiry(String),
    /// A WebSocket handshake problem.
    #[error("websocket: {0}")]
    WebSocket(String),
    /// The server was shut down.
    #[error("VNC server shut down")]
    Shutdown,
}

/// Longest ClientCutText accepted (the text is read and dropped: troupe has no guest
/// clipboard); a longer announcement drops the client without allocating anything.
pub const CUT_TEXT_LIMIT: u32 = 1 << 20;

/// How a client's shared flag is treated (`-vnc ...,share=`), as QEMU does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharePolicy {
    /// Exclusive clients disconnect all others; shared clients are refused while an
    /// exclusive one is connected. QEMU's default.
    AllowExclusive,
    /// Clients asking for exclusive access are refused.
    ForceShared,
    /// The flag is ignored: everyone shares.
    Ignore,
}

/// What the server is started with.
#[derive(Debug, Clone)]
pub struct VncOptions {
    /// Host to listen on ("" = all IPv4 addresses).
    pub host: String,
    /// Display number: port 5900 + display.
    pub display: u16,
    /// `to=N`: try displays up to N if the port is busy.
    pub to: Option<u16>,
    /// `websocket=PORT`.
    pub websocket: Option<u16>,
    /// `password=on`: VNC authentication.
    pub password: bool,
    pub share: SharePolicy,
    /// `lossy=on`: Tight may send JPEG.
    pub lossy: bool,
    /// The desktop name in ServerInit: `QEMU`, or the `-name` of the VM.
    pub name: String,
    /// `-k` layout for keysym translation.
    pub keymap: String,
    /// Most clients past the handshake at once (QEMU's default `connections=32`).
    pub max_clients: usize,
    /// `tls-creds=`: VeNCrypt with these credentials (see [`tls::server_config`]).
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

impl VncOptions {
    /// Defaults for display `display` on `host`.
    pub fn new(host: &str, display: u16) -> Self {
        Self {
            host: host.to_string(),
            display,
            to: None,
            websocket: None,
            password: false,
            share: SharePolicy::AllowExclusive,
            lossy: false,
            name: "QEMU".into(),
            keymap: "en-us".into(),
            max_clients: 32,
            tls: None,
        }
    }
}

/// When the VNC password stops working (`expire_password vnc TIME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordExpiry {
    Now,
    Never,
    At(SystemTime),
}

impl PasswordExpiry {
    /// QEMU's syntax: `now`, `never`, `+SECONDS` (from now), `SECONDS` (since the epoch).
    pub fn parse(s: &str) -> Result<Self, VncError> {
        let bad = || VncError::BadExpiry(s.to_string());
        match s {
            "now" => Ok(Self::Now),
            "never" => Ok(Self::Never),
            _ => {
                if let Some(rel) = s.strip_prefix('+') {
                    let n: u64 = rel.parse().map_err(|_| bad())?;
                    Ok(Self::At(SystemTime::now() + Duration::from_secs(n)))
                } else {
                    let n: u64 = s.parse().map_err(|_| bad())?;
                    Ok(Self::At(UNIX_EPOCH + Duration::from_secs(n)))
                }
            }
        }
    }
}

/// One listening socket, as `info vnc` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VncServerInfo {
    pub addr: SocketAddr,
    pub websocket: bool,
    /// `none` or `vnc`.
    pub auth: &'static str,
}

/// One connected client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VncClientInfo {
    pub addr: SocketAddr,
    pub websocket: bool,
}

/// What `info vnc` / `query-vnc` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VncInfo {
    /// Listeners, WebSocket ones first (QEMU's order).
    pub servers: Vec<VncServerInfo>,
    /// Clients, newest first (QEMU's order).
    pub clients: Vec<VncClientInfo>,
    pub auth: &'static str,
}

fn family(a: &SocketAddr) -> &'static str {
    if a.is_ipv4() {
        "ipv4"
    } else {
        "ipv6"
    }
}

impl VncInfo {
    /// HMP `info vnc`, exactly as QEMU 7.2 prints it (lines end in `\n`).
    pub fn to_hmp(&self) -> String {
        let mut s = String::from("default:\n");
        for sv in &self.servers {
            s.push_str(&format!(
                "  Server: {}:{} ({}{})\n    Auth: {} (Sub: none)\n",
                sv.addr.ip(),
                sv.addr.port(),
                family(&sv.addr),
                if sv.websocket { " (Websocket)" } else { "" },
                sv.auth
            ));
        }
        for c in &self.clients {
            s.push_str(&format!(
                "  Client: {}:{} ({}{})\n    x509_dname: none\n    sasl_username: none\n",
                c.addr.ip(),
                c.addr.port(),
                family(&c.addr),
                if c.websocket { " (Websocket)" } else { "" },
            ));
        }
        s
    }

    /// QMP `query-vnc`'s return value.
    pub fn to_query_vnc(&self) -> serde_json::Value {
        let main = self.servers.iter().find(|s| !s.websocket);
        let clients: Vec<serde_json::Value> = self
            .clients
            .iter()
            .map(|c| {
                serde_json::json!({
                    "host": c.addr.ip().to_string(),
                    "service": c.addr.port().to_string(),
                    "family": family(&c.addr),
                    "websocket": c.websocket,
                })
            })
            .collect();
        match main {
            None => serde_json::json!({ "enabled": false }),
            Some(m) => serde_json::json!({
                "enabled": true,
                "host": m.addr.ip().to_string(),
                "service": m.addr.port().to_string(),
                "family": family(&m.addr),
                "auth": self.auth,
                "clients": clients,
            }),
        }
    }
}

/// The monitor's handle on the VNC server.
#[derive(Clone)]
pub struct VncHandle {
    shared: Arc<server::Shared>,
}

impl VncHandle {
    /// `change vnc password PW` / `set_password vnc PW` / QMP `change-vnc-password`.
    /// Only the first 8 characters matter (the DES key). Refused when the server was
    /// started without `password=on`, as QEMU does.
    pub fn set_password(&self, password: &str) -> Result<(), VncError> {
        self.shared.set_password(password)
    }

    /// `expire_password vnc TIME`.
    pub fn expire_password(&self, when: PasswordExpiry) -> Result<(), VncError> {
        self.shared.expire_password(when)
    }

    /// `info vnc` / `query-vnc` data.
    pub fn info(&self) -> VncInfo {
        self.shared.info()
    }

    /// The RFB listener's address (port = 5900 + display, or later with `to=`).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.rfb_addr
    }

    /// The WebSocket listener's address, if any.
    pub fn websocket_addr(&self) -> Option<SocketAddr> {
        self.shared.ws_addr
    }

    /// The display the server shows.
    pub fn display(&self) -> DisplayHandle {
        self.shared.display.clone()
    }

    /// Stop listening and disconnect every client.
    pub fn shutdown(&self) {
        self.shared.shutdown();
    }
}

/// What a client session needs from the server (built by `server`).
pub(crate) struct ClientCtx {
    pub shared: Arc<server::Shared>,
    pub input: Arc<dyn InputSink>,
    /// Where the connection's helper tasks (reader, WebSocket pumps) are listed.
    pub registry: crate::runtime::Registry,
    /// This connection's actor id (`vnc.client<N>`).
    pub actor: String,
}
