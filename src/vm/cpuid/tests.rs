use super::*;
use kvm_bindings::kvm_cpuid_entry2;

/// A host whose KVM offers what a recent AMD host offers for the bits these tests use.
fn fake_host(vendor: &[u8; 12]) -> HostCpu {
    let e = |function, index, eax, ebx, ecx, edx| kvm_cpuid_entry2 {
        function,
        index,
        eax,
        ebx,
        ecx,
        edx,
        ..Default::default()
    };
    let v = |i: usize| u32::from_le_bytes([vendor[i], vendor[i + 1], vendor[i + 2], vendor[i + 3]]);
    HostCpu {
        supported: vec![
            e(0, 0, 0x10, v(0), v(8), v(4)),
            // Everything in leaf 1 but aes (bit 25).
            e(1, 0, 0xa20f12, 0, !(1 << 25), !0),
            e(6, 0, 0, 0, 0, 0),
            e(7, 0, 0, !0, !0, !0),
            e(0xd, 0, 0x7, 0x340, 0x340, 0),
            e(0x4000_0001, 0, 0x0100_7eff, 0, 0, 0),
            e(0x8000_0000, 0, 0x8000_0021, 0, 0, 0),
            e(0x8000_0001, 0, 0, 0, !0, !0),
            e(0x8000_0008, 0, 0x3030, !0, 0, 0),
        ],
        msr_features: Vec::new(),
        tsc_deadline: true,
        vendor: *vendor,
        version: 0xa20f12,
        brand: "Fake CPU".to_string(),
        phys_bits: 48,
        xsave_layout: vec![(0x100, 0x240, 0); 17],
    }
}

/// A leaf as the guest reads it: absent entries read as zeros (QEMU leaves all-zero
/// leaves out of the table).
fn get(table: &CpuId, f: u32, i: u32) -> [u32; 4] {
    table
        .as_slice()
        .iter()
        .find(|e| e.function == f && e.index == i)
        .map_or([0; 4], |e| [e.eax, e.ebx, e.ecx, e.edx])
}

fn topo(sockets: u32, cores: u32, threads: u32) -> Topology {
    Topology {
        sockets,
        cores,
        threads,
    }
}

#[test]
fn qemu64_matches_qemus_identification_leaves() {
    let host = fake_host(b"AuthenticAMD");
    let cpu = resolve(&CpuConfig::model("qemu64"), &host).unwrap();
    let t = cpu.table(&topo(1, 1, 1), 0, None).unwrap();
    // family 15 model 107 stepping 1, level 0xd, xlevel 0x8000000a.
    assert_eq!(get(&t, 1, 0)[0], 0x0006_0fb1);
    assert_eq!(get(&t, 0, 0)[0], 0xd);
    assert_eq!(get(&t, 0x8000_0000, 0)[0], 0x8000_000a);
    let mut brand = Vec::new();
    for leaf in 0x8000_0002..=0x8000_0004 {
        for r in get(&t, leaf, 0) {
            brand.extend_from_slice(&r.to_le_bytes());
        }
    }
    assert!(brand.starts_with(b"QEMU Virtual CPU version 2.5+\0"));
    // The legacy AMD L1/L2/L3 descriptions.
    assert_eq!(
        get(&t, 0x8000_0005, 0),
        [0x01ff_01ff, 0x01ff_01ff, 0x4002_0140, 0x4002_0140]
    );
    assert_eq!(
        get(&t, 0x8000_0006, 0),
        [0, 0x4200_4200, 0x0200_8140, 0x0080_8140]
    );
    // KVM signature and the paravirtual features QEMU turns on by default.
    assert_eq!(get(&t, 0x4000_0000, 0)[0], 0x4000_0001);
    assert_eq!(get(&t, 0x4000_0001, 0)[0], 0x0100_007b);
    // AMD vendor: 0x80000001 EDX repeats leaf 1's common bits.
    let e1 = get(&t, 0x8000_0001, 0)[3];
    assert_eq!(e1 & AMD_ALIASES, get(&t, 1, 0)[3] & AMD_ALIASES);
}

#[test]
fn named_intel_model_gets_host_vendor_and_its_own_identity() {
    let host = fake_host(b"AuthenticAMD");
    let cpu = resolve(&CpuConfig::model("Haswell-noTSX"), &host).unwrap();
    assert_eq!(&cpu.vendor, b"AuthenticAMD");
    assert_eq!((cpu.family, cpu.model), (6, 60));
    assert_eq!(cpu.model_id, "Intel Core Processor (Haswell, no TSX)");
    // aes is what the fake host lacks.
    let names: Vec<_> = cpu.dropped.iter().map(|d| d.warning()).collect();
    assert_eq!(
        names,
        ["host doesn't support requested feature: CPUID.01H:ECX.aes [bit 25]"]
    );
    assert!(cpu.enforce(false).is_ok());
    assert_eq!(
        cpu.enforce(true).unwrap_err().to_string(),
        "-cpu Haswell-noTSX: Host doesn't support requested features: CPUID.01H:ECX.aes [bit 25]"
    );
}

