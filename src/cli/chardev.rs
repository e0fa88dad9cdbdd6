//! Character devices: `-chardev`, the legacy device strings of `-serial`, `-monitor` and
//! `-qmp` (`stdio`, `tcp::4444,server,nowait`, `mon:stdio`, `chardev:ID`, ...), and `-mon`.
//!
//! Also owns the rules about who may use a character device: a named chardev has one
//! frontend unless it is `mux=on`, stdio has one user per process and none under
//! `-daemonize`.

use std::path::PathBuf;

use thiserror::Error;

use super::options::{parse_uint, Opts, OptsError};
use crate::config::{CharBackend, Chardev, MonitorConfig, MonitorMode, SocketAddrSpec, VcSpec};

/// Ways a character device can be wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChardevError {
    /// A malformed option string or value.
    #[error(transparent)]
    Opts(#[from] OptsError),
    /// A backend name QEMU doesn't have.
    #[error("'{0}' is not a valid char driver (see -chardev help)")]
    UnknownBackend(String),
    /// A backend QEMU has and troupe doesn't.
    #[error("the '{0}' character backend is not supported by troupe{1}")]
    Unsupported(String, &'static str),
    /// `tcp:`/`telnet:` without `HOST:PORT`.
    #[error("expected [HOST]:PORT after '{0}:'")]
    SocketSyntax(String),
    /// A port that isn't one.
    #[error("invalid port '{0}'")]
    Port(String),
    /// A client socket with port 0.
    #[error("a client socket needs a port other than 0")]
    ClientPortZero,
    /// `-chardev socket` with neither `path=` nor `port=`.
    #[error("a socket chardev needs path= (unix), port= (tcp) or fd=")]
    SocketAddress,
    /// `fd=` without `server=on`: troupe takes only a listening socket.
    #[error("fd={0} needs server=on (troupe takes a listening socket there)")]
    FdNotServer(i32),
    /// `-chardev socket` with two addresses.
    #[error("a socket chardev takes path= (unix), host=/port= (tcp) or fd=, only one")]
    SocketBoth,
    /// `wait=` on a client.
    #[error("'wait' option is incompatible with socket in client connect mode")]
    WaitClient,
    /// `telnet=on` with a unix socket.
    #[error("telnet is only available on TCP sockets")]
    TelnetUnix,
    /// `file:` with no path.
    #[error("no file name given")]
    EmptyPath,
    /// A feature of a backend troupe doesn't implement.
    #[error("{0} is not supported by troupe")]
    UnsupportedOption(&'static str),
    /// `mon:` where it makes no sense.
    #[error("'mon:' can only prefix a -serial device")]
    MonPrefix,
    /// `chardev:ID` or `chardev=ID` naming nothing.
    #[error("chardev '{0}' not found")]
    NotFound(String),
    /// A second frontend on a non-mux chardev.
    #[error("chardev '{0}' is already in use (create it with mux=on to share it)")]
    InUse(String),
    /// Two users of stdio.
    #[error("cannot use stdio by multiple character devices")]
    StdioTwice,
    /// stdio with `-daemonize`.
    #[error("cannot use stdio with -daemonize")]
    StdioDaemonize,
    /// Two chardevs with one id.
    #[error("duplicate chardev id '{0}'")]
    DuplicateId(String),
    /// A `vc` size that is not `W[C]xH[C]`.
    #[error(
        "invalid text console size '{0}' (expected WxH in pixels or COLSCxROWSC, like 80Cx24C)"
    )]
    VcSize(String),
    /// A `vc` too small or too large to show.
    #[error("text console of {0}x{1} characters is out of range (1x1 to {max_cols}x{max_rows})", max_cols = VC_MAX.0, max_rows = VC_MAX.1)]
    VcRange(u32, u32),
}

/// The largest text console, in characters (8x16-pixel cells on an 8192-pixel surface).
pub const VC_MAX: (u32, u32) = (1024, 512);

/// QEMU's text console size when none is given: 640x480 pixels.
pub const VC_DEFAULT: (u32, u32) = (80, 30);

