//! Hostile input through the user's doors (issue 20): corrupt qcow2 images made by
//! `qemu-img` and patched field by field, files that never end, arguments that are not
//! UTF-8, and malformed QMP and HMP input. Each is refused with one clear line, leaves the
//! image byte for byte as it was, and leaves a running VM running.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{code, connect, free_port, guest, read_until, Hmp, Qmp, Running, TempDir, Vm};

/// How long a refused start may take.
const REFUSE: Duration = Duration::from_secs(10);

fn qemu_img(args: &[&str]) {
    let run = || {
        Command::new("qemu-img")
            .args(args)
            .output()
            .expect("qemu-img (qemu-utils)")
    };
    let mut out = run();
    // Making a LUKS header, qemu-img times its key derivation by CPU time and gives up
    // when its reading comes out wrong ("Unable to get accurate CPU usage": about one run
    // in three on this nested host, busy or not).
    for _ in 0..12 {
        if out.status.success()
            || !String::from_utf8_lossy(&out.stderr).contains("accurate CPU usage")
        {
            break;
        }
        out = run();
    }
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A fresh 64 MiB qcow2 v3 image (64 KiB clusters) at `dir/name`.
fn image(dir: &TempDir, name: &str) -> PathBuf {
    let p = dir.path(name);
    qemu_img(&["create", "-q", "-f", "qcow2", s(&p), "64M"]);
    p
}

/// Overwrite the header bytes at `at` with `bytes`.
fn patch(p: &Path, at: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

/// Start troupe paused on `img` as a virtio disk; it must exit 1 (no signal) within
/// seconds with one line on stderr containing every one of `wanted`, and the image must be
/// unchanged. QEMU 7.2 must refuse the same image too.
fn refused(img: &Path, extra: &[&str], wanted: &[&str]) {
    let before = std::fs::read(img).unwrap();
    let drive = format!("file={},if=virtio", s(img));
    let mut args = vec!["-S", "-display", "none", "-nodefaults", "-drive", &drive];
    args.extend_from_slice(extra);
    let start = Instant::now();
    let (st, _, err) = Vm::troupe(&args).run(REFUSE);
    assert_eq!(code(st), 1, "{}: {err}", img.display());
    assert!(start.elapsed() < REFUSE);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err:?}");
    for w in wanted {
        assert!(lines[0].contains(w), "{:?} lacks {w:?}", lines[0]);
    }
    assert!(
        std::fs::read(img).unwrap() == before,
        "{} was written",
        img.display()
    );
    let (st, _, qerr) = Vm::qemu(&args).run(REFUSE);
    assert_ne!(code(st), 0, "QEMU opened {}: {qerr}", img.display());
    assert!(
        std::fs::read(img).unwrap() == before,
        "QEMU wrote {}",
        img.display()
    );
}

/// Start troupe paused on `img`; it must still be running after two seconds.
fn opens(img: &Path) {
    let drive = format!("file={},if=virtio", s(img));
    let mut vm = Vm::troupe(&["-S", "-display", "none", "-nodefaults", "-drive", &drive]).spawn();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        vm.child.try_wait().unwrap().is_none(),
        "{} was refused: {}",
        img.display(),
        vm.stderr.text()
    );
    vm.kill();
}

