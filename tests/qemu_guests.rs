//! Boots every test guest from `tests/guests/` under the reference VMM,
//! `qemu-system-x86_64 -accel kvm`, and checks what it prints on COM1 and how it exits.
//! This pins down the guests' behaviour (and output formats) independently of troupe, so
//! troupe's own tests can compare against it.
//!
//! Machines: `-M microvm` (fast: ~50 ms to exit; `<name>.pvh.elf` boots through PVH, the
//! dual-header `<name>.elf` through multiboot, which QEMU prefers when both are present)
//! and `-M pc` (SeaBIOS, then multiboot: seconds per boot here, so used sparingly).
//! isa-debug-exit (`iobase=0xf4,iosize=0x04`) is added on both; QEMU then exits with
//! `(code << 1) | 1`. These tests need /dev/kvm and qemu-system-x86_64 and fail, not skip,
//! without them.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const QEMU: &str = "qemu-system-x86_64";
const GUEST_DIR: &str = env!("TROUPE_GUEST_DIR");
const MICROVM_TIMEOUT: Duration = Duration::from_secs(30);
const PC_TIMEOUT: Duration = Duration::from_secs(90);

/// QEMU's exit status for isa-debug-exit code `code`.
fn debug_exit_status(code: i32) -> i32 {
    (code << 1) | 1
}

fn require_host() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "these tests boot guests under KVM: /dev/kvm is missing"
    );
    let found = Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        matches!(found, Ok(s) if s.success()),
        "these tests need {QEMU} in PATH (Debian: apt-get install qemu-system-x86)"
    );
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Machine {
    Microvm,
    Pc,
}

/// Which image of a guest to boot.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Image {
    /// `<name>.elf`: PVH note and multiboot header (QEMU picks multiboot).
    Dual,
    /// `<name>.pvh.elf`: PVH only.
    Pvh,
}

fn image_path(guest: &str, image: Image) -> PathBuf {
    let file = match image {
        Image::Dual => format!("{guest}.elf"),
        Image::Pvh => format!("{guest}.pvh.elf"),
    };
    let path = Path::new(GUEST_DIR).join(file);
    assert!(
        path.is_file(),
        "guest image {} is missing (build.rs should have built it)",
        path.display()
    );
    path
}

/// A QEMU command line for one guest.
struct Spec {
    machine: Machine,
    machine_opts: &'static str,
    guest: &'static str,
    image: Image,
    smp: Option<String>,
    append: String,
    extra: Vec<String>,
    monitor: bool,
}

impl Spec {
    fn new(machine: Machine, guest: &'static str) -> Spec {
        Spec {
            machine,
            machine_opts: "",
            guest,
            image: if machine == Machine::Microvm {
                Image::Pvh
            } else {
                Image::Dual
            },
            smp: None,
            append: String::new(),
            extra: Vec::new(),
            monitor: false,
        }
    }

    fn image(mut self, image: Image) -> Spec {
        self.image = image;
        self
    }

    fn smp(mut self, smp: &str) -> Spec {
        self.smp = Some(smp.to_string());
        self
    }

    fn append(mut self, append: &str) -> Spec {
        self.append = append.to_string();
        self
    }

    fn arg(mut self, arg: &str) -> Spec {
        self.extra.push(arg.to_string());
        self
    }

    fn machine_opts(mut self, opts: &'static str) -> Spec {
        self.machine_opts = opts;
        self
    }

    fn with_monitor(mut self) -> Spec {
        self.monitor = true;
        self
    }

    fn timeout(&self) -> Duration {
        match self.machine {
            Machine::Microvm => MICROVM_TIMEOUT,
            Machine::Pc => PC_TIMEOUT,
        }
    }

