//! Shared helpers for the integration tests: start the real `troupe` binary (or QEMU) with
//! a command line, watch its serial output, and wait for it to end — with timeouts, so a
//! hung guest fails the test instead of hanging CI.

#![allow(dead_code)]

pub mod netns;
pub mod session;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Tests need KVM: fail loudly, never skip, when it is missing.
pub fn require_kvm() {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    assert!(
        ok,
        "/dev/kvm is not usable: these tests boot real guests and need KVM"
    );
}

/// A TCP port on 127.0.0.1 that is free now and that this test process has not handed
/// out before: tests run in parallel, and the kernel may give a just-released port to the
/// next bind, so two tests could otherwise pick one port and talk to each other's VM.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let p = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&p) {
            given.push(p);
            return p;
        }
    }
}

/// A VNC display number (port 5900 + N) whose port is free right now, handed out once.
pub fn free_display() -> u16 {
    loop {
        let p = free_port();
        if p > 5900 && p < 65000 {
            return p - 5900;
        }
    }
}

/// The troupe binary under test.
pub fn troupe_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_troupe"))
}

/// A test guest ELF built by build.rs (`tests/guests/<name>`).
pub fn guest(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("TROUPE_GUEST_DIR")).join(format!("{name}.elf"));
    assert!(p.exists(), "test guest {} was not built", p.display());
    p
}

/// The command line of a test guest run to its own exit: no default devices, no display,
/// serial on stdout, isa-debug-exit at 0xf4, then `extra`.
pub fn guest_args<'a>(kernel: &'a str, append: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-kernel",
        kernel,
        "-append",
        append,
    ];
    args.extend_from_slice(extra);
    args
}

/// A scratch directory removed at drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "troupe-test-{tag}-{}-{:016x}",
            std::process::id(),
            rand_u64()
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    u64::from_le_bytes(b)
}

#[derive(Default)]
struct Output {
    bytes: Vec<u8>,
    closed: bool,
}

/// Collected output of one stream, with waiting.
#[derive(Clone, Default)]
pub struct Capture(Arc<(Mutex<Output>, Condvar)>);

impl Capture {
    fn start(mut r: impl Read + Send + 'static) -> Self {
        let c = Capture::default();
        let c2 = c.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let (m, cv) = &*c2.0;
                        m.lock().unwrap().bytes.extend_from_slice(&buf[..n]);
                        cv.notify_all();
                    }
                }
            }
            let (m, cv) = &*c2.0;
            m.lock().unwrap().closed = true;
            cv.notify_all();
        });
        c
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0 .0.lock().unwrap().bytes).into_owned()
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.0 .0.lock().unwrap().bytes.clone()
    }

    /// Wait until the output contains `needle`; returns everything so far.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.0;
        let mut g = m.lock().unwrap();
        loop {
            let text = String::from_utf8_lossy(&g.bytes).into_owned();
            if text.contains(needle) {
                return Ok(text);
            }
            let now = Instant::now();
            if now >= deadline || g.closed {
                return Err(format!(
                    "did not see {needle:?} within {timeout:?}{}; output was:\n{text}",
                    if g.closed { " (stream closed)" } else { "" }
                ));
            }
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }
}

/// A command line to run.
pub struct Vm {
    cmd: Command,
    pub line: String,
}

impl Vm {
    /// `troupe` with `args`.
    pub fn troupe<S: AsRef<str>>(args: &[S]) -> Self {
        require_kvm();
        Self::program(troupe_bin().to_str().unwrap(), args)
    }

    /// `qemu-system-x86_64 -accel kvm` with `args`.
    pub fn qemu<S: AsRef<str>>(args: &[S]) -> Self {
        require_kvm();
        let mut all = vec!["-accel".to_string(), "kvm".to_string()];
        all.extend(args.iter().map(|a| a.as_ref().to_string()));
        Self::program("qemu-system-x86_64", &all)
    }

    pub fn program<S: AsRef<str>>(prog: &str, args: &[S]) -> Self {
        let mut cmd = Command::new(prog);
        let mut line = prog.to_string();
        for a in args {
            cmd.arg(a.as_ref());
            line.push(' ');
            line.push_str(a.as_ref());
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Self { cmd, line }
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.cmd.env(k, v);
        self
    }

    pub fn spawn(mut self) -> Running {
        let mut child = self
            .cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.line));
        let stdout = Capture::start(child.stdout.take().unwrap());
        let stderr = Capture::start(child.stderr.take().unwrap());
        Running {
            child,
            stdout,
            stderr,
            line: self.line,
        }
    }

    /// Run to completion (killing it after `timeout`); returns (status, stdout, stderr).
    pub fn run(self, timeout: Duration) -> (ExitStatus, String, String) {
        let mut r = self.spawn();
        let st = r.wait(timeout);
        (st, r.stdout.text(), r.stderr.text())
    }
}

