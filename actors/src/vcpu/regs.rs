//! A vCPU's architectural state as the monitor shows it, in QEMU's `info registers` and
//! internal-error formats (target/i386 `x86_cpu_dump_state`), 32- or 64-bit depending on
//! whether the vCPU is in long mode.

use std::fmt::Write;

use kvm_bindings::{kvm_debugregs, kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};

/// Everything `info registers` prints, read on the vCPU thread.
#[derive(Clone, Default)]
pub struct VcpuRegisters {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: kvm_fpu,
    pub debug: kvm_debugregs,
    /// The vCPU is halted (`mp_state == HALTED`).
    pub halted: bool,
    /// An interrupt shadow is active (after `sti`/`mov ss`).
    pub interrupt_shadow: bool,
}

impl std::fmt::Debug for VcpuRegisters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.dump(true))
    }
}

const EFER_LMA: u64 = 1 << 10;
const CR0_PE: u64 = 1;

impl VcpuRegisters {
    /// In 64-bit code (long mode and CS.L): QEMU's `HF_CS64`.
    pub fn cs64(&self) -> bool {
        self.sregs.efer & EFER_LMA != 0 && self.sregs.cs.l != 0
    }

    fn long_mode(&self) -> bool {
        self.sregs.efer & EFER_LMA != 0
    }

    /// Current privilege level, as QEMU derives it (from SS.DPL in protected mode).
    pub fn cpl(&self) -> u8 {
        if self.sregs.cr0 & CR0_PE == 0 {
            0
        } else {
            self.sregs.ss.dpl
        }
    }

    /// Linear address of the instruction pointer.
    pub fn pc_linear(&self) -> u64 {
        if self.cs64() {
            self.regs.rip
        } else {
            self.sregs.cs.base.wrapping_add(self.regs.rip) & 0xffff_ffff
        }
    }

    /// The register block, with the FPU/SSE part when `fpu` (like `info registers`).
    pub fn dump(&self, fpu: bool) -> String {
        let mut s = String::new();
        let r = &self.regs;
        let sr = &self.sregs;
        let eflags = r.rflags;
        let fl = |bit: u64, c: char| if eflags & bit != 0 { c } else { '-' };
        let flags: String = [
            fl(0x400, 'D'),
            fl(0x800, 'O'),
            fl(0x80, 'S'),
            fl(0x40, 'Z'),
            fl(0x10, 'A'),
            fl(0x04, 'P'),
            fl(0x01, 'C'),
        ]
        .iter()
        .collect();
        let tail = format!(
            "CPL={} II={} A20=1 SMM=0 HLT={}",
            self.cpl(),
            u8::from(self.interrupt_shadow),
            u8::from(self.halted)
        );
        let wide = self.cs64();
        if wide {
            let _ = writeln!(
                s,
                "RAX={:016x} RBX={:016x} RCX={:016x} RDX={:016x}",
                r.rax, r.rbx, r.rcx, r.rdx
            );
            let _ = writeln!(
                s,
                "RSI={:016x} RDI={:016x} RBP={:016x} RSP={:016x}",
                r.rsi, r.rdi, r.rbp, r.rsp
            );
            let _ = writeln!(
                s,
                "R8 ={:016x} R9 ={:016x} R10={:016x} R11={:016x}",
                r.r8, r.r9, r.r10, r.r11
            );
            let _ = writeln!(
                s,
                "R12={:016x} R13={:016x} R14={:016x} R15={:016x}",
                r.r12, r.r13, r.r14, r.r15
            );
            let _ = writeln!(s, "RIP={:016x} RFL={:08x} [{flags}] {tail}", r.rip, eflags);
        } else {
            let _ = writeln!(
                s,
                "EAX={:08x} EBX={:08x} ECX={:08x} EDX={:08x}",
                r.rax as u32, r.rbx as u32, r.rcx as u32, r.rdx as u32
            );
            let _ = writeln!(
                s,
                "ESI={:08x} EDI={:08x} EBP={:08x} ESP={:08x}",
                r.rsi as u32, r.rdi as u32, r.rbp as u32, r.rsp as u32
            );
            let _ = writeln!(
                s,
                "EIP={:08x} EFL={:08x} [{flags}] {tail}",
                r.rip as u32, eflags as u32
            );
        }
        for (name, seg) in [
            ("ES", &sr.es),
            ("CS", &sr.cs),
            ("SS", &sr.ss),
            ("DS", &sr.ds),
            ("FS", &sr.fs),
            ("GS", &sr.gs),
            ("LDT", &sr.ldt),
            ("TR", &sr.tr),
        ] {
            self.dump_segment(&mut s, name, seg, wide);
        }
        if wide {
            let _ = writeln!(s, "GDT=     {:016x} {:08x}", sr.gdt.base, sr.gdt.limit);
            let _ = writeln!(s, "IDT=     {:016x} {:08x}", sr.idt.base, sr.idt.limit);
            let _ = writeln!(
                s,
                "CR0={:08x} CR2={:016x} CR3={:016x} CR4={:08x}",
                sr.cr0 as u32, sr.cr2, sr.cr3, sr.cr4 as u32
            );
        } else {
            let _ = writeln!(
                s,
                "GDT=     {:08x} {:08x}",
                sr.gdt.base as u32, sr.gdt.limit
            );
            let _ = writeln!(
                s,
                "IDT=     {:08x} {:08x}",
                sr.idt.base as u32, sr.idt.limit
            );
            let _ = writeln!(
                s,
                "CR0={:08x} CR2={:08x} CR3={:08x} CR4={:08x}",
                sr.cr0 as u32, sr.cr2 as u32, sr.cr3 as u32, sr.cr4 as u32
            );
        }
        for (i, dr) in self.debug.db.iter().enumerate() {
            let _ = write!(s, "DR{i}={dr:016x} ");
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "DR6={:016x} DR7={:016x}", self.debug.dr6, self.debug.dr7);
        let _ = writeln!(s, "EFER={:016x}", sr.efer);
        if fpu {
            self.dump_fpu(&mut s, wide);
        }
        s
    }

