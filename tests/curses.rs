//! `-display curses`, as a user sees it: troupe runs in a terminal (a pseudo-terminal
//! here, 80x25, whose output a VT100 model turns back into a screen); the guest's text
//! screen, the monitor on Alt+2, keys typed reaching the guest, and the terminal given
//! back as it was when troupe quits.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::terminal::Terminal;

/// troupe on a pseudo-terminal, its screen followed by a terminal model.
struct Tty {
    child: Child,
    master: File,
    screen: Arc<Mutex<Terminal>>,
    raw: Arc<Mutex<Vec<u8>>>,
}

impl Tty {
    fn spawn(args: &[&str]) -> Self {
        let (mut m, mut s) = (0, 0);
        let ws = libc::winsize {
            ws_row: 25,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty fills two descriptors we then own.
        let rc =
            unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: fresh descriptors from openpty.
        let (master, slave) = unsafe { (File::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
        let out = slave.try_clone().unwrap();
        let err = slave.try_clone().unwrap();
        let child = Command::new(common::troupe_bin())
            .args(args)
            .stdin(Stdio::from(slave))
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start troupe");
        let screen = Arc::new(Mutex::new(Terminal::new(80, 25)));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let (sc, rw) = (screen.clone(), raw.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once troupe (the last holder of the pty's other end) is gone.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sc.lock().unwrap().feed(&buf[..n]);
                rw.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Tty {
            child,
            master,
            screen,
            raw,
        }
    }

    fn rows(&self) -> Vec<String> {
        let t = self.screen.lock().unwrap();
        (0..25).map(|y| t.visible_text(y)).collect()
    }

    /// Wait until a row of the screen contains `text`.
    fn until(&mut self, what: &str, within: Duration, text: &str) {
        let deadline = Instant::now() + within;
        loop {
            if self.rows().iter().any(|r| r.contains(text)) {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "troupe exited ({st}) before {what}; output:\n{}",
                    String::from_utf8_lossy(&self.raw.lock().unwrap())
                );
            }
            assert!(
                Instant::now() < deadline,
                "{what}: '{text}' never shown; the screen:\n{}",
                self.rows().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn type_bytes(&mut self, b: &[u8]) {
        self.master.write_all(b).unwrap();
        self.master.flush().unwrap();
    }

    fn exit_code(&mut self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return common::code(st);
            }
            assert!(Instant::now() < deadline, "troupe did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The terminal's settings as troupe leaves them (raw or cooked).
    fn echo_on(&self) -> bool {
        // SAFETY: termios is plain data; tcgetattr fills it from the pty's master side.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr fills the termios we own.
        let rc = unsafe { libc::tcgetattr(self.master.as_raw_fd(), &mut t) };
        assert_eq!(rc, 0);
        t.c_lflag & libc::ECHO != 0
    }
}

impl Drop for Tty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_guests_text_screen_keys_and_the_monitor_on_alt_2() {
    common::require_kvm();
    let demo = common::guest("demo");
    let mut t = Tty::spawn(&[
        "-display",
        "curses",
        "-m",
        "64",
        "-kernel",
        demo.to_str().unwrap(),
    ]);
    // The demo guest's VGA text screen: its key counter, then a key typed in the terminal.
    t.until(
        "the guest's text screen",
        Duration::from_secs(30),
        "0 typed",
    );
    assert!(
        !t.echo_on(),
        "the terminal is in raw mode while troupe runs"
    );
    t.type_bytes(b"k");
    t.until(
        "a key typed reaching the guest",
        Duration::from_secs(10),
        "1 typed",
    );
    // Alt+2 (Esc 2): the monitor, the full HMP.
    t.type_bytes(b"\x1b2");
    t.until("the monitor", Duration::from_secs(10), "(qemu)");
    t.type_bytes(b"info status\r");
    t.until(
        "the monitor's answer",
        Duration::from_secs(10),
        "VM status: running",
    );
    // Alt+1: the guest's screen again, and keys go to the guest again.
    t.type_bytes(b"\x1b1");
    t.until(
        "the guest's screen again",
        Duration::from_secs(10),
        "1 typed",
    );
    t.type_bytes(b"x");
    t.until("a second key", Duration::from_secs(10), "2 typed");
    t.type_bytes(b"\x1b2quit\r");
    assert_eq!(t.exit_code(Duration::from_secs(20)), 0);
    assert!(t.echo_on(), "the terminal is given back as it was");
    let raw = t.raw.lock().unwrap().clone();
    assert!(
        raw.ends_with(b"\x1b[?1049l"),
        "troupe leaves the alternate screen last: {:?}",
        String::from_utf8_lossy(&raw[raw.len().saturating_sub(60)..])
    );
}

#[test]
fn grubs_menu_shows_in_the_terminal() {
    common::require_kvm();
    let dir = common::TempDir::new("curses-grub");
    let iso = common::grub_rescue_iso(
        &dir,
        "set timeout=-1\nmenuentry \"troupe curses entry\" { halt }\n",
    );
    let mut t = Tty::spawn(&[
        "-display",
        "curses",
        "-m",
        "128",
        "-cdrom",
        iso.to_str().unwrap(),
    ]);
    // GRUB is emulated ring-0 code here: its menu takes a while.
    t.until(
        "GRUB's menu",
        Duration::from_secs(120),
        "troupe curses entry",
    );
    assert!(
        t.rows().iter().any(|r| r.contains("GNU GRUB")),
        "{}",
        t.rows().join("\n")
    );
    t.type_bytes(b"\x1b2");
    t.until("the monitor", Duration::from_secs(10), "(qemu)");
    t.type_bytes(b"quit\r");
    assert_eq!(t.exit_code(Duration::from_secs(20)), 0);
}

#[test]
fn curses_needs_a_terminal_and_the_terminal() {
    let demo = common::guest("demo");
    let k = demo.to_str().unwrap();
    let run = |args: &[&str]| {
        Command::new(common::troupe_bin())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&["-display", "curses", "-m", "64", "-kernel", k]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("-display curses: standard output is not a terminal"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["-curses", "-serial", "stdio", "-kernel", k]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("-serial stdio: the terminal is the curses display's"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["-display", "curses,charset=UTF-8", "-kernel", k]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("charset 'UTF-8' is not supported"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
