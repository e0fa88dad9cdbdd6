//! CPU models: the CPUID a guest reads under troupe equals what it reads under
//! `qemu-system-x86_64 -accel kvm -M pc` with the same `-cpu`/`-smp`, leaf for leaf; `check`
//! warns and `enforce` refuses, in QEMU's words; `-cpu help` is QEMU 7.2's.
//!
//! The guest is `tests/guests/cpuid` with `raw=0`: it dumps every leaf and subleaf, read in
//! ring 0. QEMU runs the same machine type troupe emulates (pc-i440fx-7.2, which decides
//! model versions and physical address bits) with qboot as firmware instead of SeaBIOS, so
//! a boot takes about a second here instead of ten; the firmware plays no part in CPUID.
//! Differences that remain by design are listed in the README (CPU models).

mod common;

use std::time::Duration;

use common::{code, guest, guest_args, Vm};

const TIMEOUT: Duration = Duration::from_secs(120);
const QBOOT: &str = "/usr/share/qemu/qboot.rom";

/// `-cpu` and `-smp` of each configuration compared.
const CONFIGS: &[(&str, &str)] = &[
    // The default model (qemu64).
    ("", ""),
    ("Haswell-noTSX", ""),
    ("SandyBridge", "8,sockets=2,cores=2,threads=2"),
    ("Skylake-Server", ""),
    ("Icelake-Server", "2"),
    ("EPYC-Rome", ""),
    ("EPYC-Milan", "8,sockets=2,cores=2,threads=2"),
    ("Opteron_G5", ""),
    // Flags added and removed, with every property troupe takes.
    ("Haswell-noTSX,+aes,-avx,+kvm-pv-unhalt,-kvm-steal-time", ""),
    (
        "qemu64,+avx2,-x2apic,lahf_lm=off,+svm,+npt,+topoext,model-id=Test CPU,\
         vendor=GenuineIntel,family=6,model=85,stepping=4,level=20,xlevel=0x8000001f",
        "4,cores=4",
    ),
    (
        "kvm64,+invtsc,+arat,+pdcm,+kvm-hint-dedicated,+kvm-poll-control",
        "6,sockets=1,cores=3,threads=2",
    ),
    // QEMU's plain `-cpu host` aborts on this host: it writes ARCH_CAPABILITIES (MSR 0x10A)
    // and KVM refuses the value (see README); without that feature both run.
    ("host,-arch-capabilities", ""),
];

/// What one VMM showed the guest: the `raw0` lines and its `check` warnings.
struct Seen {
    leaves: Vec<String>,
    warnings: Vec<String>,
    all: String,
}

fn run_cpuid(qemu: bool, cpu: &str, smp: &str) -> Seen {
    let mut extra: Vec<&str> = vec!["-m", "128"];
    if !cpu.is_empty() {
        extra.extend(["-cpu", cpu]);
    }
    if !smp.is_empty() {
        extra.extend(["-smp", smp]);
    }
    let (kernel, vm) = if qemu {
        let k = guest("cpuid").with_file_name("cpuid.pvh.elf");
        extra.extend(["-M", "pc", "-bios", QBOOT]);
        (k, true)
    } else {
        (guest("cpuid"), false)
    };
    let kernel = kernel.to_str().unwrap().to_string();
    let args = guest_args(&kernel, "raw=0", &extra);
    let vm = if vm {
        Vm::qemu(&args)
    } else {
        Vm::troupe(&args)
    };
    let line = vm.line.clone();
    let (status, out, err) = vm.run(TIMEOUT);
    let all = format!("{line}\nexit {status:?}\nstdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("cpuid: done"),
        "the cpuid guest did not finish:\n{all}"
    );
    let leaves = out
        .lines()
        .filter(|l| l.starts_with("raw0 "))
        .map(|l| l.trim_end().to_string())
        .collect();
    // QEMU repeats its warnings for every vCPU it creates; troupe prints them once.
    let mut warnings: Vec<String> = Vec::new();
    for l in err.lines() {
        if let Some((_, w)) = l.split_once(": warning: ") {
            if w.contains("requested feature") && !warnings.iter().any(|x| x == w) {
                warnings.push(w.to_string());
            }
        }
    }
    Seen {
        leaves,
        warnings,
        all,
    }
}

