//! Storage, and the other virtio devices on the same transport, through the doors a user
//! uses: `-drive if=virtio` and `-blockdev` on raw and qcow2 images (made and checked with
//! `qemu-img`), driven by the ring-3 virtio test guest (`tests/guests/virtio`) and by
//! SeaBIOS + GRUB; durability across SIGKILL; `-snapshot`; image locking against another
//! troupe and against QEMU; bad images and hostile rings; `info block`; virtio-rng; a
//! virtconsole on a socket chardev.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{code, guest, TempDir, Vm};

const T: Duration = Duration::from_secs(120);
/// What the guest's exit code 0 looks like through isa-debug-exit.
const PASS: i32 = 1;

/// The guest's pattern: byte `i` of sector `s` is `(s * 7 + i + seed) % 251`.
fn pattern(sectors: u64, seed: u64) -> Vec<u8> {
    (0..sectors * 512)
        .map(|o| (((o / 512) * 7 + o % 512 + seed) % 251) as u8)
        .collect()
}

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img (qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The virtio guest with `append`, serial on stdout, and `extra` options (drives).
fn vguest(append: &str, extra: &[&str]) -> Vm {
    let k = guest("virtio");
    Vm::troupe(&common::guest_args(s(&k), append, extra))
}

fn run_guest(append: &str, extra: &[&str]) -> (i32, String, String) {
    let (st, out, err) = vguest(append, extra).run(T);
    (code(st), out, err)
}

/// Read `len` bytes of the guest-visible disk through `qemu-img convert` to raw.
fn disk_bytes(dir: &TempDir, img: &Path, len: usize) -> Vec<u8> {
    let out = dir.path("converted.raw");
    qemu_img(&["convert", "-O", "raw", s(img), s(&out)]);
    let mut b = std::fs::read(&out).unwrap();
    b.truncate(len);
    b
}

fn assert_clean(img: &Path) {
    let out = qemu_img(&["check", s(img)]);
    assert!(
        out.contains("No errors were found"),
        "qemu-img check: {out}"
    );
}

#[test]
fn the_guest_driver_passes_its_checks_on_raw_and_qcow2_modern_and_legacy() {
    let dir = TempDir::new("vblk");
    let raw = dir.path("d.raw");
    qemu_img(&["create", "-q", "-f", "raw", s(&raw), "16M"]);
    let q = dir.path("d.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&q), "16M"]);
    for (img, fmt) in [(&raw, "raw"), (&q, "qcow2")] {
        for iface in ["", "legacy"] {
            let drive = format!(
                "file={},if=virtio,format={fmt},discard=unmap,serial=disk-{fmt}",
                s(img)
            );
            let (c, out, err) =
                run_guest(&format!("{iface} sectors=4096 seed=3"), &["-drive", &drive]);
            assert_eq!(c, PASS, "{fmt} {iface}: stdout: {out}\nstderr: {err}");
            assert!(out.contains(&format!("vblk: id 'disk-{fmt}'")), "{out}");
            assert!(
                out.contains("write-zeroes ok") && out.contains("discard ok"),
                "{out}"
            );
            assert!(out.contains("out-of-range read status=1"), "{out}");
            assert!(
                out.contains("vblk: isr=0x1 then 0x0"),
                "INTx and ISR: {out}"
            );
            assert!(out.contains("vblk: indirect read ok"), "{out}");
        }
    }
    assert_clean(&q);
    // What the guest left is exactly its pattern, as qemu-img reads it.
    assert_eq!(disk_bytes(&dir, &q, 4096 * 512), pattern(4096, 3));
    assert_eq!(
        std::fs::read(&raw).unwrap()[..4096 * 512],
        pattern(4096, 3)[..]
    );
}

#[test]
fn a_pattern_written_by_the_guest_is_what_qemu_img_compare_and_convert_see() {
    let dir = TempDir::new("vblk-pattern");
    let want = pattern(8192, 11);
    let expect = dir.path("expect.raw");
    let mut full = want.clone();
    full.resize(16 << 20, 0);
    std::fs::write(&expect, &full).unwrap();
    // qcow2 in both versions: v3 (compat=1.1, qemu-img's default) and v2 (compat=0.10);
    // on io_uring (the block actor's own executor) and on the thread pool.
    for (fmt, opts, aio) in [
        ("raw", "", "io_uring"),
        ("qcow2", "compat=1.1", "io_uring"),
        ("qcow2", "compat=1.1", "threads"),
        ("qcow2", "compat=0.10", "io_uring"),
    ] {
        let img = dir.path(&format!("w-{opts}-{aio}.{fmt}"));
        let mut create = vec!["create", "-q", "-f", fmt];
        if !opts.is_empty() {
            create.extend(["-o", opts]);
        }
        create.extend([s(&img), "16M"]);
        qemu_img(&create);
        if fmt == "qcow2" {
            let info = qemu_img(&["info", s(&img)]);
            let compat = opts.trim_start_matches("compat=");
            assert!(info.contains(&format!("compat: {compat}")), "{info}");
        }
        let drive = format!(
            "file={},if=virtio,format={fmt},cache=none,aio={aio}",
            s(&img)
        );
        let (c, out, err) = run_guest("op=write sectors=8192 seed=11", &["-drive", &drive]);
        assert_eq!(c, PASS, "{fmt} {opts} {aio}: {out}\n{err}");
        assert!(out.contains("vblk: wrote 8192 sectors, flushed"), "{out}");
        if fmt == "qcow2" {
            assert_clean(&img);
        }
        let cmp = qemu_img(&["compare", "-f", fmt, "-F", "raw", s(&img), s(&expect)]);
        assert!(cmp.contains("Images are identical"), "{fmt}: {cmp}");
        assert_eq!(disk_bytes(&dir, &img, want.len()), want, "{fmt}");
    }
}

#[test]
fn multiqueue_and_event_idx_work_as_the_guest_negotiates_them() {
    let dir = TempDir::new("vblk-mq");
    let raw = dir.path("d.raw");
    qemu_img(&["create", "-q", "-f", "raw", s(&raw), "16M"]);
    let blockdev = format!(
        "driver=raw,node-name=d0,file.driver=file,file.filename={}",
        s(&raw)
    );
    let (c, out, err) = run_guest(
        "op=mq sectors=1024 seed=5",
        &[
            "-blockdev",
            &blockdev,
            "-device",
            "virtio-blk-pci,drive=d0,num-queues=2",
        ],
    );
    assert_eq!(c, PASS, "mq: {out}\n{err}");
    assert!(
        out.contains("vblk: mq negotiated=true num_queues=2"),
        "{out}"
    );
    assert!(
        out.contains("vblk: wrote on queue 1, read back on queue 0"),
        "{out}"
    );
    assert!(
        out.contains("vblk: wrote on queue 0, read back on queue 1"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(&raw).unwrap()[..1024 * 512],
        pattern(1024, 6)[..]
    );
    let drive = format!("file={},if=virtio,format=raw", s(&raw));
    let (c, out, err) = run_guest("op=evidx", &["-drive", &drive]);
    assert_eq!(c, PASS, "evidx: {out}\n{err}");
    assert!(
        out.contains("vblk: evidx suppressed=true raised=true avail_event=3 avail=3"),
        "{out}"
    );
}

/// A legacy driver reinitializes the device right after it writes status 0: a read still
/// in flight at that moment (the disk is slow: the test-only fault hook holds every
/// completion for 1.5 s) must write nothing into guest memory afterwards (not the data,
/// the status byte or the used ring), and the vCPU that wrote the reset must not wait for
/// the disk.
#[test]
fn a_reset_during_a_slow_read_returns_at_once_and_nothing_is_written_after_it() {
    let dir = TempDir::new("vblk-reset");
    let raw = dir.path("d.raw");
    qemu_img(&["create", "-q", "-f", "raw", s(&raw), "1M"]);
    let drive = format!("file={},if=virtio,format=raw", s(&raw));
    for iface in ["legacy", ""] {
        let append = format!("op=reset wait_ms=100 watch_ms=2500 {iface}");
        let (st, out, err) = vguest(&append, &["-drive", &drive])
            .env("TROUPE_FAULT_BLOCK_LATE_MS", "1500")
            .run(T);
        assert_eq!(code(st), PASS, "{iface}: {out}\n{err}");
        assert!(out.contains("vblk: no guest write after reset"), "{out}");
        assert!(out.contains("vblk: works after reset"), "{out}");
        let took: u64 = out
            .split("vblk: reset took ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no reset time: {out}"));
        // The disk holds the read for 1.5 s; a reset that waited for it would take that.
        assert!(
            took < 500_000,
            "{iface}: reset parked the vCPU {took} us: {out}"
        );
    }
}

#[test]
fn compressed_clusters_and_a_backing_chain_made_by_qemu_img_read_back_right() {
    let dir = TempDir::new("vblk-chain");
    let base = dir.path("base.raw");
    let mut data = pattern(8192, 5);
    data.resize(8 << 20, 0);
    std::fs::write(&base, &data).unwrap();
    // Compressed clusters.
    let comp = dir.path("comp.qcow2");
    qemu_img(&[
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        s(&base),
        s(&comp),
    ]);
    let drive = format!("file={},if=virtio,format=qcow2,readonly=on", s(&comp));
    let (c, out, err) = run_guest("op=verify sectors=8192 seed=5", &["-drive", &drive]);
    assert_eq!(c, PASS, "compressed: {out}\n{err}");
    assert!(out.contains("vblk: verified 8192 sectors"), "{out}");
    // A qcow2 overlay on the raw base, and an overlay on that overlay.
    let mid = dir.path("mid.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        s(&base),
        "-F",
        "raw",
        s(&mid),
    ]);
    let top = dir.path("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        s(&mid),
        "-F",
        "qcow2",
        s(&top),
    ]);
    let drive = format!("file={},if=virtio", s(&top));
    let (c, out, err) = run_guest("op=verify sectors=8192 seed=5", &["-drive", &drive]);
    assert_eq!(c, PASS, "chain: {out}\n{err}");
    // Writes land in the top image only.
    let (c, out, err) = run_guest("op=write sectors=100 seed=9", &["-drive", &drive]);
    assert_eq!(c, PASS, "{out}\n{err}");
    assert_clean(&top);
    assert_eq!(
        std::fs::read(&base).unwrap(),
        data,
        "the backing file is untouched"
    );
    let seen = disk_bytes(&dir, &top, 8192 * 512);
    assert_eq!(seen[..100 * 512], pattern(100, 9)[..]);
    assert_eq!(seen[100 * 512..], data[100 * 512..8192 * 512]);
}

