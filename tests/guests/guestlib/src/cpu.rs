//! CPUID, the TSC and the current CPU's APIC id.

/// Result of one CPUID query.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidResult {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// CPUID leaf `leaf`, subleaf `sub`.
pub fn cpuid(leaf: u32, sub: u32) -> CpuidResult {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    CpuidResult {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

/// Highest basic leaf.
pub fn max_basic_leaf() -> u32 {
    cpuid(0, 0).eax
}

/// The time-stamp counter.
#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC is allowed in ring 3 (CR4.TSD is clear) and has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// This CPU's APIC id, from the local APIC's ID register (CPUID's copies of it are not
/// trustworthy on every host: under PVM leaf 0xB/leaf 1 report the host's CPU).
pub fn apic_id() -> u32 {
    crate::lapic::Lapic::new().id()
}

/// The initial APIC id CPUID reports: leaf 0xB's x2APIC id when present, else leaf 1
/// EBX[31:24].
pub fn cpuid_apic_id() -> u32 {
    if max_basic_leaf() >= 0xB {
        let r = cpuid(0xB, 0);
        if r.ebx != 0 {
            return r.edx;
        }
    }
    cpuid(1, 0).ebx >> 24
}

/// True when CPUID says we run under a hypervisor (leaf 1 ECX bit 31).
pub fn has_hypervisor() -> bool {
    cpuid(1, 0).ecx & (1 << 31) != 0
}
