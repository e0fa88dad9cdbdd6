//! Every thread is an actor, through the doors a user has: `info actors` lists every
//! thread of the process (checked against /proc/PID/task), a restartable actor that panics
//! is restarted while the VM runs on (VNC clients reconnect and see the screen, hostfwd
//! traffic passes again, a new monitor session answers), and a vital one that panics stops
//! the VM in QEMU's internal-error state (or ends the process with status 1 when no monitor
//! is attached). Panics come from the test-only `inject-panic` command (feature
//! `fault-injection`, which `cargo test` turns on through the root dev-dependency).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{code, free_display, free_port, guest, Hmp, Running, TempDir, Vm};

const T: Duration = Duration::from_secs(90);

use common::netns::NetNs;

impl NetNs {
    /// A TCP connection to 127.0.0.1:`port` inside the namespace, retried until something
    /// listens (a thread joins the namespace to open it; the socket stays in it).
    fn connect(&self, port: u16) -> TcpStream {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on a namespace file we hold open; it changes only this
            // thread's network namespace.
            let r = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            retry_connect(port)
        })
        .join()
        .unwrap()
    }
}

fn retry_connect(port: u16) -> TcpStream {
    let deadline = Instant::now() + T;
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                return s;
            }
            Err(e) if Instant::now() > deadline => panic!("connect {port}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// True once the peer has closed `s` (EOF or reset), within `T`.
fn closed_by_peer(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(T)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// A QMP session, capabilities negotiated.
struct Qmp(BufReader<TcpStream>);

impl Qmp {
    fn on(s: TcpStream) -> Self {
        let mut q = Self(BufReader::new(s));
        assert!(q.line().contains("\"QMP\""));
        q.ask(r#"{"execute": "qmp_capabilities"}"#);
        q
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.0.read_line(&mut l).unwrap();
        l
    }

    /// Send and return the next reply (events before it are skipped).
    fn ask(&mut self, raw: &str) -> serde_json::Value {
        self.0.get_mut().write_all(raw.as_bytes()).unwrap();
        loop {
            let v: serde_json::Value = serde_json::from_str(&self.line()).unwrap();
            if v.get("event").is_none() {
                return v;
            }
        }
    }

    fn hmp(&mut self, line: &str) -> String {
        let v = self.ask(
            &serde_json::json!({"execute": "human-monitor-command",
                                "arguments": {"command-line": line}})
            .to_string(),
        );
        v["return"].as_str().unwrap_or_default().to_string()
    }
}

/// A raw RFB 3.8 client (security None, shared) that asks for the whole screen and reads
/// the first update; returns the client and the screen size.
fn vnc_client(s: TcpStream) -> (TcpStream, u16, u16) {
    let mut s = s;
    let read = |s: &mut TcpStream, n: usize| {
        let mut b = vec![0u8; n];
        s.read_exact(&mut b).expect("read from the VNC server");
        b
    };
    assert_eq!(read(&mut s, 12), b"RFB 003.008\n");
    s.write_all(b"RFB 003.008\n").unwrap();
    assert_eq!(read(&mut s, 2), [1, 1]);
    s.write_all(&[1]).unwrap();
    assert_eq!(read(&mut s, 4), [0, 0, 0, 0]);
    s.write_all(&[1]).unwrap();
    let init = read(&mut s, 24);
    let (w, h) = (
        u16::from_be_bytes([init[0], init[1]]),
        u16::from_be_bytes([init[2], init[3]]),
    );
    let n = u32::from_be_bytes(init[20..24].try_into().unwrap()) as usize;
    read(&mut s, n);
    // Raw encoding only, then a full (non-incremental) update request.
    s.write_all(&[2, 0, 0, 1, 0, 0, 0, 0]).unwrap();
    let mut req = vec![3, 0, 0, 0, 0, 0];
    req.extend_from_slice(&w.to_be_bytes());
    req.extend_from_slice(&h.to_be_bytes());
    s.write_all(&req).unwrap();
    // The update covers the screen: count the pixels that arrive.
    let head = read(&mut s, 4);
    assert_eq!(head[0], 0, "a FramebufferUpdate");
    let rects = u16::from_be_bytes([head[2], head[3]]);
    let mut pixels = 0usize;
    for _ in 0..rects {
        let r = read(&mut s, 12);
        let g = |i: usize| usize::from(u16::from_be_bytes([r[i], r[i + 1]]));
        let enc = i32::from_be_bytes(r[8..12].try_into().unwrap());
        assert_eq!(enc, 0, "raw rectangles only");
        read(&mut s, g(4) * g(6) * 4);
        pixels += g(4) * g(6);
    }
    assert_eq!(pixels, usize::from(w) * usize::from(h), "the whole screen");
    (s, w, h)
}

/// One line of `info actors`: (kind, state, restarts, where it runs).
#[derive(Debug)]
struct ActorLine {
    kind: String,
    state: String,
    restarts: u32,
    runs_on: String,
}

fn actors(text: &str) -> Vec<(String, ActorLine)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 6).then(|| {
                (
                    f[0].to_string(),
                    ActorLine {
                        kind: f[1].to_string(),
                        state: f[2].to_string(),
                        restarts: f[4].parse().unwrap_or_else(|_| panic!("restarts in {l:?}")),
                        runs_on: f[5..].join(" "),
                    },
                )
            })
        })
        .collect()
}

