//! The first boot as QEMU users know it (issue 21): with no display option troupe, like a
//! QEMU built without a GUI, serves VNC on localhost display 0 (or the next free one) and
//! says so on stderr; the monitor and the serial port are text consoles on that display,
//! reached with Ctrl+Alt+2 and Ctrl+Alt+3, Ctrl+Alt+1 going back to the guest's screen.
//!
//! Checked through the user's door: a raw RFB client (Raw + DesktopSize) keeps a copy of
//! the framebuffer, types keysyms, and reads the text consoles' characters back from the
//! pixels with the VGA BIOS font they are drawn with.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{guest, Running, Vm};

/// The tests here each start VMs on the default displays: one at a time, so the two-VM
/// test knows which displays are free.
static DEFAULT_DISPLAYS: std::sync::Mutex<()> = std::sync::Mutex::new(());

const CTRL: u32 = 0xffe3;
const ALT: u32 = 0xffe9;
const RETURN: u32 = 0xff0d;
const PAGE_UP: u32 = 0xff55;

/// A VNC client that keeps the framebuffer.
struct Rfb {
    s: TcpStream,
    w: usize,
    h: usize,
    fb: Vec<u32>,
}

impl Rfb {
    fn connect(port: u16) -> Self {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the VNC port");
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut c = Self {
            s,
            w: 0,
            h: 0,
            fb: Vec::new(),
        };
        assert_eq!(c.read(12), b"RFB 003.008\n");
        c.write(b"RFB 003.008\n");
        assert_eq!(c.read(2), [1, 1], "security: None");
        c.write(&[1]);
        assert_eq!(c.read(4), [0; 4]);
        c.write(&[1]);
        let init = c.read(24);
        let n = u32::from_be_bytes(init[20..24].try_into().unwrap()) as usize;
        c.read(n);
        c.resize(
            u16::from_be_bytes([init[0], init[1]]).into(),
            u16::from_be_bytes([init[2], init[3]]).into(),
        );
        // Raw, DesktopSize.
        let mut m = vec![2, 0, 0, 2];
        m.extend_from_slice(&0i32.to_be_bytes());
        m.extend_from_slice(&(-223i32).to_be_bytes());
        c.write(&m);
        c.request(false);
        c
    }

    fn read(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.s.read_exact(&mut b).expect("read from the VNC server");
        b
    }

    fn write(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    fn resize(&mut self, w: usize, h: usize) {
        self.w = w;
        self.h = h;
        self.fb = vec![0; w * h];
    }

    fn request(&mut self, incremental: bool) {
        let mut m = vec![3, u8::from(incremental), 0, 0, 0, 0];
        m.extend_from_slice(&(self.w as u16).to_be_bytes());
        m.extend_from_slice(&(self.h as u16).to_be_bytes());
        self.write(&m);
    }

    /// Read one server message, applying a FramebufferUpdate; then ask for the next one.
    fn pump(&mut self) {
        let t = self.read(1)[0];
        match t {
            0 => {
                let h = self.read(3);
                let n = u16::from_be_bytes([h[1], h[2]]);
                let mut resized = false;
                for _ in 0..n {
                    let r = self.read(12);
                    let g = |i: usize| usize::from(u16::from_be_bytes([r[i], r[i + 1]]));
                    let (x, y, w, h) = (g(0), g(2), g(4), g(6));
                    match i32::from_be_bytes(r[8..12].try_into().unwrap()) {
                        0 => {
                            let px = self.read(w * h * 4);
                            for row in 0..h {
                                for col in 0..w {
                                    let i = (row * w + col) * 4;
                                    let v = u32::from_le_bytes(px[i..i + 4].try_into().unwrap());
                                    if let Some(p) = self.fb.get_mut((y + row) * self.w + x + col) {
                                        *p = v & 0xff_ffff;
                                    }
                                }
                            }
                        }
                        -223 => {
                            self.resize(w, h);
                            resized = true;
                        }
                        e => panic!("unexpected encoding {e}"),
                    }
                }
                self.request(!resized);
            }
            2 => {} // Bell
            3 => {
                let h = self.read(7);
                let n = u32::from_be_bytes(h[3..7].try_into().unwrap()) as usize;
                self.read(n);
            }
            other => panic!("unexpected server message {other}"),
        }
    }

    /// Take updates until `f` holds; panics with `what` and the screen's text after 30 s.
    fn until(&mut self, what: &str, font: &Font, f: impl Fn(&Rfb) -> bool) {
        self.until_within(Duration::from_secs(30), what, font, f);
    }

    fn until_within(&mut self, limit: Duration, what: &str, font: &Font, f: impl Fn(&Rfb) -> bool) {
        let deadline = Instant::now() + limit;
        self.s
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "never saw {what}; the screen ({}x{}) reads:\n{}",
                self.w,
                self.h,
                font.text(self).join("\n")
            );
            let mut b = [0u8; 1];
            if self.s.peek(&mut b).is_ok() {
                self.s
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                self.pump();
                self.s
                    .set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
            }
        }
        self.s
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
    }

    /// Take updates until none has come for `quiet`.
    fn settle(&mut self, quiet: Duration) {
        self.s.set_read_timeout(Some(quiet)).unwrap();
        let mut b = [0u8; 1];
        while self.s.peek(&mut b).is_ok() {
            self.s
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            self.pump();
            self.s.set_read_timeout(Some(quiet)).unwrap();
        }
        self.s
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
    }

    fn key(&mut self, keysym: u32, down: bool) {
        let mut m = vec![4, u8::from(down), 0, 0];
        m.extend_from_slice(&keysym.to_be_bytes());
        self.write(&m);
    }

    /// Press the keys in order, release them in reverse.
    fn chord(&mut self, keys: &[u32]) {
        for k in keys {
            self.key(*k, true);
        }
        for k in keys.iter().rev() {
            self.key(*k, false);
        }
    }

    fn type_line(&mut self, text: &str) {
        for c in text.bytes() {
            self.chord(&[u32::from(c)]);
        }
        self.chord(&[RETURN]);
    }
}