#[test]
fn cpuid_equals_qemus_leaf_for_leaf() {
    assert!(
        std::path::Path::new(QBOOT).exists(),
        "{QBOOT} is missing (Debian: qemu-system-data)"
    );
    let mut failures = Vec::new();
    // Two configurations at a time (four VMs): quick on two cores, and none starves.
    for pair in CONFIGS.chunks(2) {
        let results: Vec<(&str, &str, Seen, Seen)> = std::thread::scope(|s| {
            let handles: Vec<_> = pair
                .iter()
                .map(|&(cpu, smp)| {
                    s.spawn(move || {
                        let q = s.spawn(move || run_cpuid(true, cpu, smp));
                        let t = run_cpuid(false, cpu, smp);
                        (cpu, smp, q.join().unwrap(), t)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (cpu, smp, q, t) in results {
            assert!(q.leaves.len() > 15, "QEMU's dump is short:\n{}", q.all);
            if q.leaves != t.leaves || q.warnings != t.warnings {
                let only_q: Vec<_> = q.leaves.iter().filter(|l| !t.leaves.contains(l)).collect();
                let only_t: Vec<_> = t.leaves.iter().filter(|l| !q.leaves.contains(l)).collect();
                failures.push(format!(
                    "-cpu {cpu:?} -smp {smp:?}:\n  QEMU only: {only_q:#?}\n  troupe only: {only_t:#?}\n  \
                     QEMU warnings: {:#?}\n  troupe warnings: {:#?}",
                    q.warnings, t.warnings
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Flags no current host's KVM offers: XOP (AMD family 15h only) and AVX512_4FMAPS (Xeon
/// Phi Knights Mill only).
const MISSING: &str = "qemu64,+xop,+avx512-4fmaps";

#[test]
fn enforce_refuses_to_start_naming_each_missing_feature() {
    let kernel = guest("cpuid");
    let kernel = kernel.to_str().unwrap();
    let cpu = format!("{MISSING},enforce");
    let args = guest_args(kernel, "", &["-cpu", &cpu]);
    let (status, out, err) = Vm::troupe(&args).run(TIMEOUT);
    assert_ne!(code(status), 0, "troupe started anyway:\n{out}\n{err}");
    assert!(!out.contains("cpuid:"), "the guest ran:\n{out}");
    for f in [
        "CPUID.07H:EDX.avx512-4fmaps [bit 3]",
        "CPUID.80000001H:ECX.xop [bit 11]",
    ] {
        assert!(
            err.contains(&format!(
                "troupe: warning: host doesn't support requested feature: {f}"
            )),
            "no warning for {f}:\n{err}"
        );
    }
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("Host doesn't support requested features")
            && last.contains("CPUID.80000001H:ECX.xop [bit 11]")
            && last.contains("CPUID.07H:EDX.avx512-4fmaps [bit 3]"),
        "the error should name the features:\n{err}"
    );
}

#[test]
fn check_warns_in_qemus_words_and_starts() {
    let kernel = guest("cpuid");
    let kernel = kernel.to_str().unwrap();
    let cpu = format!("{MISSING},check");
    let args = guest_args(kernel, "", &["-cpu", &cpu]);
    let (status, out, err) = Vm::troupe(&args).run(TIMEOUT);
    assert_eq!(code(status), 1, "guest exit 0 → status 1:\n{out}\n{err}");
    assert!(out.contains("cpuid: done"), "{out}\n{err}");
    let qemu_args = guest_args(kernel, "", &["-M", "pc", "-bios", QBOOT, "-cpu", &cpu]);
    let (_, _, qerr) = Vm::qemu(&qemu_args).run(TIMEOUT);
    let warnings = |text: &str, prefix: &str| -> Vec<String> {
        let mut v: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(str::to_string)
            .collect();
        v.dedup();
        v
    };
    let ours = warnings(&err, "troupe: warning: ");
    assert!(
        ours.iter().any(
            |w| w == "host doesn't support requested feature: CPUID.80000001H:ECX.xop [bit 11]"
        ),
        "{err}"
    );
    assert_eq!(ours, warnings(&qerr, "qemu-system-x86_64: warning: "));
}

#[test]
fn cpu_help_lists_what_qemu_lists() {
    let (_, ours, _) = Vm::troupe(&["-cpu", "help"]).run(TIMEOUT);
    let (_, theirs, _) = Vm::qemu(&["-cpu", "help"]).run(TIMEOUT);
    let trim = |s: &str| {
        s.lines()
            .map(|l| l.trim_end().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(trim(&ours), trim(&theirs));
}
