//! Live migration between two troupe processes, and to and from files, as a QEMU user
//! drives it: the destination started with `-incoming`, `migrate` typed on the source's
//! monitor, `info migrate` / `query-migrate` watched. The guest (`memtouch`) keeps
//! rewriting a memory area and checking what it wrote before, so a page lost, stale or
//! corrupted on the way is caught by the guest itself on the destination.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::netns::NetNs;
use common::{code, free_display, free_port, guest, Qmp, Running, TempDir, Vm};
use serde_json::Value;

/// `qemu-img ARGS IMAGE TAIL`, which must succeed; its output.
fn qemu_img(args: &[&str], image: &Path, tail: &[&str]) -> String {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .arg(image)
        .args(tail)
        .output()
        .expect("qemu-img (qemu-utils)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// One troupe process running memtouch, with its QMP session and serial log.
struct Side {
    vm: Running,
    qmp: Qmp,
    serial: PathBuf,
    /// Events seen so far, in order (`MIGRATION <status>`, `MIGRATION_PASS`, `STOP`...).
    events: Vec<String>,
}

fn start(dir: &TempDir, name: &str, mib: u32, extra: &[&str]) -> Side {
    let append = format!("mib={mib} report_ms=100");
    start_guest(dir, name, "memtouch", &append, extra)
}

/// One troupe process running test guest `kernel` with command line `append`.
fn start_guest(dir: &TempDir, name: &str, kernel: &str, append: &str, extra: &[&str]) -> Side {
    start_in(None, dir, name, kernel, append, extra)
}

/// One troupe process (inside network namespace `ns` if given) running test guest
/// `kernel` with command line `append`; QMP on a Unix socket, which reaches into a
/// namespace.
fn start_in(
    ns: Option<&NetNs>,
    dir: &TempDir,
    name: &str,
    kernel: &str,
    append: &str,
    extra: &[&str],
) -> Side {
    let kernel = guest(kernel);
    let mut args = vec![
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-device",
        "virtio-rng-pci",
        "-kernel",
        kernel.to_str().unwrap(),
        "-append",
        append,
    ];
    args.extend_from_slice(extra);
    let serial = dir.path(&format!("{name}.serial"));
    launch(ns, dir, name, &format!("file:{}", serial.display()), &args)
}

/// One troupe process with QMP on a Unix socket, COM1 on chardev `serial`, and `args`.
fn launch(ns: Option<&NetNs>, dir: &TempDir, name: &str, serial: &str, args: &[&str]) -> Side {
    let sock = dir.path(&format!("{name}.qmp"));
    let qmp = format!("unix:{},server,nowait", sock.display());
    let mut all = vec![
        "-nodefaults",
        "-display",
        "none",
        "-m",
        "128",
        "-serial",
        serial,
        "-qmp",
        &qmp,
    ];
    all.extend_from_slice(args);
    let vm = match ns {
        Some(ns) => ns.troupe(&all),
        None => Vm::troupe(&all),
    }
    .spawn();
    let mut qmp = Qmp::open_unix(&sock);
    qmp.ask(r#"{"execute":"qmp_capabilities"}"#);
    Side {
        vm,
        qmp,
        serial: dir.path(&format!("{name}.serial")),
        events: Vec::new(),
    }
}

impl Side {
    /// Run a QMP command; events that come before its answer are recorded.
    fn ask(&mut self, cmd: &str, args: Value) -> Value {
        self.qmp.send(
            serde_json::json!({"execute": cmd, "arguments": args})
                .to_string()
                .as_bytes(),
        );
        loop {
            let v: Value = serde_json::from_str(&self.qmp.line()).unwrap();
            match v["event"].as_str() {
                Some("MIGRATION") => self.events.push(format!(
                    "MIGRATION {}",
                    v["data"]["status"].as_str().unwrap_or_default()
                )),
                Some(e) => self.events.push(e.to_string()),
                None => return v,
            }
        }
    }

    fn hmp(&mut self, line: &str) -> String {
        let v = self.ask(
            "human-monitor-command",
            serde_json::json!({"command-line": line}),
        );
        v["return"]
            .as_str()
            .unwrap_or_else(|| panic!("{line}: {v}"))
            .to_string()
    }

    fn status(&mut self) -> String {
        self.ask("query-status", serde_json::json!({}))["return"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Wait until `query-migrate`'s status is one of `want`; returns the whole answer.
    fn migration_ends(&mut self, want: &[&str], timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.ask("query-migrate", serde_json::json!({}))["return"].clone();
            if want.contains(&v["status"].as_str().unwrap_or_default()) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "migration still {v} after {timeout:?}; stderr: {}",
                self.vm.stderr.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn passes(&self) -> Vec<u64> {
        self.reports("memtouch: pass ")
    }

    fn serial_text(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// The rounds the virtio guest's disk stream has checked (`vblk: round N ok`).
    fn disk_rounds(&self) -> Vec<u64> {
        self.reports("vblk: round ")
    }

    /// The N of every `PREFIX N ok` line the guest printed, in order.
    fn reports(&self, prefix: &str) -> Vec<u64> {
        self.serial_text()
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter_map(|l| l.strip_suffix(" ok"))
            .filter_map(|n| n.parse().ok())
            .collect()
    }

    /// Wait for `more` new `PREFIX N ok` lines past the last one seen now; a line with
    /// any of `bad` (the guest found something `wrong`) fails at once.
    fn keeps_reporting(
        &self,
        prefix: &str,
        bad: &[&str],
        wrong: &str,
        more: usize,
        timeout: Duration,
    ) -> Vec<u64> {
        let from = self.reports(prefix).len();
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.serial_text();
            assert!(
                !bad.iter().any(|b| text.contains(b)),
                "the guest found {wrong}:\n{text}"
            );
            let r = self.reports(prefix);
            if r.len() >= from + more {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "the guest stopped reporting at {:?}:\n{text}\nstderr: {}",
                r.last(),
                self.vm.stderr.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until the disk stream has checked `more` rounds (of 100) past now; a sector
    /// that does not hold its last write fails at once.
    fn disk_keeps_checking(&self, more: usize, timeout: Duration) -> Vec<u64> {
        let bad = ["holds write", "failed"];
        self.keeps_reporting("vblk: round ", &bad, "its disk wrong", more, timeout)
    }

    /// Wait for `more` new pass lines past the last one seen now.
    fn keeps_counting(&self, more: usize, timeout: Duration) -> Vec<u64> {
        self.keeps_reporting(
            "memtouch: pass ",
            &["MISMATCH"],
            "bad memory",
            more,
            timeout,
        )
    }
}

/// The destination continues the source's sequence: its first pass comes after the
/// source's last, and it keeps counting with nothing wrong in memory.
fn continues(src: &Side, dst: &Side) {
    let last_src = *src.passes().last().expect("the source ran");
    let dst_passes = dst.keeps_counting(5, Duration::from_secs(20));
    assert!(
        dst_passes[0] >= last_src,
        "the destination restarted instead of continuing: source reached {last_src}, destination began at {}",
        dst_passes[0]
    );
    assert!(dst_passes.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn a_guest_rewriting_its_memory_moves_over_tcp_and_keeps_checking_it() {
    let dir = TempDir::new("mig-tcp");
    let port = free_port();
    let mut src = start(&dir, "src", 32, &[]);
    let incoming = format!("tcp:127.0.0.1:{port}");
    let mut dst = start(&dir, "dst", 32, &["-incoming", &incoming]);
    dst.vm
        .stderr
        .wait_for(
            &format!("waiting for an incoming migration on {incoming}"),
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(dst.status(), "inmigrate");
    assert!(dst
        .hmp("info migrate")
        .contains(&format!("socket address: [\r\n\t{incoming}\r\n]")));
    for s in [&mut src, &mut dst] {
        s.ask(
            "migrate-set-capabilities",
            serde_json::json!({"capabilities": [{"capability": "events", "state": true}]}),
        );
    }
    src.keeps_counting(3, Duration::from_secs(20));
    assert_eq!(src.hmp(&format!("migrate -d {incoming}")), "");
    let done = src.migration_ends(&["completed", "failed"], Duration::from_secs(60));
    assert_eq!(done["status"], "completed", "{done}");
    assert!(done["downtime"].as_u64().is_some(), "{done}");
    assert!(
        done["ram"]["transferred"].as_u64().unwrap() > 32 << 20,
        "{done}"
    );
    assert_eq!(src.status(), "postmigrate");
    let info = src.hmp("info migrate");
    assert!(info.contains("Migration status: completed\r\n"), "{info}");
    assert!(info.contains("\r\ndowntime: "), "{info}");
    // The source's guest stopped; the destination's runs on from where it was.
    let stopped = src.passes().len();
    continues(&src, &dst);
    assert_eq!(src.passes().len(), stopped, "the source's guest still runs");
    assert_eq!(dst.status(), "running");
    assert_eq!(
        src.hmp(&format!("migrate -d {incoming}")),
        "Error: Can't migrate the vm that was paused due to previous migration\r\n"
    );
    // Events, in QEMU's order, on both sides.
    src.status();
    let ev = src.events.clone();
    let pos = |name: &str| {
        ev.iter()
            .position(|e| e == name)
            .unwrap_or_else(|| panic!("{name} in {ev:?}"))
    };
    assert!(pos("MIGRATION setup") < pos("MIGRATION active"), "{ev:?}");
    assert!(pos("MIGRATION active") < pos("STOP"), "{ev:?}");
    assert!(pos("STOP") < pos("MIGRATION completed"), "{ev:?}");
    assert!(ev.contains(&"MIGRATION_PASS".to_string()), "{ev:?}");
    dst.status();
    assert_eq!(
        dst.events,
        ["MIGRATION active", "RESUME", "MIGRATION completed"]
    );
}

#[test]
fn exec_and_file_streams_save_and_restore_a_running_guest() {
    let dir = TempDir::new("mig-exec");
    let mut src = start(&dir, "src", 8, &[]);
    src.keeps_counting(3, Duration::from_secs(20));
    let saved = dir.path("vm.mig");
    // Without -d the monitor answers once it is done.
    assert_eq!(
        src.hmp(&format!("migrate \"exec:cat > {}\"", saved.display())),
        ""
    );
    assert_eq!(
        src.migration_ends(&["completed"], Duration::from_secs(1))["status"],
        "completed"
    );
    assert_eq!(src.status(), "postmigrate");
    src.ask("quit", serde_json::json!({}));
    src.vm.wait(Duration::from_secs(10));

    let incoming = format!("exec:cat {}", saved.display());
    let mut mid = start(&dir, "mid", 8, &["-incoming", &incoming]);
    continues(&src, &mid);
    assert_eq!(mid.status(), "running");

    // Again through file:, from the restored guest, into a third process.
    let saved2 = dir.path("vm2.mig");
    assert_eq!(mid.hmp(&format!("migrate file:{}", saved2.display())), "");
    assert_eq!(mid.status(), "postmigrate");
    let incoming = format!("file:{}", saved2.display());
    let last = start(&dir, "last", 8, &["-incoming", &incoming]);
    continues(&mid, &last);
}

#[test]
fn a_destination_started_with_s_stays_paused_until_cont_and_defer_waits_for_migrate_incoming() {
    let dir = TempDir::new("mig-defer");
    let mut src = start(&dir, "src", 4, &[]);
    src.keeps_counting(2, Duration::from_secs(20));
    let mut dst = start(&dir, "dst", 4, &["-incoming", "defer", "-S"]);
    assert_eq!(dst.status(), "inmigrate");
    assert!(!dst.hmp("info migrate").contains("socket address"));
    let path = dir.path("mig.sock");
    let uri = format!("unix:{}", path.display());
    assert_eq!(dst.hmp(&format!("migrate_incoming {uri}")), "");
    assert_eq!(
        dst.hmp(&format!("migrate_incoming {uri}")),
        "Error: The incoming migration has already been started\r\n"
    );
    assert_eq!(src.hmp(&format!("migrate -d {uri}")), "");
    src.migration_ends(&["completed"], Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(10);
    while dst.status() != "paused" {
        assert!(Instant::now() < deadline, "destination: {}", dst.status());
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = dst.passes().len();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(dst.passes().len(), before, "a -S destination ran by itself");
    assert_eq!(dst.hmp("cont"), "");
    continues(&src, &dst);
}

/// A guest that keeps writing its virtio disk (`op=stream`: every sector numbered with the
/// write that made it, the run read back and checked after every round) moves to a
/// destination using the same image, qcow2 and raw. The destination opens the image
/// without its lock while the source runs and takes it once the source has written
/// everything back and let go; it rereads the qcow2 tables the source changed meanwhile.
/// A write acknowledged on either side and missing from the image, or a stale one, is
/// caught by the guest itself on the destination; afterwards `qemu-img check` is clean.
#[test]
fn a_guest_writing_its_disk_moves_and_finds_every_write_on_the_image() {
    let dir = TempDir::new("mig-disk");
    for format in ["qcow2", "raw"] {
        let image = dir.path(&format!("disk.{format}"));
        qemu_img(&["create", "-q", "-f", format], &image, &["16M"]);
        let drive = format!("file={},if=virtio,format={format}", image.display());
        let port = free_port();
        let incoming = format!("tcp:127.0.0.1:{port}");
        let args = ["-drive", drive.as_str()];
        // The destination opens the image before the source's guest has written a
        // byte: the qcow2 tables it reads then are all empty, so it must reread them.
        let mut dargs = args.to_vec();
        dargs.extend(["-incoming", incoming.as_str()]);
        let mut dst = start_guest(
            &dir,
            &format!("dst-{format}"),
            "virtio",
            "op=stream sectors=64",
            &dargs,
        );
        dst.vm
            .stderr
            .wait_for("waiting for an incoming migration", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{format}: the destination did not open the image: {e}"));
        let mut src = start_guest(
            &dir,
            &format!("src-{format}"),
            "virtio",
            "op=stream sectors=64",
            &args,
        );
        src.disk_keeps_checking(2, Duration::from_secs(60));
        assert_eq!(src.hmp(&format!("migrate -d {incoming}")), "");
        let done = src.migration_ends(&["completed", "failed"], Duration::from_secs(60));
        assert_eq!(done["status"], "completed", "{format}: {done}");
        let last_src = *src.disk_rounds().last().unwrap();
        let rounds = dst.disk_keeps_checking(2, Duration::from_secs(60));
        assert!(
            rounds[0] > last_src,
            "{format}: the destination's guest restarted"
        );
        // The source no longer holds the image; `cont` there is refused while the
        // destination does.
        let cont = src.hmp("cont");
        assert!(
            cont.contains("Failed to get \"write\" lock"),
            "{format}: cont on the source: {cont:?}"
        );
        assert_eq!(src.status(), "postmigrate");
        dst.ask("quit", serde_json::json!({}));
        dst.vm.wait(Duration::from_secs(10));
        src.ask("quit", serde_json::json!({}));
        src.vm.wait(Duration::from_secs(10));
        if format == "qcow2" {
            qemu_img(&["check", "-q"], &image, &[]);
        }
    }
}

/// A guest answering pings on a tap in a bridge moves to a destination whose tap is on
/// the same bridge: the destination announces the guest (QEMU's RARP self-announcements
/// after an incoming migration), the bridge learns its new port, and the pings go on
/// being answered by the destination (the source is stopped).
#[test]
fn a_guest_answering_pings_moves_and_the_bridge_learns_its_new_port() {
    let ns = NetNs::new("mig");
    ns.ip(&["link", "add", "tbr0", "type", "bridge"]);
    ns.ip(&["addr", "add", "10.9.4.1/24", "dev", "tbr0"]);
    ns.ip(&["link", "set", "tbr0", "up"]);
    let dir = TempDir::new("mig-net");
    let mac = "52:54:00:12:34:77";
    let append = "dev=net ip=10.9.4.2 peer=10.9.4.1 count=1 answer=1000000 wait=600";
    let side = |name: &str, tap: &str, extra: &[&str]| {
        let netdev = format!("tap,id=n0,ifname={tap},script=no,downscript=no");
        let device = format!("virtio-net-pci,netdev=n0,mac={mac},romfile=");
        let mut args = vec!["-netdev", netdev.as_str(), "-device", device.as_str()];
        args.extend_from_slice(extra);
        let side = start_in(Some(&ns), &dir, name, "virtio", append, &args);
        ns.ip(&["link", "set", tap, "master", "tbr0"]);
        ns.ip(&["link", "set", tap, "up"]);
        side
    };
    let ping = |what: &str| {
        let out = ns.run("ping", &["-c", "3", "-W", "3", "10.9.4.2"]);
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    };
    let mut src = side("src", "mtap0", &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !src
        .serial_text()
        .contains("vnet: reply from 10.9.4.1 seq=1")
    {
        assert!(Instant::now() < deadline, "no link: {}", src.serial_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    ping("before the migration");
    let port = free_port();
    let incoming = format!("tcp:127.0.0.1:{port}");
    let mut dst = side("dst", "mtap1", &["-incoming", &incoming]);
    dst.vm
        .stderr
        .wait_for("waiting for an incoming migration", Duration::from_secs(10))
        .unwrap();
    let fdb = || {
        String::from_utf8_lossy(&ns.run("bridge", &["fdb", "show", "br", "tbr0"]).stdout)
            .to_string()
    };
    assert!(fdb().contains(&format!("{mac} dev mtap0")), "{}", fdb());
    assert_eq!(src.hmp(&format!("migrate -d {incoming}")), "");
    let done = src.migration_ends(&["completed", "failed"], Duration::from_secs(60));
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(src.status(), "postmigrate");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fdb().contains(&format!("{mac} dev mtap1")) {
        assert!(
            Instant::now() < deadline,
            "the bridge never learnt the guest's new port:\n{}",
            fdb()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    ping("after the migration");
    assert_eq!(dst.status(), "running");
    assert!(
        !dst.serial_text().contains("panic"),
        "{}",
        dst.serial_text()
    );
}

/// What a real VNC client (vncdotool) sees on `display`, saved as `out`.
fn vnc_capture(display: u16, out: &Path) {
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vnc/vnc_client.py");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = std::process::Command::new("python3")
            .arg(&helper)
            .args(["capture", &format!("127.0.0.1::{}", 5900 + display), "raw"])
            .arg(out)
            .output()
            .expect("python3");
        if r.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "vncdotool capture: {}{}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The RGB of a few pixels of a PNG, as "x,y=r,g,b" words.
fn pixels(png: &Path, at: &[(u32, u32)]) -> String {
    let code = format!(
        "from PIL import Image\nimport sys\ni=Image.open(sys.argv[1]).convert('RGB')\nprint(i.size, ' '.join('%d,%d=%d,%d,%d' % ((x,y)+i.getpixel((x,y))) for x,y in {at:?}))"
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &code])
        .arg(png)
        .output()
        .expect("python3 with Pillow");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A guest that drew a picture in a VBE mode moves; a VNC client connecting to the
/// destination sees the same picture the source showed, pixel for pixel.
#[test]
fn a_vnc_client_reconnects_to_the_destination_and_sees_the_same_picture() {
    let dir = TempDir::new("mig-vnc");
    let (d1, d2) = (free_display(), free_display());
    let (v1, v2) = (format!("127.0.0.1:{d1}"), format!("127.0.0.1:{d2}"));
    let port = free_port();
    let incoming = format!("tcp:127.0.0.1:{port}");
    let append = "hold=600";
    let mut src = start_guest(&dir, "src", "vbe", append, &["-vga", "std", "-vnc", &v1]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !src.serial_text().contains("vbe: drawn 1024x768x32") {
        assert!(Instant::now() < deadline, "{}", src.serial_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (a, b) = (dir.path("src.png"), dir.path("dst.png"));
    let at = [(10, 10), (1000, 10), (10, 700), (1000, 700), (512, 384)];
    // The screen is refreshed on a timer: wait until the client sees the picture.
    let want = "(1024, 768) 10,10=255,0,0 1000,10=0,255,0 10,700=0,0,255 1000,700=255,255,255 512,384=255,255,0";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        vnc_capture(d1, &a);
        let seen = pixels(&a, &at);
        if seen == want {
            break;
        }
        assert!(Instant::now() < deadline, "the source shows {seen}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut dst = start_guest(
        &dir,
        "dst",
        "vbe",
        append,
        &["-vga", "std", "-vnc", &v2, "-incoming", &incoming],
    );
    dst.vm
        .stderr
        .wait_for("waiting for an incoming migration", Duration::from_secs(10))
        .unwrap();
    assert_eq!(src.hmp(&format!("migrate -d {incoming}")), "");
    let done = src.migration_ends(&["completed", "failed"], Duration::from_secs(60));
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(dst.status(), "running");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        vnc_capture(d2, &b);
        let seen = pixels(&b, &at);
        if seen == want {
            break;
        }
        assert!(Instant::now() < deadline, "the destination shows {seen}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vnc/vnc_client.py");
    let cmp = std::process::Command::new("python3")
        .arg(helper)
        .arg("compare")
        .args([&a, &b])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&cmp.stdout);
    assert!(text.starts_with("mismatch 0 of "), "{text}");
}

/// GRUB waits at its menu on the serial console; the VM moves; a key typed on the
/// destination's serial console picks an entry, and GRUB runs it there.
#[test]
fn a_grub_menu_moves_and_takes_its_choice_from_the_destinations_console() {
    use std::io::{Read, Write};
    let dir = TempDir::new("mig-grub");
    let iso = common::grub_rescue_iso(
        &dir,
        "serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\nset timeout=-1\nmenuentry \"stay here\" { echo stayed }\nmenuentry \"go on\" --hotkey=g { echo picked-on-the-destination; sleep 600 }\n",
    );
    let drive = format!("file={},if=virtio,format=raw,readonly=on", iso.display());
    let console = |name: &str| {
        let path = dir.path(&format!("{name}.con"));
        (
            path.clone(),
            format!("unix:{},server=on,wait=off", path.display()),
        )
    };
    let attach = |path: &Path| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(c) => {
                    c.set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    return c;
                }
                Err(e) if Instant::now() > deadline => panic!("{}: {e}", path.display()),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    };
    // Read `con` until `needle` shows (GRUB under emulated ring 0 is slow here).
    let read_until = |con: &mut std::os::unix::net::UnixStream, needle: &str, secs: u64| {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on the console:\n{}",
                String::from_utf8_lossy(&seen)
            );
            if let Ok(n) = con.read(&mut buf) {
                seen.extend_from_slice(&buf[..n]);
            }
        }
    };
    let (src_con, src_serial) = console("src");
    let mut src = launch(None, &dir, "src", &src_serial, &["-drive", &drive]);
    let mut c = attach(&src_con);
    read_until(&mut c, "go on", 240);
    let port = free_port();
    let incoming = format!("tcp:127.0.0.1:{port}");
    let (dst_con, dst_serial) = console("dst");
    let mut dst = launch(
        None,
        &dir,
        "dst",
        &dst_serial,
        &["-drive", &drive, "-incoming", &incoming],
    );
    dst.vm
        .stderr
        .wait_for("waiting for an incoming migration", Duration::from_secs(10))
        .unwrap();
    let mut d = attach(&dst_con);
    assert_eq!(src.hmp(&format!("migrate -d {incoming}")), "");
    let done = src.migration_ends(&["completed", "failed"], Duration::from_secs(60));
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(dst.status(), "running");
    d.write_all(b"g").unwrap();
    read_until(&mut d, "picked-on-the-destination", 120);
}

/// Start a long migration (bandwidth-limited so it is still going when the fault hits).
fn slow_migration(src: &mut Side, uri: &str) {
    assert_eq!(src.hmp("migrate_set_parameter max-bandwidth 8M"), "");
    assert_eq!(src.hmp(&format!("migrate -d {uri}")), "");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = src.ask("query-migrate", serde_json::json!({}))["return"].clone();
        if v["status"] == "active" && v["ram"]["transferred"].as_u64().unwrap_or(0) > 4 << 20 {
            return;
        }
        assert!(Instant::now() < deadline, "no active migration: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// After a fault the source runs on: its guest keeps counting and `info status` says so.
fn source_survives(src: &mut Side) {
    assert_eq!(src.status(), "running");
    src.keeps_counting(5, Duration::from_secs(20));
}

#[test]
fn faults_leave_the_source_running_and_the_destination_exits_with_the_reason() {
    let dir = TempDir::new("mig-faults");
    let mut src = start(&dir, "src", 32, &[]);
    src.keeps_counting(2, Duration::from_secs(20));

    // Nothing listens.
    let closed = format!("tcp:127.0.0.1:{}", free_port());
    assert_eq!(src.hmp(&format!("migrate -d {closed}")), "");
    let v = src.migration_ends(&["failed"], Duration::from_secs(20));
    assert!(
        v["error-desc"]
            .as_str()
            .unwrap()
            .contains("Connection refused"),
        "{v}"
    );
    assert!(src
        .hmp("info migrate")
        .contains("Migration status: failed (Failed to connect socket: Connection refused"));
    source_survives(&mut src);

    // A bad URI is refused at once.
    assert_eq!(
        src.hmp("migrate -d rdma:1.2.3.4:5"),
        "Error: unknown migration protocol: rdma:1.2.3.4:5\r\n"
    );

    // The destination is killed mid-stream.
    let port = free_port();
    let uri = format!("tcp:127.0.0.1:{port}");
    let mut dst = start(&dir, "dst1", 32, &["-incoming", &uri]);
    slow_migration(&mut src, &uri);
    dst.vm.kill();
    let v = src.migration_ends(&["failed"], Duration::from_secs(20));
    assert!(v["error-desc"].as_str().is_some(), "{v}");
    source_survives(&mut src);

    // migrate_cancel mid-pass: cancelled at the source, a clear error at the destination.
    let port = free_port();
    let uri = format!("tcp:127.0.0.1:{port}");
    let mut dst = start(&dir, "dst2", 32, &["-incoming", &uri]);
    slow_migration(&mut src, &uri);
    assert_eq!(src.hmp("migrate_cancel"), "");
    src.migration_ends(&["cancelled"], Duration::from_secs(20));
    assert!(src
        .hmp("info migrate")
        .contains("Migration status: cancelled\r\n"));
    let st = dst.vm.wait(Duration::from_secs(20));
    assert_eq!(code(st), 1);
    assert!(
        dst.vm
            .stderr
            .text()
            .contains("troupe: load of migration failed: "),
        "{}",
        dst.vm.stderr.text()
    );
    source_survives(&mut src);
    assert_eq!(src.hmp("migrate_set_parameter max-bandwidth 128M"), "");

    // A destination built differently refuses the stream, naming the difference; the
    // source hears it and runs on.
    let port = free_port();
    let uri = format!("tcp:127.0.0.1:{port}");
    let mut dst = start(&dir, "dst3", 32, &["-incoming", &uri, "-m", "256"]);
    assert_eq!(src.hmp(&format!("migrate -d {uri}")), "");
    let v = src.migration_ends(&["failed"], Duration::from_secs(30));
    assert!(v["error-desc"].as_str().is_some(), "{v}");
    let st = dst.vm.wait(Duration::from_secs(20));
    assert_eq!(code(st), 1);
    let err = dst.vm.stderr.text();
    assert!(
        err.contains("load of migration failed: the machines differ: guest RAM differs: the source has 128 MiB"),
        "{err}"
    );
    source_survives(&mut src);
}

#[test]
fn corrupt_and_truncated_streams_are_refused_with_the_reason() {
    let dir = TempDir::new("mig-corrupt");
    let mut src = start(&dir, "src", 4, &[]);
    src.keeps_counting(2, Duration::from_secs(20));
    let saved = dir.path("vm.mig");
    assert_eq!(src.hmp(&format!("migrate file:{}", saved.display())), "");
    let good = std::fs::read(&saved).unwrap();
    drop(src);

    let load = |name: &str, bytes: &[u8]| -> (i32, String) {
        let f = dir.path(name);
        std::fs::write(&f, bytes).unwrap();
        let uri = format!("file:{}", f.display());
        let kernel = guest("memtouch");
        let args = [
            "-nodefaults",
            "-display",
            "none",
            "-m",
            "128",
            "-serial",
            "null",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-device",
            "virtio-rng-pci",
            "-kernel",
            kernel.to_str().unwrap(),
            "-incoming",
            &uri,
        ];
        let (st, _, err) = Vm::troupe(&args).run(Duration::from_secs(30));
        (code(st), err)
    };
    let mut flipped = good.clone();
    let at = good.len() / 2;
    flipped[at] ^= 0x55;
    let (st, err) = load("flipped", &flipped);
    assert_eq!(st, 1, "{err}");
    assert!(
        err.contains("load of migration failed: checksum mismatch"),
        "{err}"
    );
    let (st, err) = load("cut", &good[..good.len() / 3]);
    assert_eq!(st, 1, "{err}");
    assert!(
        err.contains("load of migration failed: the stream ends early"),
        "{err}"
    );
    let (st, err) = load("junk", b"this is not a migration stream at all");
    assert_eq!(st, 1, "{err}");
    assert!(err.contains("not a troupe migration stream"), "{err}");
}

#[test]
fn savevm_and_loadvm_take_a_running_guest_back_to_the_snapshot_as_qemu_img_sees_it() {
    let dir = TempDir::new("mig-savevm");
    let mut bare = start(&dir, "bare", 4, &[]);
    assert_eq!(
        bare.hmp("savevm s0"),
        "Error: no block device can store vmstate for snapshot\r\n"
    );
    drop(bare);
    let img = dir.path("disk.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2"], &img, &["64M"]);
    let drive = format!("file={},if=virtio,format=qcow2", img.display());
    let mut vm = start(&dir, "vm", 8, &["-drive", &drive]);
    vm.keeps_counting(3, Duration::from_secs(20));
    // Stopped, so the last pass it printed is the last before the snapshot.
    assert_eq!(vm.hmp("stop"), "");
    std::thread::sleep(Duration::from_millis(200));
    let at_save = *vm.passes().last().unwrap();
    assert_eq!(vm.hmp("savevm s1"), "");
    assert_eq!(vm.status(), "paused");
    assert_eq!(vm.hmp("cont"), "");
    let later = vm.keeps_counting(10, Duration::from_secs(30));
    let before_load = *later.last().unwrap();
    let lines_before = later.len();
    assert!(vm.hmp("info snapshots").contains("s1"));
    assert_eq!(vm.hmp("loadvm s1"), "");
    assert_eq!(vm.status(), "running");
    // The guest goes on from the snapshot: its count starts again near where it was saved,
    // and the memory it checks is the snapshot's.
    let after = vm.keeps_counting(5, Duration::from_secs(30));
    let resumed = after[lines_before];
    assert!(
        resumed > at_save && resumed < before_load,
        "saved at {at_save}, loaded at {before_load}, went on at {resumed}"
    );
    assert_eq!(
        vm.hmp("loadvm nosuch"),
        "Error: Snapshot 'nosuch' does not exist in one or more devices\r\n"
    );
    assert_eq!(vm.status(), "running");
    vm.ask("quit", serde_json::json!({}));
    vm.vm.wait(Duration::from_secs(10));
    assert!(qemu_img(&["snapshot", "-l"], &img, &[]).contains("s1"));
    qemu_img(&["check"], &img, &[]);
}

/// QMP's snapshot jobs and `-loadvm`: `snapshot-save` answers at once and runs as a job
/// (JOB_STATUS_CHANGE created → running → waiting → pending → concluded, `query-jobs`,
/// `job-dismiss`); a failing job concludes with its error; `snapshot-load` takes the guest
/// back; `snapshot-delete` removes it; a new process started with `-loadvm` continues the
/// snapshot, and `-loadvm` of a missing one ends with QEMU's message and status 1.
#[test]
fn snapshot_jobs_over_qmp_and_loadvm_at_start() {
    let dir = TempDir::new("mig-jobs");
    let img = dir.path("disk.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2"], &img, &["64M"]);
    let drive = format!("file={},if=virtio,format=qcow2", img.display());
    let mut vm = start(&dir, "vm", 8, &["-drive", &drive]);
    vm.keeps_counting(3, Duration::from_secs(20));
    let job = |vm: &mut Side, cmd: &str, args: Value| {
        vm.events.clear();
        assert_eq!(vm.ask(cmd, args.clone())["return"], serde_json::json!({}));
        let id = "j1";
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let jobs = vm.ask("query-jobs", serde_json::json!({}))["return"].clone();
            let j = jobs
                .as_array()
                .and_then(|a| a.iter().find(|j| j["id"] == id))
                .cloned()
                .unwrap_or_else(|| panic!("{jobs}"));
            if j["status"] == "concluded" {
                assert_eq!(j["type"], cmd, "{j}");
                let again = vm.ask(cmd, args.clone());
                assert_eq!(
                    again["error"]["desc"], "Job ID 'j1' already in use",
                    "{again}"
                );
                assert_eq!(
                    vm.ask("job-dismiss", serde_json::json!({"id": id}))["return"],
                    serde_json::json!({})
                );
                assert_eq!(
                    vm.ask("query-jobs", serde_json::json!({}))["return"],
                    serde_json::json!([])
                );
                return j;
            }
            assert!(Instant::now() < deadline, "{j}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let args = |tag: &str| serde_json::json!({"job-id": "j1", "tag": tag, "vmstate": "virtio0", "devices": ["virtio0"]});
    assert_eq!(vm.hmp("stop"), "");
    std::thread::sleep(Duration::from_millis(200));
    let at_save = *vm.passes().last().unwrap();
    let j = job(&mut vm, "snapshot-save", args("s1"));
    assert!(j.get("error").is_none(), "{j}");
    let statuses: Vec<&String> = vm
        .events
        .iter()
        .filter(|e| *e == "JOB_STATUS_CHANGE")
        .collect();
    assert!(statuses.len() >= 5, "{:?}", vm.events);
    assert!(vm.hmp("info snapshots").contains("s1"));
    assert_eq!(vm.status(), "paused");
    assert_eq!(vm.hmp("cont"), "");
    let later = vm.keeps_counting(10, Duration::from_secs(30));
    let before_load = *later.last().unwrap();
    // A job that fails concludes with the reason.
    let j = job(&mut vm, "snapshot-load", args("nosuch"));
    assert_eq!(
        j["error"], "Snapshot 'nosuch' does not exist in one or more devices",
        "{j}"
    );
    let lines = vm.passes().len();
    let j = job(&mut vm, "snapshot-load", args("s1"));
    assert!(j.get("error").is_none(), "{j}");
    let after = vm.keeps_counting(3, Duration::from_secs(30));
    let resumed = after[lines];
    assert!(
        resumed > at_save && resumed < before_load,
        "saved at {at_save}, loaded at {before_load}, went on at {resumed}"
    );
    let bad = vm.ask(
        "snapshot-save",
        serde_json::json!({"job-id": "j2", "tag": "s2", "vmstate": "nosuch", "devices": ["nosuch"]}),
    );
    assert_eq!(bad["return"], serde_json::json!({}), "{bad}");
    vm.ask("quit", serde_json::json!({}));
    vm.vm.wait(Duration::from_secs(10));

    // A new process from the snapshot.
    let mut again = start(&dir, "again", 8, &["-drive", &drive, "-loadvm", "s1"]);
    let first = again.keeps_counting(3, Duration::from_secs(30))[0];
    assert!(
        first > at_save && first < before_load,
        "saved at {at_save}, -loadvm began at {first}"
    );
    let j = job(
        &mut again,
        "snapshot-delete",
        serde_json::json!({"job-id": "j1", "tag": "s1", "devices": ["virtio0"]}),
    );
    assert!(j.get("error").is_none(), "{j}");
    assert!(!again.hmp("info snapshots").contains("s1"));
    again.ask("quit", serde_json::json!({}));
    again.vm.wait(Duration::from_secs(10));
    let kernel = guest("memtouch");
    let (st, _, err) = Vm::troupe(&[
        "-nodefaults",
        "-display",
        "none",
        "-kernel",
        kernel.to_str().unwrap(),
        "-drive",
        &drive,
        "-loadvm",
        "s1",
    ])
    .run(Duration::from_secs(20));
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(
        err.contains("troupe: Snapshot 's1' does not exist in one or more devices"),
        "{err}"
    );
}

#[test]
fn a_guest_on_file_and_memfd_backed_ram_saves_and_restores() {
    let dir = TempDir::new("mig-backends");
    let memfd = [
        "-machine",
        "memory-backend=r",
        "-object",
        "memory-backend-memfd,id=r,size=128M,share=on",
    ];
    let mut src = start(&dir, "src", 8, &memfd);
    src.keeps_counting(3, Duration::from_secs(20));
    let saved = dir.path("vm.mig");
    assert_eq!(src.hmp(&format!("migrate file:{}", saved.display())), "");
    assert_eq!(src.status(), "postmigrate");
    // Restored into RAM from a file in a directory (-mem-path), the guest finds every page.
    let ram_dir = TempDir::new("mig-mem-path");
    let incoming = format!("file:{}", saved.display());
    let dst = start(
        &dir,
        "dst",
        8,
        &[
            "-mem-path",
            ram_dir.0.to_str().unwrap(),
            "-incoming",
            &incoming,
        ],
    );
    continues(&src, &dst);
}