/// QEMU's default serial port and monitor consoles: `vc:80Cx24C`.
pub fn default_vc() -> CharBackend {
    CharBackend::Vc(VcSpec {
        index: 0,
        cols: 80,
        rows: 24,
    })
}

fn vc(cols: u32, rows: u32) -> Result<CharBackend, ChardevError> {
    if cols == 0 || rows == 0 || cols > VC_MAX.0 || rows > VC_MAX.1 {
        return Err(ChardevError::VcRange(cols, rows));
    }
    Ok(CharBackend::Vc(VcSpec {
        index: 0,
        cols,
        rows,
    }))
}

/// `vc:WxH` (pixels) or `vc:COLSCxROWSC` (characters), as `qemu_chr_parse_vc` reads it.
fn legacy_vc(size: &str) -> Result<CharBackend, ChardevError> {
    let bad = || ChardevError::VcSize(size.to_string());
    let (w, h) = size.split_once('x').ok_or_else(bad)?;
    let dim = |s: &str, cell: u32| -> Result<u32, ChardevError> {
        let (n, chars) = match s.strip_suffix(['C', 'c']) {
            Some(n) => (n, true),
            None => (s, false),
        };
        let n = parse_uint(n)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(bad)?;
        Ok(if chars { n } else { n / cell })
    };
    vc(dim(w, 8)?, dim(h, 16)?)
}

/// A legacy device string (`-serial`, `-monitor`, `-qmp`, `guestfwd=...-`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Legacy {
    /// `none`: no device.
    None,
    /// A backend.
    Backend(CharBackend),
    /// `mon:BACKEND`: the backend multiplexed with an HMP monitor.
    Mon(CharBackend),
}

/// Backends QEMU has that troupe refuses, with a hint.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("udp", ""),
    ("pipe", ""),
    ("serial", ""),
    ("tty", ""),
    ("parallel", ""),
    ("parport", ""),
    ("ringbuf", ""),
    ("memory", ""),
    ("msmouse", ""),
    ("wctablet", ""),
    ("braille", ""),
    ("testdev", ""),
    ("spicevmc", ""),
    ("spiceport", ""),
    ("qemu-vdagent", ""),
    ("dbus", ""),
    ("websocket", ""),
    ("mux", " (use mux=on on another backend)"),
];

fn unknown_or_unsupported(name: &str) -> ChardevError {
    match UNSUPPORTED.iter().find(|(n, _)| *n == name) {
        Some((n, hint)) => ChardevError::Unsupported((*n).to_string(), hint),
        None => ChardevError::UnknownBackend(name.to_string()),
    }
}

/// Parse a legacy device string like QEMU's `qemu_chr_parse_compat`.
pub fn parse_legacy(spec: &str) -> Result<Legacy, ChardevError> {
    if let Some(rest) = spec.strip_prefix("mon:") {
        return match parse_legacy(rest)? {
            Legacy::Backend(CharBackend::Named(_)) | Legacy::None | Legacy::Mon(_) => {
                Err(ChardevError::MonPrefix)
            }
            Legacy::Backend(b) => Ok(Legacy::Mon(b)),
        };
    }
    let backend = match spec {
        "none" => return Ok(Legacy::None),
        "null" => CharBackend::Null,
        "stdio" => CharBackend::Stdio,
        "pty" => CharBackend::Pty,
        "vc" => vc(VC_DEFAULT.0, VC_DEFAULT.1)?,
        _ => {
            if let Some(size) = spec.strip_prefix("vc:") {
                legacy_vc(size)?
            } else if let Some(id) = spec.strip_prefix("chardev:") {
                CharBackend::Named(id.to_string())
            } else if let Some(path) = spec.strip_prefix("file:") {
                if path.is_empty() {
                    return Err(ChardevError::EmptyPath);
                }
                CharBackend::File(PathBuf::from(path))
            } else if let Some(rest) = spec.strip_prefix("tcp:") {
                legacy_tcp("tcp", rest, false)?
            } else if let Some(rest) = spec.strip_prefix("telnet:") {
                legacy_tcp("telnet", rest, true)?
            } else if let Some(rest) = spec.strip_prefix("unix:") {
                let (path, opts) = rest.split_once(',').unwrap_or((rest, ""));
                if path.is_empty() {
                    return Err(ChardevError::EmptyPath);
                }
                let mut opts = Opts::parse(opts, None)?;
                let s = socket_flags(&mut opts, false)?;
                opts.finish()?;
                CharBackend::Unix {
                    path: PathBuf::from(path),
                    server: s.server,
                    wait: s.wait,
                }
            } else if spec.starts_with("/dev/") {
                return Err(ChardevError::Unsupported(
                    "host device".to_string(),
                    " (use a pty, a socket or stdio)",
                ));
            } else {
                let name = spec.split([':', ',']).next().unwrap_or_default();
                return Err(unknown_or_unsupported(name));
            }
        }
    };
    Ok(Legacy::Backend(backend))
}

