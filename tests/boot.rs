//! Booting test guests with direct kernel boot through the real binary: serial output, exit
//! codes, SMP bring-up and topology, vCPU pinning, and clear errors for bad input.

mod common;

use std::time::Duration;

use common::{code, guest, TempDir, Vm};

const DEBUG_EXIT: &str = "isa-debug-exit,iobase=0xf4,iosize=0x04";
const T: Duration = Duration::from_secs(60);

fn troupe(extra: &[&str]) -> Vm {
    let mut args = vec!["-nodefaults", "-serial", "stdio", "-device", DEBUG_EXIT];
    args.extend_from_slice(extra);
    Vm::troupe(&args)
}

#[test]
fn hello_prints_and_exits_with_the_chosen_code() {
    let k = guest("hello");
    let (st, out, err) = troupe(&["-kernel", k.to_str().unwrap(), "-append", "exit=5"]).run(T);
    assert!(
        out.contains("hello from troupe test guest"),
        "stdout: {out}\nstderr: {err}"
    );
    assert_eq!(code(st), (5 << 1) | 1, "stderr: {err}");
}

fn smp_check(smp: &str, expect_ids: &[u32]) {
    let k = guest("smp");
    let (st, out, err) = troupe(&["-smp", smp, "-kernel", k.to_str().unwrap()]).run(T);
    let n = expect_ids.len();
    assert!(
        out.contains(&format!("smp: {n}/{n} cpus checked in")),
        "-smp {smp}: stdout: {out}\nstderr: {err}"
    );
    let ids: Vec<String> = expect_ids.iter().map(|i| i.to_string()).collect();
    assert!(
        out.contains(&format!("apic ids: {}", ids.join(" "))),
        "-smp {smp}: stdout: {out}"
    );
    assert_eq!(
        code(st),
        1,
        "-smp {smp}: guest exit 0 expected; stderr: {err}"
    );
}

#[test]
fn smp_one_cpu() {
    smp_check("1", &[0]);
}

#[test]
fn smp_two_cpus() {
    smp_check("2", &[0, 1]);
}

#[test]
fn smp_four_cpus() {
    smp_check("4", &[0, 1, 2, 3]);
}

#[test]
fn smp_topology_sets_apic_ids() {
    smp_check("4,sockets=2,cores=2,threads=1", &[0, 1, 2, 3]);
    // Three cores need two bits of core id: the second socket starts at APIC id 4.
    smp_check("6,sockets=2,cores=3,threads=1", &[0, 1, 2, 4, 5, 6]);
}

/// (comm, tid) of every thread of `pid` whose name starts with `prefix`.
fn threads(pid: u32, prefix: &str) -> Vec<(String, i32)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let tid: i32 = e.file_name().to_string_lossy().parse().unwrap();
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let comm = comm.trim().to_string();
        if comm.starts_with(prefix) {
            v.push((comm, tid));
        }
    }
    v.sort();
    v
}

fn affinity(tid: i32) -> Vec<usize> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string();
    let mut cores = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cores.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
            None => cores.push(part.parse().unwrap()),
        }
    }
    cores
}

fn host_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[test]
fn vcpu_pin_puts_threads_on_the_cores_asked_for() {
    let last = host_cores() - 1;
    let k = guest("spin");
    let pin = format!("0={last},1=0");
    let mut r = troupe(&[
        "-smp",
        "2",
        "-vcpu-pin",
        &pin,
        "-kernel",
        k.to_str().unwrap(),
        "-append",
        "iters=100000000000",
    ])
    .spawn();
    r.expect_stdout("spin: start", T);
    let vcpus = threads(r.pid(), "troupe-vcpu");
    assert_eq!(vcpus.len(), 2, "{vcpus:?}");
    assert_eq!(vcpus[0].0, "troupe-vcpu0");
    assert_eq!(affinity(vcpus[0].1), vec![last]);
    assert_eq!(affinity(vcpus[1].1), vec![0]);
    r.kill();
}

#[test]
fn vcpu_pin_auto_spreads_and_none_leaves_all_cores() {
    let k = guest("spin");
    let all: Vec<usize> = (0..host_cores()).collect();
    for (mode, expect) in [
        ("auto", vec![vec![0], vec![1 % host_cores()]]),
        ("none", vec![all.clone(), all.clone()]),
    ] {
        let mut r = troupe(&[
            "-smp",
            "2",
            "-vcpu-pin",
            mode,
            "-kernel",
            k.to_str().unwrap(),
            "-append",
            "iters=100000000000",
        ])
        .spawn();
        r.expect_stdout("spin: start", T);
        let vcpus = threads(r.pid(), "troupe-vcpu");
        let got: Vec<Vec<usize>> = vcpus.iter().map(|(_, t)| affinity(*t)).collect();
        assert_eq!(got, expect, "-vcpu-pin {mode}");
        r.kill();
    }
}