/// Reads text consoles back: 8x16 cells, each matched against the VGA BIOS font.
struct Font {
    glyphs: HashMap<[u8; 16], char>,
}

impl Font {
    fn load() -> Self {
        let rom = std::fs::read("/usr/share/seabios/vgabios-stdvga.bin").expect("seabios");
        let font = devices::vga::font_from_rom(&rom).expect("the VGA BIOS has a font");
        let mut glyphs = HashMap::new();
        for c in (0x20u8..0x7f).rev() {
            let g: [u8; 16] = font[usize::from(c) * 16..][..16].try_into().unwrap();
            glyphs.insert(g, char::from(c));
        }
        Self { glyphs }
    }

    /// The screen's rows (only for a text console's size: multiples of 8x16).
    fn text(&self, rfb: &Rfb) -> Vec<String> {
        if !rfb.w.is_multiple_of(8) || !rfb.h.is_multiple_of(16) || rfb.w == 720 {
            return vec![format!("(not a text console: {}x{})", rfb.w, rfb.h)];
        }
        (0..rfb.h / 16)
            .map(|row| {
                let line: String = (0..rfb.w / 8)
                    .map(|col| {
                        let mut g = [0u8; 16];
                        for (l, bits) in g.iter_mut().enumerate() {
                            for b in 0..8 {
                                let p = rfb.fb[(row * 16 + l) * rfb.w + col * 8 + b];
                                if p != 0 {
                                    *bits |= 0x80 >> b;
                                }
                            }
                        }
                        // Reverse video (a highlighted menu entry, the cursor):
                        // the glyph's complement.
                        let inverse = g.map(|b| !b);
                        *self
                            .glyphs
                            .get(&g)
                            .or_else(|| self.glyphs.get(&inverse))
                            .unwrap_or(&'?')
                    })
                    .collect();
                line.trim_end().to_string()
            })
            .collect()
    }

    fn shows(&self, rfb: &Rfb, needle: &str) -> bool {
        self.text(rfb).iter().any(|l| l.contains(needle))
    }
}