#[test]
fn plus_and_minus_features_and_properties() {
    let host = fake_host(b"GenuineIntel");
    let mut cfg = CpuConfig::model("qemu64");
    cfg.plus = vec!["avx2".into(), "x2apic".into()];
    cfg.minus = vec!["x2apic".into()];
    cfg.props.family = Some(6);
    cfg.props.model = Some(0x55);
    cfg.props.model_id = Some("Custom".into());
    let cpu = resolve(&cfg, &host).unwrap();
    let t = cpu.table(&topo(1, 1, 1), 0, None).unwrap();
    assert_ne!(get(&t, 7, 0)[1] & (1 << 5), 0, "+avx2");
    assert_eq!(get(&t, 1, 0)[2] & (1 << 21), 0, "-x2apic wins over +x2apic");
    assert_eq!(
        get(&t, 1, 0)[0],
        0x0005_0651,
        "family 6 model 0x55, qemu64's stepping 1"
    );
    assert_eq!(get(&t, 0x8000_0002, 0)[0], u32::from_le_bytes(*b"Cust"));
}

#[test]
fn topology_leaves_follow_smp() {
    let host = fake_host(b"AuthenticAMD");
    let cpu = resolve(&CpuConfig::model("EPYC"), &host).unwrap();
    let t8 = topo(2, 2, 2);
    // vCPU 5: socket 1, core 0, thread 1 → APIC id 0b101.
    let t = cpu.table(&t8, 5, None).unwrap();
    assert_eq!(get(&t, 1, 0)[1] >> 24, 5);
    assert_eq!((get(&t, 1, 0)[1] >> 16) & 0xff, 4);
    assert_eq!(get(&t, 0xb, 0), [1, 2, 0x100, 5]);
    assert_eq!(get(&t, 0xb, 1), [2, 4, 0x201, 5]);
    assert_eq!(get(&t, 0xb, 2), [0, 0, 2, 5]);
    assert_eq!(get(&t, 0x8000_0008, 0)[2], (2 << 12) | 3);
    assert_eq!(get(&t, 0x8000_001e, 0), [5, 0x100, 1, 0]);
    // L3 shared by the package's 4 threads; L1 by the core's 2.
    assert_eq!((get(&t, 0x8000_001d, 3)[0] >> 14) & 0xfff, 3);
    assert_eq!((get(&t, 0x8000_001d, 0)[0] >> 14) & 0xfff, 1);
}

#[test]
fn every_model_resolves_and_fits_kvm() {
    let host = fake_host(b"GenuineIntel");
    let list = models(&host);
    assert!(list.len() > 100);
    for m in &list {
        let cpu = resolve(&CpuConfig::model(&m.name), &host).unwrap();
        cpu.table(&topo(2, 2, 2), 7, None).unwrap();
    }
    let haswell = list.iter().find(|m| m.name == "Haswell-noTSX").unwrap();
    assert_eq!(haswell.alias_of.as_deref(), Some("Haswell-v2"));
    assert_eq!(haswell.unavailable_features, ["aes"]);
}

/// QEMU's `query-cpu-definitions` on this host (`-machine none`, so no VM exists, as for
/// [`HostCpu::probe`]).
fn qemu_cpu_definitions() -> serde_json::Value {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "none",
            "-accel",
            "kvm",
            "-nodefaults",
            "-display",
            "none",
        ])
        .args(["-qmp", "stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("these tests need qemu-system-x86_64 in PATH");
    let mut input = qemu.stdin.take().unwrap();
    let mut output = BufReader::new(qemu.stdout.take().unwrap());
    writeln!(input, r#"{{"execute":"qmp_capabilities"}}"#).unwrap();
    writeln!(input, r#"{{"execute":"query-cpu-definitions","id":1}}"#).unwrap();
    let mut answer = serde_json::Value::Null;
    let mut line = String::new();
    while output.read_line(&mut line).unwrap() > 0 {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["id"] == 1 {
            answer = v["return"].clone();
            break;
        }
        line.clear();
    }
    drop(input);
    let _ = qemu.kill();
    let _ = qemu.wait();
    answer
}

#[test]
fn models_and_their_unavailable_features_are_qemus() {
    let host = HostCpu::probe().expect("these tests need /dev/kvm");
    let ours: Vec<(String, String, Vec<String>)> = models(&host)
        .into_iter()
        .map(|m| {
            (
                m.name,
                m.alias_of.unwrap_or_default(),
                m.unavailable_features,
            )
        })
        .collect();
    let theirs: Vec<(String, String, Vec<String>)> = qemu_cpu_definitions()
        .as_array()
        .expect("query-cpu-definitions answer")
        .iter()
        .map(|d| {
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            (
                text(&d["name"]),
                text(&d["alias-of"]),
                d["unavailable-features"]
                    .as_array()
                    .map(|a| a.iter().map(text).collect())
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(ours.len(), theirs.len());
    for (o, t) in ours.iter().zip(&theirs) {
        assert_eq!(o, t);
    }
}

#[test]
fn feature_states_name_each_flag_once_and_follow_the_resolved_cpu() {
    let names = feature_names();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len(), "a flag listed twice");
    // `-cpu` takes each of them.
    for n in &names {
        assert_eq!(canonical_feature(n), Some(*n), "{n}");
    }
    let host = fake_host(b"AuthenticAMD");
    let mut cfg = CpuConfig::model("qemu64");
    cfg.plus = vec!["avx2".into()];
    cfg.minus = vec!["lm".into()];
    let states = resolve(&cfg, &host).unwrap().feature_states();
    assert_eq!(states.len(), names.len());
    let on = |f: &str| states.iter().find(|(n, _)| *n == f).unwrap().1;
    assert!(on("avx2") && on("sse2"));
    assert!(!on("lm") && !on("avx512f"));
    // A flag the host's KVM lacks stays off even when asked for.
    cfg.plus.push("aes".into());
    let states = resolve(&cfg, &host).unwrap().feature_states();
    assert!(!states.iter().find(|(n, _)| *n == "aes").unwrap().1);
}