fn actor<'a>(list: &'a [(String, ActorLine)], id: &str, text: &str) -> &'a ActorLine {
    list.iter()
        .find(|(i, _)| i == id)
        .map(|(_, a)| a)
        .unwrap_or_else(|| panic!("no actor {id} in:\n{text}"))
}

fn tids(pid: u32) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort();
    v
}

fn qcow2(dir: &TempDir) -> String {
    let p = dir.path("disk.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", p.to_str().unwrap(), "16M"])
        .output()
        .expect("qemu-img (qemu-utils)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    p.to_str().unwrap().to_string()
}

/// Poll `info actors` through `ask` until `done` holds for it; its text.
fn wait_actors(
    mut ask: impl FnMut() -> String,
    done: impl Fn(&[(String, ActorLine)]) -> bool,
) -> String {
    let deadline = Instant::now() + T;
    loop {
        let text = ask();
        if done(&actors(&text)) {
            return text;
        }
        assert!(Instant::now() < deadline, "timed out; info actors:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_thread_of_the_process_is_an_actor() {
    let ns = NetNs::new("actors");
    let dir = TempDir::new("actors-threads");
    let disk = qcow2(&dir);
    let demo = guest("demo");
    let (hmp_port, qmp_port, d) = (4444, 4445, 7);
    let drive = format!("file={disk},if=none,id=d0,format=qcow2,aio=io_uring");
    let (hmp, qmp, vnc) = (
        format!("telnet:127.0.0.1:{hmp_port},server,nowait"),
        format!("tcp:127.0.0.1:{qmp_port},server,nowait"),
        format!("127.0.0.1:{d}"),
    );
    let vm = ns
        .troupe(&[
            "-m",
            "128",
            "-smp",
            "2",
            "-nodefaults",
            "-serial",
            "stdio",
            "-vga",
            "std",
            "-kernel",
            demo.to_str().unwrap(),
            "-drive",
            &drive,
            "-device",
            "virtio-blk-pci,drive=d0",
            "-netdev",
            "user,id=u0",
            "-device",
            "virtio-net-pci,netdev=u0",
            "-netdev",
            "tap,id=t0,ifname=tact0,script=no,downscript=no",
            "-device",
            "e1000,netdev=t0,romfile=",
            "-device",
            "virtio-rng-pci",
            "-vnc",
            &vnc,
            "-monitor",
            &hmp,
            "-qmp",
            &qmp,
        ])
        .spawn();
    vm.expect_stdout("demo: 2/2 vCPUs running", T);
    let _telnet = Hmp::on(ns.connect(hmp_port));
    let mut q = Qmp::on(ns.connect(qmp_port));
    let (_viewer, w, h) = vnc_client(ns.connect(5900 + d));
    assert!(w >= 640 && h >= 400, "{w}x{h}");
    let pid = vm.pid();
    let before = tids(pid);
    let text = q.hmp("info actors");
    let after = tids(pid);
    let list = actors(&text);
    // Every thread that lived through the listing is on it, by its thread id...
    for tid in before.iter().filter(|t| after.contains(t)) {
        let on = format!("thread {tid}");
        assert!(
            list.iter()
                .any(|(_, a)| a.runs_on == on || a.runs_on.starts_with(&format!("{on} "))),
            "thread {tid} is not in info actors:\n{text}"
        );
    }
    // ... and none of them is a stranger.
    assert!(
        !list.iter().any(|(_, a)| a.kind == "unregistered"),
        "unregistered threads:\n{text}"
    );
    for (id, kind) in [
        ("main", "main"),
        ("vcpu0", "vcpu"),
        ("vcpu1", "vcpu"),
        ("blk-d0", "block"),
        ("virtio-blk0", "virtio-worker"),
        ("virtio-net0", "virtio-worker"),
        ("virtio-rng0", "virtio-worker"),
        ("e1000-0", "e1000-rx"),
        ("slirp-u0", "nic-backend"),
        ("vga", "display"),
        ("vnc", "vnc"),
        ("vnc.client0", "vnc-client"),
        ("compat_monitor0.session0", "monitor-session"),
        ("compat_monitor1.session0", "monitor-session"),
    ] {
        let a = actor(&list, id, &text);
        assert_eq!(a.kind, kind, "{id}:\n{text}");
        assert!(a.state == "running", "{id}:\n{text}");
    }
    assert!(list.iter().any(|(_, a)| a.kind == "tokio-worker"), "{text}");
    for v in ["vcpu0", "vcpu1"] {
        let a = actor(&list, v, &text);
        assert!(a.runs_on.starts_with("thread "), "{v}: {text}");
        assert_eq!(a.restarts, 0);
    }
}

#[test]
fn a_panicking_restartable_actor_is_restarted() {
    let k = guest("virtio");
    let (mon_port, hfwd, d) = (free_port(), free_port(), free_display());
    let mon = format!("tcp:127.0.0.1:{mon_port},server,nowait");
    let netdev = format!("user,id=u0,hostfwd=tcp:127.0.0.1:{hfwd}-:7");
    let vnc = format!("127.0.0.1:{d}");
    let mut vm = Vm::troupe(&[
        "-nodefaults",
        "-serial",
        "stdio",
        "-vga",
        "std",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-kernel",
        k.to_str().unwrap(),
        "-append",
        "dev=net dhcp count=1 listen=7 wait=120",
        "-netdev",
        &netdev,
        "-device",
        "virtio-net-pci,netdev=u0",
        "-vnc",
        &vnc,
        "-monitor",
        &mon,
    ])
    .spawn();
    vm.expect_stdout("vnet: listening on 7", T);
    let mut hmp = Hmp::on(retry_connect(mon_port));
    let (mut viewer, _, _) = vnc_client(retry_connect(5900 + d));
    let restarted = |id: &'static str| {
        move |l: &[(String, ActorLine)]| {
            l.iter()
                .any(|(i, a)| i == id && a.restarts >= 1 && a.state == "running")
        }
    };

    // The display refresh: a fresh frame, the same screen.
    assert_eq!(hmp.text("inject-panic vga"), "");
    wait_actors(|| hmp.text("info actors"), restarted("vga"));

    // A VNC client: its connection closes; the viewer reconnects and sees the screen.
    assert_eq!(hmp.text("inject-panic vnc.client0"), "");
    assert!(
        closed_by_peer(&mut viewer),
        "the panicked client's connection closes"
    );
    let (_viewer, w, h) = vnc_client(retry_connect(5900 + d));
    assert!(w >= 640 && h >= 400, "{w}x{h}");
    let text = wait_actors(|| hmp.text("info actors"), restarted("vnc"));
    let list = actors(&text);
    assert!(!list.iter().any(|(i, _)| i == "vnc.client0"), "{text}");
    assert_eq!(actor(&list, "vnc.client1", &text).state, "running");

    // A monitor session: it closes; a new one opens and answers.
    let mut second = Hmp::on(retry_connect(mon_port));
    assert!(second.text("info status").contains("running"));
    assert_eq!(hmp.text("inject-panic compat_monitor0.session1"), "");
    assert!(closed_by_peer(&mut second.0));
    let mut third = Hmp::on(retry_connect(mon_port));
    assert_eq!(third.text("info status"), "VM status: running\n");
    let text = wait_actors(|| third.text("info actors"), restarted("compat_monitor0"));
    assert!(
        !actors(&text)
            .iter()
            .any(|(i, _)| i == "compat_monitor0.session1"),
        "{text}"
    );

    // The NIC backend: slirp starts over and binds the hostfwd rule again.
    assert_eq!(hmp.text("inject-panic slirp-u0"), "");
    let text = wait_actors(|| hmp.text("info actors"), restarted("slirp-u0"));
    let list = actors(&text);
    for id in ["vga", "vnc", "compat_monitor0", "slirp-u0"] {
        assert!(actor(&list, id, &text).restarts >= 1, "{id}:\n{text}");
    }
    assert_eq!(hmp.text("info status"), "VM status: running\n");
    // Traffic passes again: the host reaches the guest's port 7 through the new instance
    // (the guest serves that one connection, then ends its run as passed).
    let mut c = retry_connect(hfwd);
    c.write_all(b"ping\n").unwrap();
    let mut got = String::new();
    c.read_to_string(&mut got).unwrap();
    assert_eq!(got, "echo: ping\n", "{}", vm.stderr.text());
    vm.expect_stdout("vnet: served 'ping'", T);
    assert_eq!(code(vm.wait(T)), 1, "the guest's run: {}", vm.stdout.text());
    let err = vm.stderr.text();
    for id in [
        "vga (display)",
        "vnc.client0 (vnc-client)",
        "compat_monitor0.session1 (monitor-session)",
        "slirp-u0 (nic-backend)",
    ] {
        assert!(
            err.contains(&format!("actor {id} panicked: injected fault")),
            "{id}: {err}"
        );
    }
}

/// The demo guest with two vCPUs, a qcow2 virtio-blk disk on io_uring, and (when given)
/// HMP and QMP monitors on TCP ports.
fn vital_vm(dir: &TempDir, monitors: Option<(u16, u16)>) -> Vm {
    let disk = qcow2(dir);
    let demo = guest("demo");
    let drive = format!("file={disk},if=none,id=d0,format=qcow2,aio=io_uring");
    let mut args: Vec<String> = [
        "-m",
        "128",
        "-smp",
        "2",
        "-nodefaults",
        "-serial",
        "stdio",
        "-kernel",
        demo.to_str().unwrap(),
        "-drive",
        &drive,
        "-device",
        "virtio-blk-pci,drive=d0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some((hmp, qmp)) = monitors {
        args.extend([
            "-monitor".into(),
            format!("tcp:127.0.0.1:{hmp},server,nowait"),
            "-qmp".into(),
            format!("tcp:127.0.0.1:{qmp},server,nowait"),
        ]);
    }
    Vm::troupe(&args)
}

/// Inject a panic into `id` of a VM with monitors: internal-error, a STOP event, a report
/// naming the actor and the panic, and `quit` still ends the process at once.
fn vital_story(id: &str) {
    let dir = TempDir::new("actors-vital");
    let (hp, qp) = (free_port(), free_port());
    let mut vm: Running = vital_vm(&dir, Some((hp, qp))).spawn();
    vm.expect_stdout("demo: 2/2 vCPUs running", T);
    let mut hmp = Hmp::on(retry_connect(hp));
    let mut q = Qmp::on(retry_connect(qp));
    assert_eq!(hmp.text("info status"), "VM status: running\n");
    assert_eq!(hmp.text(&format!("inject-panic {id}")), "");
    // QMP hears STOP.
    let deadline = Instant::now() + T;
    loop {
        let l = q.line();
        if l.contains("\"event\": \"STOP\"") {
            break;
        }
        assert!(Instant::now() < deadline, "no STOP event");
    }
    assert_eq!(
        hmp.text("info status"),
        "VM status: paused (internal-error)\n"
    );
    assert_eq!(
        q.ask(r#"{"execute": "query-status"}"#)["return"]["status"],
        "internal-error"
    );
    let text = hmp.text("info actors");
    assert_eq!(actor(&actors(&text), id, &text).state, "failed", "{text}");
    // cont is refused, as QEMU refuses it after an internal error.
    assert!(hmp
        .text("cont")
        .contains("Resetting the Virtual Machine is required"));
    let err = vm
        .stderr
        .wait_for(&format!("actor {id}"), T)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(err.contains(&format!("vital actor {id} (")), "{err}");
    assert!(err.contains("injected fault (inject-panic)"), "{err}");
    let t0 = Instant::now();
    hmp.0.write_all(b"quit\r\n").unwrap();
    let st = vm.wait(Duration::from_secs(10));
    assert_eq!(code(st), 0);
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "quit took {:?}",
        t0.elapsed()
    );
}

#[test]
fn a_panicking_vital_actor_stops_the_vm_in_internal_error() {
    vital_story("vcpu0");
    vital_story("blk-d0");
    // With no monitor to inspect it, the process ends with status 1 and says why.
    let dir = TempDir::new("actors-vital-nomon");
    let mut vm = vital_vm(&dir, None)
        .env("TROUPE_INJECT_PANIC", "vcpu1@1500")
        .spawn();
    let st = vm.wait(T);
    let err = vm.stderr.text();
    assert_eq!(code(st), 1, "{err}");
    assert!(
        err.contains("vital actor vcpu1 (vcpu) panicked: injected fault"),
        "{err}"
    );
}