    fn spawn(self) -> Vm {
        require_host();
        let machine = match self.machine {
            Machine::Microvm => "microvm",
            Machine::Pc => "pc",
        };
        let mut cmd = Command::new(QEMU);
        cmd.args(["-accel", "kvm", "-M"])
            .arg(format!("{machine}{}", self.machine_opts))
            .args([
                "-m",
                "128",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
            ])
            .args(["-serial", "stdio"])
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
            .arg("-kernel")
            .arg(image_path(self.guest, self.image))
            .args(["-append", &self.append]);
        if let Some(smp) = &self.smp {
            cmd.args(["-smp", smp]);
        }
        let monitor = self.monitor.then(|| {
            static N: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "troupe-qemu-guests-{}-{}.sock",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_file(&path);
            cmd.arg("-monitor")
                .arg(format!("unix:{},server,nowait", path.display()));
            path
        });
        cmd.args(&self.extra);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {QEMU}: {e}"));
        let out = Arc::new(Mutex::new(Output::default()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let sink = Arc::clone(&out);
        let reader = thread::spawn(move || {
            let mut stdout = stdout;
            let mut buf = [0u8; 4096];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut o = sink.lock().unwrap();
                        o.first_byte.get_or_insert_with(|| started.elapsed());
                        o.bytes.extend_from_slice(&buf[..n]);
                    }
                }
            }
        });
        let stderr = child.stderr.take().expect("stderr is piped");
        let err_sink = Arc::clone(&out);
        let err_reader = thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                err_sink.lock().unwrap().stderr.push_str(&(line + "\n"));
            }
        });
        let stdin = child.stdin.take();
        Vm {
            name: format!("{} on -M {machine}{}", self.guest, self.machine_opts),
            timeout: self.timeout(),
            child,
            stdin,
            out,
            started,
            monitor,
            readers: vec![reader, err_reader],
        }
    }

    /// Boots and waits for the guest to exit.
    fn run(self) -> Run {
        self.spawn().finish()
    }
}

#[derive(Default)]
struct Output {
    bytes: Vec<u8>,
    stderr: String,
    first_byte: Option<Duration>,
}

/// A running QEMU.
struct Vm {
    name: String,
    timeout: Duration,
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<Output>>,
    started: Instant,
    monitor: Option<PathBuf>,
    readers: Vec<thread::JoinHandle<()>>,
}

/// A finished QEMU.
struct Run {
    name: String,
    status: i32,
    serial: String,
    stderr: String,
    first_byte: Option<Duration>,
    elapsed: Duration,
}

impl Run {
    fn lines(&self) -> Vec<&str> {
        self.serial.lines().collect()
    }

    fn has_line(&self, line: &str) -> bool {
        self.lines().contains(&line)
    }

    fn line_starting(&self, prefix: &str) -> Option<&str> {
        self.lines().into_iter().find(|l| l.starts_with(prefix))
    }

    #[track_caller]
    fn assert_line(&self, line: &str) {
        assert!(
            self.has_line(line),
            "{}: no line {line:?}\n{}",
            self.name,
            self.describe()
        );
    }

    #[track_caller]
    fn assert_status(&self, status: i32) {
        assert_eq!(
            self.status,
            status,
            "{}: unexpected exit status\n{}",
            self.name,
            self.describe()
        );
    }

    fn describe(&self) -> String {
        format!(
            "status {} after {:?}\n--- serial ---\n{}--- qemu stderr ---\n{}",
            self.status, self.elapsed, self.serial, self.stderr
        )
    }

    fn report_timing(&self) {
        eprintln!(
            "{}: first serial byte after {:?}, exit after {:?}",
            self.name, self.first_byte, self.elapsed
        );
    }
}

impl Vm {
    fn serial(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap().bytes).replace('\r', "")
    }

    /// Waits until the serial output contains `needle`.
    #[track_caller]
    fn wait_for(&mut self, needle: &str) {
        let deadline = self.started + self.timeout;
        while Instant::now() < deadline {
            if self.serial().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                thread::sleep(Duration::from_millis(50));
                if self.serial().contains(needle) {
                    return;
                }
                panic!(
                    "{}: exited ({status}) before printing {needle:?}\n{}",
                    self.name,
                    self.serial()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "{}: no {needle:?} within {:?}\n{}",
            self.name,
            self.timeout,
            self.serial()
        );
    }

    /// Sends bytes to the guest's COM1.
    fn send_serial(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin is piped");
        stdin.write_all(bytes).expect("write to QEMU's serial");
        stdin.flush().expect("flush QEMU's serial");
    }

    /// Runs an HMP command on the monitor socket and returns its output.
    fn hmp(&self, command: &str) -> String {
        let path = self.monitor.as_ref().expect("spawned with_monitor()");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut sock = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => panic!("monitor {}: {e}", path.display()),
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        };
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let read_prompt = |sock: &mut UnixStream| {
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"(qemu) ") {
                match sock.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            String::from_utf8_lossy(&got).into_owned()
        };
        read_prompt(&mut sock);
        sock.write_all(format!("{command}\n").as_bytes()).unwrap();
        read_prompt(&mut sock)
    }

    /// Waits for QEMU to exit (killing it after the timeout) and collects everything.
    fn finish(mut self) -> Run {
        let deadline = self.started + self.timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for QEMU") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{}: still running after {:?}\n{}",
                    self.name,
                    self.timeout,
                    self.serial()
                );
            }
            thread::sleep(Duration::from_millis(5));
        };
        let elapsed = self.started.elapsed();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let out = self.out.lock().unwrap();
        let run = Run {
            name: self.name.clone(),
            status: status.code().unwrap_or(-1),
            serial: String::from_utf8_lossy(&out.bytes).replace('\r', ""),
            stderr: out.stderr.clone(),
            first_byte: out.first_byte,
            elapsed,
        };
        run.report_timing();
        run
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(p) = &self.monitor {
            let _ = std::fs::remove_file(p);
        }
    }
}