    fn dump_segment(&self, s: &mut String, name: &str, seg: &kvm_segment, wide: bool) {
        let flags = segment_flags(seg);
        if wide {
            let _ = write!(
                s,
                "{name:<3}={:04x} {:016x} {:08x} {:08x}",
                seg.selector, seg.base, seg.limit, flags
            );
        } else {
            let _ = write!(
                s,
                "{name:<3}={:04x} {:08x} {:08x} {:08x}",
                seg.selector, seg.base as u32, seg.limit, flags
            );
        }
        if self.sregs.cr0 & CR0_PE != 0 && seg.present != 0 {
            let _ = write!(s, " DPL={} ", seg.dpl);
            let ty = seg.type_;
            if seg.s != 0 {
                if ty & 0x8 != 0 {
                    let kind = if seg.l != 0 {
                        "CS64"
                    } else if seg.db != 0 {
                        "CS32"
                    } else {
                        "CS16"
                    };
                    let c = if ty & 0x4 != 0 { 'C' } else { '-' };
                    let r = if ty & 0x2 != 0 { 'R' } else { '-' };
                    let _ = write!(s, "{kind} [{c}{r}");
                } else {
                    let kind = if seg.db != 0 || self.long_mode() {
                        "DS  "
                    } else {
                        "DS16"
                    };
                    let e = if ty & 0x4 != 0 { 'E' } else { '-' };
                    let w = if ty & 0x2 != 0 { 'W' } else { '-' };
                    let _ = write!(s, "{kind} [{e}{w}");
                }
                let a = if ty & 0x1 != 0 { 'A' } else { '-' };
                let _ = write!(s, "{a}]");
            } else {
                const SYS32: [&str; 16] = [
                    "Reserved",
                    "TSS16-avl",
                    "LDT",
                    "TSS16-busy",
                    "CallGate16",
                    "TaskGate",
                    "IntGate16",
                    "TrapGate16",
                    "Reserved",
                    "TSS32-avl",
                    "Reserved",
                    "TSS32-busy",
                    "CallGate32",
                    "Reserved",
                    "IntGate32",
                    "TrapGate32",
                ];
                const SYS64: [&str; 16] = [
                    "<hiword>",
                    "Reserved",
                    "LDT",
                    "Reserved",
                    "Reserved",
                    "Reserved",
                    "Reserved",
                    "Reserved",
                    "Reserved",
                    "TSS64-avl",
                    "Reserved",
                    "TSS64-busy",
                    "CallGate64",
                    "Reserved",
                    "IntGate64",
                    "TrapGate64",
                ];
                let table = if self.long_mode() { &SYS64 } else { &SYS32 };
                let _ = write!(s, "{}", table[usize::from(ty & 0xf)]);
            }
        }
        let _ = writeln!(s);
    }