fn durability(cache: &str, fmt: &str) {
    let dir = TempDir::new("vblk-kill");
    let img = dir.path(&format!("k.{fmt}"));
    qemu_img(&["create", "-q", "-f", fmt, s(&img), "16M"]);
    let drive = format!("file={},if=virtio,format={fmt},cache={cache}", s(&img));
    let mut vm = vguest("op=write sectors=6000 seed=21 hold", &["-drive", &drive]).spawn();
    vm.expect_stdout("vblk: wrote 6000 sectors, flushed", T);
    vm.kill(); // SIGKILL: no chance to write anything back
    if fmt == "qcow2" {
        assert_clean(&img);
    }
    assert_eq!(
        disk_bytes(&dir, &img, 6000 * 512),
        pattern(6000, 21),
        "cache={cache} {fmt}: flushed data is on the image after SIGKILL"
    );
}

#[test]
fn flushed_writes_survive_sigkill_with_cache_none_and_writeback() {
    for (cache, fmt) in [
        ("none", "qcow2"),
        ("writeback", "qcow2"),
        ("none", "raw"),
        ("writeback", "raw"),
    ] {
        durability(cache, fmt);
    }
}

#[test]
fn snapshot_leaves_the_image_byte_for_byte_untouched() {
    let dir = TempDir::new("vblk-snap");
    for fmt in ["raw", "qcow2"] {
        let img = dir.path(&format!("s.{fmt}"));
        qemu_img(&["create", "-q", "-f", fmt, s(&img), "8M"]);
        let before = std::fs::read(&img).unwrap();
        let drive = format!("file={},if=virtio,format={fmt}", s(&img));
        // The guest writes, flushes and reads back its own writes...
        let (c, out, err) = run_guest("sectors=2048 seed=1", &["-snapshot", "-drive", &drive]);
        assert_eq!(c, PASS, "{fmt}: {out}\n{err}");
        // ... and the image never sees them.
        assert!(
            std::fs::read(&img).unwrap() == before,
            "{fmt} image changed under -snapshot"
        );
        let drive = format!("{drive},snapshot=on");
        let (c, _, err) = run_guest("op=write sectors=64", &["-drive", &drive]);
        assert_eq!(c, PASS, "{err}");
        assert!(
            std::fs::read(&img).unwrap() == before,
            "{fmt} changed under snapshot=on"
        );
    }
}

