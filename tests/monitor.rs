//! The monitor through its real doors: a telnet client driven by `expect`, QEMU's own
//! Python QMP client (`qemu.qmp`), raw sockets for misbehaving clients, the `-nographic`
//! mux on stdin, and `screendump` compared with QEMU's on the same GRUB screen.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{code, connect, free_port, guest, read_until, Hmp, Qmp, Running, TempDir, Vm};

const T: Duration = Duration::from_secs(60);

/// The demo guest (prints a banner on each boot, then runs until told) with 2 vCPUs and
/// `extra` options.
fn demo_vm(extra: &[&str]) -> Running {
    let k = guest("demo");
    let mut args = vec![
        "-m",
        "128",
        "-smp",
        "2",
        "-nodefaults",
        "-serial",
        "stdio",
        "-kernel",
        k.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let vm = Vm::troupe(&args).spawn();
    vm.expect_stdout("demo: 2/2 vCPUs running", T);
    vm
}

/// Test guest `name` with command line `append`, serial on stdout and an HMP monitor on a
/// free TCP port (returned).
fn guest_with_monitor(name: &str, append: &str) -> (Running, u16) {
    let port = free_port();
    let k = guest(name);
    let mon = format!("tcp:127.0.0.1:{port},server,nowait");
    let vm = Vm::troupe(&[
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-monitor",
        &mon,
        "-kernel",
        k.to_str().unwrap(),
        "-append",
        append,
    ])
    .spawn();
    (vm, port)
}

/// Read until `needle` has been seen; returns everything read.
fn error_desc(v: &serde_json::Value) -> (String, String) {
    (
        v["error"]["class"].as_str().unwrap_or("").to_string(),
        v["error"]["desc"].as_str().unwrap_or("").to_string(),
    )
}

#[test]
fn telnet_session_under_expect_behaves_like_qemus_monitor() {
    let port = free_port();
    let mon = format!("telnet:127.0.0.1:{port},server,nowait");
    let mut vm = demo_vm(&["-display", "none", "-monitor", &mon]);
    // The vCPU threads, as the kernel lists them, before `quit` ends the process.
    let pid = vm.pid();
    let mut vcpu_threads = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
        if let Some(n) = comm.trim().strip_prefix("troupe-vcpu") {
            let tid = t.file_name().unwrap().to_string_lossy().into_owned();
            vcpu_threads.push((n.parse::<u32>().unwrap(), tid));
        }
    }
    vcpu_threads.sort();
    assert_eq!(vcpu_threads.len(), 2);
    let dir = TempDir::new("expect");
    let script = dir.path("session.exp");
    // One `expect` block per step: the regex, and a clear failure on timeout or EOF.
    let want = |re: &str| {
        format!(
            "expect {{\n  -re {{{re}}} {{}}\n  timeout {{ puts \"\\nEXPECT-TIMEOUT {{{re}}}\"; exit 1 }}\n  eof {{ puts \"\\nEXPECT-EOF {{{re}}}\"; exit 1 }}\n}}\n"
        )
    };
    let prompt = want(r"\(qemu\) $");
    let mut exp = format!("set timeout 20\nspawn telnet 127.0.0.1 {port}\n");
    exp += &want(r"QEMU 7\.2\.22 monitor - type 'help' for more information\r\n");
    exp += &prompt;
    let steps: &[(&str, &str)] = &[
        ("info status", r"VM status: running\r\n"),
        ("stop", ""),
        ("info status", r"VM status: paused\r\n"),
        ("cont", ""),
        ("info kvm", r"kvm support: enabled\r\n"),
        ("info cpus", r"CPU #1: thread_id=[0-9]+\r\n"),
        ("cpu 1", ""),
        ("info registers", r"\r\nCPU#1\r\nRAX=[0-9a-f]{16}"),
        ("info version", ""),
        // History: the up arrow brings back `info version`.
        (r"\033\[A", r"7\.2\.22troupe"),
        // Tab completion of an `info` sub-command and of a command.
        (r"info stat\t", r"VM status: running\r\n"),
        (r"system_r\t", ""),
    ];
    for (line, re) in steps {
        exp += &format!("send \"{line}\\r\"\n");
        if !re.is_empty() {
            exp += &want(re);
        }
        exp += &prompt;
    }
    // The session ends here; `quit` comes once the reset guest has printed its banner.
    exp += "close\nputs \"\\nEXPECT-DONE\"\n";
    std::fs::write(&script, exp).unwrap();
    let out = Command::new("expect")
        .arg(&script)
        .output()
        .expect("expect");
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && transcript.contains("EXPECT-DONE"),
        "expect session failed:\n{transcript}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `info cpus` names the real vCPU threads of this process.
    let mut tids: Vec<(u32, String)> = transcript
        .lines()
        .filter_map(|l| {
            let l = l.trim_start_matches(['*', ' ']);
            let rest = l.strip_prefix("CPU #")?;
            let (n, tid) = rest.split_once(": thread_id=")?;
            Some((n.parse().ok()?, tid.trim().to_string()))
        })
        .collect();
    tids.sort();
    assert_eq!(tids, vcpu_threads, "{transcript}");
    // `system_reset` restarted the guest (its banner again on serial); `quit` exits 0.
    let deadline = std::time::Instant::now() + T;
    while vm
        .stdout
        .text()
        .matches("troupe demo guest: 2 vCPU(s)")
        .count()
        < 2
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut c = common::connect(port);
    c.write_all(b"quit\r\n").unwrap();
    let st = vm.wait(T);
    assert_eq!(code(st), 0, "{}", vm.stderr.text());
    let serial = vm.stdout.text();
    assert_eq!(
        serial.matches("troupe demo guest: 2 vCPU(s)").count(),
        2,
        "the guest booted again after system_reset:\n{serial}"
    );
}

