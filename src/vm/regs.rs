//! The register states a vCPU starts from: x86 power-on (for firmware), 32-bit flat
//! protected mode (PVH and multiboot), and 64-bit long mode (Linux's 64-bit boot
//! protocol). Plus the MSRs and local APIC wiring every vCPU gets.

use actors::vcpu::VcpuBootState;
use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;

use super::kvm::VmError;

/// What KVM gave a freshly created vCPU: the architectural reset state.
#[derive(Clone)]
pub struct VcpuTemplate {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: kvm_fpu,
    pub lapic: kvm_lapic_state,
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
const MSR_KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;

fn lapic_reg(l: &kvm_lapic_state, off: usize) -> u32 {
    let b: [u8; 4] = std::array::from_fn(|i| l.regs[off + i] as u8);
    u32::from_le_bytes(b)
}

fn set_lapic_reg(l: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        l.regs[off + i] = *b as _;
    }
}

fn with_delivery_mode(v: u32, mode: u32) -> u32 {
    (v & !0x700) | (mode << 8)
}

impl VcpuTemplate {
    /// Read the reset state of a new vCPU and wire LINT0 to the PIC (ExtINT) and LINT1 to
    /// NMI, as a PC's BIOS would.
    pub fn capture(fd: &VcpuFd) -> Result<Self, VmError> {
        let err = |what| move |source| VmError::Kvm { what, source };
        let mut lapic = fd.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
        let lint0 = lapic_reg(&lapic, APIC_LVT0);
        set_lapic_reg(
            &mut lapic,
            APIC_LVT0,
            with_delivery_mode(lint0, APIC_MODE_EXTINT),
        );
        let lint1 = lapic_reg(&lapic, APIC_LVT1);
        set_lapic_reg(
            &mut lapic,
            APIC_LVT1,
            with_delivery_mode(lint1, APIC_MODE_NMI),
        );
        let mut fpu = fd.get_fpu().map_err(err("KVM_GET_FPU"))?;
        fpu.fcw = 0x37f;
        fpu.mxcsr = 0x1f80;
        Ok(Self {
            regs: fd.get_regs().map_err(err("KVM_GET_REGS"))?,
            sregs: fd.get_sregs().map_err(err("KVM_GET_SREGS"))?,
            fpu,
            lapic,
        })
    }

    /// The MSRs every vCPU starts with.
    pub fn msrs() -> Vec<(u32, u64)> {
        vec![
            (MSR_IA32_SYSENTER_CS, 0),
            (MSR_IA32_SYSENTER_ESP, 0),
            (MSR_IA32_SYSENTER_EIP, 0),
            (MSR_STAR, 0),
            (MSR_CSTAR, 0),
            (MSR_KERNEL_GS_BASE, 0),
            (MSR_SYSCALL_MASK, 0),
            (MSR_LSTAR, 0),
            (MSR_IA32_MISC_ENABLE, 1),
            (MSR_MTRR_DEF_TYPE, (1 << 11) | 6),
            (MSR_KVM_SYSTEM_TIME_NEW, 0),
            (MSR_KVM_WALL_CLOCK_NEW, 0),
        ]
    }

    /// x86 power-on: real mode at the reset vector (0xFFFF0). APs wait for INIT/SIPI.
    pub fn power_on(&self, bsp: bool) -> VcpuBootState {
        let mut regs = self.regs;
        let mut sregs = self.sregs;
        regs.rip = 0xfff0;
        regs.rflags = 2;
        sregs.cs.selector = 0xf000;
        sregs.cs.base = 0xffff_0000;
        sregs.apic_base = apic_base(bsp);
        VcpuBootState {
            regs,
            sregs,
            fpu: self.fpu,
            msrs: Self::msrs(),
            runnable: bsp,
            lapic: Some(self.lapic),
        }
    }