#[test]
fn a_read_only_drive_fails_guest_writes_and_the_vm_runs_on() {
    let dir = TempDir::new("vblk-ro");
    let img = dir.path("ro.raw");
    std::fs::write(&img, vec![0x5a; 1 << 20]).unwrap();
    let drive = format!("file={},if=virtio,format=raw,readonly=on", s(&img));
    let (c, out, err) = run_guest("op=readonly", &["-drive", &drive]);
    assert!(out.contains("vblk: write status=1"), "{out}\n{err}");
    assert!(out.contains("vblk: read status=0"), "{out}");
    assert_eq!(c, PASS, "{out}\n{err}");
    assert_eq!(std::fs::read(&img).unwrap(), vec![0x5a; 1 << 20]);
}

#[test]
fn malformed_rings_set_needs_reset_and_the_device_recovers() {
    let dir = TempDir::new("vblk-fault");
    let img = dir.path("f.raw");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let drive = format!("file={},if=virtio,format=raw", s(&img));
    for (fault, msg) in [
        ("loop", "loops or is longer"),
        ("oob", "outside guest RAM"),
        (
            "direction",
            "device-readable buffer follows a device-writable",
        ),
        ("badidx", "outside the table"),
    ] {
        let (c, out, err) = run_guest(&format!("fault={fault}"), &["-drive", &drive]);
        assert!(
            out.contains("vblk: device needs reset"),
            "{fault}: {out}\n{err}"
        );
        assert!(
            out.contains("vblk: recovered after reset"),
            "{fault}: {out}\n{err}"
        );
        assert!(err.contains(msg), "{fault}: the error is logged: {err}");
        assert_eq!(
            err.matches("needs reset").count(),
            1,
            "{fault}: logged once: {err}"
        );
        assert_eq!(c, PASS, "{fault}: {out}\n{err}");
    }
}

