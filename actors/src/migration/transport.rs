//! Where a migration stream goes and comes from: QEMU's URIs `tcp:HOST:PORT`,
//! `unix:PATH`, `exec:CMD`, `fd:NAME` and `file:PATH`.
//!
//! Every transport is a blocking byte pipe run on the migration's own thread. Sockets
//! also carry the destination's answer back (one byte once the machine is restored), so a
//! source knows the destination took over before it calls the migration completed.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A parsed migration URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uri {
    Tcp {
        host: String,
        port: u16,
    },
    Unix(PathBuf),
    Exec(String),
    /// A descriptor: a name given to `getfd`, or (incoming) a number inherited.
    Fd(String),
    File(PathBuf),
}

impl std::fmt::Display for Uri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Exec(c) => write!(f, "exec:{c}"),
            Self::Fd(n) => write!(f, "fd:{n}"),
            Self::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

/// What QEMU answers for a URI it cannot use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UriError {
    #[error("unknown migration protocol: {0}")]
    Protocol(String),
    #[error("Invalid migration URI '{0}': {1}")]
    Invalid(String, &'static str),
}

impl Uri {
    pub fn parse(uri: &str) -> Result<Self, UriError> {
        let invalid = |why| UriError::Invalid(uri.to_string(), why);
        let (scheme, rest) = uri
            .split_once(':')
            .ok_or_else(|| UriError::Protocol(uri.to_string()))?;
        match scheme {
            "tcp" => {
                let (host, port) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| invalid("expected tcp:HOST:PORT"))?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let port = port
                    .split(',')
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|_| invalid("the port is not a number"))?;
                Ok(Self::Tcp {
                    host: host.to_string(),
                    port,
                })
            }
            "unix" if !rest.is_empty() => Ok(Self::Unix(rest.into())),
            "exec" if !rest.trim().is_empty() => Ok(Self::Exec(rest.to_string())),
            "fd" if !rest.is_empty() => Ok(Self::Fd(rest.to_string())),
            "file" if !rest.is_empty() => Ok(Self::File(rest.into())),
            "unix" | "exec" | "fd" | "file" => Err(invalid("nothing after the scheme")),
            _ => Err(UriError::Protocol(uri.to_string())),
        }
    }
}

/// Descriptors handed over by name (`getfd`), which an `fd:NAME` URI takes.
pub type FdLookup<'a> = &'a dyn Fn(&str) -> Option<OwnedFd>;

/// The source's end.
pub struct Outgoing {
    pub writer: Box<dyn Write + Send>,
    /// Where the destination's answer comes back (sockets only).
    pub answer: Option<Box<dyn Read + Send>>,
    /// Cuts the pipe from another thread (`migrate_cancel`).
    pub cutter: Cutter,
    child: Option<Reaped>,
}

/// A child process killed and reaped if dropped before it was waited for.
pub struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Closes a transport from another thread so a blocked write returns.
#[derive(Clone)]
pub struct Cutter(std::sync::Arc<dyn Fn() + Send + Sync>);

impl Cutter {
    pub fn cut(&self) {
        (self.0)()
    }
    fn none() -> Self {
        Self(std::sync::Arc::new(|| {}))
    }
}

impl std::fmt::Debug for Cutter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cutter")
    }
}

/// `/bin/sh -c CMD`, unless the sandbox forbids this thread to start programs.
fn shell(cmd: &str) -> io::Result<Command> {
    crate::sandbox::may_spawn(|| format!("exec:{cmd}")).map_err(io::Error::other)?;
    let mut c = Command::new("/bin/sh");
    c.arg("-c").arg(cmd);
    Ok(c)
}