/// `tcp:[HOST]:PORT[,server][,wait=off|nowait][,nodelay][,telnet]`.
fn legacy_tcp(scheme: &str, rest: &str, telnet: bool) -> Result<CharBackend, ChardevError> {
    let (addr, opts) = rest.split_once(',').unwrap_or((rest, ""));
    let (host, port) =
        split_host_port(addr).ok_or_else(|| ChardevError::SocketSyntax(scheme.into()))?;
    let port = parse_port(port)?;
    let mut opts = Opts::parse(opts, None)?;
    let s = socket_flags(&mut opts, true)?;
    let telnet = telnet | opts.flag("telnet")?.unwrap_or(false);
    opts.finish()?;
    if !s.server && port == 0 {
        return Err(ChardevError::ClientPortZero);
    }
    Ok(CharBackend::Tcp {
        addr: SocketAddrSpec { host, port },
        server: s.server,
        wait: s.wait,
        telnet,
        nodelay: s.nodelay,
    })
}

/// Split `[HOST]:PORT` (HOST may be `[v6]`); None without a colon.
pub fn split_host_port(addr: &str) -> Option<(String, &str)> {
    if let Some(rest) = addr.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        return Some((host.to_string(), port));
    }
    let (host, port) = addr.rsplit_once(':')?;
    if host.contains(':') {
        return None;
    }
    Some((host.to_string(), port))
}

/// A TCP port number.
pub fn parse_port(s: &str) -> Result<u16, ChardevError> {
    parse_uint(s)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| ChardevError::Port(s.to_string()))
}

struct SocketFlags {
    server: bool,
    wait: bool,
    nodelay: bool,
}

/// `server`, `wait`, `nodelay`/`delay` shared by every socket spelling; refuses the socket
/// features troupe lacks.
fn socket_flags(opts: &mut Opts, tcp: bool) -> Result<SocketFlags, ChardevError> {
    let server = opts.flag("server")?.unwrap_or(false);
    let wait = opts.flag("wait")?;
    if !server && wait.is_some() {
        return Err(ChardevError::WaitClient);
    }
    let mut nodelay = false;
    if tcp {
        nodelay = opts.flag("nodelay")?.unwrap_or(false) | !opts.flag("delay")?.unwrap_or(true);
    }
    for (key, what) in [
        ("reconnect", "reconnect="),
        ("tls-creds", "TLS (tls-creds=)"),
        ("websocket", "websocket="),
        ("tn3270", "tn3270="),
    ] {
        if opts.str(key).is_some() {
            return Err(ChardevError::UnsupportedOption(what));
        }
    }
    Ok(SocketFlags {
        server,
        wait: server && wait.unwrap_or(true),
        nodelay,
    })
}