    /// 32-bit flat protected mode, paging off, at `entry` (PVH and multiboot). The GDT the
    /// selectors refer to must be written at `gdt_base` with [`flat_gdt`].
    pub fn protected_mode(&self, entry: u64, gdt_base: u64, bsp: bool) -> VcpuBootState {
        let mut s = self.power_on(bsp);
        let code = segment(GDT_CODE32, 0xb, true, false);
        let data = segment(GDT_DATA, 0x3, true, false);
        set_flat(&mut s.sregs, code, data, gdt_base);
        s.sregs.cr0 = 0x11; // PE | ET
        s.sregs.cr4 = 0;
        s.sregs.efer = 0;
        s.regs = kvm_regs {
            rip: entry,
            rflags: 2,
            ..Default::default()
        };
        s
    }

    /// 64-bit long mode with the page tables at `pml4` (Linux 64-bit boot protocol).
    pub fn long_mode(&self, entry: u64, gdt_base: u64, pml4: u64, bsp: bool) -> VcpuBootState {
        let mut s = self.power_on(bsp);
        let code = segment(GDT_CODE64, 0xb, false, true);
        let data = segment(GDT_DATA, 0x3, true, false);
        set_flat(&mut s.sregs, code, data, gdt_base);
        s.sregs.cr0 = 0x8000_0011; // PG | PE | ET
        s.sregs.cr3 = pml4;
        s.sregs.cr4 = 0x20; // PAE
        s.sregs.efer = 0x500; // LME | LMA
        s.regs = kvm_regs {
            rip: entry,
            rflags: 2,
            ..Default::default()
        };
        s
    }
}

fn apic_base(bsp: bool) -> u64 {
    0xfee0_0000 | 0x800 | if bsp { 0x100 } else { 0 }
}

/// GDT selectors used by direct boot.
pub const GDT_CODE32: u16 = 0x10;
pub const GDT_DATA: u16 = 0x18;
pub const GDT_TSS: u16 = 0x20;
pub const GDT_CODE64: u16 = 0x28;

/// The GDT direct boot writes at its GDT address: null, unused, 32-bit code, data, a
/// 32-bit TSS descriptor (busy), 64-bit code.
pub fn flat_gdt() -> [u64; 6] {
    [
        0,
        0,
        0x00cf_9b00_0000_ffff, // 0x10: code, 32-bit, 4 GiB
        0x00cf_9300_0000_ffff, // 0x18: data, 4 GiB
        0x0000_8b00_0000_0067, // 0x20: TSS, busy, limit 0x67
        0x00af_9b00_0000_ffff, // 0x28: code, 64-bit
    ]
}

fn segment(selector: u16, type_: u8, db: bool, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: u8::from(db),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn set_flat(sregs: &mut kvm_sregs, code: kvm_segment, data: kvm_segment, gdt_base: u64) {
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        base: 0,
        limit: 0x67,
        selector: GDT_TSS,
        type_: 0xb,
        present: 1,
        s: 0,
        ..Default::default()
    };
    sregs.gdt.base = gdt_base;
    sregs.gdt.limit = (flat_gdt().len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_descriptors_decode_to_the_segments_we_load() {
        let gdt = flat_gdt();
        // 32-bit code: base 0, limit 0xfffff pages, type 0xb, S, P, D/B, G.
        let d = gdt[(GDT_CODE32 / 8) as usize];
        assert_eq!((d >> 40) & 0xf, 0xb);
        assert_eq!((d >> 54) & 1, 1, "D/B");
        let d = gdt[(GDT_CODE64 / 8) as usize];
        assert_eq!((d >> 53) & 1, 1, "L");
        assert_eq!((d >> 54) & 1, 0, "D/B must be clear for 64-bit code");
    }

    #[test]
    fn delivery_mode_replaces_only_those_bits() {
        assert_eq!(with_delivery_mode(0x1_0000, APIC_MODE_EXTINT), 0x1_0700);
        assert_eq!(with_delivery_mode(0x1_0700, APIC_MODE_NMI), 0x1_0400);
    }
}