// ---------------------------------------------------------------------------------- hello

#[test]
fn hello_exits_with_the_code_from_the_command_line_via_pvh_on_microvm() {
    let run = Spec::new(Machine::Microvm, "hello").append("exit=5").run();
    run.assert_line("hello from troupe test guest");
    run.assert_line("hello: protocol=pvh cmdline=\"exit=5\"");
    run.assert_line("hello: exit=5");
    run.assert_status(11);
}

#[test]
fn hello_boots_the_dual_image_via_multiboot_on_microvm() {
    let run = Spec::new(Machine::Microvm, "hello")
        .image(Image::Dual)
        .append("exit=5")
        .run();
    run.assert_line("hello from troupe test guest");
    let proto = run.line_starting("hello: protocol=").unwrap_or_default();
    assert!(
        proto.starts_with("hello: protocol=multiboot cmdline=") && proto.ends_with("exit=5\""),
        "{}",
        run.describe()
    );
    run.assert_status(11);
}

#[test]
fn hello_exit_code_defaults_to_zero() {
    let run = Spec::new(Machine::Microvm, "hello").run();
    run.assert_line("hello: protocol=pvh cmdline=\"\"");
    run.assert_line("hello: exit=0");
    run.assert_status(debug_exit_status(0));
}

#[test]
fn hello_boots_via_multiboot_through_seabios_on_pc() {
    let run = Spec::new(Machine::Pc, "hello").append("exit=5").run();
    run.assert_line("hello from troupe test guest");
    let proto = run.line_starting("hello: protocol=").unwrap_or_default();
    assert!(
        proto.starts_with("hello: protocol=multiboot "),
        "{}",
        run.describe()
    );
    run.assert_status(11);
}

#[test]
fn page_fault_in_ring3_is_reported_and_exits_with_the_vector() {
    let run = Spec::new(Machine::Microvm, "hello")
        .append("fault=pf")
        .run();
    let line = run.line_starting("guest exception ").unwrap_or_default();
    assert!(
        line.starts_with("guest exception 14 at rip=0x"),
        "{}",
        run.describe()
    );
    assert!(
        line.ends_with(" err=0x4"),
        "user-mode read of a non-present page: {}",
        run.describe()
    );
    assert!(run.serial.contains("cr2=0x100000000"), "{}", run.describe());
    run.assert_status(debug_exit_status(0x60 + 14));
}

#[test]
fn invalid_opcode_is_reported_and_exits_with_the_vector() {
    let run = Spec::new(Machine::Microvm, "hello")
        .append("fault=ud")
        .run();
    let line = run.line_starting("guest exception ").unwrap_or_default();
    assert!(
        line.starts_with("guest exception 6 at rip=0x"),
        "{}",
        run.describe()
    );
    run.assert_status(debug_exit_status(0x60 + 6));
}

// ---------------------------------------------------------------------------------- smp

/// Runs the smp guest and checks that every CPU checked in with the expected APIC ids.
fn check_smp(spec: Spec, ids: &[u32]) {
    let run = spec.run();
    let n = ids.len();
    run.assert_line(&format!("smp: {n}/{n} cpus checked in"));
    let want: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    run.assert_line(&format!("apic ids: {}", want.join(" ")));
    for (index, id) in ids.iter().enumerate() {
        run.assert_line(&format!("cpu {index} apic_id={id}"));
    }
    let header = run.line_starting("smp: bsp apic_id=0 ").unwrap_or_default();
    assert!(
        header.contains(&format!("expected={n} source=madt")),
        "{}",
        run.describe()
    );
    run.assert_status(debug_exit_status(0));
}

#[test]
fn smp_single_cpu_checks_in() {
    check_smp(Spec::new(Machine::Microvm, "smp").smp("1"), &[0]);
}

