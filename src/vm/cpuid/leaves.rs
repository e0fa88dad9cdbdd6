//! The CPUID leaves of one vCPU, computed from a [`ResolvedCpu`] and the topology the way
//! QEMU 7.2 computes them (target/i386/cpu.c `cpu_x86_cpuid`), and the table KVM gets,
//! laid out as QEMU lays it out (which subleaves are listed, which zero leaves omitted).

use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use super::cache::{self, CacheSet};
use super::features::{self as f, Words};
use super::ResolvedCpu;
use crate::vm::topology::Topology;

/// One vCPU's view: the CPU, its topology and its place in it.
struct Vcpu<'a> {
    cpu: &'a ResolvedCpu,
    topo: &'a Topology,
    apic_id: u32,
    core: u32,
    socket: u32,
    tsc_khz: Option<u32>,
}

fn has(w: &Words, word: usize, bit: u32) -> bool {
    w[word] & (1 << bit) != 0
}

fn bytes_to_regs(b: &[u8]) -> [u32; 4] {
    let mut r = [0u32; 4];
    for (i, chunk) in b.chunks(4).take(4).enumerate() {
        let mut v = [0u8; 4];
        v[..chunk.len()].copy_from_slice(chunk);
        r[i] = u32::from_le_bytes(v);
    }
    r
}