#[test]
fn qemu_qmp_client_runs_every_query_and_gets_lifecycle_events() {
    let port = free_port();
    let dir = TempDir::new("qmp");
    let disk = dir.path("disk.raw");
    std::fs::write(&disk, vec![0u8; 4 << 20]).unwrap();
    let vnc = free_port();
    let qmp = format!("tcp:127.0.0.1:{port},server,nowait");
    let vnc_opt = format!("127.0.0.1:{}", vnc - 5900);
    let drive = format!("file={},format=raw,if=ide,index=0", disk.display());
    let mut vm = demo_vm(&[
        "-vga",
        "std",
        "-vnc",
        &vnc_opt,
        "-name",
        "qmp-test-vm",
        "-uuid",
        "6f2c1d9a-0b3e-4c5d-8e7f-112233445566",
        "-drive",
        &drive,
        "-qmp",
        &qmp,
    ]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/monitor/qmp_client.py");
    let out = Command::new("python3")
        .arg(script)
        .args(["127.0.0.1", &port.to_string()])
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("qmp-client: ok"),
        "qmp_client.py failed (needs `pip install qemu.qmp`):\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The thread ids it saw are this process's vCPU threads.
    let threads = text
        .lines()
        .find_map(|l| l.strip_prefix("threads "))
        .unwrap();
    for (i, tid) in threads.split_whitespace().enumerate() {
        let comm = std::fs::read_to_string(format!("/proc/{}/task/{tid}/comm", vm.pid())).unwrap();
        assert_eq!(comm.trim(), format!("troupe-vcpu{i}"));
    }
    // system_reset really reset the guest.
    vm.stdout
        .wait_for("troupe demo guest: 2 vCPU(s)", T)
        .unwrap();
    assert!(vm.stdout.text().matches("troupe demo guest").count() >= 2);
    vm.kill();
}

#[test]
fn bad_clients_get_clear_errors_and_the_vm_runs_on() {
    let qport = free_port();
    let hport = free_port();
    let qmp = format!("tcp:127.0.0.1:{qport},server,nowait");
    let hmp = format!("tcp:127.0.0.1:{hport},server,nowait");
    let mut vm = demo_vm(&["-display", "none", "-qmp", &qmp, "-monitor", &hmp]);

    // A client that connects and never speaks stays connected without blocking anyone.
    let _silent_q = connect(qport);
    let _silent_h = connect(hport);

    let mut q = Qmp::open(qport);
    // Commands before negotiation are refused.
    let r = q.ask(r#"{"execute": "query-status", "id": 1}"#);
    assert_eq!(
        error_desc(&r),
        (
            "CommandNotFound".into(),
            "Expecting capabilities negotiation with 'qmp_capabilities'".into()
        )
    );
    assert_eq!(r["id"], 1);
    assert_eq!(
        q.ask(r#"{"execute":"qmp_capabilities"}"#)["return"],
        serde_json::json!({})
    );
    // Binary junk, invalid JSON, a JSON array, a non-object, missing execute.
    let r = q.ask("\u{1}\u{2}\u{7f}garbage\n");
    assert_eq!(error_desc(&r).0, "GenericError");
    assert!(error_desc(&r).1.starts_with("JSON parse error"), "{r}");
    let r = q.ask(r#"{"execute": "query-status", }"#);
    assert!(error_desc(&r).1.starts_with("JSON parse error"), "{r}");
    let r = q.ask(r#"[{"execute": "query-status"}]"#);
    assert_eq!(error_desc(&r).1, "QMP input must be a JSON object");
    let r = q.ask(r#"{"id": 7}"#);
    assert_eq!(error_desc(&r).1, "QMP input lacks member 'execute'");
    assert_eq!(r["id"], 7);
    // Unknown commands and arguments.
    let r = q.ask(r#"{"execute": "frobnicate", "id": "x"}"#);
    assert_eq!(
        error_desc(&r),
        (
            "CommandNotFound".into(),
            "The command frobnicate has not been found".into()
        )
    );
    let r = q.ask(r#"{"execute": "stop", "arguments": {"now": true}}"#);
    assert_eq!(error_desc(&r).1, "Parameter 'now' is unexpected");
    // A 1 MiB message is refused and the stream stays in sync.
    let big = format!(
        r#"{{"execute": "query-status", "arguments": {{"pad": "{}"}}}}"#,
        "A".repeat(1 << 20)
    );
    let r = q.ask(&big);
    assert!(error_desc(&r).1.contains("size limit"), "{r}");
    let r = q.ask(r#"{"execute": "query-status", "id": "after"}"#);
    assert_eq!(r["return"]["status"], "running");
    assert_eq!(r["id"], "after");
    // Two commands in one write, no newline (qemu.qmp style).
    q.send(br#"{"execute":"query-kvm","id":1}{"execute":"query-kvm","id":2}"#);
    for id in [1, 2] {
        let v: serde_json::Value = serde_json::from_str(&q.line()).unwrap();
        assert_eq!(v["id"], id);
    }

    // HMP: junk, control bytes and a 1 MiB line, then a normal command still works.
    let mut h = Hmp::open(hport);
    let out = h.cmd("\u{1}\u{2}\u{3}\u{ff}\u{fe}junk");
    assert!(out.contains("unknown command"), "{out:?}");
    let out = h.cmd(&"x".repeat(1 << 20));
    assert!(out.contains("unknown command"), "{out:?}");
    assert_eq!(h.cmd("info status"), "VM status: running\r\n");
    assert_eq!(h.cmd("info nosuch"), "unknown command: 'info nosuch'\r\n");
    assert_eq!(
        h.cmd("stop now"),
        "stop|s: extraneous characters at the end of line\r\nTry \"help stop\" for more information\r\n"
    );
    assert_eq!(h.cmd("sendkey"), "sendkey: missing argument\r\n");
    assert_eq!(h.cmd("sendkey nokey"), "invalid parameter: nokey\r\n");
    assert_eq!(
        h.cmd("info balloon"),
        "Error: No balloon device has been activated\r\n"
    );
    let out = h.cmd("device_add no-such-device");
    assert!(
        out.starts_with("Error: ") && out.contains("no-such-device"),
        "{out:?}"
    );

    // 200 clients at once: every one gets a banner or greeting and an answer.
    let clients: Vec<_> = (0..200)
        .map(|i| {
            std::thread::spawn(move || {
                if i % 2 == 0 {
                    let mut c = Qmp::open(qport);
                    c.ask(r#"{"execute":"qmp_capabilities"}"#);
                    c.ask(r#"{"execute":"query-status"}"#)["return"]["status"] == "running"
                } else {
                    Hmp::open(hport).cmd("info kvm") == "kvm support: enabled\r\n"
                }
            })
        })
        .collect();
    let ok = clients
        .into_iter()
        .map(|c| c.join().unwrap_or(false))
        .filter(|ok| *ok)
        .count();
    assert_eq!(ok, 200);

    // The VM ran through all of it: the guest still answers on serial.
    vm.send(b"ping\r");
    vm.expect_stdout("ping", T);
    assert_eq!(h.cmd("info status"), "VM status: running\r\n");
    vm.kill();
}

#[test]
fn nographic_mux_switches_with_ctrl_a_c_and_quits_with_ctrl_a_x() {
    let k = guest("demo");
    let mut vm = Vm::troupe(&["-nographic", "-m", "128", "-kernel", k.to_str().unwrap()]).spawn();
    vm.expect_stdout("demo: 1/1 vCPUs running", T);
    // Serial first: typed text reaches the guest, which echoes it.
    vm.send(b"hello-serial\r");
    vm.expect_stdout("hello-serial", T);
    // Ctrl-a c: the monitor, banner on first switch.
    vm.send(b"\x01c");
    vm.expect_stdout(
        "QEMU 7.2.22 monitor - type 'help' for more information\r\n(qemu) ",
        T,
    );
    vm.send(b"info status\r");
    vm.expect_stdout("VM status: running\r\n", T);
    vm.send(b"\x01h");
    vm.expect_stdout("C-a c    switch between console and monitor", T);
    // Back to serial: input goes to the guest again.
    vm.send(b"\x01c");
    vm.send(b"back-to-serial\r");
    vm.expect_stdout("back-to-serial", T);
    vm.send(b"\x01x");
    let st = vm.wait(T);
    assert_eq!(code(st), 0);
    assert!(vm.stdout.text().contains("QEMU: Terminated"));
}

#[test]
fn qmp_on_a_unix_socket_and_hmp_on_a_named_chardev_with_mon() {
    let dir = TempDir::new("monunix");
    let sock = dir.path("qmp.sock");
    let port = free_port();
    let qmp = format!("unix:{},server,nowait", sock.display());
    let chardev = format!("socket,id=mon0,host=127.0.0.1,port={port},server=on,wait=off,telnet=on");
    let mut vm = demo_vm(&[
        "-display",
        "none",
        "-qmp",
        &qmp,
        "-chardev",
        &chardev,
        "-mon",
        "chardev=mon0,mode=readline",
    ]);
    let s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("\"QMP\""), "{line}");
    w.write_all(br#"{"execute":"qmp_capabilities"}{"execute":"query-chardev","id":"c"}"#)
        .unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let labels: Vec<&str> = v["return"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["label"].as_str().unwrap())
        .collect();
    assert!(
        labels.contains(&"mon0") && labels.contains(&"serial0"),
        "{v}"
    );
    // The telnet chardev: QEMU's negotiation bytes first, then the banner.
    let mut t = connect(port);
    let got = read_until(&mut t, b"(qemu) ");
    assert!(
        got.starts_with(&[0xff, 0xfb, 0x01, 0xff, 0xfb, 0x03, 0xff, 0xfb, 0x00, 0xff, 0xfd, 0x00])
    );
    // CR NUL is one Enter (netkit telnet in binary mode).
    t.write_all(b"info kvm\r\0").unwrap();
    let got = read_until(&mut t, b"kvm support: enabled\r\n(qemu) ");
    assert!(!String::from_utf8_lossy(&got).contains("(qemu) (qemu)"));
    vm.kill();
}

#[test]
fn sendkey_reaches_a_polling_guest_as_scancodes() {
    let (vm, port) = guest_with_monitor("kbd", "timeout=60");
    vm.expect_stdout("kbd: ready", T);
    let mut h = Hmp::open(port);
    assert_eq!(h.cmd("sendkey a"), "");
    vm.expect_stdout("kbd: 1e\r\nkbd: 9e", T);
    // A combination: pressed in order, released in reverse after the hold time.
    assert_eq!(h.cmd("sendkey ctrl-alt-delete 50"), "");
    vm.expect_stdout(
        "kbd: 1d\r\nkbd: 38\r\nkbd: e0\r\nkbd: 53\r\nkbd: e0\r\nkbd: d3\r\nkbd: b8\r\nkbd: 9d",
        T,
    );
    // QMP-style names through HMP, then `q` ends the guest.
    assert_eq!(h.cmd("sendkey q"), "");
    vm.expect_stdout("kbd: stop", T);
}

/// Pixels of a binary PPM.
fn ppm(path: &Path) -> (u32, u32, Vec<u8>) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 {
        while data[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while !data[i].is_ascii_whitespace() {
            i += 1;
        }
        fields.push(String::from_utf8_lossy(&data[start..i]).into_owned());
    }
    assert_eq!(fields[0], "P6");
    assert_eq!(fields[3], "255");
    (
        fields[1].parse().unwrap(),
        fields[2].parse().unwrap(),
        data[i + 1..].to_vec(),
    )
}

#[test]
fn screendump_of_the_grub_menu_matches_qemus() {
    let dir = TempDir::new("screendump");
    let iso = common::grub_rescue_iso(
        &dir,
        "serial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console\nset timeout=60\nmenuentry \"troupe screendump entry\" {\n  halt\n}\n",
    );
    let run = |qemu: bool, out: std::path::PathBuf| {
        let iso = iso.clone();
        std::thread::spawn(move || {
            let port = free_port();
            let mon = format!("tcp:127.0.0.1:{port},server,nowait");
            let args = [
                "-m",
                "256",
                "-vga",
                "std",
                "-display",
                "none",
                "-serial",
                "stdio",
                "-cdrom",
                iso.to_str().unwrap(),
                "-monitor",
                &mon,
            ];
            let vm = if qemu {
                Vm::qemu(&args)
            } else {
                Vm::troupe(&args)
            }
            .spawn();
            vm.expect_stdout("troupe screendump entry", Duration::from_secs(120));
            // GRUB draws the menu on the screen after the serial line (later still on a
            // loaded host): dump until two dumps a second apart agree but for GRUB's
            // countdown, so the menu is whole.
            let mut h = Hmp::open(port);
            let mut last: Option<Vec<u8>> = None;
            let mut reply;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                std::thread::sleep(Duration::from_millis(1000));
                reply = h.cmd(&format!("screendump {}", out.display()));
                let (w, hgt, px) = ppm(&out);
                let settled = last.as_ref().is_some_and(|prev| {
                    let same = prev
                        .chunks(3)
                        .zip(px.chunks(3))
                        .filter(|(a, b)| a == b)
                        .count();
                    same * 1000 >= (w * hgt) as usize * 998
                });
                if settled || Instant::now() > deadline {
                    break;
                }
                last = Some(px);
            }
            if !qemu {
                assert_eq!(reply, "");
                // PNG too, via `-f png`.
                let png = out.with_extension("png");
                assert_eq!(h.cmd(&format!("screendump {} -f png", png.display())), "");
                let bytes = std::fs::read(&png).unwrap();
                assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
            }
            drop(vm);
        })
    };
    let a = run(false, dir.path("troupe.ppm"));
    let b = run(true, dir.path("qemu.ppm"));
    a.join().expect("troupe run");
    b.join().expect("qemu run");
    let (tw, th, tp) = ppm(&dir.path("troupe.ppm"));
    let (qw, qh, qp) = ppm(&dir.path("qemu.ppm"));
    assert_eq!((tw, th), (qw, qh), "same screen size");
    let same = tp
        .chunks(3)
        .zip(qp.chunks(3))
        .filter(|(a, b)| a == b)
        .count();
    let total = (tw * th) as usize;
    assert!(
        same * 100 >= total * 99,
        "only {same} of {total} pixels match QEMU's screendump"
    );
    // Not a blank screen: GRUB's menu has text.
    let distinct: std::collections::HashSet<&[u8]> = tp.chunks(3).collect();
    assert!(distinct.len() >= 2);
}

#[test]
fn an_internal_error_with_a_monitor_attached_keeps_the_process_for_inspection() {
    let (mut vm, port) = guest_with_monitor("hello", "fault=emulation");
    vm.stderr
        .wait_for("emulation failure", T)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut h = Hmp::open(port);
    // The report reaches stderr as the vCPU stops; the state change follows at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut st = h.cmd("info status");
    while st != "VM status: paused (internal-error)\r\n" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        st = h.cmd("info status");
    }
    assert_eq!(st, "VM status: paused (internal-error)\r\n");
    assert!(
        h.cmd("cont").contains("Error: "),
        "cont refused until a reset"
    );
    let regs = h.cmd("info registers");
    assert!(regs.starts_with("\r\nCPU#0\r\nRAX="), "{regs}");
    assert!(regs.contains("CPL=0"), "{regs}");
    assert_eq!(h.cmd("info kvm"), "kvm support: enabled\r\n");
    h.0.write_all(b"quit\r\n").unwrap();
    assert_eq!(code(vm.wait(T)), 0);
}

#[test]
fn xp_reads_guest_memory_and_the_vga_text_window_like_the_cpu_sees_them() {
    let port = free_port();
    let mon = format!("tcp:127.0.0.1:{port},server,nowait");
    let vm = demo_vm(&["-vga", "std", "-display", "none", "-monitor", &mon]);
    let mut h = Hmp::open(port);
    // The demo's title bar: " troupe ..." in white on blue (attribute 0x1f), read
    // through the VGA model's legacy window.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        h.cmd("xp /6xb 0xb8002"),
        "00000000000b8002: 0x20 0x1f 0x74 0x1f 0x72 0x1f\r\n"
    );
    assert_eq!(
        h.cmd("xp /3c 0xb8004"),
        "00000000000b8004: 't' '\\x1f' 'r'\r\n"
    );
    // The guest's ELF image in RAM (loaded at 1 MiB), through the page tables with `x`.
    assert_eq!(h.cmd("x /1xw 0x100000"), "0000000000100000: 0x464c457f\r\n");
    assert_eq!(h.cmd("gva2gpa 0x100000"), "gpa: 0x100000\r\n");
    drop(vm);
}