#[test]
fn bad_images_are_refused_at_start_with_clear_errors() {
    let dir = TempDir::new("vblk-bad");
    // A corrupt qcow2 header (cluster_bits = 99).
    let bad = dir.path("bad.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&bad), "1M"]);
    let mut b = std::fs::read(&bad).unwrap();
    b[20..24].copy_from_slice(&99u32.to_be_bytes());
    std::fs::write(&bad, &b).unwrap();
    // A missing backing file.
    let orphan = dir.path("orphan.qcow2");
    let gone = dir.path("gone.raw");
    std::fs::write(&gone, [0u8; 512]).unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        s(&gone),
        "-F",
        "raw",
        s(&orphan),
        "1M",
    ]);
    std::fs::remove_file(&gone).unwrap();
    for (img, needle) in [(&bad, "bad.qcow2"), (&orphan, "gone.raw")] {
        let drive = format!("file={},if=virtio", s(img));
        let (st, out, err) = vguest("", &["-drive", &drive]).run(T);
        assert!(
            !st.success() && !out.contains("vblk:"),
            "refused before the guest ran: {out}"
        );
        assert!(
            err.contains("troupe:") && err.contains(needle),
            "{needle}: {err}"
        );
    }
}

#[test]
fn an_image_in_use_is_locked_against_another_troupe_and_against_qemu() {
    let dir = TempDir::new("vblk-lock");
    let img = dir.path("l.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&img), "8M"]);
    let drive = format!("file={},if=virtio,format=qcow2", s(&img));
    let vm = vguest("op=write sectors=16 hold", &["-drive", &drive]).spawn();
    vm.expect_stdout("vblk: wrote 16 sectors, flushed", T);
    let (st, out, err) = vguest("", &["-drive", &drive]).run(T);
    assert!(!st.success() && !out.contains("vblk:"), "{out}");
    assert!(
        err.contains("Failed to get \"write\" lock"),
        "second troupe: {err}"
    );
    let (st, _, err) = Vm::qemu(&["-nodefaults", "-display", "none", "-drive", &drive]).run(T);
    assert!(!st.success(), "QEMU must not open it");
    assert!(err.contains("lock"), "QEMU's refusal: {err}");
    drop(vm);
    // And the other way round: QEMU holds it, troupe is refused.
    let mut q = Vm::qemu(&["-nodefaults", "-display", "none", "-S", "-drive", &drive]).spawn();
    std::thread::sleep(Duration::from_secs(2));
    let (st, out, err) = vguest("", &["-drive", &drive]).run(T);
    assert!(!st.success() && !out.contains("vblk:"), "{out}");
    assert!(
        err.contains("Failed to get \"write\" lock"),
        "troupe next to QEMU: {err}"
    );
    q.kill();
}

#[test]
fn virtio_rng_gives_the_guest_entropy() {
    for iface in ["", "legacy"] {
        let (c, out, err) = run_guest(&format!("dev=rng {iface}"), &["-device", "virtio-rng-pci"]);
        assert!(out.contains("vrng: got 64 bytes"), "{out}\n{err}");
        assert_eq!(c, PASS, "{out}\n{err}");
    }
}

/// A driver without MSI-X takes virtio-rng's completions on INTx (a PIRQ-routed ISA IRQ,
/// level-triggered), watching the line at the 8259 and EOIing it: each of 300 requests
/// raises it once, an EOI while the device's ISR is still set leaves it asserted (no lost
/// interrupt), and reading the ISR then EOIing lowers it (no interrupt storm).
#[test]
fn intx_rises_per_request_survives_an_early_eoi_and_falls_after_the_isr_read() {
    for iface in ["legacy", ""] {
        let (c, out, err) = run_guest(
            &format!("dev=rng intx=300 {iface}"),
            &["-device", "virtio-rng-pci"],
        );
        assert!(
            out.contains(
                "vintx: 300 interrupts, each held across an EOI and gone after the ISR read"
            ),
            "{iface}: {out}\n{err}"
        );
        assert!(
            out.contains("vintx: irq=1"),
            "routed to IRQ 10 or 11: {out}"
        );
        assert_eq!(c, PASS, "{out}\n{err}");
    }
}

fn grub_disk(dir: &TempDir) -> PathBuf {
    common::grub_rescue_iso(
        dir,
        "serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\nset timeout=60\nmenuentry \"troupe virtio disk\" { reboot }\n",
    )
}

#[test]
fn seabios_boots_grub_from_virtio_raw_and_from_a_qcow2_overlay() {
    let dir = TempDir::new("vblk-grub");
    let iso = grub_disk(&dir);
    let ov = dir.path("ov.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        s(&iso),
        "-F",
        "raw",
        s(&ov),
    ]);
    let raw = format!("file={},if=virtio,format=raw", s(&iso));
    let qcow = format!("file={},if=virtio", s(&ov));
    let vms: Vec<_> = [raw, qcow]
        .iter()
        .map(|d| {
            Vm::troupe(&[
                "-nodefaults",
                "-display",
                "none",
                "-m",
                "256",
                "-serial",
                "stdio",
                "-drive",
                d,
            ])
            .spawn()
        })
        .collect();
    for vm in &vms {
        vm.expect_stdout("troupe virtio disk", Duration::from_secs(150));
    }
    drop(vms);
    assert_clean(&ov);
}