impl Vcpu<'_> {
    fn amd(&self) -> bool {
        self.cpu.vendor == *b"AuthenticAMD"
    }

    fn intel(&self) -> bool {
        self.cpu.vendor == *b"GenuineIntel"
    }

    /// Logical processors per package.
    fn per_pkg(&self) -> u32 {
        self.topo.cores * self.topo.threads
    }

    /// Bits of the APIC id below the package id.
    fn pkg_offset(&self) -> u32 {
        self.topo.thread_bits() + self.topo.core_bits()
    }

    fn vendor_regs(&self) -> (u32, u32, u32) {
        let v = &self.cpu.vendor;
        let w = |i: usize| u32::from_le_bytes([v[i], v[i + 1], v[i + 2], v[i + 3]]);
        (w(0), w(4), w(8))
    }

    fn version(&self) -> u32 {
        let c = self.cpu;
        let mut v = if c.family > 0xf {
            0xf00 | ((c.family - 0xf) << 20)
        } else {
            c.family << 8
        };
        v |= ((c.model & 0xf) << 4) | ((c.model >> 4) << 16);
        v | (c.stepping & 0xf)
    }

    /// The TSC frequency QEMU publishes in 0x40000010: only with `invtsc` (and a known
    /// frequency).
    fn tsc_leaf(&self) -> Option<u32> {
        self.tsc_khz
            .filter(|_| has(&self.cpu.features, f::E7_EDX, 8))
    }

    fn caches(&self) -> (CacheSet, CacheSet, CacheSet) {
        self.cpu.cache.sets()
    }

    /// XSAVE area size for the components in `mask` (standard or compacted layout).
    fn xsave_size(&self, mask: u64, compacted: bool) -> u32 {
        let mut size = 0x240;
        for (i, &(len, offset, _)) in self.cpu.xsave_layout.iter().enumerate() {
            if mask & (1 << (i + 2)) != 0 && len != 0 {
                let at = if compacted { size } else { offset };
                size = size.max(at + len);
            }
        }
        size
    }

    /// CPUID `leaf`/`sub` for this vCPU.
    fn leaf(&self, leaf: u32, sub: u32) -> [u32; 4] {
        let c = self.cpu;
        let w = &c.features;
        let per_pkg = self.per_pkg();
        let (vb, vd, vc) = self.vendor_regs();
        match leaf {
            0 => [c.level, vb, vc, vd],
            1 => {
                let mut ebx = (self.apic_id << 24) | (8 << 8);
                let mut edx = w[f::L1_EDX];
                if per_pkg > 1 {
                    ebx |= per_pkg << 16;
                    edx |= 1 << 28;
                }
                let mut ecx = w[f::L1_ECX];
                if !c.pmu {
                    ecx &= !(1 << 15);
                }
                [self.version(), ebx, ecx, edx]
            }
            2 => {
                if self.amd() {
                    return [0; 4];
                }
                let (l2set, _, _) = self.caches();
                let d = cache::leaf2_descriptor;
                [
                    1,
                    0,
                    d(&l2set.l3),
                    (d(&l2set.l1d) << 16) | (d(&l2set.l1i) << 8) | d(&l2set.l2),
                ]
            }
            4 => {
                if self.amd() {
                    return [0; 4];
                }
                let (_, set, _) = self.caches();
                let (c4, sharing) = match sub {
                    0 => (set.l1d, 1),
                    1 => (set.l1i, 1),
                    2 => (set.l2, self.topo.threads),
                    3 => (set.l3, 1 << self.pkg_offset()),
                    _ => return [0; 4],
                };
                let mut r = cache::deterministic(&c4);
                r[0] |= ((self.topo.cores - 1) << 26) | ((sharing - 1) << 14);
                r
            }
            5 => [0, 0, 3, 0],
            6 => [w[f::L6_EAX], 0, 0, 0],
            7 => match sub {
                0 => [
                    c.level_func7,
                    w[f::L7_0_EBX],
                    w[f::L7_0_ECX],
                    w[f::L7_0_EDX],
                ],
                1 => [w[f::L7_1_EAX], 0, 0, 0],
                _ => [0; 4],
            },
            0xa if c.pmu => c.pmu_leaf,
            0xb => {
                let (eax, ebx, kind) = match sub {
                    0 => (self.topo.thread_bits(), self.topo.threads, 1),
                    1 => (self.pkg_offset(), per_pkg, 2),
                    _ => (0, 0, 0),
                };
                [eax, ebx & 0xffff, (sub & 0xff) | (kind << 8), self.apic_id]
            }
            0xd => self.xsave_leaf(sub),
            0x4000_0000 => {
                let s = bytes_to_regs(b"KVMKVMKVM\0\0\0");
                let max = if self.tsc_leaf().is_some() {
                    0x4000_0010
                } else {
                    0x4000_0001
                };
                [max, s[0], s[1], s[2]]
            }
            // TSC and APIC bus frequencies in kHz (the APIC bus runs at 1 GHz under KVM).
            0x4000_0010 => self.tsc_leaf().map_or([0; 4], |khz| [khz, 1_000_000, 0, 0]),
            0x4000_0001 => [w[f::KVM], 0, 0, w[f::KVM_HINTS]],
            0x8000_0000 => [c.xlevel, vb, vc, vd],
            0x8000_0001 => {
                let mut ecx = w[f::E1_ECX];
                if per_pkg > 1 && !self.intel() {
                    ecx |= 1 << 1;
                }
                [self.version(), 0, ecx, w[f::E1_EDX]]
            }
            0x8000_0002..=0x8000_0004 => {
                let mut id = [0u8; 48];
                let n = c.model_id.len().min(48);
                id[..n].copy_from_slice(&c.model_id.as_bytes()[..n]);
                let at = (leaf - 0x8000_0002) as usize * 16;
                bytes_to_regs(&id[at..at + 16])
            }
            0x8000_0005 => {
                let (_, _, amd) = self.caches();
                [
                    0x01ff_01ff,
                    0x01ff_01ff,
                    cache::l1_amd(&amd.l1d),
                    cache::l1_amd(&amd.l1i),
                ]
            }
            0x8000_0006 => {
                let (_, _, amd) = self.caches();
                let (ecx, edx) = cache::l2_l3_amd(&amd.l2, Some(&amd.l3));
                let tlb =
                    (cache::amd_assoc(4) << 28) | (512 << 16) | (cache::amd_assoc(4) << 12) | 512;
                [0, tlb, ecx, edx]
            }
            0x8000_0007 => [0, 0, 0, w[f::E7_EDX]],
            0x8000_0008 => {
                let eax = if has(w, f::E1_EDX, 29) {
                    c.phys_bits
                        | if has(w, f::L7_0_ECX, 16) {
                            0x3900
                        } else {
                            0x3000
                        }
                } else {
                    c.phys_bits
                };
                let ecx = if per_pkg > 1 {
                    (self.pkg_offset() << 12) | (per_pkg - 1)
                } else {
                    0
                };
                [eax, w[f::E8_EBX], ecx, 0]
            }
            // SVM revision 1, 16 ASIDs.
            0x8000_000a if has(w, f::E1_ECX, 2) => [1, 0x10, 0, w[f::SVM]],
            0x8000_001d => {
                let (_, _, amd) = self.caches();
                let (cc, threads) = match sub {
                    0 => (amd.l1d, self.topo.threads),
                    1 => (amd.l1i, self.topo.threads),
                    2 => (amd.l2, self.topo.threads),
                    3 => (amd.l3, per_pkg),
                    _ => return [0; 4],
                };
                let mut r = cache::deterministic(&cc);
                r[0] |= (threads - 1) << 14;
                r
            }
            0x8000_001e => [
                self.apic_id,
                ((self.topo.threads - 1) << 8) | (self.core & 0xff),
                self.socket & 0xff,
                0,
            ],
            0xc000_0000 => [c.xlevel2, 0, 0, 0],
            0xc000_0001 => [0, 0, 0, w[f::C1_EDX]],
            _ => [0; 4],
        }
    }

    fn xsave_leaf(&self, sub: u32) -> [u32; 4] {
        let c = self.cpu;
        if !has(&c.features, f::L1_ECX, 26) {
            return [0; 4];
        }
        match sub {
            0 => {
                let size = self.xsave_size(c.xcr0, false);
                [c.xcr0 as u32, size, size, (c.xcr0 >> 32) as u32]
            }
            1 => [c.features[f::XSAVE], self.xsave_size(c.xcr0, true), 0, 0],
            2..=18 if c.xcr0 & (1 << sub) != 0 => {
                let (size, offset, flags) = c.xsave_layout[sub as usize - 2];
                [size, offset, flags, 0]
            }
            _ => [0; 4],
        }
    }
}