    fn dump_fpu(&self, s: &mut String, wide: bool) {
        let f = &self.fpu;
        let top = (f.fsw >> 11) & 7;
        let _ = writeln!(
            s,
            "FCW={:04x} FSW={:04x} [ST={}] FTW={:02x} MXCSR={:08x}",
            f.fcw, f.fsw, top, f.ftwx, f.mxcsr
        );
        for i in 0..8 {
            let b = &f.fpr[i];
            let mant = u64::from_le_bytes(b[0..8].try_into().unwrap_or_default());
            let exp = u16::from_le_bytes([b[8], b[9]]);
            let sep = if i % 2 == 1 { "\n" } else { " " };
            let _ = write!(s, "FPR{i}={mant:016x} {exp:04x}{sep}");
        }
        let n = if wide { 16 } else { 8 };
        for i in 0..n {
            let x = &f.xmm[i];
            let lo = u64::from_le_bytes(x[0..8].try_into().unwrap_or_default());
            let hi = u64::from_le_bytes(x[8..16].try_into().unwrap_or_default());
            let sep = if i % 2 == 1 { "\n" } else { " " };
            let _ = write!(s, "XMM{i:02}={hi:016x} {lo:016x}{sep}");
        }
    }
}

/// The descriptor attribute bits in QEMU's `flags & 0x00ffff00` layout.
pub fn segment_flags(seg: &kvm_segment) -> u32 {
    (u32::from(seg.type_) << 8)
        | (u32::from(seg.s) << 12)
        | (u32::from(seg.dpl) << 13)
        | (u32::from(seg.present) << 15)
        | (u32::from(seg.avl) << 20)
        | (u32::from(seg.l) << 21)
        | (u32::from(seg.db) << 22)
        | (u32::from(seg.g) << 23)
}

/// QEMU's `Code=` line: bytes around the instruction pointer, the one at the pointer in
/// angle brackets, `??` where memory could not be read.
pub fn code_line(bytes_before: &[Option<u8>], bytes_from_pc: &[Option<u8>]) -> String {
    let mut s = String::from("Code=");
    let fmt = |b: &Option<u8>| match b {
        Some(v) => format!("{v:02x}"),
        None => "??".into(),
    };
    let mut parts: Vec<String> = bytes_before.iter().map(fmt).collect();
    for (i, b) in bytes_from_pc.iter().enumerate() {
        if i == 0 {
            parts.push(format!("<{}>", fmt(b)));
        } else {
            parts.push(fmt(b));
        }
    }
    s.push_str(&parts.join(" "));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(selector: u16, type_: u8, db: u8, l: u8) -> kvm_segment {
        kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector,
            type_,
            present: 1,
            dpl: 0,
            db,
            s: 1,
            l,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        }
    }

    #[test]
    fn protected_mode_dump_matches_qemu_layout() {
        let mut r = VcpuRegisters::default();
        r.regs.rax = 0xc0000;
        r.regs.rip = 0xea661;
        r.regs.rflags = 2;
        r.sregs.cr0 = 0x11;
        r.sregs.cs = flat(8, 0xb, 1, 0);
        r.sregs.ds = flat(0x10, 0x3, 1, 0);
        r.sregs.ss = r.sregs.ds;
        r.debug.dr6 = 0xffff0ff0;
        r.debug.dr7 = 0x400;
        let d = r.dump(false);
        assert!(d.starts_with("EAX=000c0000 EBX=00000000"), "{d}");
        assert!(d.contains("EIP=000ea661 EFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0\n"));
        assert!(
            d.contains("CS =0008 00000000 ffffffff 00c09b00 DPL=0 CS32 [-RA]\n"),
            "{d}"
        );
        assert!(
            d.contains("DS =0010 00000000 ffffffff 00c09300 DPL=0 DS   [-WA]\n"),
            "{d}"
        );
        assert!(d.contains("DR6=00000000ffff0ff0 DR7=0000000000000400\n"));
        assert!(d.ends_with("EFER=0000000000000000\n"));
    }

    #[test]
    fn long_mode_dump_uses_64_bit_registers() {
        let mut r = VcpuRegisters::default();
        r.sregs.cr0 = 0x80000011;
        r.sregs.efer = 0x500;
        r.sregs.cs = flat(8, 0xb, 0, 1);
        r.regs.rip = 0x100_0000;
        let d = r.dump(true);
        assert!(d.contains("RIP=0000000001000000"), "{d}");
        assert!(d.contains("CS64 [-RA]"), "{d}");
        assert!(d.contains("XMM15="), "{d}");
    }

    #[test]
    fn code_line_brackets_the_pc() {
        assert_eq!(
            code_line(&[Some(0x90), None], &[Some(0x0f), Some(0x01)]),
            "Code=90 ?? <0f> 01"
        );
    }
}