/// A started process.
pub struct Running {
    pub child: Child,
    /// The process's stdout: the serial console for `-serial stdio`.
    pub stdout: Capture,
    pub stderr: Capture,
    pub line: String,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Write to the process's stdin (the serial console's input for `-serial stdio`).
    pub fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(bytes).expect("write stdin");
        stdin.flush().unwrap();
    }

    /// Wait for the exit status; kill and panic after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Let the capture threads drain.
                std::thread::sleep(Duration::from_millis(20));
                return st;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} did not exit within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                    self.line,
                    self.stdout.text(),
                    self.stderr.text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait for `needle` on stdout, panicking with both streams on timeout.
    pub fn expect_stdout(&self, needle: &str, timeout: Duration) -> String {
        self.stdout
            .wait_for(needle, timeout)
            .unwrap_or_else(|e| panic!("{}: {e}\nstderr:\n{}", self.line, self.stderr.text()))
    }

    /// Wait until stdout holds `line` `n` times (a guest may print the same line each
    /// cycle), panicking with both streams after `timeout`.
    pub fn expect_nth(&self, timeout: Duration, line: &str, n: usize) {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.stdout.text();
            if out.matches(line).count() >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{line:?} not seen {n} times; output:\n{out}\nstderr:\n{}",
                self.stderr.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The exit code, or a panic naming the signal.
pub fn code(st: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code()
        .unwrap_or_else(|| panic!("process died on signal {:?}", st.signal()))
}

/// A GRUB rescue ISO (`grub-mkrescue`, packages grub-pc-bin, xorriso, mtools) in `dir`
/// whose `boot/grub/grub.cfg` is `cfg`.
#[allow(dead_code)] // not every test binary builds ISOs
pub fn grub_rescue_iso(dir: &TempDir, cfg: &str) -> PathBuf {
    let root = dir.path("cd/boot/grub");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("grub.cfg"), cfg).unwrap();
    let iso = dir.path("grub.iso");
    let out = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(&iso)
        .arg(dir.path("cd"))
        .output()
        .expect("grub-mkrescue (grub-pc-bin, xorriso, mtools)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    iso
}

#[allow(dead_code)] // not every test binary talks to a monitor
pub fn connect(port: u16) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                return s;
            }
            Err(e) if Instant::now() > deadline => panic!("connect {port}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A monitor connection: TCP, or a Unix socket (which reaches a troupe inside a network
/// namespace).
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A raw QMP client (newline-free framing, like `qemu.qmp`).
#[allow(dead_code)]
pub struct Qmp(BufReader<Box<dyn Stream>>);

#[allow(dead_code)]
impl Qmp {
    pub fn open(port: u16) -> Self {
        Self::greeted(Box::new(connect(port)))
    }

    /// QMP on the Unix socket at `path` (waiting for it to appear).
    pub fn open_unix(path: &std::path::Path) -> Self {
        let deadline = Instant::now() + Duration::from_secs(10);
        let s = loop {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => panic!("connect {}: {e}", path.display()),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Self::greeted(Box::new(s))
    }

    fn greeted(s: Box<dyn Stream>) -> Self {
        let mut q = Self(BufReader::new(s));
        let g = q.line();
        assert!(
            g.starts_with(
                "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}"
            ),
            "{g}"
        );
        q
    }

    pub fn line(&mut self) -> String {
        let mut l = String::new();
        self.0.read_line(&mut l).unwrap();
        assert!(l.ends_with("\r\n"), "QMP lines end with CR LF: {l:?}");
        l
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.0.get_mut().write_all(raw).unwrap();
    }

    /// Send and return the next non-event line.
    pub fn ask(&mut self, raw: &str) -> serde_json::Value {
        self.send(raw.as_bytes());
        loop {
            let l = self.line();
            let v: serde_json::Value = serde_json::from_str(&l).unwrap();
            if v.get("event").is_none() {
                return v;
            }
        }
    }
}

/// Resident memory of process `pid`, KiB.
#[allow(dead_code)] // not every test binary measures memory
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Read from `s` until `needle` has arrived; everything read. Panics (with what came) on EOF,
/// an error or the stream's read timeout.
#[allow(dead_code)] // not every test binary reads raw streams
pub fn read_until(s: &mut impl Read, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while !got.windows(needle.len()).any(|w| w == needle) {
        match s.read(&mut buf) {
            Ok(0) => panic!(
                "connection closed before {:?}; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&got)
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "waiting for {:?}: {e}; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&got)
            ),
        }
    }
    got
}

/// A plain-TCP (or telnet) HMP session: send a line, get the text up to the next prompt.
#[allow(dead_code)] // not every test binary talks HMP
pub struct Hmp(pub TcpStream);

#[allow(dead_code)]
impl Hmp {
    /// A session on a connected stream, its banner read.
    pub fn on(mut s: TcpStream) -> Self {
        read_until(&mut s, b"(qemu) ");
        Self(s)
    }

    /// Connect to a monitor on 127.0.0.1:`port`.
    pub fn open(port: u16) -> Self {
        Self::on(connect(port))
    }

    /// Run `line`; what it printed, lines ending in CR LF as on the wire (the echo and the
    /// next prompt left out).
    pub fn cmd(&mut self, line: &str) -> String {
        self.0.write_all(line.as_bytes()).unwrap();
        self.0.write_all(b"\r\n").unwrap();
        let raw = read_until(&mut self.0, b"\r\n(qemu) ");
        let text = String::from_utf8_lossy(&raw).into_owned();
        let body = text.split_once("\r\n").map(|x| x.1).unwrap_or("");
        body.trim_end_matches("(qemu) ").to_string()
    }

    /// [`Hmp::cmd`] with plain LF line ends.
    pub fn text(&mut self, line: &str) -> String {
        self.cmd(line).replace("\r\n", "\n")
    }
}