#[test]
fn qcow2_headers_qemu_refuses_are_refused_before_anything_is_written() {
    let dir = TempDir::new("harden-qcow2");
    // (name, header offset, new bytes, what the one line says)
    let be32 = |v: u32| v.to_be_bytes().to_vec();
    let be64 = |v: u64| v.to_be_bytes().to_vec();
    let cases: Vec<(&str, u64, Vec<u8>, Vec<&str>)> = vec![
        (
            "version",
            4,
            be32(9),
            vec!["Unsupported qcow2 version 9", "version"],
        ),
        (
            "cluster-bits",
            20,
            be32(30),
            vec!["Unsupported cluster size: 2^30", "cluster_bits 30"],
        ),
        (
            "size-max",
            24,
            be64(i64::MAX as u64),
            vec!["Image is too big", "size 9223372036854775807"],
        ),
        (
            "size-1t",
            24,
            be64(1 << 40),
            vec!["L1 table is too small", "l1_size 1"],
        ),
        ("crypt-aes", 32, be32(1), vec!["AES-CBC", "crypt_method 1"]),
        ("crypt-luks", 32, be32(2), vec!["crypt_method 2"]),
        (
            "crypt-unknown",
            32,
            be32(3),
            vec!["Unsupported encryption method 3", "crypt_method"],
        ),
        (
            "l1-size-0",
            36,
            be32(0),
            vec!["L1 table is too small", "l1_size 0"],
        ),
        (
            "l1-unaligned",
            40,
            be64(0x30001),
            vec!["Active L1 table offset invalid", "l1_table_offset 0x30001"],
        ),
        (
            "reftable-0",
            56,
            be32(0),
            vec![
                "does not contain a reference count table",
                "refcount_table_clusters 0",
            ],
        ),
        (
            "reftable-huge",
            56,
            be32(1 << 20),
            vec![
                "Reference count table too large",
                "refcount_table_clusters 1048576",
            ],
        ),
        (
            "snapshots-many",
            60,
            be32(70000),
            vec!["Snapshot table too large", "nb_snapshots 70000"],
        ),
        (
            "snapshots-unaligned",
            64,
            be64(0x1234),
            vec!["Snapshot table offset invalid", "snapshots_offset 0x1234"],
        ),
        (
            "incompatible-bit5",
            72,
            be64(1 << 5),
            vec!["Unknown incompatible feature: 20", "incompatible_features"],
        ),
        (
            "corrupt",
            72,
            be64(2),
            vec!["Image is corrupt", "incompatible_features bit 1"],
        ),
        (
            "data-file",
            72,
            be64(4),
            vec!["'data-file' is required", "incompatible_features bit 2"],
        ),
        (
            "data-file-raw",
            88,
            be64(2),
            vec![
                "data-file-raw requires a data file",
                "autoclear_features bit 1",
            ],
        ),
        (
            "refcount-order",
            96,
            be32(7),
            vec!["Reference count entry width too large", "refcount_order 7"],
        ),
        (
            "header-long",
            100,
            be32(70000),
            vec!["qcow2 header exceeds cluster size", "header_length 70000"],
        ),
        (
            "header-short",
            100,
            be32(50),
            vec!["qcow2 header too short", "header_length 50"],
        ),
        // The first header extension (at header_length 112) claims 128 KiB.
        (
            "extension-long",
            116,
            be32(0x20000),
            vec!["Header extension too large", "length 131072"],
        ),
    ];
    for (name, at, bytes, wanted) in &cases {
        let img = image(&dir, &format!("{name}.qcow2"));
        patch(&img, *at, bytes);
        let mut wanted = wanted.clone();
        let quoted = format!("'{}'", img.display());
        wanted.push(&quoted);
        refused(&img, &[], &wanted);
    }

    // Really encrypted images, as qemu-img makes them: never read as plain data.
    for (format, wanted) in [("luks", "crypt_method 2"), ("aes", "crypt_method 1")] {
        let img = dir.path(&format!("{format}.qcow2"));
        let opts = format!("encrypt.format={format},encrypt.key-secret=sec0");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "--object",
            "secret,id=sec0,data=pw",
            "-o",
            &opts,
            s(&img),
            "64M",
        ]);
        refused(&img, &[], &["encrypted", wanted]);
    }

    // Features QEMU handles but troupe cannot: refused, and never written (QEMU would
    // open them, repairing a dirty image).
    let dirty = image(&dir, "dirty.qcow2");
    patch(&dirty, 72, &1u64.to_be_bytes());
    // Autoclear bit 0 (bitmaps) too: imago clears autoclear bits when it opens an image.
    patch(&dirty, 88, &1u64.to_be_bytes());
    let el2 = dir.path("el2.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=2M,extended_l2=on",
        s(&el2),
        "64M",
    ]);
    patch(&el2, 88, &1u64.to_be_bytes());
    for (img, wanted) in [
        (&dirty, "qemu-img check -r all"),
        (
            &el2,
            "qcow2 feature 'extended L2 entries' is not supported by troupe",
        ),
    ] {
        let before = std::fs::read(img).unwrap();
        let drive = format!("file={},if=virtio", s(img));
        let (st, _, err) =
            Vm::troupe(&["-S", "-display", "none", "-nodefaults", "-drive", &drive]).run(REFUSE);
        assert_eq!(code(st), 1, "{err}");
        assert!(err.contains(wanted), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            std::fs::read(img).unwrap() == before,
            "{} was written",
            img.display()
        );
    }

    // The checks pass a good image.
    let good = image(&dir, "good.qcow2");
    opens(&good);
    // Autoclear bits troupe does not know are cleared on a read/write open, as QEMU does.
    let bit5 = image(&dir, "autoclear5.qcow2");
    patch(&bit5, 88, &(1u64 << 5).to_be_bytes());
    opens(&bit5);
}

