//! VNC through real doors: the `troupe` binary with `-vnc`, and real clients — vncdotool
//! (captures to PNG), TigerVNC `vncviewer` under Xvfb (X screenshot), a WebSocket client
//! speaking RFB (noVNC's transport), and raw sockets for the bad clients.
//!
//! Until the VGA model lands, the guest screen is the test pattern that
//! `TROUPE_TEST_DISPLAY=static` puts on the console (it echoes input to stderr as
//! `troupe: test-display: key <qcode> down|up`). The guest is the demo test guest.
//! One password test runs vncdotool against the server code started in-process; another
//! sets and expires passwords through the monitor of the real binary.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::display::{encode_screendump, testpattern, DumpFormat, Surface};
use common::{free_display, guest, Running, TempDir, Vm};

fn helper() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vnc/vnc_client.py")
}

/// Run the Python helper; panics with its output on failure.
fn py(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(helper())
        .args(args)
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "vnc_client.py {args:?} failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// vncdotool must be installed (`pip install vncdotool`): fail loudly, never skip.
fn require_vncdotool() {
    let ok = Command::new("python3")
        .args(["-c", "import vncdotool, PIL"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "these tests need vncdotool and Pillow: pip install vncdotool"
    );
}

struct VncVm {
    vm: Running,
    port: u16,
    ws_port: Option<u16>,
}

/// troupe with the demo guest, the test-pattern console and `-vnc 127.0.0.1:N<opts>`.
fn start(opts: &str, websocket: bool) -> VncVm {
    start_with(opts, websocket, &[])
}

/// [`start`] with more command-line arguments (`-object ...`).
fn start_with(opts: &str, websocket: bool, extra: &[&str]) -> VncVm {
    let d = free_display();
    let port = 5900 + d;
    let ws_port = websocket.then(common::free_port);
    let mut vnc = format!("127.0.0.1:{d}{opts}");
    if let Some(w) = ws_port {
        vnc.push_str(&format!(",websocket={w}"));
    }
    let demo = guest("demo");
    let args = [
        "-m",
        "64",
        "-nodefaults",
        "-serial",
        "null",
        "-name",
        "vnctest",
        "-kernel",
        demo.to_str().unwrap(),
        "-vnc",
        &vnc,
    ];
    let mut args = args.to_vec();
    args.extend_from_slice(extra);
    let vm = Vm::troupe(&args)
        .env("TROUPE_TEST_DISPLAY", "static")
        .spawn();
    // Ready once the port answers with an RFB version: a bare TCP connect could also land
    // on a listener some other test holds for a moment (free_port binds to probe).
    let deadline = Instant::now() + Duration::from_secs(20);
    while Raw::connect_to_version(port).is_err() {
        assert!(
            Instant::now() < deadline,
            "VNC port {port} never opened\nstderr:\n{}",
            vm.stderr.text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    VncVm { vm, port, ws_port }
}

impl VncVm {
    fn server(&self) -> String {
        format!("127.0.0.1::{}", self.port)
    }

    fn connect(&self) -> Raw {
        Raw::connect(self.port)
    }

    fn rss_kib(&self) -> u64 {
        common::rss_kib(self.vm.pid())
    }

    fn alive(&mut self) -> bool {
        matches!(self.vm.child.try_wait(), Ok(None))
    }
}

/// A raw RFB client on a blocking socket.
struct Raw {
    s: TcpStream,
}

impl Raw {
    fn connect(port: u16) -> Self {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Self { s }
    }

    fn read(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.s.read_exact(&mut b).expect("read from the VNC server");
        b
    }

    fn write(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    /// Close the sending side and read until the server closes the connection.
    fn close_and_wait(&mut self) {
        self.s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut sink = Vec::new();
        self.s
            .read_to_end(&mut sink)
            .expect("the server closes a connection its client closed");
    }

    /// Handshake as RFB 3.8 / None, shared; returns (width, height, name).
    fn init(&mut self) -> (u16, u16, String) {
        assert_eq!(self.read(12), b"RFB 003.008\n");
        self.init_after_version()
    }

    /// Connect and read the server's version string, without panicking.
    fn connect_to_version(port: u16) -> std::io::Result<Self> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        let mut c = Self { s };
        let mut v = [0u8; 12];
        c.s.read_exact(&mut v)?;
        if &v != b"RFB 003.008\n" {
            return Err(std::io::Error::other(format!("not an RFB server: {v:?}")));
        }
        Ok(c)
    }

    /// [`Self::init`] once the server's version string has been read.
    fn init_after_version(&mut self) -> (u16, u16, String) {
        self.write(b"RFB 003.008\n");
        assert_eq!(self.read(2), [1, 1]);
        self.write(&[1]);
        assert_eq!(self.read(4), [0, 0, 0, 0]);
        self.write(&[1]);
        let b = self.read(24);
        let n = u32::from_be_bytes(b[20..24].try_into().unwrap()) as usize;
        let name = String::from_utf8(self.read(n)).unwrap();
        (
            u16::from_be_bytes([b[0], b[1]]),
            u16::from_be_bytes([b[2], b[3]]),
            name,
        )
    }

    fn encodings(&mut self, e: &[i32]) {
        let mut m = vec![2, 0];
        m.extend_from_slice(&(e.len() as u16).to_be_bytes());
        for x in e {
            m.extend_from_slice(&x.to_be_bytes());
        }
        self.write(&m);
    }

    fn request(&mut self, incremental: bool, w: u16, h: u16) {
        let mut m = vec![3, u8::from(incremental), 0, 0, 0, 0];
        m.extend_from_slice(&w.to_be_bytes());
        m.extend_from_slice(&h.to_be_bytes());
        self.write(&m);
    }

    /// Read one FramebufferUpdate made of Raw (32 bpp) and payload-free pseudo rectangles;
    /// returns (x, y, w, h, encoding) of each.
    fn update(&mut self) -> Vec<(u16, u16, u16, u16, i32)> {
        let h = self.read(4);
        assert_eq!(
            h[0], 0,
            "expected a FramebufferUpdate, got message type {}",
            h[0]
        );
        let n = u16::from_be_bytes([h[2], h[3]]);
        let mut out = Vec::new();
        for _ in 0..n {
            let r = self.read(12);
            let g = |i: usize| u16::from_be_bytes([r[i], r[i + 1]]);
            let e = i32::from_be_bytes(r[8..12].try_into().unwrap());
            if e == 0 {
                self.read(usize::from(g(4)) * usize::from(g(6)) * 4);
            } else if e == -261 {
                self.read(1);
            } else if e == -308 {
                let k = self.read(4)[0];
                self.read(16 * usize::from(k));
            }
            out.push((g(0), g(2), g(4), g(6), e));
        }
        out
    }

    fn pointer(&mut self, buttons: u8, x: u16, y: u16) {
        let mut m = vec![5, buttons];
        m.extend_from_slice(&x.to_be_bytes());
        m.extend_from_slice(&y.to_be_bytes());
        self.write(&m);
    }

    fn key(&mut self, keysym: u32, down: bool) {
        let mut m = vec![4, u8::from(down), 0, 0];
        m.extend_from_slice(&keysym.to_be_bytes());
        self.write(&m);
    }

    /// Take updates until none comes for 300 ms; returns with an incremental request for
    /// `w`x`h` outstanding, so the next update is for a change made after this.
    fn until_quiet(&mut self, w: u16, h: u16) {
        loop {
            self.request(true, w, h);
            self.s
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let pending = self.s.peek(&mut [0u8; 1]).is_ok();
            self.s
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            if !pending {
                return;
            }
            self.update();
        }
    }

    /// True when the server closes the connection within 10 s.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 4096];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
                Err(_) => return true,
            }
        }
    }
}

fn write_ppm(dir: &TempDir, name: &str, s: &Surface) -> PathBuf {
    let p = dir.path(name);
    std::fs::write(&p, encode_screendump(s, DumpFormat::Ppm)).unwrap();
    p
}

fn mismatch(line: &str) -> (u64, u64) {
    let w: Vec<&str> = line.split_whitespace().collect();
    assert!(
        w.len() >= 4 && w[w.len() - 4] == "mismatch",
        "unexpected helper output: {line}"
    );
    (
        w[w.len() - 3].parse().unwrap(),
        w[w.len() - 1].parse().unwrap(),
    )
}

#[test]
fn vncdotool_captures_the_screen_with_every_encoding_it_speaks() {
    require_vncdotool();
    let vm = start("", false);
    let dir = TempDir::new("vnc-capture");
    let want = write_ppm(
        &dir,
        "want.ppm",
        &testpattern::expected(640, 480, 0, &[], ""),
    );
    for enc in ["raw", "hextile", "zrle"] {
        let png = dir.path(&format!("{enc}.png"));
        py(&["capture", &vm.server(), enc, png.to_str().unwrap()]);
        let (bad, total) =
            mismatch(py(&["compare", png.to_str().unwrap(), want.to_str().unwrap()]).trim());
        assert_eq!(
            (bad, total),
            (0, 640 * 480),
            "{enc}: pixels differ from the console"
        );
    }
}

#[test]
fn server_init_names_the_vm_like_qemu() {
    let vm = start("", false);
    let mut c = vm.connect();
    assert_eq!(c.init(), (640, 480, "QEMU (vnctest)".to_string()));
}

#[test]
fn keys_typed_in_vncdotool_reach_the_console_as_qcodes() {
    require_vncdotool();
    let vm = start("", false);
    py(&["keys", &vm.server(), "a", "1", "enter", "down", "shift-a"]);
    let want = [
        "key a down",
        "key a up",
        "key 1 down",
        "key 1 up",
        "key ret down",
        "key ret up",
        "key down down",
        "key down up",
        "key shift down",
        "key a down",
        "key a up",
        "key shift up",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got: Vec<String> = vm
            .vm
            .stderr
            .text()
            .lines()
            .filter_map(|l| l.strip_prefix("troupe: test-display: ").map(str::to_string))
            .collect();
        if got.len() >= want.len() {
            assert_eq!(got, want);
            break;
        }
        assert!(Instant::now() < deadline, "keys seen: {got:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn qemu_extended_key_events_pass_scancodes_through() {
    let vm = start("", false);
    let mut c = vm.connect();
    c.init();
    c.encodings(&[0, -258]);
    // The server acknowledges with an empty -258 rectangle.
    let u = c.update();
    assert_eq!(u, vec![(0, 0, 640, 480, -258)]);
    for (code, down) in [
        (0x1eu32, true),
        (0x1e, false),
        (0xd0, true),
        (0xd0, false),
        (0x1c, true),
    ] {
        let mut m = vec![255, 0, 0, u8::from(down)];
        m.extend_from_slice(&0u32.to_be_bytes()); // keysym unused when a keycode is given
        m.extend_from_slice(&code.to_be_bytes());
        c.write(&m);
    }
    vm.vm
        .stderr
        .wait_for(
            "troupe: test-display: key ret down",
            Duration::from_secs(10),
        )
        .unwrap();
    let text = vm.vm.stderr.text();
    let seq: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("troupe: test-display: "))
        .collect();
    assert_eq!(
        seq,
        [
            "key a down",
            "key a up",
            "key down down",
            "key down up",
            "key ret down"
        ]
    );
}

#[test]
fn mode_switch_sends_desktop_size_at_once_and_clients_follow() {
    require_vncdotool();
    let vm = start("", false);
    let mut c = vm.connect();
    c.init();
    c.encodings(&[0, -223]);
    c.request(false, 640, 480);
    c.update();
    // F2 makes the test console switch to 1024x768; no request is outstanding.
    c.key(0xffbf, true);
    c.key(0xffbf, false);
    let u = c.update();
    assert_eq!(u, vec![(0, 0, 1024, 768, -223)]);
    let dir = TempDir::new("vnc-resize");
    let png = dir.path("big.png");
    py(&["capture", &vm.server(), "zrle", png.to_str().unwrap()]);
    let want = write_ppm(
        &dir,
        "want.ppm",
        &testpattern::expected(1024, 768, 0, &["f2"], ""),
    );
    let (bad, _) = mismatch(py(&["compare", png.to_str().unwrap(), want.to_str().unwrap()]).trim());
    assert_eq!(bad, 0);
}

/// The real VGA path: once the text screen has been still for a while the refresh actor
/// stops polling, and the guest's next write must still reach the client within a frame
/// interval (≤ 30 ms) — the write itself wakes the actor. (Were the wake lost, the update
/// would wait for the actor's once-a-second check.)
#[test]
fn a_guest_write_after_idling_reaches_the_client_within_30_ms() {
    // No periodic redraws: the demo draws when a key is typed, and only then.
    let (vm, port) = vnc_guest("demo", "redraw_ms=3600000");
    vm.expect_stdout("vCPUs running", Duration::from_secs(30));
    let mut c = Raw::connect(port);
    c.init();
    c.encodings(&[0]);
    c.request(false, 720, 400);
    c.update();
    let mut worst = Duration::ZERO;
    for key in "qwert".chars() {
        // Idle: nothing drawn for longer than the actor waits before it stops polling.
        c.until_quiet(720, 400);
        std::thread::sleep(Duration::from_millis(400));
        let t = Instant::now();
        c.key(u32::from(key), true);
        let u = c.update();
        worst = worst.max(t.elapsed());
        assert!(!u.is_empty());
        c.key(u32::from(key), false);
        vm.expect_stdout(&format!("demo: key {key}"), Duration::from_secs(5));
    }
    assert!(
        worst <= Duration::from_millis(30),
        "slowest key-to-screen update took {worst:?}"
    );
}

#[test]
fn a_change_reaches_an_idle_client_within_30_ms() {
    let mut vm = start("", false);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        change_reaches_idle_client(&mut vm)
    }));
    if let Err(e) = r {
        // Did troupe die (a signal prints nothing on stderr), or is it still serving?
        std::thread::sleep(Duration::from_millis(500));
        eprintln!(
            "troupe: {:?}\nstderr:\n{}",
            vm.vm.child.try_wait(),
            vm.vm.stderr.text()
        );
        std::panic::resume_unwind(e);
    }
}