/// `-chardev BACKEND,id=ID[,mux=on][,signal=on|off][,logfile=PATH],...`.
pub fn parse_chardev(mut opts: Opts) -> Result<Chardev, ChardevError> {
    let backend_name = opts.required("backend")?;
    let id = opts.id("id")?.ok_or(OptsError::Missing("id".into()))?;
    let mux = opts.flag("mux")?.unwrap_or(false);
    let logfile = opts.str("logfile").map(PathBuf::from);
    if opts.flag("logappend")?.unwrap_or(false) {
        return Err(ChardevError::UnsupportedOption("logappend=on"));
    }
    let mut signal = true;
    let backend = match backend_name.as_str() {
        "null" => CharBackend::Null,
        "pty" => CharBackend::Pty,
        "vc" => {
            // QEMU: cols/rows in characters win over width/height in pixels.
            let num = |opts: &mut Opts, key: &str| -> Result<Option<u32>, ChardevError> {
                Ok(opts.uint(key, 0, u64::from(u32::MAX))?.map(|v| v as u32))
            };
            let width = num(&mut opts, "width")?;
            let height = num(&mut opts, "height")?;
            let cols = num(&mut opts, "cols")?.or(width.map(|w| w / 8));
            let rows = num(&mut opts, "rows")?.or(height.map(|h| h / 16));
            vc(cols.unwrap_or(VC_DEFAULT.0), rows.unwrap_or(VC_DEFAULT.1))?
        }
        "stdio" => {
            signal = opts.flag("signal")?.unwrap_or(true);
            CharBackend::Stdio
        }
        "file" => {
            let path = opts.str("path").unwrap_or_default();
            if path.is_empty() {
                return Err(ChardevError::EmptyPath);
            }
            if opts.flag("append")?.unwrap_or(false) {
                return Err(ChardevError::UnsupportedOption("append=on"));
            }
            CharBackend::File(PathBuf::from(path))
        }
        "socket" => {
            let path = opts.str("path");
            let host = opts.str("host");
            let port = opts.str("port");
            let telnet = opts.flag("telnet")?.unwrap_or(false);
            let fd = opts.uint("fd", 0, i32::MAX as u64)?;
            for (key, what) in [
                ("ipv4", "ipv4="),
                ("ipv6", "ipv6="),
                ("to", "to="),
                ("abstract", "abstract="),
            ] {
                if opts.str(key).is_some() {
                    return Err(ChardevError::UnsupportedOption(what));
                }
            }
            match (path, port) {
                // `fd=N`: a listening socket the launcher (libvirt) created and passed in.
                _ if fd.is_some() => {
                    let fd = fd.unwrap_or_default() as i32;
                    if opts.peek("path").is_some() || opts.peek("port").is_some() || host.is_some()
                    {
                        return Err(ChardevError::SocketBoth);
                    }
                    if telnet {
                        return Err(ChardevError::UnsupportedOption("telnet=on with fd="));
                    }
                    let s = socket_flags(&mut opts, false)?;
                    if !s.server {
                        return Err(ChardevError::FdNotServer(fd));
                    }
                    CharBackend::ListenerFd { fd, wait: s.wait }
                }
                (Some(_), Some(_)) => return Err(ChardevError::SocketBoth),
                (Some(path), None) => {
                    if host.is_some() {
                        return Err(ChardevError::SocketBoth);
                    }
                    if telnet {
                        return Err(ChardevError::TelnetUnix);
                    }
                    let s = socket_flags(&mut opts, false)?;
                    CharBackend::Unix {
                        path: PathBuf::from(path),
                        server: s.server,
                        wait: s.wait,
                    }
                }
                (None, Some(port)) => {
                    let port = parse_port(&port)?;
                    let s = socket_flags(&mut opts, true)?;
                    if !s.server && port == 0 {
                        return Err(ChardevError::ClientPortZero);
                    }
                    CharBackend::Tcp {
                        addr: SocketAddrSpec {
                            host: host.unwrap_or_default(),
                            port,
                        },
                        server: s.server,
                        wait: s.wait,
                        telnet,
                        nodelay: s.nodelay,
                    }
                }
                (None, None) => return Err(ChardevError::SocketAddress),
            }
        }
        other => return Err(unknown_or_unsupported(other)),
    };
    opts.finish()?;
    Ok(Chardev {
        id,
        backend,
        mux,
        signal,
        logfile,
    })
}

/// `-chardev help`.
pub fn chardev_help() -> String {
    "Available chardev backend types:\n  null\n  stdio\n  file\n  pty\n  socket\n  vc\n".to_string()
}