#[test]
fn smp_two_cpus_check_in() {
    check_smp(Spec::new(Machine::Microvm, "smp").smp("2"), &[0, 1]);
}

#[test]
fn smp_four_cpus_check_in() {
    check_smp(Spec::new(Machine::Microvm, "smp").smp("4"), &[0, 1, 2, 3]);
}

#[test]
fn smp_four_cpus_on_two_sockets_check_in() {
    check_smp(
        Spec::new(Machine::Microvm, "smp").smp("4,sockets=2,cores=2,threads=1"),
        &[0, 1, 2, 3],
    );
}

#[test]
fn smp_apic_ids_follow_the_topology() {
    // 3 cores per socket need 2 bits: socket 1 starts at APIC id 4.
    check_smp(
        Spec::new(Machine::Microvm, "smp").smp("6,sockets=2,cores=3,threads=1"),
        &[0, 1, 2, 4, 5, 6],
    );
}

#[test]
fn smp_broadcast_ipis_start_every_cpu() {
    check_smp(
        Spec::new(Machine::Microvm, "smp")
            .smp("4")
            .append("broadcast"),
        &[0, 1, 2, 3],
    );
}

#[test]
fn smp_four_cpus_check_in_on_pc() {
    check_smp(Spec::new(Machine::Pc, "smp").smp("4"), &[0, 1, 2, 3]);
}

#[test]
fn smp_without_acpi_on_microvm_finds_only_the_bsp() {
    // microvm,acpi=off has neither a MADT nor an MP table: the guest can only count itself.
    let run = Spec::new(Machine::Microvm, "smp")
        .machine_opts(",acpi=off")
        .smp("2")
        .run();
    run.assert_line("smp: bsp apic_id=0 expected=1 source=none mode=per-cpu");
    run.assert_line("smp: 1/1 cpus checked in");
    run.assert_status(debug_exit_status(0));
}

// ---------------------------------------------------------------------------------- cpuid

#[test]
fn cpuid_reports_vendor_leaves_and_the_kvm_signature() {
    let run = Spec::new(Machine::Microvm, "cpuid").run();
    let vendor = run.line_starting("vendor: ").unwrap_or_default();
    assert!(
        ["vendor: GenuineIntel", "vendor: AuthenticAMD"].contains(&vendor),
        "{}",
        run.describe()
    );
    for key in [
        "brand: ",
        "max_basic_leaf: 0x",
        "max_ext_leaf: 0x8",
        "leaf1: eax=0x",
        "family: ",
    ] {
        assert!(
            run.line_starting(key).is_some(),
            "no {key:?}\n{}",
            run.describe()
        );
    }
    let features = run.line_starting("leaf1_features:").unwrap_or_default();
    assert!(
        features.contains(" sse2") && features.contains(" hypervisor"),
        "{}",
        run.describe()
    );
    run.assert_line("hypervisor: KVMKVMKVM");
    assert!(
        run.line_starting("kvm_features: eax=0x").is_some(),
        "{}",
        run.describe()
    );
    assert!(
        run.lines().last() == Some(&"cpuid: done"),
        "{}",
        run.describe()
    );
    run.assert_status(debug_exit_status(0));
}

// ---------------------------------------------------------------------------------- spin

#[test]
fn spin_counts_to_the_end_with_progress() {
    let run = Spec::new(Machine::Microvm, "spin")
        .append("iters=20000000 progress=4")
        .run();
    run.assert_line("spin: start iters=20000000");
    for done in [5_000_000, 10_000_000, 15_000_000, 20_000_000] {
        run.assert_line(&format!("spin: progress {done}/20000000"));
    }
    let done = run
        .line_starting("spin: done iters=20000000 tsc=")
        .unwrap_or_default();
    assert!(done.contains(" ms="), "{}", run.describe());
    run.assert_status(debug_exit_status(0));
}

// ---------------------------------------------------------------------------------- iobench

/// `iobench <ring>: <n> outs <ticks> tsc <ns> ns/out` → (n, ticks, ns).
fn parse_iobench(line: &str) -> Option<(u64, u64, f64)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [_, _, n, "outs", ticks, "tsc", ns, "ns/out"] => {
            Some((n.parse().ok()?, ticks.parse().ok()?, ns.parse().ok()?))
        }
        _ => None,
    }
}

