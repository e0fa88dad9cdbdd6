//! cpuid: prints what CPUID reports, one `key: value` per line, and exits 0.
//!
//! Output (hex values are `0x` + 8 digits):
//! `vendor: <12 chars>`, `brand: <string>`, `max_basic_leaf: 0x…`, `max_ext_leaf: 0x…`,
//! `leaf1: eax=0x… ebx=0x… ecx=0x… edx=0x…`, `family: <n>`, `model: <n>`, `stepping: <n>`,
//! `initial_apic_id: <n>`, `x2apic_id: <n>` (leaf 0xB, if present), `lapic_id: <n>`,
//! `leaf1_features: <names>`, `leaf7: ebx=0x… ecx=0x… edx=0x…`,
//! `leaf4.<i>: type=<data|instruction|unified> level=<n> sharing=<n> cores_per_pkg=<n>`,
//! `leaf0b.<i>: type=<smt|core|…> shift=<n> count=<n> x2apic_id=<n>`,
//! `leaf1f.<i>: …` (same), `hypervisor: <signature>` or `hypervisor: none`,
//! `hypervisor_max_leaf: 0x…`, `kvm_features: eax=0x… edx=0x…`,
//! `kvm_feature_names: <names>`, `tsc_khz_leaf: <n>` (0x40000010, if present),
//! `cpuid: done`.
//!
//! With `raw` (or `raw=0`, `raw=3`, `raw=03`) it first dumps every leaf as
//! `raw<ring> <leaf>.<sub>: <eax> <ebx> <ecx> <edx>` (8 hex digits each), read in ring 3
//! and/or in ring 0.

#![no_std]
#![no_main]

use guestlib::cpu::cpuid;
use guestlib::{print, println, BootInfo};

guestlib::entry!(main);

fn regs_str(r: [u32; 4], out: &mut [u8]) -> usize {
    let mut n = 0;
    for v in r {
        for b in v.to_le_bytes() {
            out[n] = b;
            n += 1;
        }
    }
    n
}

fn printable(bytes: &[u8]) -> &str {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let s = core::str::from_utf8(&bytes[..end]).unwrap_or("?");
    s.trim()
}

fn print_features(
    key: &str,
    bits: u32,
    names: &[(u32, &str)],
    more: Option<(u32, &[(u32, &str)])>,
) {
    let _g = guestlib::serial::lock();
    let mut w = guestlib::serial::Writer;
    let _ = core::fmt::write(&mut w, format_args!("{key}:"));
    for &(bit, name) in names {
        if bits & (1 << bit) != 0 {
            let _ = core::fmt::write(&mut w, format_args!(" {name}"));
        }
    }
    if let Some((bits, names)) = more {
        for &(bit, name) in names {
            if bits & (1 << bit) != 0 {
                let _ = core::fmt::write(&mut w, format_args!(" {name}"));
            }
        }
    }
    let _ = core::fmt::write(&mut w, format_args!("\n"));
}

const EDX1: &[(u32, &str)] = &[
    (0, "fpu"),
    (4, "tsc"),
    (5, "msr"),
    (6, "pae"),
    (8, "cx8"),
    (9, "apic"),
    (11, "sep"),
    (12, "mtrr"),
    (13, "pge"),
    (15, "cmov"),
    (16, "pat"),
    (19, "clflush"),
    (23, "mmx"),
    (24, "fxsr"),
    (25, "sse"),
    (26, "sse2"),
    (28, "htt"),
];
const ECX1: &[(u32, &str)] = &[
    (0, "sse3"),
    (1, "pclmulqdq"),
    (5, "vmx"),
    (9, "ssse3"),
    (12, "fma"),
    (13, "cx16"),
    (19, "sse4_1"),
    (20, "sse4_2"),
    (21, "x2apic"),
    (22, "movbe"),
    (23, "popcnt"),
    (24, "tsc_deadline"),
    (25, "aes"),
    (26, "xsave"),
    (27, "osxsave"),
    (28, "avx"),
    (29, "f16c"),
    (30, "rdrand"),
    (31, "hypervisor"),
];
const KVM: &[(u32, &str)] = &[
    (0, "clocksource"),
    (1, "nop_io_delay"),
    (2, "mmu_op"),
    (3, "clocksource2"),
    (4, "async_pf"),
    (5, "steal_time"),
    (6, "pv_eoi"),
    (7, "pv_unhalt"),
    (9, "pv_tlb_flush"),
    (10, "async_pf_vmexit"),
    (11, "pv_send_ipi"),
    (12, "poll_control"),
    (13, "pv_sched_yield"),
    (14, "async_pf_int"),
    (15, "msi_ext_dest_id"),
    (16, "hc_map_gpa_range"),
    (17, "migration_control"),
    (24, "clocksource_stable"),
];