/// `-mon [chardev=]ID[,mode=readline|control][,pretty=on|off]`.
pub fn parse_mon(mut opts: Opts) -> Result<MonitorConfig, ChardevError> {
    let chardev = opts.required("chardev")?;
    let mode = opts
        .choice(
            "mode",
            &[
                ("readline", MonitorMode::Readline),
                ("control", MonitorMode::Control),
            ],
        )?
        .unwrap_or(MonitorMode::Readline);
    let pretty = opts.flag("pretty")?.unwrap_or(false);
    // `id=` names the option group, as in QEMU; nothing refers to a monitor by it.
    opts.id("id")?;
    opts.finish()?;
    Ok(MonitorConfig {
        mode,
        backend: CharBackend::Named(chardev),
        pretty: pretty && mode == MonitorMode::Control,
    })
}

/// Who uses which chardev, for [`check_users`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    /// The option that uses it, as written, for the error message.
    pub at: String,
    /// The chardev id.
    pub id: String,
}

/// Every named use must exist; a non-mux chardev may have one frontend.
/// Errors carry the `at` of the offending use.
pub fn check_users(chardevs: &[Chardev], uses: &[Use]) -> Result<(), (String, ChardevError)> {
    let mut seen: Vec<&str> = Vec::new();
    for u in uses {
        let Some(dev) = chardevs.iter().find(|c| c.id == u.id) else {
            return Err((u.at.clone(), ChardevError::NotFound(u.id.clone())));
        };
        if !dev.mux && seen.contains(&u.id.as_str()) {
            return Err((u.at.clone(), ChardevError::InUse(u.id.clone())));
        }
        seen.push(&u.id);
    }
    Ok(())
}