/// The port in troupe's `VNC server running on 127.0.0.1:PORT` line.
fn announced_port(vm: &Running) -> u16 {
    const LINE: &str = "VNC server running on ";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let err = vm.stderr.text();
        if let Some(at) = err.find(LINE) {
            if let Some(line) = err[at..]
                .split_inclusive('\n')
                .next()
                .filter(|l| l.ends_with('\n'))
            {
                let addr = line[LINE.len()..].trim_end();
                let port = addr
                    .strip_prefix("127.0.0.1:")
                    .unwrap_or_else(|| panic!("QEMU announces 127.0.0.1:PORT, not {addr}"));
                return port.parse().unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no `{LINE}...` line on stderr:\n{err}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// troupe with no display, serial or monitor option: the demo guest (it draws a VGA text
/// screen and echoes COM1), redrawing only on input so its screen holds still.
fn default_vm() -> Running {
    let demo = guest("demo");
    Vm::troupe(&[
        "-m",
        "128",
        "-kernel",
        demo.to_str().unwrap(),
        "-append",
        "redraw_ms=1000000",
    ])
    .spawn()
}

#[test]
fn no_display_option_gives_a_vnc_display_with_the_monitor_and_serial_consoles() {
    common::require_kvm();
    let _one_at_a_time = DEFAULT_DISPLAYS.lock().unwrap_or_else(|p| p.into_inner());
    let font = Font::load();
    let mut vm = default_vm();
    let port = announced_port(&vm);
    assert!((5900..=5999).contains(&port), "port {port}");
    let mut rfb = Rfb::connect(port);

    // The guest's screen: VGA text mode, 720x400, with something drawn on it.
    rfb.until("the guest's VGA text screen", &font, |r| {
        r.w == 720 && r.h == 400 && r.fb.iter().any(|p| *p != 0)
    });
    rfb.settle(Duration::from_millis(700));
    let guest_screen = rfb.fb.clone();

    // Ctrl+Alt+2: the monitor, an 80x24 text console (640x384).
    rfb.chord(&[CTRL, ALT, u32::from(b'2')]);
    rfb.until("the (qemu) prompt", &font, |r| {
        r.w == 640 && r.h == 384 && font.shows(r, "(qemu)")
    });
    assert!(font.shows(
        &rfb,
        "QEMU 7.2.22 monitor - type 'help' for more information"
    ));
    rfb.type_line("info status");
    rfb.until("VM status: running", &font, |r| {
        font.shows(r, "VM status: running")
    });
    // A command typed there is echoed with the prompt, as on telnet.
    assert!(font.shows(&rfb, "(qemu) info status"));

    // Ctrl+Alt+1: the guest's screen again, pixel for pixel.
    rfb.chord(&[CTRL, ALT, u32::from(b'1')]);
    rfb.until("the guest's screen back", &font, |r| r.w == 720);
    rfb.settle(Duration::from_millis(700));
    assert!(
        rfb.fb == guest_screen,
        "the guest's screen came back different"
    );

    // Ctrl+Alt+3: COM1. The demo's start-up lines are there, and it echoes what is typed.
    rfb.chord(&[CTRL, ALT, u32::from(b'3')]);
    rfb.until("the demo's serial banner", &font, |r| {
        r.w == 640 && font.shows(r, "demo: serial input is echoed")
    });
    rfb.type_line("hello serial");
    rfb.until("the guest's echo", &font, |r| font.shows(r, "hello serial"));
    assert!(
        !vm.stdout.text().contains("hello serial"),
        "COM1 is not on the terminal any more"
    );

    // Back to the monitor: `quit` ends the VM.
    rfb.chord(&[CTRL, ALT, u32::from(b'2')]);
    rfb.until("the monitor again", &font, |r| font.shows(r, "VM status"));
    rfb.type_line("quit");
    let st = vm.wait(Duration::from_secs(20));
    assert_eq!(common::code(st), 0, "stderr:\n{}", vm.stderr.text());
}

#[test]
fn sendkey_switches_consoles_and_ctrl_page_up_scrolls_back() {
    common::require_kvm();
    let _one_at_a_time = DEFAULT_DISPLAYS.lock().unwrap_or_else(|p| p.into_inner());
    let font = Font::load();
    let mut vm = default_vm();
    let port = announced_port(&vm);
    let mut rfb = Rfb::connect(port);
    rfb.until("the guest's screen", &font, |r| r.w == 720);
    // Switch with the monitor's own sendkey, typed on the monitor console itself after
    // going there once: `sendkey ctrl-alt-3` must show the serial console.
    rfb.chord(&[CTRL, ALT, u32::from(b'2')]);
    rfb.until("the (qemu) prompt", &font, |r| font.shows(r, "(qemu)"));
    rfb.type_line("sendkey ctrl-alt-3");
    rfb.until("the serial console", &font, |r| {
        font.shows(r, "demo: serial input is echoed")
    });
    // Fill the 24-row serial console past its height, then look back.
    for i in 0..30 {
        rfb.type_line(&format!("line{i:02}"));
    }
    rfb.until("the last line", &font, |r| font.shows(r, "line29"));
    assert!(!font.shows(&rfb, "line00"), "line00 scrolled off");
    rfb.chord(&[CTRL, PAGE_UP]);
    rfb.until("scrollback", &font, |r| {
        font.shows(r, "line00") && !font.shows(r, "line29")
    });
    vm.kill();
}

#[test]
fn two_vms_without_display_options_get_displays_0_and_1_or_the_next_free() {
    common::require_kvm();
    let _one_at_a_time = DEFAULT_DISPLAYS.lock().unwrap_or_else(|p| p.into_inner());
    // Which displays are free now: the two VMs must take the first two, as QEMU's
    // `localhost:0,to=99` does (whatever else on this machine holds 5900 and up).
    let free: Vec<u16> = (5900..=5999)
        .filter(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .take(2)
        .collect();
    let mut a = default_vm();
    let mut b = default_vm();
    let mut got = vec![announced_port(&a), announced_port(&b)];
    got.sort_unstable();
    assert_eq!(got, free);
    for p in got {
        let mut s = TcpStream::connect(("127.0.0.1", p)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut v = [0u8; 12];
        s.read_exact(&mut v).unwrap();
        assert_eq!(&v, b"RFB 003.008\n");
    }
    a.kill();
    b.kill();
}

/// Xvfb on a free display number, killed at drop.
struct Xvfb {
    child: std::process::Child,
    display: String,
}

impl Xvfb {
    fn start() -> Self {
        for n in 140..190 {
            if std::path::Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
                || std::path::Path::new(&format!("/tmp/.X{n}-lock")).exists()
            {
                continue;
            }
            let display = format!(":{n}");
            let child = std::process::Command::new("Xvfb")
                .args([&display, "-screen", "0", "1280x1024x24", "-nolisten", "tcp"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("Xvfb must be installed");
            let deadline = Instant::now() + Duration::from_secs(10);
            while !std::path::Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() {
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

/// The pixels of a binary PPM (P6; ImageMagick writes maxval 65535 for an X screen) as
/// (width, height, 0xRRGGBB values).
fn read_ppm(path: &std::path::Path) -> (usize, usize, Vec<u32>) {
    let b = std::fs::read(path).unwrap();
    let mut fields = Vec::new();
    let mut at = 0;
    while fields.len() < 4 {
        while b[at].is_ascii_whitespace() {
            at += 1;
        }
        let start = at;
        while !b[at].is_ascii_whitespace() {
            at += 1;
        }
        fields.push(String::from_utf8_lossy(&b[start..at]).into_owned());
    }
    assert_eq!(fields[0], "P6");
    let (w, h): (usize, usize) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
    // Samples of two bytes (big-endian) above maxval 255: keep the high byte.
    let step = if fields[3] == "255" { 1 } else { 2 };
    let px = b[at + 1..]
        .chunks(3 * step)
        .take(w * h)
        .map(|c| u32::from(c[0]) << 16 | u32::from(c[step]) << 8 | u32::from(c[2 * step]))
        .collect();
    (w, h, px)
}

/// Whether `want` (w x h pixels) appears in the screenshot, exactly but for at most 0.1%
/// of its pixels (a viewer's pointer). Candidates are anchored on `want`'s first lit pixel,
/// so a mostly black picture is not "found" in any black area.
fn appears_in(shot: &(usize, usize, Vec<u32>), want: &[u32], w: usize, h: usize) -> bool {
    let (sw, sh, spx) = shot;
    let Some(first) = want.iter().position(|p| *p != 0) else {
        return false;
    };
    let (fx, fy) = (first % w, first / w);
    for (i, p) in spx.iter().enumerate() {
        let (sx, sy) = (i % sw, i / sw);
        if *p != want[first] || sx < fx || sy < fy {
            continue;
        }
        let (ox, oy) = (sx - fx, sy - fy);
        if ox + w > *sw || oy + h > *sh {
            continue;
        }
        let bad = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .filter(|(x, y)| spx[(oy + y) * sw + ox + x] != want[y * w + x])
            .count();
        if bad * 1000 <= w * h {
            return true;
        }
    }
    false
}

#[test]
fn tigervnc_follows_the_switch_to_the_monitor_console() {
    common::require_kvm();
    let _one_at_a_time = DEFAULT_DISPLAYS.lock().unwrap_or_else(|p| p.into_inner());
    let font = Font::load();
    let vm = default_vm();
    let port = announced_port(&vm);
    let x = Xvfb::start();
    let mut viewer = std::process::Command::new("vncviewer")
        .env("DISPLAY", &x.display)
        .args([
            "-AutoSelect=0",
            "-FullColor=1",
            "-NoJPEG=1",
            "-PreferredEncoding=ZRLE",
            "-Shared=1",
            "-RemoteResize=0",
            "-DotWhenNoCursor=0",
            &format!("127.0.0.1::{port}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("vncviewer (TigerVNC) must be installed");
    // A second client types Ctrl+Alt+2: the display switches for every client.
    let mut rfb = Rfb::connect(port);
    rfb.until("the guest's screen", &font, |r| r.w == 720);
    rfb.chord(&[CTRL, ALT, u32::from(b'2')]);
    rfb.until("the (qemu) prompt", &font, |r| {
        r.w == 640 && font.shows(r, "(qemu)")
    });
    rfb.settle(Duration::from_millis(500));
    let dir = common::TempDir::new("display-tiger");
    let shot = dir.path("screen.ppm");
    // TigerVNC shows a "Press F8" banner over the picture for a few seconds at start:
    // poll until the monitor console is on the X screen, clean, or time is up.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        std::thread::sleep(Duration::from_millis(700));
        let st = std::process::Command::new("import")
            .env("DISPLAY", &x.display)
            .args(["-window", "root", shot.to_str().unwrap()])
            .status()
            .expect("ImageMagick import");
        if st.success() && appears_in(&read_ppm(&shot), &rfb.fb, rfb.w, rfb.h) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "TigerVNC never showed the monitor console"
        );
    }
    let _ = viewer.kill();
    let _ = viewer.wait();
}

/// The book's first boot: only `-m` and `-cdrom`. GRUB (its menu on the screen and on
/// COM1) is on the VNC display; on Ctrl+Alt+3 GRUB's serial console takes typed input.
#[test]
fn only_m_and_cdrom_a_grub_cd_on_the_default_display_with_its_serial_console() {
    common::require_kvm();
    let _one_at_a_time = DEFAULT_DISPLAYS.lock().unwrap_or_else(|p| p.into_inner());
    let font = Font::load();
    let dir = common::TempDir::new("display-grub");
    let iso = common::grub_rescue_iso(
        &dir,
        "serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         set timeout=-1\n\
         menuentry \"troupe display test\" { halt }\n",
    );
    let mut vm = Vm::troupe(&["-m", "128", "-cdrom", iso.to_str().unwrap()]).spawn();
    let port = announced_port(&vm);
    let mut rfb = Rfb::connect(port);
    rfb.chord(&[CTRL, ALT, u32::from(b'3')]);
    // GRUB is emulated ring-0 code here: its menu takes a while.
    rfb.until_within(
        Duration::from_secs(120),
        "GRUB's menu on the serial console",
        &font,
        |r| r.w == 640 && font.shows(r, "troupe display test"),
    );
    rfb.chord(&[u32::from(b'c')]);
    rfb.until("GRUB's command line", &font, |r| font.shows(r, "grub>"));
    rfb.type_line("echo typed-over-vnc");
    rfb.until("GRUB's answer", &font, |r| {
        font.text(r).iter().any(|l| l == "typed-over-vnc")
    });
    rfb.chord(&[CTRL, ALT, u32::from(b'2')]);
    rfb.until("the monitor", &font, |r| font.shows(r, "(qemu)"));
    rfb.type_line("quit");
    assert_eq!(common::code(vm.wait(Duration::from_secs(20))), 0);
}

/// With `-k de` a VNC client's keysyms are keys of the German layout for the guest, but a
/// text console takes the characters themselves: `y`, `z` and `@` type as they read.
#[test]
fn text_consoles_type_the_clients_characters_whatever_the_keyboard_layout() {
    common::require_kvm();
    let font = Font::load();
    let d = common::free_display();
    let demo = guest("demo");
    let vnc = format!("127.0.0.1:{d}");
    let mut vm = Vm::troupe(&[
        "-m",
        "128",
        "-k",
        "de",
        "-vnc",
        &vnc,
        "-kernel",
        demo.to_str().unwrap(),
    ])
    .spawn();
    let port = 5900 + d;
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "VNC port {port} never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut rfb = Rfb::connect(port);
    rfb.chord(&[CTRL, ALT, u32::from(b'2')]);
    rfb.until("the (qemu) prompt", &font, |r| font.shows(r, "(qemu)"));
    for c in "xyz@".bytes() {
        rfb.chord(&[u32::from(c)]);
    }
    rfb.until("the typed characters", &font, |r| {
        font.shows(r, "(qemu) xyz@")
    });
    vm.kill();
}