#[test]
fn a_virtconsole_talks_to_its_socket_chardev_both_ways() {
    use std::io::{BufRead, BufReader, Write};
    let dir = TempDir::new("vcon");
    for iface in ["", "legacy"] {
        let sock = dir.path(&format!("con{iface}.sock"));
        let chardev = format!("socket,id=c0,path={},server=on,wait=on", s(&sock));
        let mut vm = vguest(
            &format!("dev=console {iface}"),
            &[
                "-chardev",
                &chardev,
                "-device",
                "virtio-serial-pci",
                "-device",
                "virtconsole,chardev=c0",
            ],
        )
        .spawn();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let conn = loop {
            match std::os::unix::net::UnixStream::connect(&sock) {
                Ok(c) => break c,
                Err(e) if std::time::Instant::now() > deadline => panic!("connect: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut r = BufReader::new(conn.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "hello from virtconsole\n", "{iface}");
        (&conn).write_all(b"ping\n").unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "echo: ping\n", "{iface}");
        vm.expect_stdout("vcon: got 'ping'", T);
        assert_eq!(code(vm.wait(T)), PASS, "{iface}");
    }
}

#[test]
fn blockdev_and_device_virtio_blk_pci_show_in_info_block() {
    let dir = TempDir::new("vblk-info");
    let q = dir.path("bd.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&q), "8M"]);
    let blockdev = format!(
        "driver=qcow2,node-name=d0,file.driver=file,file.filename={}",
        s(&q)
    );
    let port = common::free_port();
    let mon = format!("tcp:127.0.0.1:{port},server,nowait");
    let vm = vguest(
        "op=write sectors=64 hold",
        &[
            "-blockdev",
            &blockdev,
            "-device",
            "virtio-blk-pci,drive=d0,id=vd0,serial=bd",
            "-monitor",
            &mon,
        ],
    )
    .spawn();
    vm.expect_stdout("vblk: wrote 64 sectors, flushed", T);
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    use std::io::{Read, Write};
    c.write_all(b"info block\r\ninfo blockstats\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("flush_operations") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "monitor closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains(&format!("\nd0: {} (qcow2)", s(&q))), "{text}");
    assert!(
        text.contains("Attached to:      /machine/peripheral/vd0/virtio-backend"),
        "{text}"
    );
    // The guest wrote 64 sectors: the counters show it (QEMU names a drive with no
    // BlockBackend name by an empty string here: ": rd_bytes=...").
    let stats = text
        .lines()
        .find(|l| l.starts_with(": rd_bytes="))
        .expect("d0's blockstats");
    assert!(stats.contains("wr_bytes=32768"), "{stats}");
    assert!(!stats.contains("flush_operations=0 "), "{stats}");
}

/// A qcow2 image on io_uring with the guest keeping 32 requests in flight (the block actor's
/// executor at full depth, doorbell and completions interleaving): every request completes.
/// Sequential 1 MiB writes and reads first, then random 4 KiB reads at depth 1 and 32.
#[test]
fn a_qcow2_image_on_io_uring_serves_32_requests_in_flight() {
    let dir = TempDir::new("vblk-deep");
    let img = dir.path("deep.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&img), "64M"]);
    let drive = format!(
        "file={},if=virtio,format=qcow2,cache=none,aio=io_uring",
        s(&img)
    );
    let (c, out, err) = run_guest("op=bench mib=16 passes=2 secs=1", &["-drive", &drive]);
    assert_eq!(c, PASS, "{out}\n{err}");
    for what in ["seqwrite", "seqread", "randread qd1", "randread qd32"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("vblk-bench: {what} ")) && !l.contains("timed out")),
            "{what}: {out}"
        );
    }
    assert_clean(&img);
}

/// An HMP command through QMP's `human-monitor-command`: its text.
fn hmp(q: &mut common::Qmp, line: &str) -> String {
    let cmd = serde_json::json!({"execute": "human-monitor-command",
                                 "arguments": {"command-line": line}});
    let r = q.ask(&cmd.to_string());
    r["return"]
        .as_str()
        .unwrap_or_else(|| panic!("{line}: {r}"))
        .to_string()
}

/// Rising edges counted on IRQ `n` by `info irq`.
fn irq_count(q: &mut common::Qmp, n: u32) -> u64 {
    let text = hmp(q, "info irq");
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{n}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `calc_dirty_rate -b SECS`, waited for: guest RAM pages written in that time.
fn dirty_pages(q: &mut common::Qmp, secs: u64) -> u64 {
    let started = hmp(q, &format!("calc_dirty_rate -b {secs}"));
    assert!(
        started.contains("Starting dirty rate measurement"),
        "{started}"
    );
    std::thread::sleep(Duration::from_secs(secs));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info = hmp(q, "info dirty_rate");
        if info.contains("Status: measured") {
            assert!(info.contains("Mode: dirty-bitmap"), "{info}");
            return info
                .lines()
                .find_map(|l| l.strip_prefix("Dirty pages: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no page count: {info}"));
        }
        assert!(std::time::Instant::now() < deadline, "{info}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sha_of(p: &Path) -> Vec<u8> {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// The last `vblk: round N ok` the streaming guest printed.
fn last_round(out: &str) -> u64 {
    out.lines()
        .rev()
        .filter_map(|l| l.strip_prefix("vblk: round "))
        .filter_map(|l| l.strip_suffix(" ok"))
        .find_map(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn stop_quiesces_disk_writes_and_rtc_interrupts_until_cont() {
    common::require_kvm();
    let dir = TempDir::new("quiesce");
    let img = dir.path("disk.qcow2");
    qemu_img(&["create", "-f", "qcow2", s(&img), "16M"]);
    let port = common::free_port();
    let qmp = format!("tcp:127.0.0.1:{port},server,nowait");
    let drive = format!("file={},if=virtio,format=qcow2", s(&img));
    let mut vm = vguest(
        "dev=blk op=stream sectors=64 rtc",
        &["-m", "128", "-drive", &drive, "-qmp", &qmp],
    )
    .spawn();
    vm.expect_stdout("vblk: round 200 ok", T);
    let mut q = common::Qmp::open(port);
    q.ask(r#"{"execute": "qmp_capabilities"}"#);

    // Running, the guest's writes and the RTC's interrupts show (so the checks below can
    // see activity when there is any).
    let irq_running = irq_count(&mut q, 8);
    assert!(dirty_pages(&mut q, 1) > 0, "a running writer dirties RAM");
    assert!(
        irq_count(&mut q, 8) > irq_running,
        "IRQ 8 rises while running"
    );

    let r = q.ask(r#"{"execute": "stop"}"#);
    assert_eq!(r["return"], serde_json::json!({}), "{r}");
    // Serial output the guest wrote before the stop is on its way to us.
    std::thread::sleep(Duration::from_millis(300));
    let stopped_at = last_round(&vm.stdout.text());
    let (irq, image) = (irq_count(&mut q, 8), sha_of(&img));
    let dirty = dirty_pages(&mut q, 2);
    assert_eq!(dirty, 0, "guest RAM written while stopped");
    assert_eq!(irq_count(&mut q, 8), irq, "IRQ 8 raised while stopped");
    assert_eq!(sha_of(&img), image, "the image changed while stopped");
    assert_eq!(last_round(&vm.stdout.text()), stopped_at);

    let r = q.ask(r#"{"execute": "cont"}"#);
    assert_eq!(r["return"], serde_json::json!({}), "{r}");
    // The guest's own checks: every sector holds the last write made to it, none lost and
    // none carried out twice, for 300 more rounds.
    vm.expect_stdout(&format!("vblk: round {} ok", stopped_at + 300), T);
    let out = vm.stdout.text();
    assert!(
        !out.contains("expected") && !out.contains("failed"),
        "{out}"
    );
    assert!(irq_count(&mut q, 8) > irq, "IRQ 8 rises again after cont");
    vm.kill();
}

/// Run `cmds` through HMP (QMP's `human-monitor-command`) on troupe or QEMU (`qemu`)
/// started paused with `drives`; each command's text, then the process has quit.
fn hmp_session(qemu: bool, drives: &[String], cmds: &[&str]) -> Vec<String> {
    let port = common::free_port();
    let qmp = format!("tcp:127.0.0.1:{port},server,nowait");
    let mut args: Vec<&str> = vec!["-S", "-display", "none", "-nodefaults", "-qmp", &qmp];
    for d in drives {
        args.extend(["-drive", d.as_str()]);
    }
    let mut vm = if qemu {
        Vm::qemu(&args)
    } else {
        Vm::troupe(&args)
    }
    .spawn();
    let mut q = common::Qmp::open(port);
    q.ask(r#"{"execute": "qmp_capabilities"}"#);
    let out = cmds.iter().map(|c| hmp(&mut q, c)).collect();
    q.ask(r#"{"execute": "quit"}"#);
    assert_eq!(code(vm.wait(T)), 0, "{}", vm.stderr.text());
    out
}

/// `info snapshots` and `delvm` on qcow2 drives print what QEMU 7.2 prints for the same
/// images (snapshots made by `qemu-img`, on both drives and on one), and leave images
/// `qemu-img check` finds clean; a writable raw drive refuses `delvm` as QEMU does.
#[test]
fn info_snapshots_and_delvm_print_what_qemu_prints() {
    let dir = TempDir::new("snapshots");
    let (a, b) = (dir.path("troupe-a.qcow2"), dir.path("troupe-b.qcow2"));
    qemu_img(&["create", "-q", "-f", "qcow2", s(&a), "4M"]);
    qemu_img(&["create", "-q", "-f", "qcow2", s(&b), "4M"]);
    qemu_img(&["snapshot", "-c", "both", s(&a)]);
    qemu_img(&["snapshot", "-c", "both", s(&b)]);
    qemu_img(&["snapshot", "-c", "onlya", s(&a)]);
    // QEMU gets the same images, snapshot dates included.
    std::fs::copy(&a, dir.path("qemu-a.qcow2")).unwrap();
    std::fs::copy(&b, dir.path("qemu-b.qcow2")).unwrap();
    let mut runs = Vec::new();
    for who in ["troupe", "qemu"] {
        let (a, b) = (
            dir.path(&format!("{who}-a.qcow2")),
            dir.path(&format!("{who}-b.qcow2")),
        );
        let drives = [
            format!("file={},if=virtio,format=qcow2,id=d0", s(&a)),
            format!("file={},if=virtio,format=qcow2,id=d1", s(&b)),
        ];
        let out = hmp_session(
            who == "qemu",
            &drives,
            &[
                "info snapshots",
                "delvm both",
                "info snapshots",
                "delvm nosuch",
                "delvm onlya",
                "info snapshots",
            ],
        );
        assert_clean(&a);
        assert_clean(&b);
        assert!(!qemu_img(&["snapshot", "-l", s(&a)]).contains("onlya"));
        runs.push(out);
    }
    let (troupe, qemu) = (&runs[0], &runs[1]);
    assert!(troupe[0].contains("\n--        both "), "{}", troupe[0]);
    assert!(
        troupe[0].contains("List of partial (non-loadable) snapshots on 'd0':"),
        "{}",
        troupe[0]
    );
    assert_eq!(troupe, qemu);

    let raw = dir.path("r.raw");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let q = dir.path("troupe-a.qcow2");
    qemu_img(&["snapshot", "-c", "again", s(&q)]);
    let drives = [
        format!("file={},if=virtio,format=qcow2,id=d0", s(&q)),
        format!("file={},if=virtio,format=raw,id=r0", s(&raw)),
    ];
    let cmds = ["info snapshots", "delvm again"];
    let troupe = hmp_session(false, &drives, &cmds);
    assert_eq!(
        troupe[1],
        "Error: Device 'r0' is writable but does not support snapshots\r\n"
    );
    assert_eq!(troupe, hmp_session(true, &drives, &cmds));
    assert!(qemu_img(&["snapshot", "-l", s(&q)]).contains("again"));
}

/// While the guest streams writes to a qcow2 disk that has a snapshot (so its writes copy
/// shared clusters first), `info snapshots` and `delvm` close and reopen the image under
/// it: the guest's own checks find every sector as last written, and the image is clean.
#[test]
fn info_snapshots_and_delvm_under_a_writing_guest_lose_nothing() {
    common::require_kvm();
    let dir = TempDir::new("snap-live");
    let img = dir.path("disk.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&img), "16M"]);
    qemu_img(&["snapshot", "-c", "base", s(&img)]);
    let port = common::free_port();
    let qmp = format!("tcp:127.0.0.1:{port},server,nowait");
    let drive = format!("file={},if=virtio,format=qcow2,id=d0", s(&img));
    let mut vm = vguest(
        "dev=blk op=stream sectors=64",
        &["-m", "128", "-drive", &drive, "-qmp", &qmp],
    )
    .spawn();
    vm.expect_stdout("vblk: round 100 ok", T);
    let mut q = common::Qmp::open(port);
    q.ask(r#"{"execute": "qmp_capabilities"}"#);
    for _ in 0..3 {
        let text = hmp(&mut q, "info snapshots");
        assert!(text.contains("\r\n--        base "), "{text}");
    }
    let at = last_round(&vm.stdout.text());
    assert_eq!(hmp(&mut q, "delvm base"), "");
    assert_eq!(
        hmp(&mut q, "info snapshots"),
        "There is no snapshot available.\r\n"
    );
    vm.expect_stdout(&format!("vblk: round {} ok", at + 300), T);
    let out = vm.stdout.text();
    assert!(
        !out.contains("expected") && !out.contains("failed"),
        "{out}"
    );
    q.ask(r#"{"execute": "quit"}"#);
    assert_eq!(code(vm.wait(T)), 0, "{}", vm.stderr.text());
    assert_clean(&img);
    assert!(!qemu_img(&["snapshot", "-l", s(&img)]).contains("base"));
}