/// The number right after `prefix` on the line that starts with it.
#[track_caller]
fn field<T: std::str::FromStr>(run: &Run, prefix: &str) -> T {
    run.line_starting(prefix)
        .and_then(|l| l[prefix.len()..].split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number after {prefix:?}\n{}", run.describe()))
}

#[test]
fn iobench_times_port_writes_from_ring0_and_ring3() {
    let run = Spec::new(Machine::Microvm, "iobench")
        .append("count=20000")
        .run();
    run.assert_line("iobench: port=0x270 count=20000");
    let hz: u64 = field(&run, "iobench: tsc_hz=");
    let pit: u64 = field(&run, "iobench: tsc_hz_pit=");
    assert!(
        hz.abs_diff(pit) < hz / 100,
        "TSC rate {hz} vs PIT-calibrated {pit}\n{}",
        run.describe()
    );
    let order: Vec<&str> = run
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("iobench ring"))
        .collect();
    assert_eq!(order.len(), 6, "{}", run.describe());
    assert_eq!(&order[0..2], ["iobench ring0: start", "iobench ring0: end"]);
    assert_eq!(&order[3..5], ["iobench ring3: start", "iobench ring3: end"]);
    for (ring, line) in [("ring0", order[2]), ("ring3", order[5])] {
        let (n, ticks, ns) = parse_iobench(line)
            .unwrap_or_else(|| panic!("bad {ring} line {line:?}\n{}", run.describe()));
        assert_eq!(n, 20000);
        assert!(ticks > 0 && ns > 0.0, "{line}");
        eprintln!("iobench under QEMU: {ring} {ns} ns/out");
    }
    assert!(
        run.line_starting("iobench gate: 1000 calls ").is_some(),
        "{}",
        run.describe()
    );
    run.assert_line("iobench: done");
    run.assert_status(debug_exit_status(0));
}

// ---------------------------------------------------------------------------------- kbd

#[test]
fn kbd_times_out_without_input() {
    let run = Spec::new(Machine::Microvm, "kbd")
        .arg("-device")
        .arg("i8042")
        .append("timeout=1")
        .run();
    assert_eq!(
        run.lines(),
        ["kbd: ready", "kbd: timeout"],
        "{}",
        run.describe()
    );
    run.assert_status(debug_exit_status(2));
}

#[test]
fn kbd_reports_a_missing_controller() {
    let run = Spec::new(Machine::Microvm, "kbd").append("timeout=1").run();
    run.assert_line("kbd: no i8042");
    run.assert_status(debug_exit_status(3));
}

#[test]
fn kbd_receives_keys_sent_through_the_monitor_on_pc() {
    let mut vm = Spec::new(Machine::Pc, "kbd")
        .append("timeout=60")
        .with_monitor()
        .spawn();
    vm.wait_for("kbd: ready");
    vm.hmp("sendkey a");
    vm.wait_for("kbd: 9e");
    vm.hmp("sendkey q");
    let run = vm.finish();
    let bytes: Vec<&str> = run
        .lines()
        .into_iter()
        .filter_map(|l| l.strip_prefix("kbd: "))
        .filter(|b| b.len() == 2)
        .collect();
    assert_eq!(bytes, ["1e", "9e", "10"], "{}", run.describe());
    run.assert_line("kbd: stop");
    run.assert_status(debug_exit_status(0));
}

// ---------------------------------------------------------------------------------- demo

#[test]
fn demo_prints_its_banner_echoes_serial_and_exits_on_ctrl_d() {
    let mut vm = Spec::new(Machine::Microvm, "demo").smp("2").spawn();
    vm.wait_for("demo: 2/2 vCPUs running");
    vm.send_serial(b"troupe\r");
    vm.wait_for("troupe\n");
    vm.send_serial(&[0x04]);
    let run = vm.finish();
    run.assert_line("troupe demo guest: 2 vCPU(s), 128 MiB");
    run.assert_line("demo: bye");
    run.assert_status(debug_exit_status(0));
}

#[test]
fn demo_reports_keys_typed_on_the_pc_keyboard() {
    let mut vm = Spec::new(Machine::Pc, "demo")
        .smp("2")
        .with_monitor()
        .spawn();
    vm.wait_for("demo: 2/2 vCPUs running");
    vm.hmp("sendkey shift-t");
    vm.hmp("sendkey r");
    vm.wait_for("demo: key r");
    vm.send_serial(&[0x04]);
    let run = vm.finish();
    run.assert_line("troupe demo guest: 2 vCPU(s), 128 MiB");
    run.assert_line("demo: key T");
    run.assert_line("demo: bye");
    run.assert_status(debug_exit_status(0));
}