fn level_type(t: u32) -> &'static str {
    match t {
        0 => "invalid",
        1 => "smt",
        2 => "core",
        3 => "module",
        4 => "tile",
        5 => "die",
        _ => "unknown",
    }
}

fn topology(leaf: u32, name: &str) {
    for sub in 0..8 {
        let r = cpuid(leaf, sub);
        let t = (r.ecx >> 8) & 0xFF;
        if t == 0 {
            break;
        }
        println!(
            "{name}.{sub}: type={} shift={} count={} x2apic_id={}",
            level_type(t),
            r.eax & 0x1F,
            r.ebx & 0xFFFF,
            r.edx
        );
    }
}

/// Whether a subleaf ends its leaf's list.
type EndOfList = fn([u32; 4]) -> bool;

/// Leaves whose subleaves differ: how many to read and whether a zero type ends the list.
fn subleaves(leaf: u32, r0: [u32; 4]) -> (u32, Option<EndOfList>) {
    match leaf {
        4 | 0x8000_001d => (16, Some(|r| r[0] & 0x1f == 0)),
        0xb | 0x1f => (8, Some(|r| (r[2] >> 8) & 0xff == 0)),
        7 | 0x14 | 0x17 | 0x18 | 0x1d | 0x1e | 0x20 => (r0[0].clamp(0, 7) + 1, None),
        0xd => (64, None),
        0xf | 0x10 | 0x12 | 0x8000_0020 | 0x8000_0026 => (8, None),
        _ => (1, None),
    }
}

/// `raw<ring> <leaf>.<sub>: <eax> <ebx> <ecx> <edx>` for every leaf and subleaf the CPU
/// lists (basic, hypervisor and extended ranges); all-zero subleaves past the first are
/// left out.
fn raw_dump(ring: u32, read: fn(u32, u32) -> [u32; 4]) {
    let max_basic = read(0, 0)[0].min(0x40);
    let max_hv = read(0x4000_0000, 0)[0].clamp(0x4000_0000, 0x4000_00ff);
    let max_ext = read(0x8000_0000, 0)[0].clamp(0x8000_0000, 0x8000_0040);
    let ranges = [
        (0, max_basic),
        (0x4000_0000, max_hv),
        (0x8000_0000, max_ext),
    ];
    for (first, last) in ranges {
        for leaf in first..=last {
            let r0 = read(leaf, 0);
            let (count, end) = subleaves(leaf, r0);
            for sub in 0..count {
                let r = if sub == 0 { r0 } else { read(leaf, sub) };
                if sub > 0 {
                    if let Some(end) = end {
                        if end(r) {
                            break;
                        }
                    } else if r == [0; 4] {
                        continue;
                    }
                }
                println!(
                    "raw{ring} {leaf:08x}.{sub}: {:08x} {:08x} {:08x} {:08x}",
                    r[0], r[1], r[2], r[3]
                );
            }
        }
    }
}

fn ring3_cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    let r = cpuid(leaf, sub);
    [r.eax, r.ebx, r.ecx, r.edx]
}