/// The table for vCPU `index`: QEMU's `kvm_arch_init_vcpu` layout.
pub fn table(
    cpu: &ResolvedCpu,
    topo: &Topology,
    index: u32,
    tsc_khz: Option<u32>,
) -> Vec<kvm_cpuid_entry2> {
    let pos = topo.position(index);
    let v = Vcpu {
        cpu,
        topo,
        apic_id: topo.apic_id(index),
        core: pos.core,
        socket: pos.socket,
        tsc_khz,
    };
    let mut out = Vec::new();
    let entry = |function: u32, index: u32, flags: u32, r: [u32; 4]| kvm_cpuid_entry2 {
        function,
        index,
        flags,
        eax: r[0],
        ebx: r[1],
        ecx: r[2],
        edx: r[3],
        ..Default::default()
    };
    let sig = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
    let range = |out: &mut Vec<kvm_cpuid_entry2>, first: u32, last: u32| {
        for leaf in first..=last {
            match leaf {
                4 | 0xb | 0x8000_001d => {
                    for sub in 0..64 {
                        let r = v.leaf(leaf, sub);
                        out.push(entry(leaf, sub, sig, r));
                        let end = match leaf {
                            0xb => r[2] & 0xff00 == 0,
                            _ => r[0] == 0,
                        };
                        if end {
                            break;
                        }
                    }
                }
                // Without dies, QEMU leaves 0x1F out.
                0x1f => {}
                0xd => {
                    // QEMU keeps the subleaves whose EAX is non-zero, and its loop leaves
                    // one more entry behind: subleaf 63 (all zero). Where a subleaf is
                    // missing KVM answers zeros, but some hosts (PVM) the host's values,
                    // so the layout is kept as QEMU's.
                    for sub in 0..63 {
                        let r = v.leaf(leaf, sub);
                        if r[0] != 0 {
                            out.push(entry(leaf, sub, sig, r));
                        }
                    }
                    out.push(entry(leaf, 63, sig, v.leaf(leaf, 63)));
                }
                7 | 0x14 | 0x1d | 0x1e => {
                    let r0 = v.leaf(leaf, 0);
                    out.push(entry(leaf, 0, sig, r0));
                    for sub in 1..=r0[0].min(63) {
                        out.push(entry(leaf, sub, sig, v.leaf(leaf, sub)));
                    }
                }
                0x12 => {
                    for sub in 0..64 {
                        let r = v.leaf(leaf, sub);
                        out.push(entry(leaf, sub, sig, r));
                        if sub > 1 && r[0] & 0xf != 1 {
                            break;
                        }
                    }
                }
                _ => {
                    let r = v.leaf(leaf, 0);
                    if r != [0; 4] {
                        out.push(entry(leaf, 0, 0, r));
                    }
                }
            }
        }
    };
    range(&mut out, 0, cpu.level.min(0xff));
    range(&mut out, 0x4000_0000, v.leaf(0x4000_0000, 0)[0]);
    range(
        &mut out,
        0x8000_0000,
        cpu.xlevel.clamp(0x8000_0000, 0x8000_00ff),
    );
    if cpu.xlevel2 >= 0xc000_0000 {
        range(&mut out, 0xc000_0000, cpu.xlevel2.min(0xc000_00ff));
    }
    out
}