fn change_reaches_idle_client(vm: &mut VncVm) {
    // In two of some ten full-suite runs (never alone) this test's first connection was
    // reset before the server's version string arrived, with troupe printing nothing. Until
    // that is understood: say what was seen (is troupe alive, who holds the port) and try
    // once more; the latency check below is what this test is about.
    let mut c = match Raw::connect_to_version(vm.port) {
        Ok(c) => c,
        Err(e) => {
            let ss = Command::new("ss")
                .args([
                    "-tanpo",
                    &format!("( sport = :{} or dport = :{} )", vm.port, vm.port),
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            eprintln!(
                "first connection to port {}: {e}; troupe exited: {:?}\n{ss}",
                vm.port,
                vm.vm.child.try_wait().ok().flatten()
            );
            Raw::connect_to_version(vm.port).expect("second connection")
        }
    };
    c.init_after_version();
    c.encodings(&[0]);
    c.request(false, 640, 480);
    c.update();
    let mut worst = Duration::ZERO;
    for i in 0..5u32 {
        c.request(true, 640, 480);
        std::thread::sleep(Duration::from_millis(if i == 0 { 1500 } else { 400 }));
        // A key press makes the console redraw its text line (the key list changes).
        let t = Instant::now();
        c.key(u32::from(b'a') + i, true);
        let u = c.update();
        worst = worst.max(t.elapsed());
        assert!(!u.is_empty());
        c.key(u32::from(b'a') + i, false);
    }
    assert!(
        worst <= Duration::from_millis(30),
        "worst key-to-update latency {worst:?}"
    );
}

#[test]
fn websocket_clients_get_the_rfb_handshake() {
    let vm = start("", true);
    let port = vm.ws_port.unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /websockify HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Protocol: binary\r\nOrigin: http://localhost\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    assert!(
        head.contains("Sec-WebSocket-Protocol: binary\r\n"),
        "{head}"
    );
    // Frames in both directions; the payloads form the RFB stream.
    let mut rfb = Vec::new();
    let read_rfb = |s: &mut TcpStream, n: usize, rfb: &mut Vec<u8>| -> Vec<u8> {
        while rfb.len() < n {
            let mut h = [0u8; 2];
            s.read_exact(&mut h).unwrap();
            assert_eq!(h[0], 0x82, "binary frame expected");
            assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
            let mut len = usize::from(h[1] & 0x7f);
            if len == 126 {
                let mut l = [0u8; 2];
                s.read_exact(&mut l).unwrap();
                len = usize::from(u16::from_be_bytes(l));
            } else if len == 127 {
                let mut l = [0u8; 8];
                s.read_exact(&mut l).unwrap();
                len = u64::from_be_bytes(l) as usize;
            }
            let mut p = vec![0u8; len];
            s.read_exact(&mut p).unwrap();
            rfb.extend_from_slice(&p);
        }
        rfb.drain(..n).collect()
    };
    let send = |s: &mut TcpStream, payload: &[u8]| {
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut f = vec![0x82, 0x80 | payload.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        s.write_all(&f).unwrap();
    };
    assert_eq!(read_rfb(&mut s, 12, &mut rfb), b"RFB 003.008\n");
    send(&mut s, b"RFB 003.008\n");
    assert_eq!(read_rfb(&mut s, 2, &mut rfb), [1, 1]);
    send(&mut s, &[1]);
    assert_eq!(read_rfb(&mut s, 4, &mut rfb), [0, 0, 0, 0]);
    send(&mut s, &[1]);
    let init = read_rfb(&mut s, 24, &mut rfb);
    assert_eq!(&init[..4], &[2, 128, 1, 224]); // 640x480
    let n = u32::from_be_bytes(init[20..24].try_into().unwrap()) as usize;
    assert_eq!(read_rfb(&mut s, n, &mut rfb), b"QEMU (vnctest)");
    // A full Raw update arrives through the frames too.
    send(&mut s, &[3, 0, 0, 0, 0, 0, 2, 128, 1, 224]);
    let hdr = read_rfb(&mut s, 4, &mut rfb);
    assert_eq!(hdr, [0, 0, 0, 1]);
    let rect = read_rfb(&mut s, 12, &mut rfb);
    assert_eq!(&rect[4..], &[2, 128, 1, 224, 0, 0, 0, 0]);
    let pixels = read_rfb(&mut s, 640 * 480 * 4, &mut rfb);
    let want = testpattern::expected(640, 480, 0, &[], "");
    let got: Vec<u32> = pixels
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(got, want.pixels());
}

#[test]
fn bad_clients_do_not_stop_the_server_and_memory_stays_bounded() {
    require_vncdotool();
    let mut vm = start("", false);
    // Warm up with one full client so steady-state allocations exist.
    {
        let mut c = vm.connect();
        c.init();
        c.encodings(&[0]);
        c.request(false, 640, 480);
        c.update();
    }
    let rss_before = vm.rss_kib();
    // Garbage instead of a version: closed.
    let mut c = vm.connect();
    c.read(12);
    c.write(b"\x16\x03\x01\x02\x00garbage!!");
    assert!(c.closed());
    // An unsupported version: security type 0, closed.
    let mut c = vm.connect();
    c.read(12);
    c.write(b"RFB 005.000\n");
    assert_eq!(c.read(4), [0, 0, 0, 0]);
    assert!(c.closed());
    // Disconnect in the middle of a big update.
    for _ in 0..20 {
        let mut c = vm.connect();
        c.init();
        c.encodings(&[0]);
        c.request(false, 640, 480);
        c.read(100);
        drop(c);
    }
    // A 100 MB ClientCutText announcement: that client is dropped, nothing allocated.
    let mut c = vm.connect();
    c.init();
    let mut m = vec![6, 0, 0, 0];
    m.extend_from_slice(&100_000_000u32.to_be_bytes());
    m.extend_from_slice(&[b'x'; 4096]);
    c.write(&m);
    assert!(c.closed());
    // 1000 connections opened and dropped, some half-way through the handshake.
    for i in 0..1000 {
        let mut s = TcpStream::connect(("127.0.0.1", vm.port)).unwrap();
        if i % 2 == 0 {
            let _ = s.write_all(b"RFB 003.008\n\x01");
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(vm.alive(), "troupe died:\n{}", vm.vm.stderr.text());
    // A well-behaved client is still served, pixel-exact.
    let dir = TempDir::new("vnc-bad");
    let png = dir.path("after.png");
    py(&["capture", &vm.server(), "hextile", png.to_str().unwrap()]);
    let want = write_ppm(
        &dir,
        "want.ppm",
        &testpattern::expected(640, 480, 0, &[], ""),
    );
    let (bad, _) = mismatch(py(&["compare", png.to_str().unwrap(), want.to_str().unwrap()]).trim());
    assert_eq!(bad, 0);
    let rss_after = vm.rss_kib();
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}

#[test]
fn thirty_two_clients_cost_under_a_mib_each_and_give_it_back_when_they_leave() {
    let vm = start("", false);
    // 32 clients (the most QEMU and troupe take) each get one full frame; all stay
    // connected while RSS is read, then all close.
    let cycle = || {
        let mut cs: Vec<Raw> = (0..32).map(|_| vm.connect()).collect();
        for c in &mut cs {
            c.init();
            c.encodings(&[0]);
            c.request(false, 640, 480);
            c.update();
        }
        let rss = vm.rss_kib();
        // Leave as a viewer does, and wait for the server to close each connection: by then
        // its place is free, and the next round's 32 clients all fit.
        for c in &mut cs {
            c.close_and_wait();
        }
        rss
    };
    let settled = |limit: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let rss = vm.rss_kib();
            if rss <= limit || Instant::now() > deadline {
                return rss;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let start_rss = vm.rss_kib();
    let mut peak = 0;
    for round in 0..10 {
        peak = peak.max(cycle());
        let after = settled(start_rss + 16 * 1024);
        assert!(
            after <= start_rss + 16 * 1024,
            "round {round}: RSS {after} KiB once the clients left, {start_rss} KiB at start"
        );
    }
    let per_client = peak.saturating_sub(start_rss) / 32;
    assert!(
        per_client <= 1024,
        "a connected client costs {per_client} KiB (RSS {start_rss} KiB alone, {peak} KiB with 32)"
    );
}

#[test]
fn a_colour_map_client_gets_qemus_palette_and_a_frame_in_it() {
    let vm = start("", false);
    let want = testpattern::expected(640, 480, 0, &[], "");
    // SetPixelFormat: 8 bpp, true-colour flag 0 (a palette client); then Raw, full frame.
    let mut c = vm.connect();
    c.init();
    let mut m = vec![0, 0, 0, 0, 8, 8, 0, 0];
    m.extend_from_slice(&[0; 12]);
    c.write(&m);
    c.encodings(&[0]);
    c.request(false, 640, 480);
    // SetColourMapEntries first: 256 colours from 0, each channel's bits at the top of 16.
    assert_eq!(c.read(6), [1, 0, 0, 0, 1, 0]);
    let map = c.read(256 * 6);
    let entry = |i: usize| -> [u16; 3] {
        let e = &map[i * 6..i * 6 + 6];
        [0, 2, 4].map(|k| u16::from_be_bytes([e[k], e[k + 1]]))
    };
    assert_eq!(entry(0), [0, 0, 0]);
    assert_eq!(entry(7), [0xe000, 0, 0]);
    assert_eq!(entry(255), [0xe000, 0xe000, 0xc000]);
    // Then the frame, one byte per pixel: red's top 3 bits, green's at 3, blue's top 2 at 6.
    let h = c.read(4);
    assert_eq!(h[0], 0);
    let mut seen = vec![0u8; 640 * 480];
    for _ in 0..u16::from_be_bytes([h[2], h[3]]) {
        let r = c.read(12);
        let g = |i: usize| usize::from(u16::from_be_bytes([r[i], r[i + 1]]));
        assert_eq!(i32::from_be_bytes(r[8..12].try_into().unwrap()), 0);
        let (x, y, w, hh) = (g(0), g(2), g(4), g(6));
        let px = c.read(w * hh);
        for row in 0..hh {
            seen[(y + row) * 640 + x..(y + row) * 640 + x + w]
                .copy_from_slice(&px[row * w..(row + 1) * w]);
        }
    }
    let index = |p: u32| ((p >> 21) & 7) | (((p >> 13) & 7) << 3) | (((p >> 6) & 3) << 6);
    for (i, px) in want.pixels().iter().enumerate() {
        assert_eq!(u32::from(seen[i]), index(*px), "pixel {i}");
    }

    // Every channel max 0: QEMU keeps the client and sends all-zero pixels.
    let mut c = vm.connect();
    c.init();
    let mut m = vec![0, 0, 0, 0, 32, 24, 0, 1];
    m.extend_from_slice(&[0; 12]);
    c.write(&m);
    c.encodings(&[0]);
    c.request(false, 640, 480);
    let h = c.read(4);
    assert_eq!(h[0], 0);
    let mut total = 0;
    for _ in 0..u16::from_be_bytes([h[2], h[3]]) {
        let r = c.read(12);
        let g = |i: usize| usize::from(u16::from_be_bytes([r[i], r[i + 1]]));
        let px = c.read(g(4) * g(6) * 4);
        assert!(px.iter().all(|b| *b == 0));
        total += g(4) * g(6);
    }
    assert_eq!(total, 640 * 480);
}

#[test]
fn several_clients_at_once_all_get_updates() {
    let vm = start("", false);
    let mut clients: Vec<Raw> = (0..4).map(|_| vm.connect()).collect();
    for c in &mut clients {
        c.init();
        c.encodings(&[0]);
        c.request(false, 640, 480);
        c.update();
        c.request(true, 640, 480);
    }
    let mut k = vm.connect();
    k.init();
    k.key(u32::from(b'q'), true);
    for c in &mut clients {
        assert!(!c.update().is_empty());
    }
}

#[test]
fn share_force_shared_refuses_exclusive_clients() {
    let vm = start(",share=force-shared", false);
    let mut a = vm.connect();
    a.init();
    let mut b = vm.connect();
    b.read(12);
    b.write(b"RFB 003.008\n");
    b.read(2);
    b.write(&[1]);
    b.read(4);
    b.write(&[0]); // exclusive
    assert!(b.closed());
    a.request(false, 8, 8);
    assert!(!a.update().is_empty());
}

#[test]
fn password_on_without_a_password_refuses_everyone() {
    require_vncdotool();
    let vm = start(",password=on", false);
    let mut c = vm.connect();
    assert_eq!(c.read(12), b"RFB 003.008\n");
    c.write(b"RFB 003.008\n");
    assert_eq!(c.read(2), [1, 2]);
    c.write(&[2]);
    let ch = c.read(16);
    assert_eq!(ch.len(), 16);
    c.write(&[0u8; 16]);
    let mut want = vec![0, 0, 0, 1, 0, 0, 0, 21];
    want.extend_from_slice(b"Authentication failed");
    assert_eq!(c.read(want.len()), want);
    let dir = TempDir::new("vnc-nopw");
    let out = Command::new("python3")
        .arg(helper())
        .args([
            "capture",
            &vm.server(),
            "raw",
            dir.path("x.png").to_str().unwrap(),
            "anything",
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "vncdotool got in without a password being set"
    );
    assert!(!dir.path("x.png").exists());
}

/// vncdotool capture (Raw) with a password; true when it got in and wrote the PNG.
fn capture_with_password(server: &str, dir: &TempDir, pw: &str, out: &str) -> bool {
    Command::new("python3")
        .arg(helper())
        .args([
            "capture",
            server,
            "raw",
            dir.path(out).to_str().unwrap(),
            pw,
        ])
        .output()
        .unwrap()
        .status
        .success()
}

/// The server code in this process (so a password can be set), a real vncdotool client.
#[test]
fn vncdotool_password_wrong_refused_right_accepted() {
    require_vncdotool();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (writer, display) = actors::display::new_display(320, 200).unwrap();
    testpattern::TestPattern::new(writer).redraw();
    let mut opts = actors::vnc::VncOptions::new("127.0.0.1", free_display());
    opts.password = true;
    let h = actors::vnc::start(
        rt.handle(),
        &actors::runtime::Registry::new(),
        opts,
        display,
        Arc::new(actors::display::input::NullSink),
    )
    .unwrap();
    h.set_password("troupe-pw-long").unwrap();
    let server = format!("127.0.0.1::{}", h.local_addr().port());
    let dir = TempDir::new("vnc-pw");
    let run = |pw: &str, out: &str| capture_with_password(&server, &dir, pw, out);
    assert!(!run("wrong", "wrong.png"));
    assert!(!dir.path("wrong.png").exists());
    // Only the first 8 characters count, as in QEMU.
    assert!(run("troupe-p", "right.png"));
    let want = write_ppm(
        &dir,
        "want.ppm",
        &testpattern::expected(320, 200, 0, &[], ""),
    );
    let (bad, _) = mismatch(
        py(&[
            "compare",
            dir.path("right.png").to_str().unwrap(),
            want.to_str().unwrap(),
        ])
        .trim(),
    );
    assert_eq!(bad, 0);
}

/// Xvfb on a free display number, killed at drop.
struct Xvfb {
    child: std::process::Child,
    display: String,
}

impl Xvfb {
    fn start() -> Self {
        for n in 90..140 {
            if Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
                || Path::new(&format!("/tmp/.X{n}-lock")).exists()
            {
                continue;
            }
            let display = format!(":{n}");
            let child = Command::new("Xvfb")
                .args([&display, "-screen", "0", "1280x1024x24", "-nolisten", "tcp"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("Xvfb must be installed");
            let deadline = Instant::now() + Duration::from_secs(10);
            while !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() {
                assert!(Instant::now() < deadline, "Xvfb {display} did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
            return Self { child, display };
        }
        panic!("no free X display number");
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Screenshot Xvfb `x` into `shot` until `want` (a PPM) appears in it with at most one
/// pixel in 1000 off (the viewer may draw its pointer over a few), for up to 25 s: TigerVNC
/// shows a "Press F8" banner over the picture for a few seconds at start. `Err` carries the
/// last comparison.
fn viewer_shows(x: &Xvfb, shot: &std::path::Path, want: &std::path::Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut last = String::from("(no screenshot)");
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(700));
        let st = Command::new("import")
            .env("DISPLAY", &x.display)
            .args(["-window", "root", shot.to_str().unwrap()])
            .status()
            .expect("ImageMagick import");
        if st.success() {
            last = py(&["find", shot.to_str().unwrap(), want.to_str().unwrap()]);
            if last.starts_with("found") {
                let (bad, total) = mismatch(last.trim());
                if bad * 1000 <= total {
                    return Ok(());
                }
            }
        }
    }
    Err(last)
}

#[test]
fn tigervnc_viewer_renders_the_console() {
    require_vncdotool(); // PIL for the comparison
    let vm = start("", false);
    let x = Xvfb::start();
    let dir = TempDir::new("vnc-tiger");
    let want = write_ppm(
        &dir,
        "want.ppm",
        &testpattern::expected(640, 480, 0, &[], ""),
    );
    for enc in ["Tight", "ZRLE", "Hextile", "Raw"] {
        let mut viewer = Command::new("vncviewer")
            .env("DISPLAY", &x.display)
            .args([
                "-AutoSelect=0",
                "-FullColor=1",
                "-NoJPEG=1",
                &format!("-PreferredEncoding={enc}"),
                "-Shared=1",
                "-RemoteResize=0",
                "-DotWhenNoCursor=0",
                &vm.server(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("vncviewer (TigerVNC) must be installed");
        let shot = dir.path(&format!("{enc}.png"));
        let shown = viewer_shows(&x, &shot, &want);
        let _ = viewer.kill();
        let _ = viewer.wait();
        if let Err(last) = shown {
            panic!("{enc}: the console never appeared right in the viewer: {last}");
        }
    }
}

/// The kbd guest under `-vnc`: it polls the i8042 and prints every byte on serial.
fn kbd_guest_with_vnc() -> (Running, u16) {
    let d = free_display();
    let k = guest("kbd");
    let vnc = format!("127.0.0.1:{d}");
    let vm = Vm::troupe(&[
        "-nodefaults",
        "-serial",
        "stdio",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-vnc",
        &vnc,
        "-kernel",
        k.to_str().unwrap(),
        "-append",
        "timeout=60",
    ])
    .spawn();
    vm.expect_stdout("kbd: ready", Duration::from_secs(30));
    (vm, 5900 + d)
}

fn kbd_bytes(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("kbd: "))
        .filter(|b| b.len() == 2 && u8::from_str_radix(b, 16).is_ok())
        .map(str::to_string)
        .collect()
}

#[test]
fn vnc_keys_reach_a_guest_polling_the_i8042_as_qemus_set1_bytes() {
    require_vncdotool();
    let (mut vm, port) = kbd_guest_with_vnc();
    let server = format!("127.0.0.1::{port}");
    py(&["keys", &server, "a", "1", "enter", "down", "shift-a", "q"]);
    let out = vm.expect_stdout("kbd: stop", Duration::from_secs(30));
    assert_eq!(
        kbd_bytes(&out).join(" "),
        // a, 1, Enter, Down, Shift+a, then q (the guest's stop key, press only seen).
        "1e 9e 02 82 1c 9c e0 50 e0 d0 2a 1e 9e aa 10"
    );
    assert_eq!(common::code(vm.wait(Duration::from_secs(10))), 1);
}

#[test]
fn qemu_extended_key_events_reach_the_guest_as_the_same_scancodes() {
    let (vm, port) = kbd_guest_with_vnc();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    use std::io::{Read, Write};
    let mut ver = [0u8; 12];
    s.read_exact(&mut ver).unwrap();
    s.write_all(b"RFB 003.008\n").unwrap();
    let mut n = [0u8; 1];
    s.read_exact(&mut n).unwrap();
    let mut types = vec![0u8; n[0] as usize];
    s.read_exact(&mut types).unwrap();
    s.write_all(&[1]).unwrap();
    let mut result = [0u8; 4];
    s.read_exact(&mut result).unwrap();
    s.write_all(&[1]).unwrap(); // ClientInit: shared
    let mut init = [0u8; 24];
    s.read_exact(&mut init).unwrap();
    let name_len = u32::from_be_bytes(init[20..24].try_into().unwrap()) as usize;
    let mut name = vec![0u8; name_len];
    s.read_exact(&mut name).unwrap();
    for (code, down) in [
        (0x1eu32, true),
        (0x1e, false),
        (0xd0, true),
        (0xd0, false),
        (0x9c, true), // keypad Enter: E0 1C
        (0x9c, false),
        (0x10, true),
    ] {
        let mut m = vec![255, 0, 0, u8::from(down)];
        m.extend_from_slice(&0u32.to_be_bytes());
        m.extend_from_slice(&code.to_be_bytes());
        s.write_all(&m).unwrap();
    }
    let out = vm.expect_stdout("kbd: stop", Duration::from_secs(30));
    assert_eq!(
        kbd_bytes(&out).join(" "),
        "1e 9e e0 50 e0 d0 e0 1c e0 9c 10"
    );
}

// ---- the real console: VGA text and VBE modes from guests ----

fn vnc_guest(kernel: &str, append: &str) -> (Running, u16) {
    let d = free_display();
    let k = guest(kernel);
    let vnc = format!("127.0.0.1:{d}");
    let vm = Vm::troupe(&[
        "-nodefaults",
        "-vga",
        "std",
        "-serial",
        "stdio",
        "-smp",
        "2",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-vnc",
        &vnc,
        "-kernel",
        k.to_str().unwrap(),
        "-append",
        append,
    ])
    .spawn();
    (vm, 5900 + d)
}

fn capture(port: u16, dir: &TempDir, name: &str) -> PathBuf {
    let out = dir.path(name);
    py(&[
        "capture",
        &format!("127.0.0.1::{port}"),
        "raw",
        out.to_str().unwrap(),
    ]);
    out
}

fn png_size_and_pixel(p: &Path, x: u32, y: u32) -> (u32, u32, [u8; 3]) {
    let d = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(p).unwrap()));
    let mut r = d.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    let bpp = info.line_size / info.width as usize;
    let o = (y as usize) * info.line_size + (x as usize) * bpp;
    (info.width, info.height, [buf[o], buf[o + 1], buf[o + 2]])
}

#[test]
fn vncdotool_captures_the_demo_guests_text_screen() {
    require_vncdotool();
    let (vm, port) = vnc_guest("demo", "");
    vm.expect_stdout("vCPUs running", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let dir = TempDir::new("demo-vnc");
    let png = capture(port, &dir, "demo.png");
    // 80x25 text with 9x16 cells, like QEMU; the title bar is white on blue.
    let (w, h, title) = png_size_and_pixel(&png, 2, 2);
    assert_eq!((w, h), (720, 400));
    assert_eq!(title, [0, 0, 0xa8], "title bar background");
}

#[test]
fn vbe_mode_switch_resizes_the_client_and_the_picture_is_right() {
    require_vncdotool();
    let (vm, port) = vnc_guest("vbe", "wait=3 hold=60");
    vm.expect_stdout("vbe: waiting", Duration::from_secs(30));
    // A DesktopSize-capable client connected while the guest is in text mode (the console
    // shows text mode once the refresh actor has rendered it; on a loaded host that can
    // trail the guest's first serial line by a moment)...
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = loop {
        let mut c = Raw::connect(port);
        if c.init().0 == 720 {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "the console never showed text mode"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    c.encodings(&[0, -223]);
    c.request(false, 720, 400);
    assert_eq!(c.update()[0].2, 720);
    c.request(true, 720, 400);
    // ...is told the new size as soon as the guest switches.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let u = c.update();
        if let Some(r) = u.iter().find(|r| r.4 == -223) {
            assert_eq!((r.2, r.3), (1024, 768));
            break;
        }
        assert!(Instant::now() < deadline, "no DesktopSize");
        c.request(true, 1024, 768);
    }
    vm.expect_stdout("vbe: drawn 1024x768x32", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    let dir = TempDir::new("vbe-vnc");
    let png = capture(port, &dir, "vbe.png");
    for (x, y, rgb) in [
        (10, 10, [255, 0, 0]),
        (1000, 10, [0, 255, 0]),
        (10, 700, [0, 0, 255]),
        (1000, 700, [255, 255, 255]),
        (512, 384, [255, 255, 0]),
    ] {
        let (w, h, px) = png_size_and_pixel(&png, x, y);
        assert_eq!((w, h), (1024, 768));
        assert_eq!(px, rgb, "pixel ({x},{y})");
    }
}

/// A GRUB rescue ISO whose menu waits forever (no countdown: a stable screen).
fn static_grub_iso(dir: &TempDir) -> PathBuf {
    common::grub_rescue_iso(
        dir,
        "serial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console\n\
         set timeout=-1\nmenuentry \"troupe first entry\" {\n  halt\n}\nmenuentry \"troupe second entry\" {\n  halt\n}\n",
    )
}

#[test]
fn the_grub_menu_matches_qemus_pixel_for_pixel() {
    require_vncdotool();
    let dir = TempDir::new("grub-vs-qemu");
    let iso = static_grub_iso(&dir);
    let iso = iso.to_str().unwrap();
    let (dt, dq) = (free_display(), free_display());
    let common = ["-m", "256", "-cdrom", iso, "-boot", "d", "-serial", "stdio"];
    let mut t_args: Vec<String> = common.iter().map(|s| s.to_string()).collect();
    t_args.extend(["-vnc".into(), format!("127.0.0.1:{dt}")]);
    let mut q_args = t_args.clone();
    q_args.pop();
    q_args.push(format!("127.0.0.1:{dq}"));
    q_args.extend(["-monitor".into(), "none".into()]);
    let troupe = Vm::troupe(&t_args).spawn();
    let qemu = Vm::qemu(&q_args).spawn();
    for vm in [&troupe, &qemu] {
        vm.expect_stdout("troupe second entry", Duration::from_secs(180));
    }
    std::thread::sleep(Duration::from_secs(2));
    let a = capture(5900 + dt, &dir, "troupe.png");
    let b = capture(5900 + dq, &dir, "qemu.png");
    let line = py(&["compare", a.to_str().unwrap(), b.to_str().unwrap()]);
    let (bad, total) = mismatch(&line);
    assert_eq!(total, 720 * 400, "both show 720x400 text: {line}");
    assert!(
        bad * 100 <= total,
        "{bad} of {total} pixels differ (more than 1%): {line}"
    );
}

#[test]
fn pointer_events_reach_a_guest_reading_the_ps2_mouse() {
    // The kbd guest with `mouse=1` enables the PS/2 mouse and prints every mouse byte. With
    // no absolute tablet, VNC positions become relative PS/2 motion (+y up in PS/2).
    let d = free_display();
    let vnc = format!("127.0.0.1:{d}");
    let k = guest("kbd");
    let vm = Vm::troupe(&[
        "-nodefaults",
        "-vga",
        "std",
        "-serial",
        "stdio",
        "-vnc",
        &vnc,
        "-kernel",
        k.to_str().unwrap(),
        "-append",
        "timeout=60 mouse=1",
    ])
    .spawn();
    vm.expect_stdout("kbd: mouse on", Duration::from_secs(20));
    vm.expect_stdout("kbd: ready", Duration::from_secs(20));
    let mut c = Raw::connect(5900 + d);
    c.init();
    c.pointer(0, 100, 100);
    c.pointer(0, 110, 95);
    vm.expect_stdout(
        "kbd: mouse 08\r\nkbd: mouse 0a\r\nkbd: mouse 05\r\n",
        Duration::from_secs(10),
    );
    // Left button down, then up, without motion.
    c.pointer(1, 110, 95);
    vm.expect_stdout(
        "kbd: mouse 09\r\nkbd: mouse 00\r\nkbd: mouse 00\r\n",
        Duration::from_secs(10),
    );
    c.pointer(0, 110, 95);
    // Leftwards and down: dx -3 (0xfd), dy -4 (0xfc), sign bits 0x10 | 0x20.
    c.pointer(0, 107, 99);
    vm.expect_stdout(
        "kbd: mouse 38\r\nkbd: mouse fd\r\nkbd: mouse fc\r\n",
        Duration::from_secs(10),
    );
}

/// With `-device virtio-tablet-pci` the pointer is absolute: a VNC position reaches the
/// ring-3 virtio-input driver of the virtio test guest as ABS_X/ABS_Y scaled to 0..0x7fff
/// (x * 0x7fff / width, as QEMU scales), and a click as BTN_LEFT down and up.
#[test]
fn pointer_positions_reach_a_guest_reading_the_virtio_tablet_exactly() {
    let d = free_display();
    let vnc = format!("127.0.0.1:{d}");
    let k = guest("virtio");
    let vm = Vm::troupe(&[
        "-nodefaults",
        "-vga",
        "std",
        "-serial",
        "stdio",
        "-vnc",
        &vnc,
        "-device",
        "virtio-tablet-pci",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-kernel",
        k.to_str().unwrap(),
        "-append",
        "dev=input clicks=1 wait=60",
    ])
    .spawn();
    vm.expect_stdout("vinput: name 'QEMU Virtio Tablet'", Duration::from_secs(20));
    vm.expect_stdout("vinput: ready", Duration::from_secs(20));
    let mut c = Raw::connect(5900 + d);
    c.init();
    // The text-mode screen is 720x400.
    c.pointer(0, 360, 200);
    vm.expect_stdout(
        "vinput: x=16383 y=16383 buttons=0x0",
        Duration::from_secs(10),
    );
    c.pointer(0, 719, 0);
    vm.expect_stdout("vinput: x=32721 y=0 buttons=0x0", Duration::from_secs(10));
    c.pointer(1, 180, 100);
    vm.expect_stdout("vinput: x=8191 y=8191 buttons=0x1", Duration::from_secs(10));
    c.pointer(0, 180, 100);
    vm.expect_stdout("vinput: click at x=8191 y=8191", Duration::from_secs(10));
    let mut vm = vm;
    assert_eq!(
        common::code(vm.wait(Duration::from_secs(10))),
        1,
        "the guest saw its click"
    );
}

/// Passwords from the monitor, as users set them: `-vnc ...,password=on` refuses everyone
/// until `change vnc password` (typed at the `Password:` prompt) sets one; vncdotool then
/// gets in with it; `expire_password vnc now` locks it out again; `set_password` works too.
#[test]
fn monitor_sets_and_expires_the_vnc_password() {
    require_vncdotool();
    let d = free_display();
    let mon_port = common::free_port();
    let vnc = format!("127.0.0.1:{d},password=on");
    let mon = format!("tcp:127.0.0.1:{mon_port},server,nowait");
    let k = guest("demo");
    let _vm = Vm::troupe(&[
        "-m",
        "64",
        "-nodefaults",
        "-vga",
        "std",
        "-serial",
        "null",
        "-vnc",
        &vnc,
        "-monitor",
        &mon,
        "-kernel",
        k.to_str().unwrap(),
    ])
    .spawn();
    let server = format!("127.0.0.1::{}", 5900 + d);
    let dir = TempDir::new("vnc-monpw");
    let capture = |pw: &str, out: &str| capture_with_password(&server, &dir, pw, out);
    // Monitor session (plain TCP): wait for the prompt after each line.
    let mut m = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match TcpStream::connect(("127.0.0.1", mon_port)) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("monitor: {e}"),
            }
        }
    };
    m.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let until = |m: &mut TcpStream, needle: &str| {
        let mut got = Vec::new();
        let mut b = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains(needle) {
            let n = m.read(&mut b).expect("monitor read");
            assert!(n > 0, "monitor closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&b[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    until(&mut m, "(qemu) ");
    assert!(
        !capture("secret12", "none.png"),
        "no password set yet: refused"
    );
    m.write_all(b"change vnc password\r").unwrap();
    until(&mut m, "Password: ");
    m.write_all(b"secret12\r").unwrap();
    let echoed = until(&mut m, "(qemu) ");
    assert!(
        !echoed.contains("secret12"),
        "the password is not echoed: {echoed:?}"
    );
    assert!(!capture("wrong", "wrong.png"));
    assert!(capture("secret12", "right.png"));
    let mut cmd = |line: &str| {
        m.write_all(format!("{line}\r").as_bytes()).unwrap();
        until(&mut m, "(qemu) ")
    };
    cmd("expire_password vnc now");
    assert!(
        !capture("secret12", "expired.png"),
        "expired password refused"
    );
    // As in QEMU, a new password keeps the expiry: lift it too.
    cmd("set_password vnc other123");
    cmd("expire_password vnc never");
    assert!(capture("other123", "other.png"));
}

/// A CA and a server certificate for 127.0.0.1 signed by it, under QEMU's file names.
fn tls_creds(dir: &TempDir) -> std::path::PathBuf {
    let d = dir.path("creds");
    std::fs::create_dir_all(&d).unwrap();
    let ossl = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(&d)
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    ossl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca-key.pem",
                "-out",
                "ca-cert.pem",
                "-subj",
                "/CN=troupe test CA",
                "-days",
                "2",
            ],
        ]
        .concat(),
    );
    ossl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server-key.pem",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    std::fs::write(d.join("ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    ossl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca-cert.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-out",
        "server-cert.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    d
}

#[test]
fn tls_x509_tigervnc_sees_the_console_over_vencrypt_and_plain_clients_are_offered_only_tls() {
    require_vncdotool(); // PIL for the comparison
    let dir = TempDir::new("vnc-tls");
    let creds = tls_creds(&dir);
    let object = format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=server,verify-peer=off",
        creds.display()
    );
    let vm = start_with(",tls-creds=tls0", false, &["-object", &object]);
    // A client that does not speak TLS is offered VeNCrypt (19) and nothing else.
    let mut raw = vm.connect();
    assert_eq!(raw.read(12), b"RFB 003.008\n");
    raw.write(b"RFB 003.008\n");
    assert_eq!(raw.read(2), [1, 19]);
    raw.write(&[19]);
    assert_eq!(raw.read(2), [0, 2], "VeNCrypt 0.2");
    raw.write(&[0, 2]);
    assert_eq!(
        raw.read(6),
        [0, 1, 0, 0, 1, 4],
        "version accepted; one subtype: X509None (260)"
    );
    drop(raw);
    // TigerVNC, trusting the CA, shows the console through TLS.
    let x = Xvfb::start();
    let want = write_ppm(
        &dir,
        "want.ppm",
        &testpattern::expected(640, 480, 0, &[], ""),
    );
    let mut viewer = Command::new("vncviewer")
        .env("DISPLAY", &x.display)
        .args([
            "-SecurityTypes=X509None",
            &format!("-X509CA={}", creds.join("ca-cert.pem").display()),
            "-AutoSelect=0",
            "-FullColor=1",
            "-NoJPEG=1",
            "-PreferredEncoding=Raw",
            "-Shared=1",
            "-RemoteResize=0",
            "-DotWhenNoCursor=0",
            &vm.server(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("vncviewer (TigerVNC) must be installed");
    let shown = viewer_shows(&x, &dir.path("tls.png"), &want);
    let _ = viewer.kill();
    let _ = viewer.wait();
    if let Err(last) = shown {
        panic!(
            "the console never appeared in the TLS viewer: {last}\n{}",
            vm.vm.stderr.text()
        );
    }
}

#[test]
fn tls_credentials_missing_or_unnamed_are_refused_at_start() {
    let dir = TempDir::new("vnc-tls-bad");
    let empty = dir.path("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let demo = guest("demo");
    let run = |args: &[&str]| {
        let out = Command::new(common::troupe_bin())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let k = demo.to_str().unwrap();
    let with_creds = |dir: &std::path::Path| {
        let obj = format!("tls-creds-x509,id=t,dir={},endpoint=server", dir.display());
        run(&[
            "-object",
            &obj,
            "-vnc",
            "127.0.0.1:0,tls-creds=t",
            "-kernel",
            k,
        ])
    };
    let (code, err) = with_creds(&empty);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("ca-cert.pem") && err.contains("No such file"),
        "{err}"
    );
    let (code, err) = run(&["-vnc", "127.0.0.1:0,tls-creds=nope", "-kernel", k]);
    assert_eq!(code, Some(1));
    assert!(err.contains("TLS credentials 'nope' not found"), "{err}");
    let creds = tls_creds(&dir);
    std::fs::write(creds.join("server-key.pem"), "not a key").unwrap();
    let (code, err) = with_creds(&creds);
    assert_eq!(code, Some(1));
    assert!(err.contains("server-key.pem"), "{err}");
}
