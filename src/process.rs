//! Process-level duties: `-daemonize`, `-pidfile`, `-D`/`-d` logging, `-name process=`.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use tracing_subscriber::{reload, EnvFilter};

/// The default log filter: warnings, without the noisy guest-misbehaviour classes QEMU also
/// keeps quiet unless asked with `-d`.
const DEFAULT_FILTER: &str = "warn,guest_errors=off,unimp=off,cpu_reset=off";

/// Live control over the log filter (`log`/`trace-event` in the monitor).
#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, tracing_subscriber::Registry>,
}

impl LogControl {
    /// Replace the filter with `directives` (tracing EnvFilter syntax).
    pub fn set(&self, directives: &str) -> Result<()> {
        let f = EnvFilter::try_new(directives).map_err(|e| anyhow!("{directives}: {e}"))?;
        self.handle.reload(f).map_err(|e| anyhow!("{e}"))
    }
}

/// The process's log control, once logging is set up (the monitor's `log` and
/// `trace-event` change it).
static LOG_CONTROL: std::sync::OnceLock<LogControl> = std::sync::OnceLock::new();

/// Directives added from the monitor, by target.
static EXTRA: std::sync::Mutex<std::collections::BTreeMap<String, String>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// The monitor's `log ITEMS` (replaces the added directives; empty = back to the default)
/// and `trace-event NAME on|off` (`+target=level`: adds or changes one).
pub fn set_log_directives(extra: &str) -> std::result::Result<(), String> {
    let Some(c) = LOG_CONTROL.get() else {
        return Err("logging is not set up in this process".into());
    };
    let mut map = EXTRA.lock().unwrap_or_else(|e| e.into_inner());
    let mut next = if extra.starts_with('+') {
        map.clone()
    } else {
        Default::default()
    };
    for d in extra
        .trim_start_matches('+')
        .split(',')
        .filter(|d| !d.is_empty())
    {
        let (t, l) = d.split_once('=').unwrap_or((d, "debug"));
        next.insert(t.to_string(), l.to_string());
    }
    let mut f = std::env::var("TROUPE_LOG").unwrap_or_else(|_| DEFAULT_FILTER.to_string());
    for (t, l) in &next {
        f.push_str(&format!(",{t}={l}"));
    }
    c.set(&f).map_err(|e| format!("{e:#}"))?;
    *map = next;
    Ok(())
}

/// `-d ITEMS` as tracing directives: each QEMU log item is a tracing target.
pub fn filter_for(items: &[String]) -> String {
    let mut f = std::env::var("TROUPE_LOG").unwrap_or_else(|_| DEFAULT_FILTER.to_string());
    for item in items {
        f.push_str(&format!(",{item}=debug"));
    }
    f
}

/// Install the tracing subscriber: to `-D FILE` when given, else stderr.
pub fn init_logging(log_file: Option<&Path>, items: &[String]) -> Result<LogControl> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_new(filter_for(items)).unwrap_or_else(|_| EnvFilter::new("warn"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match log_file {
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("-D {}: cannot open log file", p.display()))?;
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(false)
                        .with_writer(std::sync::Mutex::new(f)),
                )
                .try_init()
                .ok();
        }
        None => {
            registry
                .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
                .try_init()
                .ok();
        }
    }
    let control = LogControl { handle };
    let _ = LOG_CONTROL.set(control.clone());
    Ok(control)
}

/// The parent half of `-daemonize` waits here for the child's verdict and exits with it;
/// the child gets a [`Daemon`] to report readiness with.
pub struct Daemon {
    notify: OwnedFd,
}