/// At most one stdio user, none under `-daemonize`. `users` are (at, backend) pairs for
/// every serial port, monitor with its own backend, and chardev.
pub fn check_stdio(
    users: &[(String, CharBackend)],
    daemonize: bool,
) -> Result<(), (String, ChardevError)> {
    let mut first = true;
    for (at, b) in users {
        if matches!(b, CharBackend::Stdio | CharBackend::MuxStdio) {
            if daemonize {
                return Err((at.clone(), ChardevError::StdioDaemonize));
            }
            if !first {
                return Err((at.clone(), ChardevError::StdioTwice));
            }
            first = false;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy(s: &str) -> Result<Legacy, String> {
        parse_legacy(s).map_err(|e| e.to_string())
    }

    fn tcp(host: &str, port: u16, server: bool, wait: bool, telnet: bool, nodelay: bool) -> Legacy {
        Legacy::Backend(CharBackend::Tcp {
            addr: SocketAddrSpec {
                host: host.into(),
                port,
            },
            server,
            wait,
            telnet,
            nodelay,
        })
    }

    #[test]
    fn simple_legacy_backends() {
        assert_eq!(legacy("none"), Ok(Legacy::None));
        assert_eq!(legacy("null"), Ok(Legacy::Backend(CharBackend::Null)));
        assert_eq!(legacy("stdio"), Ok(Legacy::Backend(CharBackend::Stdio)));
        assert_eq!(legacy("pty"), Ok(Legacy::Backend(CharBackend::Pty)));
        assert_eq!(
            legacy("file:/tmp/serial,1.log"),
            Ok(Legacy::Backend(CharBackend::File(
                "/tmp/serial,1.log".into()
            )))
        );
        assert_eq!(
            legacy("chardev:c0"),
            Ok(Legacy::Backend(CharBackend::Named("c0".into())))
        );
        assert_eq!(legacy("mon:stdio"), Ok(Legacy::Mon(CharBackend::Stdio)));
    }

    #[test]
    fn legacy_tcp_and_telnet_with_flags() {
        assert_eq!(
            legacy("tcp::4444,server,nowait"),
            Ok(tcp("", 4444, true, false, false, false))
        );
        assert_eq!(
            legacy("tcp::4444,server"),
            Ok(tcp("", 4444, true, true, false, false))
        );
        assert_eq!(
            legacy("tcp:127.0.0.1:4444,server=on,wait=off,nodelay"),
            Ok(tcp("127.0.0.1", 4444, true, false, false, true))
        );
        assert_eq!(
            legacy("tcp:localhost:5555"),
            Ok(tcp("localhost", 5555, false, false, false, false))
        );
        assert_eq!(
            legacy("telnet:127.0.0.1:4444,server,nowait"),
            Ok(tcp("127.0.0.1", 4444, true, false, true, false))
        );
        assert_eq!(
            legacy("tcp:[::1]:4444,server"),
            Ok(tcp("::1", 4444, true, true, false, false))
        );
        assert_eq!(
            legacy("tcp::0,server,wait=off"),
            Ok(tcp("", 0, true, false, false, false))
        );
    }

    #[test]
    fn legacy_unix_socket() {
        assert_eq!(
            legacy("unix:/tmp/s.sock,server,nowait"),
            Ok(Legacy::Backend(CharBackend::Unix {
                path: "/tmp/s.sock".into(),
                server: true,
                wait: false
            }))
        );
        assert_eq!(
            legacy("unix:/tmp/s.sock"),
            Ok(Legacy::Backend(CharBackend::Unix {
                path: "/tmp/s.sock".into(),
                server: false,
                wait: false
            }))
        );
    }

    #[test]
    fn legacy_errors_name_the_problem() {
        assert_eq!(
            legacy("foo"),
            Err("'foo' is not a valid char driver (see -chardev help)".into())
        );
        assert_eq!(
            legacy("udp::4555"),
            Err("the 'udp' character backend is not supported by troupe".into())
        );
        assert_eq!(
            legacy("/dev/ttyS0"),
            Err("the 'host device' character backend is not supported by troupe (use a pty, a socket or stdio)".into())
        );
        assert_eq!(
            legacy("tcp:localhost"),
            Err("expected [HOST]:PORT after 'tcp:'".into())
        );
        assert_eq!(
            legacy("tcp::99999,server"),
            Err("invalid port '99999'".into())
        );
        assert_eq!(legacy("tcp::x"), Err("invalid port 'x'".into()));
        assert_eq!(
            legacy("tcp:host:0"),
            Err("a client socket needs a port other than 0".into())
        );
        assert_eq!(
            legacy("tcp:host:1,nowait"),
            Err("'wait' option is incompatible with socket in client connect mode".into())
        );
        assert!(legacy("unix:/tmp/x.sock,server,nowait,bogus")
            .unwrap_err()
            .starts_with("parameter 'bogus' is not supported"));
        assert_eq!(legacy("file:"), Err("no file name given".into()));
        assert_eq!(legacy("unix:"), Err("no file name given".into()));
        assert_eq!(
            legacy("mon:none"),
            Err("'mon:' can only prefix a -serial device".into())
        );
        assert_eq!(
            legacy("mon:chardev:x"),
            Err("'mon:' can only prefix a -serial device".into())
        );
        assert_eq!(
            legacy("tcp::1,server,reconnect=1"),
            Err("reconnect= is not supported by troupe".into())
        );
        assert_eq!(
            legacy(""),
            Err("'' is not a valid char driver (see -chardev help)".into())
        );
    }

    fn chardev(s: &str) -> Result<Chardev, String> {
        parse_chardev(Opts::parse(s, Some("backend")).unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn chardev_socket_tcp_and_unix() {
        let c = chardev("socket,id=mon0,host=127.0.0.1,port=4444,server=on,wait=off,telnet=on")
            .unwrap();
        assert_eq!(c.id, "mon0");
        assert!(!c.mux);
        assert_eq!(
            c.backend,
            CharBackend::Tcp {
                addr: SocketAddrSpec {
                    host: "127.0.0.1".into(),
                    port: 4444
                },
                server: true,
                wait: false,
                telnet: true,
                nodelay: false
            }
        );
        let c = chardev("socket,id=q,path=/tmp/qmp.sock,server=on,wait=off").unwrap();
        assert_eq!(
            c.backend,
            CharBackend::Unix {
                path: "/tmp/qmp.sock".into(),
                server: true,
                wait: false
            }
        );
        let c = chardev("socket,id=c,port=5000,host=localhost,nodelay=on").unwrap();
        assert!(matches!(
            c.backend,
            CharBackend::Tcp {
                server: false,
                wait: false,
                nodelay: true,
                ..
            }
        ));
    }

    #[test]
    fn chardev_simple_backends_and_common_options() {
        let c = chardev("stdio,id=s,mux=on,signal=off,logfile=/tmp/log").unwrap();
        assert_eq!(
            c,
            Chardev {
                id: "s".into(),
                backend: CharBackend::Stdio,
                mux: true,
                signal: false,
                logfile: Some("/tmp/log".into())
            }
        );
        assert_eq!(chardev("null,id=n").unwrap().backend, CharBackend::Null);
        assert_eq!(chardev("pty,id=p").unwrap().backend, CharBackend::Pty);
        assert_eq!(
            chardev("file,id=f,path=/tmp/a,,b").unwrap().backend,
            CharBackend::File("/tmp/a,b".into())
        );
    }

    fn vc(cols: u32, rows: u32) -> CharBackend {
        CharBackend::Vc(VcSpec {
            index: 0,
            cols,
            rows,
        })
    }

    #[test]
    fn text_consoles_in_pixels_or_characters() {
        // QEMU's default text console is 640x480 pixels: 80x30 cells of 8x16.
        assert_eq!(legacy("vc"), Ok(Legacy::Backend(vc(80, 30))));
        assert_eq!(legacy("vc:80Cx24C"), Ok(Legacy::Backend(vc(80, 24))));
        assert_eq!(legacy("vc:800x600"), Ok(Legacy::Backend(vc(100, 37))));
        assert_eq!(legacy("mon:vc"), Ok(Legacy::Mon(vc(80, 30))));
        assert_eq!(
            legacy("vc:80"),
            Err("invalid text console size '80' (expected WxH in pixels or COLSCxROWSC, like 80Cx24C)".into())
        );
        assert_eq!(
            legacy("vc:0Cx24C"),
            Err("text console of 0x24 characters is out of range (1x1 to 1024x512)".into())
        );
        assert_eq!(chardev("vc,id=v").unwrap().backend, vc(80, 30));
        assert_eq!(
            chardev("vc,id=v,cols=100,rows=40").unwrap().backend,
            vc(100, 40)
        );
        assert_eq!(
            chardev("vc,id=v,width=1024,height=768").unwrap().backend,
            vc(128, 48)
        );
        assert_eq!(
            chardev("vc,id=v,width=1024,cols=90").unwrap().backend,
            vc(90, 30)
        );
        assert!(chardev("vc,id=v,rows=100000").is_err());
        assert!(chardev("vc,id=v,colour=red").is_err());
    }

    #[test]
    fn chardev_errors() {
        assert_eq!(chardev("null"), Err("parameter 'id' is missing".into()));
        assert!(chardev("null,id=0x")
            .unwrap_err()
            .starts_with("invalid id '0x'"));
        assert_eq!(
            chardev("foo,id=x"),
            Err("'foo' is not a valid char driver (see -chardev help)".into())
        );
        assert_eq!(
            chardev("ringbuf,id=x"),
            Err("the 'ringbuf' character backend is not supported by troupe".into())
        );
        assert_eq!(
            chardev("socket,id=c0"),
            Err("a socket chardev needs path= (unix), port= (tcp) or fd=".into())
        );
        assert_eq!(
            chardev("socket,id=c0,path=/x,port=1"),
            Err("a socket chardev takes path= (unix), host=/port= (tcp) or fd=, only one".into())
        );
        // libvirt's monitor: a listening socket it made, passed as a descriptor.
        assert_eq!(
            chardev("socket,id=charmonitor,fd=29,server=on,wait=off")
                .unwrap()
                .backend,
            CharBackend::ListenerFd {
                fd: 29,
                wait: false
            }
        );
        assert_eq!(
            chardev("socket,id=c0,fd=29"),
            Err("fd=29 needs server=on (troupe takes a listening socket there)".into())
        );
        assert_eq!(
            chardev("socket,id=c0,fd=29,path=/x,server=on"),
            Err("a socket chardev takes path= (unix), host=/port= (tcp) or fd=, only one".into())
        );
        assert_eq!(
            chardev("socket,id=c0,path=/x,telnet=on"),
            Err("telnet is only available on TCP sockets".into())
        );
        assert_eq!(
            chardev("socket,id=c0,port=1,wait=off"),
            Err("'wait' option is incompatible with socket in client connect mode".into())
        );
        assert_eq!(
            chardev("socket,id=c0,port=65536,server=on"),
            Err("invalid port '65536'".into())
        );
        assert!(chardev(
            "socket,id=s,port=4444,host=127.0.0.1,server=on,wait=off,telnet=on,bogus=1"
        )
        .unwrap_err()
        .starts_with("parameter 'bogus' is not supported"));
        assert_eq!(chardev("file,id=f"), Err("no file name given".into()));
        assert_eq!(
            chardev("stdio,id=s,signal=maybe"),
            Err("parameter 'signal' expects 'on' or 'off', not 'maybe'".into())
        );
        assert!(chardev("null,id=n,signal=off")
            .unwrap_err()
            .starts_with("parameter 'signal' is not supported"));
    }

    #[test]
    fn mon_options() {
        let m = |s: &str| {
            parse_mon(Opts::parse(s, Some("chardev")).unwrap()).map_err(|e| e.to_string())
        };
        assert_eq!(
            m("chardev=c0,mode=control,pretty=on"),
            Ok(MonitorConfig {
                mode: MonitorMode::Control,
                backend: CharBackend::Named("c0".into()),
                pretty: true
            })
        );
        assert_eq!(m("c0").unwrap().mode, MonitorMode::Readline);
        assert_eq!(
            m("chardev=a,mode=xx"),
            Err("parameter 'mode' does not accept value 'xx' (expected readline, control)".into())
        );
        assert_eq!(
            m("mode=control"),
            Err("parameter 'chardev' is missing".into())
        );
    }

    fn dev(id: &str, mux: bool) -> Chardev {
        Chardev {
            id: id.into(),
            backend: CharBackend::Null,
            mux,
            signal: true,
            logfile: None,
        }
    }

    fn u(at: &str, id: &str) -> Use {
        Use {
            at: at.into(),
            id: id.into(),
        }
    }

    #[test]
    fn chardev_users_are_checked() {
        let devs = [dev("a", false), dev("m", true)];
        assert_eq!(
            check_users(
                &devs,
                &[
                    u("-serial chardev:a", "a"),
                    u("-mon m", "m"),
                    u("-mon m", "m")
                ]
            ),
            Ok(())
        );
        assert_eq!(
            check_users(&devs, &[u("-mon chardev=zz", "zz")]),
            Err((
                "-mon chardev=zz".into(),
                ChardevError::NotFound("zz".into())
            ))
        );
        assert_eq!(
            check_users(&devs, &[u("-serial chardev:a", "a"), u("-mon a", "a")]),
            Err(("-mon a".into(), ChardevError::InUse("a".into())))
        );
        assert_eq!(
            ChardevError::InUse("a".into()).to_string(),
            "chardev 'a' is already in use (create it with mux=on to share it)"
        );
    }

    #[test]
    fn stdio_has_one_user_and_none_when_daemonized() {
        let users = vec![
            ("-serial stdio".to_string(), CharBackend::Stdio),
            ("-monitor stdio".to_string(), CharBackend::Stdio),
        ];
        assert_eq!(
            check_stdio(&users, false),
            Err(("-monitor stdio".into(), ChardevError::StdioTwice))
        );
        assert_eq!(
            check_stdio(&users[..1], true),
            Err(("-serial stdio".into(), ChardevError::StdioDaemonize))
        );
        assert_eq!(check_stdio(&users[..1], false), Ok(()));
        assert_eq!(
            check_stdio(&[("-serial null".into(), CharBackend::Null)], true),
            Ok(())
        );
    }
}