fn main(boot: &BootInfo) -> u32 {
    if let Some(rings) = boot.arg("raw") {
        if rings.contains('3') || rings.is_empty() {
            raw_dump(3, ring3_cpuid);
        }
        if rings.contains('0') || rings.is_empty() {
            raw_dump(0, guestlib::sys::cpuid_ring0);
        }
    }
    let l0 = cpuid(0, 0);
    let max_basic = l0.eax;
    let mut buf = [0u8; 48];
    let n = regs_str([l0.ebx, l0.edx, l0.ecx, 0], &mut buf);
    println!("vendor: {}", printable(&buf[..n - 4]));
    let max_ext = cpuid(0x8000_0000, 0).eax;
    if max_ext >= 0x8000_0004 {
        let mut n = 0;
        for leaf in 0x8000_0002..=0x8000_0004u32 {
            let r = cpuid(leaf, 0);
            n += regs_str([r.eax, r.ebx, r.ecx, r.edx], &mut buf[n..]);
        }
        println!("brand: {}", printable(&buf[..n]));
    } else {
        println!("brand: none");
    }
    println!("max_basic_leaf: {max_basic:#010x}");
    println!("max_ext_leaf: {max_ext:#010x}");
    let l1 = cpuid(1, 0);
    println!(
        "leaf1: eax={:#010x} ebx={:#010x} ecx={:#010x} edx={:#010x}",
        l1.eax, l1.ebx, l1.ecx, l1.edx
    );
    let base_family = (l1.eax >> 8) & 0xF;
    let family = if base_family == 0xF {
        base_family + ((l1.eax >> 20) & 0xFF)
    } else {
        base_family
    };
    let model = if base_family == 0x6 || base_family == 0xF {
        ((l1.eax >> 4) & 0xF) | (((l1.eax >> 16) & 0xF) << 4)
    } else {
        (l1.eax >> 4) & 0xF
    };
    println!("family: {family}");
    println!("model: {model}");
    println!("stepping: {}", l1.eax & 0xF);
    println!("initial_apic_id: {}", l1.ebx >> 24);
    println!("logical_per_package: {}", (l1.ebx >> 16) & 0xFF);
    if max_basic >= 0xB {
        println!("x2apic_id: {}", cpuid(0xB, 0).edx);
    }
    println!("lapic_id: {}", guestlib::cpu::apic_id());
    print_features("leaf1_features", l1.edx, EDX1, Some((l1.ecx, ECX1)));
    if max_basic >= 7 {
        let l7 = cpuid(7, 0);
        println!(
            "leaf7: ebx={:#010x} ecx={:#010x} edx={:#010x}",
            l7.ebx, l7.ecx, l7.edx
        );
    }
    if max_basic >= 4 {
        for sub in 0..16 {
            let r = cpuid(4, sub);
            let t = r.eax & 0x1F;
            if t == 0 {
                break;
            }
            let kind = match t {
                1 => "data",
                2 => "instruction",
                3 => "unified",
                _ => "unknown",
            };
            println!(
                "leaf4.{sub}: type={kind} level={} sharing={} cores_per_pkg={}",
                (r.eax >> 5) & 0x7,
                ((r.eax >> 14) & 0xFFF) + 1,
                ((r.eax >> 26) & 0x3F) + 1
            );
        }
    }
    if max_basic >= 0xB {
        topology(0xB, "leaf0b");
    }
    if max_basic >= 0x1F {
        topology(0x1F, "leaf1f");
    }
    match guestlib::time::hypervisor() {
        None => println!("hypervisor: none"),
        Some((sig, max)) => {
            println!("hypervisor: {}", printable(&sig));
            println!("hypervisor_max_leaf: {max:#010x}");
            if &sig == b"KVMKVMKVM\0\0\0" && max >= 0x4000_0001 {
                let f = cpuid(0x4000_0001, 0);
                println!("kvm_features: eax={:#010x} edx={:#010x}", f.eax, f.edx);
                print_features("kvm_feature_names", f.eax, KVM, None);
            }
            if max >= 0x4000_0010 {
                println!("tsc_khz_leaf: {}", cpuid(0x4000_0010, 0).eax);
            }
        }
    }
    print!("");
    println!("cpuid: done");
    0
}