impl Outgoing {
    /// Connect or open `uri`.
    pub fn open(uri: &Uri, fds: FdLookup) -> io::Result<Self> {
        match uri {
            Uri::Tcp { host, port } => {
                let host = if host.is_empty() { "127.0.0.1" } else { host };
                let addrs: Vec<_> = (host, *port).to_socket_addrs()?.collect();
                let mut last = io::Error::other(format!("{host}: no address"));
                for a in addrs {
                    match TcpStream::connect_timeout(&a, Duration::from_secs(10)) {
                        Ok(s) => {
                            s.set_nodelay(true).ok();
                            return Self::socket(s.try_clone()?, Box::new(s.try_clone()?), {
                                move || {
                                    let _ = s.shutdown(std::net::Shutdown::Both);
                                }
                            });
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            Uri::Unix(path) => {
                let s = UnixStream::connect(path)?;
                Self::socket(s.try_clone()?, Box::new(s.try_clone()?), move || {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                })
            }
            Uri::Fd(name) => {
                let fd = fds(name).ok_or_else(|| {
                    io::Error::other(format!("File descriptor named '{name}' has not been found"))
                })?;
                // Whatever it is (libvirt passes a pipe to its I/O helper or the saved
                // image's file, positioned after its own header), the stream is written
                // from where it stands; nothing answers on it, as on `-incoming fd:N`.
                // Cancelling shuts a socket down; a pipe or file just sees the end.
                let cut = fd.try_clone()?;
                Ok(Self {
                    writer: Box::new(io::BufWriter::with_capacity(
                        1 << 20,
                        std::fs::File::from(fd),
                    )),
                    answer: None,
                    cutter: Cutter(std::sync::Arc::new(move || {
                        // SAFETY: shutdown on a descriptor we hold; ENOTSOCK is harmless.
                        unsafe { libc::shutdown(cut.as_raw_fd(), libc::SHUT_RDWR) };
                    })),
                    child: None,
                })
            }
            Uri::Exec(cmd) => {
                let mut child = shell(cmd)?
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .spawn()?;
                let stdin = child
                    .stdin
                    .take()
                    .ok_or_else(|| io::Error::other("no stdin"))?;
                let pid = child.id() as i32;
                Ok(Self {
                    writer: Box::new(io::BufWriter::with_capacity(1 << 20, stdin)),
                    answer: None,
                    cutter: Cutter(std::sync::Arc::new(move || {
                        // SAFETY: signalling our own child, which we have not reaped.
                        unsafe { libc::kill(pid, libc::SIGTERM) };
                    })),
                    child: Some(Reaped(Some(child))),
                })
            }
            Uri::File(path) => {
                let f = std::fs::File::create(path)?;
                Ok(Self {
                    writer: Box::new(io::BufWriter::with_capacity(1 << 20, f)),
                    answer: None,
                    cutter: Cutter::none(),
                    child: None,
                })
            }
        }
    }

    fn socket<S: Write + Send + 'static>(
        w: S,
        answer: Box<dyn Read + Send>,
        cut: impl Fn() + Send + Sync + 'static,
    ) -> io::Result<Self> {
        Ok(Self {
            writer: Box::new(io::BufWriter::with_capacity(1 << 20, w)),
            answer: Some(answer),
            cutter: Cutter(std::sync::Arc::new(cut)),
            child: None,
        })
    }

    /// After the end of stream: flush, close, and for `exec:` wait for the command, which
    /// must succeed.
    pub fn close(mut self) -> io::Result<()> {
        self.writer.flush()?;
        drop(self.writer);
        if let Some(mut c) = self.child.take().and_then(|mut r| r.0.take()) {
            let st = c.wait()?;
            if !st.success() {
                return Err(io::Error::other(format!(
                    "the exec command ended with {st}"
                )));
            }
        }
        Ok(())
    }
}

/// The destination's end, before a source connects.
pub enum Listening {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
    /// Already a stream (exec, fd, file): nothing to wait for.
    Ready(Incoming),
}

/// The destination's open stream.
pub struct Incoming {
    pub reader: Box<dyn Read + Send>,
    /// Where to answer the source (sockets only).
    pub answer: Option<Box<dyn Write + Send>>,
    /// Kept until the stream is read (an `exec:` command).
    pub child: Option<Reaped>,
}

impl Incoming {
    /// A stream already in memory (`loadvm`'s VM state).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self {
            reader: Box::new(io::Cursor::new(bytes)),
            answer: None,
            child: None,
        }
    }
}

impl Listening {
    /// Bind or open `uri` for an incoming migration.
    pub fn open(uri: &Uri) -> io::Result<Self> {
        Ok(match uri {
            Uri::Tcp { host, port } => {
                let host = match host.as_str() {
                    "" | "0" => "0.0.0.0",
                    h => h,
                };
                Self::Tcp(TcpListener::bind((host, *port))?)
            }
            Uri::Unix(path) => {
                let _ = std::fs::remove_file(path);
                Self::Unix(UnixListener::bind(path)?, path.clone())
            }
            Uri::Exec(cmd) => {
                let mut child = shell(cmd)?
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .spawn()?;
                let out = child
                    .stdout
                    .take()
                    .ok_or_else(|| io::Error::other("no stdout"))?;
                Self::Ready(Incoming {
                    reader: Box::new(io::BufReader::with_capacity(1 << 20, out)),
                    answer: None,
                    child: Some(Reaped(Some(child))),
                })
            }
            Uri::Fd(n) => {
                let fd: i32 = n.parse().map_err(|_| {
                    io::Error::other(format!("fd:{n}: an incoming descriptor must be a number"))
                })?;
                // SAFETY: F_GETFD only inspects the number; we take it over only if open.
                if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                    return Err(io::Error::other(format!("fd:{n}: not an open descriptor")));
                }
                // SAFETY: an open descriptor the parent passed for this purpose, owned from
                // here on by the stream.
                let f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
                Self::Ready(Incoming {
                    reader: Box::new(io::BufReader::with_capacity(1 << 20, f)),
                    answer: None,
                    child: None,
                })
            }
            Uri::File(path) => Self::Ready(Incoming {
                reader: Box::new(io::BufReader::with_capacity(
                    1 << 20,
                    std::fs::File::open(path)?,
                )),
                answer: None,
                child: None,
            }),
        })
    }