#[test]
fn backing_chains_that_loop_or_go_too_deep_are_refused() {
    let dir = TempDir::new("harden-chain");
    // a → a
    let selfish = image(&dir, "self.qcow2");
    qemu_img(&[
        "rebase",
        "-u",
        "-F",
        "qcow2",
        "-b",
        "self.qcow2",
        s(&selfish),
    ]);
    refused(&selfish, &[], &["loops back", "self.qcow2"]);
    // a → b → a
    let a = image(&dir, "a.qcow2");
    let b = dir.path("b.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        "a.qcow2",
        s(&b),
    ]);
    qemu_img(&["rebase", "-u", "-F", "qcow2", "-b", "b.qcow2", s(&a)]);
    refused(&a, &[], &["loops back", "a.qcow2"]);
    refused(&b, &[], &["loops back", "b.qcow2"]);

    // 64 images open; a 65th is one too many.
    let mut top = image(&dir, "c0.qcow2");
    for i in 1..64 {
        let next = dir.path(&format!("c{i}.qcow2"));
        let base = format!("c{}.qcow2", i - 1);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            &base,
            s(&next),
            "1M",
        ]);
        top = next;
    }
    opens(&top);
    let deep = dir.path("c64.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        "c63.qcow2",
        s(&deep),
        "1M",
    ]);
    let before = std::fs::read(&deep).unwrap();
    let drive = format!("file={},if=virtio", s(&deep));
    let (st, _, err) =
        Vm::troupe(&["-S", "-display", "none", "-nodefaults", "-drive", &drive]).run(REFUSE);
    assert_eq!(code(st), 1, "{err}");
    assert!(err.contains("deeper than 64 images"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(std::fs::read(&deep).unwrap() == before);
}

/// Run troupe to its end and return (exit code, stderr, peak RSS in KiB) from wait4.
fn run_measured(args: &[&str]) -> (i32, String, u64) {
    let mut child = Command::new(common::troupe_bin())
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: all-zeroes is a valid rusage, which wait4 fills in for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet reaped; both pointers are to live locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid);
    assert!(libc::WIFEXITED(status), "troupe died on a signal: {err}");
    std::mem::forget(child);
    (libc::WEXITSTATUS(status), err, usage.ru_maxrss as u64)
}

#[test]
fn endless_and_oversized_boot_files_are_refused_before_reading() {
    common::require_kvm();
    let dir = TempDir::new("harden-files");
    let fifo = dir.path("fifo");
    let c = std::ffi::CString::new(s(&fifo)).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let big = dir.path("big");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(200 << 20)
        .unwrap();
    let demo = guest("demo");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["-kernel", "/dev/zero"],
            "-kernel /dev/zero: '/dev/zero' is not a regular file",
        ),
        (
            vec!["-kernel", s(&fifo)],
            "is not a regular file or block device",
        ),
        (
            vec!["-m", "64", "-kernel", s(&big)],
            "is 209715200 bytes, more than the 67108864 bytes of guest RAM",
        ),
        (
            vec!["-kernel", s(&demo), "-initrd", "/dev/zero"],
            "-initrd /dev/zero: '/dev/zero' is not a regular file",
        ),
        (vec!["-bios", "/dev/zero"], "-bios /dev/zero"),
    ];
    for (extra, wanted) in cases {
        let mut args = vec!["-S", "-display", "none", "-nodefaults"];
        args.extend_from_slice(&extra);
        let start = Instant::now();
        let (rc, err, maxrss_kib) = run_measured(&args);
        assert_eq!(rc, 1, "{extra:?}: {err}");
        assert!(start.elapsed() < REFUSE, "{extra:?}");
        assert!(err.contains(wanted), "{extra:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            maxrss_kib < 100 << 10,
            "{extra:?}: peak RSS {maxrss_kib} KiB"
        );
    }
}