/// Fork into the background (before any threads exist). The parent process exits 0 once
/// the child reports the VM started, 1 if it failed.
pub fn daemonize() -> Result<Daemon> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid two-element array for pipe(2).
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(anyhow!(
            "-daemonize: pipe: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the descriptors were just created by pipe2 and are owned here.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fork before any other thread exists (called first thing in main).
    match unsafe { libc::fork() } {
        -1 => Err(anyhow!(
            "-daemonize: fork: {}",
            std::io::Error::last_os_error()
        )),
        0 => {
            drop(rd);
            // SAFETY: setsid has no memory-safety preconditions.
            unsafe { libc::setsid() };
            Ok(Daemon { notify: wr })
        }
        _child => {
            drop(wr);
            let mut b = [1u8; 1];
            // SAFETY: reading one byte into a valid buffer from our pipe end.
            let n = unsafe { libc::read(rd.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
            std::process::exit(if n == 1 && b[0] == 0 { 0 } else { 1 });
        }
    }
}

impl Daemon {
    /// The VM is up: let the parent exit 0 and detach from the terminal.
    pub fn ready(self) {
        // SAFETY: writing one byte from a valid buffer to our pipe end.
        unsafe { libc::write(self.notify.as_raw_fd(), [0u8].as_ptr().cast(), 1) };
        if let Ok(null) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
        {
            for fd in 0..3 {
                // SAFETY: dup2 onto the standard descriptors of this process.
                unsafe { libc::dup2(null.as_raw_fd(), fd) };
            }
        }
    }

    /// Start-up failed (the error was already printed): the parent exits 1.
    pub fn failed(self) {
        // SAFETY: as in `ready`.
        unsafe { libc::write(self.notify.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    }
}

/// `-pidfile`: the file holding our pid, locked while we run, removed at exit.
pub struct PidFile {
    path: PathBuf,
    _file: std::fs::File,
}

impl PidFile {
    pub fn create(path: &Path) -> Result<Self> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("-pidfile {}: cannot open", path.display()))?;
        // SAFETY: lockf on an open descriptor we own.
        if unsafe { libc::lockf(f.as_raw_fd(), libc::F_TLOCK, 0) } != 0 {
            return Err(anyhow!(
                "-pidfile {}: locked by another process (is another VM using it?)",
                path.display()
            ));
        }
        f.set_len(0)?;
        writeln!(f, "{}", std::process::id())?;
        Ok(Self {
            path: path.to_path_buf(),
            _file: f,
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `-name ...,process=NAME`: the name `ps` and `top` show for the main thread.
pub fn set_process_name(name: &str) {
    if let Ok(c) = CString::new(
        name.as_bytes()
            .iter()
            .take(15)
            .copied()
            .collect::<Vec<u8>>(),
    ) {
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr()) };
    }
}

/// Once the VM is built (its devices, images and sockets open): enter `-chroot`'s
/// directory, drop to `-runas`'s user and group (which also clears every capability: the
/// kernel drops them when all uids leave 0), then put the main thread under its filter.
/// glibc makes every thread take the new credentials; their filters let exactly this
/// change through.
pub fn confine(cfg: &crate::config::VmConfig) -> Result<()> {
    if let Some(dir) = &cfg.chroot {
        let c = CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|_| anyhow!("-chroot {}: NUL in the path", dir.display()))?;
        // SAFETY: chroot and chdir take NUL-terminated paths we own.
        if unsafe { libc::chroot(c.as_ptr()) } != 0 {
            return Err(anyhow!(
                "-chroot {}: {}",
                dir.display(),
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: as above.
        if unsafe { libc::chdir(c"/".as_ptr()) } != 0 {
            return Err(anyhow!(
                "-chroot {}: chdir /: {}",
                dir.display(),
                std::io::Error::last_os_error()
            ));
        }
    }
    if let Some(r) = &cfg.runas {
        let fail = |what: &str| {
            anyhow!(
                "-runas {}: {what}: {}",
                r.spec,
                std::io::Error::last_os_error()
            )
        };
        let gid: libc::gid_t = r.gid;
        // SAFETY: setgroups reads one gid from the array we pass; setresgid and setresuid
        // take plain numbers. glibc applies each to every thread.
        unsafe {
            if libc::setgroups(1, &gid) != 0 {
                return Err(fail("setgroups"));
            }
            if libc::setresgid(r.gid, r.gid, r.gid) != 0 {
                return Err(fail("setresgid"));
            }
            if libc::setresuid(r.uid, r.uid, r.uid) != 0 {
                return Err(fail("setresuid"));
            }
        }
        // A drop that did not happen must not be taken for one.
        let (mut ru, mut eu, mut su) = (0, 0, 0);
        // SAFETY: getresuid writes the three ids we own.
        unsafe { libc::getresuid(&mut ru, &mut eu, &mut su) };
        if (ru, eu, su) != (r.uid, r.uid, r.uid) {
            return Err(anyhow!("-runas {}: credentials did not change", r.spec));
        }
    }
    actors::sandbox::enter("main").context("-sandbox")?;
    Ok(())
}