/// Bad input: status 1 and exactly one line on stderr that names the problem.
fn refused(args: &[&str], needle: &str) {
    let (st, out, err) = Vm::troupe(args).run(Duration::from_secs(20));
    assert_eq!(code(st), 1, "{args:?}: stdout {out} stderr {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: want one line, got:\n{err}");
    assert!(
        lines[0].starts_with("troupe: ") && lines[0].contains(needle),
        "{args:?}: {err}"
    );
}

#[test]
fn bad_command_lines_are_refused_with_one_clear_line() {
    let k = guest("hello");
    let k = k.to_str().unwrap();
    refused(&["-frobnicate"], "-frobnicate: invalid option");
    refused(&["-m", "0", "-kernel", k], "-m 0");
    refused(&["-m", "99999999G", "-kernel", k], "-m 99999999G");
    refused(&["-smp", "0", "-kernel", k], "-smp 0");
    refused(&["-smp", "8,maxcpus=4", "-kernel", k], "maxcpus");
    refused(&["-kernel", "/nonexistent/kernel"], "/nonexistent/kernel");
    refused(&["-vcpu-pin", "0=4096", "-kernel", k], "4096");
}

#[test]
fn files_that_are_not_kernels_are_refused() {
    let dir = TempDir::new("notkernel");
    let text = dir.path("notes.txt");
    std::fs::write(&text, "this is not a kernel\n".repeat(500)).unwrap();
    refused(
        &["-nodefaults", "-kernel", text.to_str().unwrap()],
        "not a bootable kernel",
    );

    let full = std::fs::read(guest("hello")).unwrap();
    let cut = dir.path("truncated.elf");
    std::fs::write(&cut, &full[..full.len() / 2]).unwrap();
    refused(
        &["-nodefaults", "-kernel", cut.to_str().unwrap()],
        "truncated",
    );
}

#[test]
fn debian_kernel_prints_its_version_on_the_serial_console() {
    let vmlinuz = std::fs::read_dir("/boot")
        .expect("/boot")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("vmlinuz-")
        })
        .expect("a Debian kernel in /boot (package linux-image-amd64)");
    let mut r = Vm::troupe(&[
        "-nodefaults",
        "-serial",
        "stdio",
        "-m",
        "512",
        "-kernel",
        vmlinuz.to_str().unwrap(),
        "-append",
        "console=ttyS0 earlyprintk=serial",
    ])
    .spawn();
    let out = r.expect_stdout(
        "Command line: console=ttyS0 earlyprintk=serial",
        Duration::from_secs(180),
    );
    assert!(out.contains("Linux version 6."), "{out}");
    r.kill();
}