#[test]
fn an_argument_that_is_not_utf8_is_refused_without_a_panic() {
    use std::os::unix::ffi::OsStrExt;
    common::require_kvm();
    let out = Command::new(common::troupe_bin())
        .args(["-S", "-display", "none", "-nodefaults", "-name"])
        .arg(std::ffi::OsStr::from_bytes(b"vm\xff\xfe1"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err,
        "troupe: argument 6 ('vm\\xff\\xfe1') is not valid UTF-8: troupe takes option values, names and paths as UTF-8 text\n"
    );
}

/// The demo guest with a QMP and an HMP server on free ports.
fn demo_with_monitors() -> (Running, u16, u16) {
    let (qport, hport) = (free_port(), free_port());
    let k = guest("demo");
    let qmp = format!("tcp:127.0.0.1:{qport},server,nowait");
    let hmp = format!("tcp:127.0.0.1:{hport},server,nowait");
    let vm = Vm::troupe(&[
        "-m",
        "128",
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-qmp",
        &qmp,
        "-monitor",
        &hmp,
        "-kernel",
        k.to_str().unwrap(),
    ])
    .spawn();
    vm.expect_stdout("demo: 1/1 vCPUs running", Duration::from_secs(60));
    (vm, qport, hport)
}

fn desc(v: &serde_json::Value) -> &str {
    v["error"]["desc"].as_str().unwrap_or_default()
}

#[test]
fn qmp_refuses_what_qemus_json_reader_refuses_and_the_vm_runs_on() {
    let (mut vm, qport, _) = demo_with_monitors();
    let mut q = Qmp::open(qport);
    q.ask(r#"{"execute": "qmp_capabilities"}"#);
    let status = |q: &mut Qmp| q.ask(r#"{"execute": "query-status"}"#)["return"]["status"].clone();

    // A duplicate key is an error, not "the last one wins": the VM is not stopped.
    let r = q.ask(r#"{"execute":"query-status","execute":"stop"}"#);
    assert_eq!(desc(&r), "JSON parse error, duplicate key", "{r}");
    let r = q.ask(r#"{"execute":"query-status","arguments":{"a":1,"a":2}}"#);
    assert_eq!(desc(&r), "JSON parse error, duplicate key", "{r}");
    assert_eq!(status(&mut q), "running");

    // Lone surrogates are named as written.
    let r = q.ask(r#"{"execute":"query-status","id":"\uD800x"}"#);
    assert_eq!(
        desc(&r),
        "JSON parse error, \\uD800 is not a valid Unicode character"
    );
    let r = q.ask(r#"{"execute":"query-status","id":"\ud800\u0041"}"#);
    assert_eq!(
        desc(&r),
        "JSON parse error, \\ud800 is not a valid Unicode character"
    );
    let r = q.ask(r#"{"execute":"qu\udc00ery-status"}"#);
    assert_eq!(
        desc(&r),
        "JSON parse error, \\udc00 is not a valid Unicode character"
    );
    // A pair is one character.
    let r = q.ask(r#"{"execute":"query-status","id":"\ud83d\ude00"}"#);
    assert_eq!(r["id"], "\u{1f600}", "{r}");

    // exec-oob without the capability, and with both keys.
    let r = q.ask(r#"{"exec-oob":"stop"}"#);
    assert_eq!(desc(&r), "QMP input member 'exec-oob' is unexpected");
    let r = q.ask(r#"{"exec-oob":"stop","execute":"stop"}"#);
    assert_eq!(
        desc(&r),
        "QMP input member 'execute' clashes with 'exec-oob'"
    );
    assert_eq!(status(&mut q), "running");

    // cpu-index must name a CPU.
    for i in ["-1", "1", "4294967296"] {
        let r = q.ask(&format!(
            r#"{{"execute":"human-monitor-command","arguments":{{"command-line":"info status","cpu-index":{i}}}}}"#
        ));
        assert_eq!(
            desc(&r),
            "Parameter 'cpu-index' expects a CPU number",
            "{i}: {r}"
        );
    }
    let r = q.ask(
        r#"{"execute":"human-monitor-command","arguments":{"command-line":"info status","cpu-index":0}}"#,
    );
    assert_eq!(r["return"], "VM status: running\r\n");

    // 1,000,000 unterminated '[': the depth limit is reported as soon as it is crossed
    // (QEMU: once per 1025 brackets, each error starting a new message).
    let start = Instant::now();
    q.send(&vec![b'['; 1025]);
    let r: serde_json::Value = serde_json::from_str(&q.line()).unwrap();
    assert_eq!(desc(&r), "JSON nesting depth limit exceeded");
    assert!(start.elapsed() < Duration::from_secs(2));
    let mut s = connect(qport);
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    s.write_all(br#"{"execute": "qmp_capabilities"}"#).unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    s.write_all(&vec![b'['; 1_000_000]).unwrap();
    let mut errors = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while errors < 1_000_000 / 1025 {
        assert!(Instant::now() < deadline, "{errors} depth errors so far");
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("JSON nesting depth limit exceeded"), "{line}");
        errors += 1;
    }
    // The monitor and the VM are fine.
    assert_eq!(status(&mut q), "running");
    assert!(vm.child.try_wait().unwrap().is_none());
    vm.kill();
}

#[test]
fn hmp_refuses_extra_words_unknown_log_items_and_addresses_past_the_top() {
    let (mut vm, _, hport) = demo_with_monitors();
    let mut s = connect(hport);
    read_until(&mut s, b"(qemu) ");
    let mut h = Hmp(s);
    assert_eq!(
        h.cmd("info status xxx"),
        "status: extraneous characters at the end of line\r\nTry \"help info status\" for more information\r\n"
    );
    assert_eq!(
        h.cmd("info version foo"),
        "version: extraneous characters at the end of line\r\nTry \"help info version\" for more information\r\n"
    );
    assert_eq!(
        h.cmd("log guest_errors x"),
        "log: extraneous characters at the end of line\r\nTry \"help log\" for more information\r\n"
    );
    assert_eq!(
        h.cmd("stop now"),
        "stop|s: extraneous characters at the end of line\r\nTry \"help stop\" for more information\r\n"
    );
    // An unknown item lists the known ones and turns nothing on.
    for bad in ["log bogus", "log guest_errors,bogus"] {
        let out = h.cmd(bad);
        assert!(out.starts_with("Log items (comma separated):\r\n"), "{out}");
        assert!(out.contains("guest_errors"), "{out}");
    }
    assert_eq!(h.cmd("log guest_errors"), "");
    assert_eq!(h.cmd("log none"), "");
    // No wrap round to 0 past 2^64 (physical or virtual).
    for cmd in [
        "xp /x 0xfffffffffffffff8",
        "xp /2g 0xfffffffffffffff8",
        "x /2g 0xfffffffffffffff8",
    ] {
        assert_eq!(
            h.cmd(cmd),
            "fffffffffffffff8: Cannot access memory\r\n",
            "{cmd}"
        );
    }
    // Memory at 0 is still readable where it exists.
    assert!(h.cmd("xp /x 0").starts_with("0000000000000000: 0x"));
    assert_eq!(h.cmd("info status"), "VM status: running\r\n");
    assert!(vm.child.try_wait().unwrap().is_none());
    vm.kill();
}

#[test]
fn unused_chardevs_a_second_vnc_and_a_bad_tap_fd_are_checked_at_start() {
    let dir = TempDir::new("harden-start");
    let sock = format!(
        "socket,id=c0,path={}/no/such/dir/sock,server=on,wait=off",
        dir.0.display()
    );
    let port = free_port();
    let vnc = format!("127.0.0.1:{}", port - 5900);
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        // A chardev nothing uses is still opened, as QEMU does.
        (vec!["-chardev", &sock], vec!["c0", "/no/such/dir/sock"]),
        (
            vec!["-vnc", &vnc, "-vnc", &vnc],
            vec!["Address already in use"],
        ),
        (
            vec!["-netdev", "tap,id=n0,fd=999"],
            vec!["n0: Can't use file descriptor 999: Bad file descriptor"],
        ),
    ];
    for (extra, wanted) in cases {
        let mut args = vec!["-S", "-display", "none", "-nodefaults"];
        args.extend_from_slice(&extra);
        let start = Instant::now();
        let (st, _, err) = Vm::troupe(&args).run(REFUSE);
        assert_eq!(code(st), 1, "{extra:?}: {err}");
        assert!(start.elapsed() < REFUSE);
        // One error line (a netdev with no NIC also gets QEMU's warning).
        let errors: Vec<&str> = err.lines().filter(|l| !l.contains("warning:")).collect();
        assert_eq!(errors.len(), 1, "{err}");
        // The OS's reason once, not once per layer that quotes it.
        assert!(errors[0].matches("(os error").count() <= 1, "{err}");
        for w in wanted {
            assert!(err.contains(w), "{extra:?}: {err}");
        }
        // QEMU refuses the same.
        let (st, _, qerr) = Vm::qemu(&args).run(REFUSE);
        assert_ne!(code(st), 0, "QEMU accepted {extra:?}: {qerr}");
    }

    // A good unused chardev is opened (its file created) and the VM runs.
    let out = dir.path("unused.log");
    let file = format!("file,id=c1,path={}", out.display());
    let mut vm = Vm::troupe(&["-S", "-display", "none", "-nodefaults", "-chardev", &file]).spawn();
    let deadline = Instant::now() + REFUSE;
    while !out.exists() {
        assert!(Instant::now() < deadline, "{} never created", out.display());
        assert!(
            vm.child.try_wait().unwrap().is_none(),
            "{}",
            vm.stderr.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        vm.child.try_wait().unwrap().is_none(),
        "{}",
        vm.stderr.text()
    );
    vm.kill();
}