    /// Where it listens, for the user (`tcp:0.0.0.0:4444`); None for a stream.
    pub fn address(&self) -> Option<String> {
        match self {
            Self::Tcp(l) => l.local_addr().ok().map(|a| format!("tcp:{a}")),
            Self::Unix(_, p) => Some(format!("unix:{}", p.display())),
            Self::Ready(_) => None,
        }
    }

    /// Wait for the source.
    pub fn accept(self) -> io::Result<Incoming> {
        match self {
            Self::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nodelay(true).ok();
                Ok(Incoming {
                    reader: Box::new(io::BufReader::with_capacity(1 << 20, s.try_clone()?)),
                    answer: Some(Box::new(s)),
                    child: None,
                })
            }
            Self::Unix(l, path) => {
                let (s, _) = l.accept()?;
                let _ = std::fs::remove_file(&path);
                Ok(Incoming {
                    reader: Box::new(io::BufReader::with_capacity(1 << 20, s.try_clone()?)),
                    answer: Some(Box::new(s)),
                    child: None,
                })
            }
            Self::Ready(i) => Ok(i),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_as_qemu_spells_them() {
        assert_eq!(
            Uri::parse("tcp:0:4444").unwrap(),
            Uri::Tcp {
                host: "0".into(),
                port: 4444
            }
        );
        assert_eq!(
            Uri::parse("tcp:[::1]:5").unwrap(),
            Uri::Tcp {
                host: "::1".into(),
                port: 5
            }
        );
        assert_eq!(
            Uri::parse("exec:cat > /tmp/x").unwrap(),
            Uri::Exec("cat > /tmp/x".into())
        );
        assert_eq!(
            Uri::parse("file:/tmp/a").unwrap(),
            Uri::File("/tmp/a".into())
        );
        assert_eq!(
            Uri::parse("rdma:1:2").unwrap_err().to_string(),
            "unknown migration protocol: rdma:1:2"
        );
        assert!(Uri::parse("tcp:host:port").is_err());
        assert!(Uri::parse("nothing").is_err());
    }

    #[test]
    fn exec_carries_bytes_both_ways() {
        let dir = std::env::temp_dir().join(format!("troupe-mig-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s");
        let out = Uri::Exec(format!("cat > {}", f.display()));
        let mut o = Outgoing::open(&out, &|_| None).unwrap();
        o.writer.write_all(b"hello").unwrap();
        o.close().unwrap();
        let inc = Uri::Exec(format!("cat {}", f.display()));
        let mut i = Listening::open(&inc).unwrap().accept().unwrap();
        let mut s = String::new();
        i.reader.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
        let bad = Uri::Exec("exit 3".into());
        let o = Outgoing::open(&bad, &|_| None).unwrap();
        assert!(o.close().is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