#[test]
fn kvm_emulation_failure_is_reported_like_qemu_and_exits_nonzero() {
    // x87 code in ring 0 is beyond this host's ring-0 instruction emulator.
    let k = guest("hello");
    let (st, out, err) =
        troupe(&["-kernel", k.to_str().unwrap(), "-append", "fault=emulation"]).run(T);
    assert!(out.contains("hello: running x87 code in ring 0"), "{out}");
    assert!(
        !out.contains("completed"),
        "the emulator unexpectedly ran x87 code: {out}"
    );
    assert_ne!(code(st), 0);
    for needle in [
        "KVM internal error. Suberror: 1\n",
        "extra data[0]: 0x",
        "emulation failure\n",
        "RIP=",
        "CS =0018 0000000000000000 ffffffff 00a09b00 DPL=0 CS64 [-RA]",
        "EFER=0000000000000500",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    let code_line = err
        .lines()
        .find(|l| l.starts_with("Code="))
        .expect("Code= line");
    assert!(
        code_line.contains("<d9> e8"),
        "the faulting fld1 is marked: {code_line}"
    );
}

#[test]
fn daemonize_detaches_after_start_and_pidfile_tracks_the_vm() {
    let dir = TempDir::new("daemon");
    let pidfile = dir.path("vm.pid");
    let serial = dir.path("serial.log");
    let k = guest("spin");
    let (st, _out, err) = Vm::troupe(&[
        "-nodefaults",
        "-daemonize",
        "-pidfile",
        pidfile.to_str().unwrap(),
        "-serial",
        &format!("file:{}", serial.display()),
        "-kernel",
        k.to_str().unwrap(),
        "-append",
        "iters=100000000000",
    ])
    .run(T);
    assert_eq!(code(st), 0, "the parent exits 0 once the VM runs: {err}");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pidfile written")
        .trim()
        .parse()
        .unwrap();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("daemon alive");
    assert_eq!(comm.trim(), "troupe");
    let deadline = std::time::Instant::now() + T;
    while !std::fs::read_to_string(&serial)
        .unwrap_or_default()
        .contains("spin: start")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no serial output from the daemon"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::process::Command::new("kill")
        .arg(pid.to_string())
        .status()
        .unwrap();
    while std::path::Path::new(&format!("/proc/{pid}")).exists() && pidfile.exists() {
        assert!(std::time::Instant::now() < deadline, "daemon did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(!pidfile.exists(), "pidfile removed at exit");
}

#[test]
fn a_vm_waiting_for_an_incoming_migration_does_not_run_its_own_guest() {
    let k = guest("hello");
    let port = common::free_port();
    let tcp = format!("tcp:127.0.0.1:{port}");
    let sock = std::env::temp_dir().join(format!("troupe-incoming-{}.sock", std::process::id()));
    let unix = format!("unix:{}", sock.display());
    for (uri, says) in [
        (
            tcp.as_str(),
            Some(format!("waiting for an incoming migration on {tcp}")),
        ),
        (
            unix.as_str(),
            Some(format!("waiting for an incoming migration on {unix}")),
        ),
        ("defer", None),
    ] {
        let mut vm = troupe(&["-incoming", uri, "-kernel", k.to_str().unwrap()]).spawn();
        if let Some(says) = says {
            vm.stderr
                .wait_for(&says, T)
                .unwrap_or_else(|e| panic!("-incoming {uri}: {e}"));
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert!(
            !vm.stdout.text().contains("hello from troupe test guest"),
            "-incoming {uri}: the guest ran instead of waiting"
        );
        assert!(
            vm.child.try_wait().unwrap().is_none(),
            "-incoming {uri}: it exited"
        );
        vm.kill();
    }
    let _ = std::fs::remove_file(&sock);
    // Transports troupe lacks are command-line errors of their own.
    refused(&["-incoming", "rdma:1.2.3.4:5"], "-incoming");
}

/// Start troupe stopped (`-S`) with `args` and a QMP monitor, read `info pci`, quit; returns
/// the number of PCI functions, or the exit status and stderr when it did not start.
fn pci_functions_of_a_started_vm(args: &[String]) -> Result<usize, String> {
    let k = guest("hello");
    let port = common::free_port();
    let qmp = format!("tcp:127.0.0.1:{port},server,nowait");
    let mut all: Vec<String> = [
        "-nodefaults",
        "-S",
        "-display",
        "none",
        "-serial",
        "none",
        "-qmp",
        &qmp,
        "-kernel",
        k.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    all.extend_from_slice(args);
    let mut r = Vm::troupe(&all).spawn();
    // A refused command line ends the process before QMP listens.
    let deadline = std::time::Instant::now() + T;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(st) = r.child.try_wait().unwrap() {
            std::thread::sleep(Duration::from_millis(20));
            return Err(format!("{st}: {}", r.stderr.text()));
        }
        assert!(std::time::Instant::now() < deadline, "{}: no QMP", r.line);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut q = common::Qmp::open(port);
    q.ask(r#"{"execute": "qmp_capabilities"}"#);
    let pci =
        q.ask(r#"{"execute": "human-monitor-command", "arguments": {"command-line": "info pci"}}"#);
    let pci = pci["return"].as_str().unwrap_or_else(|| panic!("{pci}"));
    q.send(br#"{"execute": "quit"}"#);
    assert_eq!(code(r.wait(T)), 0, "{}: {}", r.line, r.stderr.text());
    Ok(pci.matches("  Bus ").count())
}

/// What a driver needs beside itself to start: other options, and its own properties.
fn device_needs(driver: &str, dir: &TempDir) -> (Vec<String>, String) {
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match driver {
        "virtio-blk-pci" => {
            let img = dir.path("blk.raw");
            std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
            let drive = format!("file={},if=none,id=d0,format=raw", img.display());
            (s(&["-drive", &drive]), format!("{driver},drive=d0"))
        }
        "virtconsole" => (
            s(&["-chardev", "null,id=c0", "-device", "virtio-serial-pci"]),
            format!("{driver},chardev=c0"),
        ),
        "ide-cd" | "ide-hd" => {
            let img = dir.path("ide.raw");
            std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
            let file = format!("driver=file,filename={},node-name=f0", img.display());
            let ro = driver == "ide-cd";
            let format = format!(
                "driver=raw,file=f0,node-name=d0,read-only={}",
                if ro { "on" } else { "off" }
            );
            (
                s(&["-blockdev", &file, "-blockdev", &format]),
                format!("{driver},drive=d0,bus=ide.1,unit=0"),
            )
        }
        // USB devices plug into the UHCI controller `-usb` adds.
        "usb-kbd" | "usb-mouse" | "usb-tablet" => (s(&["-usb"]), driver.to_string()),
        "e1000" | "virtio-net-pci" => {
            (s(&["-netdev", "user,id=n0"]), format!("{driver},netdev=n0"))
        }
        _ => (Vec::new(), driver.to_string()),
    }
}

#[test]
fn every_driver_device_help_lists_starts_and_the_others_are_refused() {
    let (st, listing, err) = Vm::troupe(&["-device", "help"]).run(T);
    assert_eq!(code(st), 0, "{err}");
    let drivers: Vec<(&str, &str)> = listing
        .lines()
        .filter_map(|l| l.strip_prefix("name \""))
        .filter_map(|l| l.split_once("\", bus "))
        .map(|(name, rest)| (name, rest.split(',').next().unwrap_or(rest)))
        .collect();
    assert!(drivers.len() >= 8, "{listing}");
    let dir = TempDir::new("devhelp");
    for (driver, bus) in drivers {
        let (mut args, device) = device_needs(driver, &dir);
        let before = pci_functions_of_a_started_vm(&args)
            .unwrap_or_else(|e| panic!("{driver}'s prerequisites {args:?}: {e}"));
        args.extend(["-device".to_string(), device]);
        let after = pci_functions_of_a_started_vm(&args)
            .unwrap_or_else(|e| panic!("-device help lists {driver}, but {args:?}: {e}"));
        let added = usize::from(bus == "PCI");
        assert_eq!(after, before + added, "{driver} on bus {bus}: info pci");
    }
    let driver = "virtio-keyboard-pci";
    assert!(!listing.contains(driver), "{listing}");
    let err = pci_functions_of_a_started_vm(&["-device".into(), driver.into()]).unwrap_err();
    assert!(
        err.contains(&format!("troupe: -device {driver}: not available yet")),
        "{err}"
    );
}

#[test]
fn daemonize_failure_is_reported_by_the_parent() {
    refused(
        &["-nodefaults", "-daemonize", "-kernel", "/etc/hostname"],
        "not a bootable kernel",
    );
}

#[test]
fn guest_reset_reboots_and_no_reboot_exits_zero() {
    let k = guest("hello");
    for how in ["cf9", "port92", "kbd"] {
        let append = format!("reset={how}");
        let (st, out, err) = troupe(&[
            "-no-reboot",
            "-kernel",
            k.to_str().unwrap(),
            "-append",
            &append,
        ])
        .run(T);
        assert_eq!(
            code(st),
            0,
            "reset through {how} with -no-reboot: {out}\n{err}"
        );
        assert_eq!(
            out.matches("hello from troupe test guest").count(),
            1,
            "{out}"
        );
        assert!(!out.contains("still running"), "{out}");
    }
    // Without -no-reboot the machine resets and the kernel boots again.
    let mut r = troupe(&["-kernel", k.to_str().unwrap(), "-append", "reset=cf9"]).spawn();
    let deadline = std::time::Instant::now() + T;
    while r
        .stdout
        .text()
        .matches("hello from troupe test guest")
        .count()
        < 3
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no reboot: {}",
            r.stdout.text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    r.kill();
}

#[test]
fn guest_nonsense_in_pci_config_and_fw_cfg_dma_is_logged_not_fatal() {
    let k = guest("hello");
    let (st, out, err) = troupe(&[
        "-d",
        "guest_errors",
        "-kernel",
        k.to_str().unwrap(),
        "-append",
        "fault=nonsense exit=5",
    ])
    .run(T);
    assert!(
        out.contains("hello: nonsense survived"),
        "stdout: {out}\nstderr: {err}"
    );
    // The DMA with its buffer outside RAM reports the error bit, as QEMU does.
    assert!(
        out.contains("hello: fw_cfg dma status=0x1"),
        "stdout: {out}"
    );
    assert!(
        err.contains("outside RAM"),
        "the guest error is logged: {err}"
    );
    assert_eq!(code(st), (5 << 1) | 1, "the VM ran to the end: {err}");
}
