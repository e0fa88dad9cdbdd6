//! Everything that runs in ring 0: the PVH note and multiboot header, the 32-bit entry
//! (both protocols land there), static identity page tables, GDT/TSS/IDT, the switch to
//! ring 3, the `ud2` request gate for ring 3, exception stubs, and the AP trampoline.
//!
//! Ring-0 code is emulated on the hosts troupe is developed on (~0.2 us per instruction),
//! so this file does as little as it can: the page tables are assembled into the image,
//! the IDT is filled by one short loop, and everything else (boot-info parsing, AP set-up,
//! device work) happens in ring 3 with user-accessible identity mappings and port access
//! (IOPL 3 in RFLAGS *and* an all-zero I/O permission bitmap in every TSS: PVM hosts run
//! guest ring 3 with IOPL 0 whatever the guest asked for, and honour the bitmap).
//!
//! Data path at boot: loader → `guestlib_entry32` (EAX/EBX saved) → long mode →
//! `guestlib_entry64` (IDT, TSS 0) → `iretq` → [`crate::rt::bsp_start`] in ring 3.
//! APs: SIPI → trampoline at [`TRAMPOLINE_ADDR`] (real → protected → long) →
//! `guestlib_ap_entry64` (takes a slot with `lock xadd`, loads its TSS) → `iretq` →
//! [`crate::rt::ap_start`] in ring 3.

use core::arch::global_asm;

/// Most CPUs a guest can start (slots for stacks and TSSs).
pub const MAX_CPUS: usize = 32;
/// Ring-0 stack per CPU (interrupts and system calls from ring 3 land here).
pub const KSTACK_SIZE: usize = 8192;
/// Ring-3 stack per CPU.
pub const USTACK_SIZE: usize = 65536;
/// Physical address the AP trampoline is copied to (SIPI vector 0x08).
pub const TRAMPOLINE_ADDR: usize = 0x8000;

/// GDT selectors.
pub const SEL_CODE32: u16 = 0x08;
pub const SEL_DATA: u16 = 0x10;
pub const SEL_CODE64: u16 = 0x18;
pub const SEL_UDATA: u16 = 0x20;
pub const SEL_UCODE: u16 = 0x28;
/// First TSS descriptor; CPU slot `n` uses `SEL_TSS0 + 16 * n`.
pub const SEL_TSS0: u16 = 0x30;
/// Size of a 64-bit TSS (without I/O bitmap).
pub const TSS_SIZE: usize = 104;
/// The all-zero I/O permission bitmap after each TSS: every port allowed from ring 3.
pub const IOBITMAP_SIZE: usize = 8192;
/// TSS segment limit: the TSS, the bitmap, and the byte after it (the CPU reads two bytes).
pub const TSS_LIMIT: usize = TSS_SIZE + IOBITMAP_SIZE;
/// Stride of the per-CPU TSS array.
pub const TSS_STRIDE: usize = 8320;
const GDT_SIZE: usize = SEL_TSS0 as usize + 16 * MAX_CPUS;

/// Ring-3 requests to ring 0: `rax = (REQUEST_MAGIC << 32) | number`, arguments in
/// rdi/rsi/rdx, then `ud2`; the #UD handler recognises the pair, runs the request in ring 0,
/// puts the result in rax and resumes after the `ud2`. Every other register is preserved.
///
/// Why not a DPL-3 `int n` gate or SYSCALL: on the PVM hosts troupe is developed on, `int n`
/// from ring 3 raises #UD and SYSCALL enters its target without leaving CPL 3. Exceptions
/// are delivered properly, so the gate is an exception.
pub const REQUEST_MAGIC: u64 = 0x5452_5550; // "TRUP"
/// Request numbers.
pub const SYS_HALT: u64 = 0;
pub const SYS_RDMSR: u64 = 1;
pub const SYS_WRMSR: u64 = 2;
pub const SYS_READ_CR: u64 = 3;
pub const SYS_OUT_LOOP: u64 = 4;
pub const SYS_NOP: u64 = 5;
/// Run an x87 instruction in ring 0 (`fninit; fld1; fstp st(0)`). On PVM hosts the ring-0
/// instruction emulator has no x87 support: KVM stops with an emulation failure, which is
/// how tests check a VMM's internal-error report.
pub const SYS_X87: u64 = 6;
/// CPUID in ring 0: rdi = leaf, rsi = subleaf, rdx = 0 for `eax | ebx << 32`, else
/// `ecx | edx << 32`.
pub const SYS_CPUID: u64 = 7;

global_asm!(
    r#"
/* ---------------------------------------------------------------- headers */

/* PVH: ELF note owned by "Xen", type 18 = XEN_ELFNOTE_PHYS32_ENTRY, 32-bit entry address. */
.section .note.pvh, "a"
.p2align 2
.long 4
.long 4
.long 18
.asciz "Xen"
.p2align 2
.long guestlib_entry32

/* Multiboot 1 with the address fields (bit 16): QEMU loads no 64-bit ELF via multiboot. */
.section .multiboot, "a"
.p2align 2
guestlib_mb_header:
.long 0x1BADB002
.long 0x00010002
.long -(0x1BADB002 + 0x00010002)
.long guestlib_mb_header
.long __image_start
.long __load_end
.long __bss_end
.long guestlib_entry32

/* ---------------------------------------------------------------- BSP entry */

.section .text.boot, "ax"
.code32
.global guestlib_entry32
guestlib_entry32:
    cli
    cld
    mov dword ptr [guestlib_boot_eax], eax
    mov dword ptr [guestlib_boot_ebx], ebx
    rdtsc
    mov dword ptr [guestlib_boot_tsc], eax
    mov dword ptr [guestlib_boot_tsc + 4], edx
    mov esp, offset guestlib_kstacks + {kstack}
    lgdt [guestlib_gdtr]
    /* CR4: PAE | OSFXSR | OSXMMEXCPT */
    mov eax, 0x620
    mov cr4, eax
    mov eax, offset guestlib_pml4
    mov cr3, eax
    /* EFER.LME */
    mov ecx, 0xC0000080
    rdmsr
    or eax, 0x100
    wrmsr
    /* CR0: clear CD NW TS EM; set PG NE MP PE */
    mov eax, cr0
    and eax, 0x9FFFFFF3
    or eax, 0x80000023
    mov cr0, eax
    /* ljmp {code64}:guestlib_entry64 */
    .byte 0xEA
    .long guestlib_entry64
    .word {code64}

.code64
guestlib_entry64:
    mov ax, {data}
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    lea rsp, [rip + guestlib_kstacks + {kstack}]

    /* IDT: exception gates 0..31 (DPL 0). */
    lea rsi, [rip + guestlib_exc_table]
    lea rdi, [rip + guestlib_idt]
    mov ecx, 32
guestlib_idt_loop:
    mov rax, [rsi]
    mov [rdi], ax
    mov dword ptr [rdi + 2], 0x8E000000 + {code64}
    shr rax, 16
    mov [rdi + 6], ax
    shr rax, 16
    mov [rdi + 8], rax
    add rsi, 8
    add rdi, 16
    dec ecx
    jnz guestlib_idt_loop
    lidt [rip + guestlib_idtr]

    /* TSS descriptor and rsp0 for slot 0 (the BSP); the BSP fills the other slots from ring 3. */
    lea rax, [rip + guestlib_tss]
    lea rdi, [rip + guestlib_gdt + {tss0}]
    mov word ptr [rdi], {tss_limit}
    mov [rdi + 2], ax
    shr rax, 16
    mov [rdi + 4], al
    mov byte ptr [rdi + 5], 0x89
    mov byte ptr [rdi + 6], 0
    mov [rdi + 7], ah
    shr rax, 16
    mov [rdi + 8], rax
    lea rax, [rip + guestlib_kstacks + {kstack}]
    mov [rip + guestlib_tss + 4], rax
    mov word ptr [rip + guestlib_tss + 102], {tss_size}
    mov ax, {tss0}
    ltr ax

    /* iretq into ring 3 with IOPL 3 (not honoured everywhere: see the I/O bitmap) and IF clear. */
    push {udata} + 3
    lea rax, [rip + guestlib_ustacks + {ustack} - 8]
    push rax
    push 0x3002
    push {ucode} + 3
    lea rax, [rip + guestlib_bsp_start]
    push rax
    iretq

/* ---------------------------------------------------------------- AP entry (64-bit) */

.global guestlib_ap_entry64
guestlib_ap_entry64:
    mov ax, {data}
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    lidt [rip + guestlib_idtr]
    mov eax, 1
    lock xadd dword ptr [rip + guestlib_ap_next_slot], eax
    cmp eax, {max_cpus}
    jae guestlib_halt_forever
    mov edi, eax
    mov ecx, eax
    shl ecx, 4
    add ecx, {tss0}
    ltr cx
    mov rcx, rdi
    imul rcx, rcx, {kstack}
    lea rsp, [rip + guestlib_kstacks + {kstack}]
    add rsp, rcx
    mov rcx, rdi
    imul rcx, rcx, {ustack}
    lea rdx, [rip + guestlib_ustacks + {ustack} - 8]
    add rdx, rcx
    push {udata} + 3
    push rdx
    push 0x3002
    push {ucode} + 3
    lea rax, [rip + guestlib_ap_start]
    push rax
    iretq

.global guestlib_halt_forever
guestlib_halt_forever:
    cli
    hlt
    jmp guestlib_halt_forever

/* ---------------------------------------------------------------- system calls */

/* #UD: a request from ring 3 (`ud2` with REQUEST_MAGIC in rax's upper half), else fatal.
   Frame: rip, cs, rflags, rsp, ss. Requests return with iretq, result in rax. */
guestlib_exc6:
    cmp qword ptr [rsp + 8], {ucode} + 3
    jne guestlib_exc6_fatal
    push rcx
    mov rcx, [rsp + 8]
    cmp word ptr [rcx], 0x0B0F
    jne guestlib_exc6_fatal_pop
    mov rcx, rax
    shr rcx, 32
    cmp ecx, {magic}
    jne guestlib_exc6_fatal_pop
    pop rcx
    add qword ptr [rsp], 2
    mov eax, eax
    cmp rax, {sys_out_loop}
    je guestlib_sys_out_loop
    cmp rax, {sys_nop}
    je guestlib_sys_nop
    cmp rax, {sys_x87}
    je guestlib_sys_x87
    cmp rax, {sys_cpuid}
    je guestlib_sys_cpuid
    cmp rax, {sys_rdmsr}
    je guestlib_sys_rdmsr
    cmp rax, {sys_wrmsr}
    je guestlib_sys_wrmsr
    cmp rax, {sys_read_cr}
    je guestlib_sys_read_cr
    cmp rax, {sys_halt}
    je guestlib_halt_forever
    mov rax, -1
    iretq
guestlib_exc6_fatal_pop:
    pop rcx
guestlib_exc6_fatal:
    push 0
    push 6
    jmp guestlib_exc_common
guestlib_sys_nop:
    xor eax, eax
    iretq
guestlib_sys_x87:
    fninit
    fld1
    fstp st(0)
    xor eax, eax
    iretq
guestlib_sys_cpuid:
    push rbx
    push rcx
    push rdx
    mov eax, edi
    mov ecx, esi
    cpuid
    cmp qword ptr [rsp], 0
    jne guestlib_sys_cpuid_cd
    shl rbx, 32
    or rax, rbx
    jmp guestlib_sys_cpuid_done
guestlib_sys_cpuid_cd:
    shl rdx, 32
    mov eax, ecx
    or rax, rdx
guestlib_sys_cpuid_done:
    pop rdx
    pop rcx
    pop rbx
    iretq
guestlib_sys_out_loop:
    push rcx
    push rdx
    mov rax, rdx
    mov edx, edi
    mov rcx, rsi
    test rcx, rcx
    jz guestlib_sys_out_loop_done
guestlib_sys_out_loop_next:
    out dx, al
    dec rcx
    jnz guestlib_sys_out_loop_next
guestlib_sys_out_loop_done:
    pop rdx
    pop rcx
    xor eax, eax
    iretq
guestlib_sys_rdmsr:
    push rcx
    push rdx
    mov ecx, edi
    rdmsr
    shl rdx, 32
    or rax, rdx
    pop rdx
    pop rcx
    iretq
guestlib_sys_wrmsr:
    push rcx
    push rdx
    mov ecx, edi
    mov eax, esi
    mov rdx, rsi
    shr rdx, 32
    wrmsr
    pop rdx
    pop rcx
    xor eax, eax
    iretq
guestlib_sys_read_cr:
    cmp rdi, 0
    je guestlib_sys_read_cr0
    cmp rdi, 2
    je guestlib_sys_read_cr2
    cmp rdi, 3
    je guestlib_sys_read_cr3
    cmp rdi, 4
    je guestlib_sys_read_cr4
    mov rax, -1
    iretq
guestlib_sys_read_cr0:
    mov rax, cr0
    iretq
guestlib_sys_read_cr2:
    mov rax, cr2
    iretq
guestlib_sys_read_cr3:
    mov rax, cr3
    iretq
guestlib_sys_read_cr4:
    mov rax, cr4
    iretq

/* ---------------------------------------------------------------- exceptions */

.macro GUESTLIB_EXC vec, has_err
guestlib_exc\vec:
.if \has_err == 0
    push 0
.endif
    push \vec
    jmp guestlib_exc_common
.endm

GUESTLIB_EXC 0, 0
GUESTLIB_EXC 1, 0
GUESTLIB_EXC 2, 0
GUESTLIB_EXC 3, 0
GUESTLIB_EXC 4, 0
GUESTLIB_EXC 5, 0
GUESTLIB_EXC 7, 0
GUESTLIB_EXC 8, 1
GUESTLIB_EXC 9, 0
GUESTLIB_EXC 10, 1
GUESTLIB_EXC 11, 1
GUESTLIB_EXC 12, 1
GUESTLIB_EXC 13, 1
GUESTLIB_EXC 14, 1
GUESTLIB_EXC 15, 0
GUESTLIB_EXC 16, 0
GUESTLIB_EXC 17, 1
GUESTLIB_EXC 18, 0
GUESTLIB_EXC 19, 0
GUESTLIB_EXC 20, 0
GUESTLIB_EXC 21, 1
GUESTLIB_EXC 22, 0
GUESTLIB_EXC 23, 0
GUESTLIB_EXC 24, 0
GUESTLIB_EXC 25, 0
GUESTLIB_EXC 26, 0
GUESTLIB_EXC 27, 0
GUESTLIB_EXC 28, 0
GUESTLIB_EXC 29, 1
GUESTLIB_EXC 30, 1
GUESTLIB_EXC 31, 0

guestlib_exc_common:
    push r15
    push r14
    push r13
    push r12
    push r11
    push r10
    push r9
    push r8
    push rbp
    push rdi
    push rsi
    push rdx
    push rcx
    push rbx
    push rax
    mov rdi, rsp
    and rsp, -16
    call guestlib_exception
    jmp guestlib_halt_forever

/* ---------------------------------------------------------------- AP trampoline */

/* Copied to {tramp} by the BSP; runs from there. CS = {tramp} >> 4 after the SIPI. */
.section .rodata.guestlib_trampoline, "a"
.p2align 4
.global guestlib_tramp_start
.global guestlib_tramp_end
guestlib_tramp_start:
.code16
    cli
    cld
    xor ax, ax
    mov ds, ax
    /* o32 lgdt [disp16] (32-bit base), encoded by hand */
    .byte 0x66, 0x0F, 0x01, 0x16
    .word {tramp} + (guestlib_tramp_gdtr - guestlib_tramp_start)
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    /* o32 ljmp {code32}:tramp32 */
    .byte 0x66, 0xEA
    .long {tramp} + (guestlib_tramp32 - guestlib_tramp_start)
    .word {code32}
.code32
guestlib_tramp32:
    mov ax, {data}
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov eax, 0x620
    mov cr4, eax
    mov eax, offset guestlib_pml4
    mov cr3, eax
    mov ecx, 0xC0000080
    rdmsr
    or eax, 0x100
    wrmsr
    mov eax, cr0
    and eax, 0x9FFFFFF3
    or eax, 0x80000023
    mov cr0, eax
    .byte 0xEA
    .long guestlib_ap_entry64
    .word {code64}
.p2align 2
guestlib_tramp_gdtr:
    .word {gdt_size} - 1
    .long guestlib_gdt
guestlib_tramp_end:
.code64

/* ---------------------------------------------------------------- tables */

.section .rodata.guestlib_tables, "a"
.p2align 3
guestlib_exc_table:
.quad guestlib_exc0, guestlib_exc1, guestlib_exc2, guestlib_exc3
.quad guestlib_exc4, guestlib_exc5, guestlib_exc6, guestlib_exc7
.quad guestlib_exc8, guestlib_exc9, guestlib_exc10, guestlib_exc11
.quad guestlib_exc12, guestlib_exc13, guestlib_exc14, guestlib_exc15
.quad guestlib_exc16, guestlib_exc17, guestlib_exc18, guestlib_exc19
.quad guestlib_exc20, guestlib_exc21, guestlib_exc22, guestlib_exc23
.quad guestlib_exc24, guestlib_exc25, guestlib_exc26, guestlib_exc27
.quad guestlib_exc28, guestlib_exc29, guestlib_exc30, guestlib_exc31

.p2align 3
guestlib_gdtr:
    .word {gdt_size} - 1
    .quad guestlib_gdt
.p2align 3
.global guestlib_idtr
guestlib_idtr:
    .word 256 * 16 - 1
    .quad guestlib_idt

/* Identity map of 0..4 GiB with 2 MiB pages, user-accessible and writable. */
.section .data.pagetables, "aw"
.p2align 12
.global guestlib_pml4
guestlib_pml4:
    .quad guestlib_pdpt + 0x7
    .fill 511, 8, 0
guestlib_pdpt:
    .quad guestlib_pd + 0x7
    .quad guestlib_pd + 0x1000 + 0x7
    .quad guestlib_pd + 0x2000 + 0x7
    .quad guestlib_pd + 0x3000 + 0x7
    .fill 508, 8, 0
guestlib_pd:
.set guestlib_pde, 0
.rept 2048
    .quad (guestlib_pde << 21) | 0x87
.set guestlib_pde, guestlib_pde + 1
.endr

.section .data.guestlib, "aw"
.p2align 4
.global guestlib_gdt
guestlib_gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF
    .quad 0x00CF92000000FFFF
    .quad 0x00AF9A000000FFFF
    .quad 0x00CFF2000000FFFF
    .quad 0x00AFFA000000FFFF
    .fill {max_cpus} * 2, 8, 0
.p2align 2
.global guestlib_boot_eax
guestlib_boot_eax: .long 0
.global guestlib_boot_ebx
guestlib_boot_ebx: .long 0
.global guestlib_ap_next_slot
guestlib_ap_next_slot: .long 1
.p2align 3
.global guestlib_boot_tsc
guestlib_boot_tsc: .quad 0

.section .bss.guestlib, "aw", @nobits
.p2align 12
.global guestlib_idt
guestlib_idt: .skip 256 * 16
.global guestlib_tss
guestlib_tss: .skip {max_cpus} * {tss_stride}
.p2align 12
.global guestlib_kstacks
guestlib_kstacks: .skip {max_cpus} * {kstack}
.global guestlib_ustacks
guestlib_ustacks: .skip {max_cpus} * {ustack}

.text
"#,
    kstack = const KSTACK_SIZE,
    ustack = const USTACK_SIZE,
    max_cpus = const MAX_CPUS,
    tss_size = const TSS_SIZE,
    tss_limit = const TSS_LIMIT,
    tss_stride = const TSS_STRIDE,
    gdt_size = const GDT_SIZE,
    tramp = const TRAMPOLINE_ADDR,
    code32 = const SEL_CODE32,
    data = const SEL_DATA,
    code64 = const SEL_CODE64,
    udata = const SEL_UDATA,
    ucode = const SEL_UCODE,
    tss0 = const SEL_TSS0,
    sys_halt = const SYS_HALT,
    sys_rdmsr = const SYS_RDMSR,
    sys_wrmsr = const SYS_WRMSR,
    sys_read_cr = const SYS_READ_CR,
    sys_out_loop = const SYS_OUT_LOOP,
    sys_nop = const SYS_NOP,
    sys_x87 = const SYS_X87,
    sys_cpuid = const SYS_CPUID,
    magic = const REQUEST_MAGIC,
);

extern "C" {
    static guestlib_boot_eax: u32;
    static guestlib_boot_ebx: u32;
    static guestlib_boot_tsc: u64;
    static mut guestlib_ap_next_slot: u32;
    static mut guestlib_gdt: [u8; GDT_SIZE];
    static mut guestlib_tss: [u8; MAX_CPUS * TSS_STRIDE];
    static mut guestlib_kstacks: [u8; MAX_CPUS * KSTACK_SIZE];
    static guestlib_tramp_start: u8;
    static guestlib_tramp_end: u8;
}

/// EAX and EBX as the loader left them at the 32-bit entry.
pub fn boot_registers() -> (u32, u32) {
    // SAFETY: written once by the 32-bit entry before ring 3 started; read-only afterwards.
    unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!(guestlib_boot_eax)),
            core::ptr::read_volatile(core::ptr::addr_of!(guestlib_boot_ebx)),
        )
    }
}

/// The TSC when the loader entered the 32-bit entry point.
pub fn entry_tsc() -> u64 {
    // SAFETY: written once by the 32-bit entry before ring 3 started; read-only afterwards.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(guestlib_boot_tsc)) }
}

/// The AP trampoline's bytes (to be copied to [`TRAMPOLINE_ADDR`]).
pub fn trampoline() -> &'static [u8] {
    // SAFETY: both symbols delimit one read-only block in .rodata, start before end.
    unsafe {
        let start = core::ptr::addr_of!(guestlib_tramp_start);
        let end = core::ptr::addr_of!(guestlib_tramp_end);
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

/// Prepares CPU slots `1..slots` for APs: a TSS whose rsp0 is the slot's ring-0 stack and
/// its descriptor in the GDT; resets the slot counter the APs draw from. Runs in ring 3
/// (the tables are identity-mapped with the user bit), before any SIPI is sent.
pub fn prepare_ap_slots(slots: usize) {
    let slots = slots.min(MAX_CPUS);
    // SAFETY: no AP is running yet, so nothing else touches these tables; the GDT entries
    // for slots >= 1 are not loaded by any CPU; offsets stay inside the arrays.
    unsafe {
        let gdt = core::ptr::addr_of_mut!(guestlib_gdt) as *mut u8;
        let tss = core::ptr::addr_of_mut!(guestlib_tss) as *mut u8;
        let kstacks = core::ptr::addr_of_mut!(guestlib_kstacks) as *mut u8;
        for slot in 1..slots {
            let t = tss.add(slot * TSS_STRIDE);
            core::ptr::write_bytes(t, 0, TSS_STRIDE);
            let rsp0 = kstacks.add((slot + 1) * KSTACK_SIZE) as u64;
            core::ptr::write_unaligned(t.add(4) as *mut u64, rsp0);
            core::ptr::write_unaligned(t.add(102) as *mut u16, TSS_SIZE as u16);
            let base = t as u64;
            let limit = TSS_LIMIT as u64;
            let low = (limit & 0xFFFF)
                | ((base & 0xFF_FFFF) << 16)
                | (0x89u64 << 40)
                | (((limit >> 16) & 0xF) << 48)
                | (((base >> 24) & 0xFF) << 56);
            let high = base >> 32;
            let d = gdt.add(SEL_TSS0 as usize + 16 * slot) as *mut u64;
            core::ptr::write_volatile(d, low);
            core::ptr::write_volatile(d.add(1), high);
        }
        core::ptr::write_volatile(core::ptr::addr_of_mut!(guestlib_ap_next_slot), 1);
    }
}

/// Registers saved by the exception stubs, in push order (lowest address first).
#[repr(C)]
pub struct ExceptionFrame {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Ring-0 exception handler: report on COM1 and leave through isa-debug-exit with
/// [`crate::EXIT_EXCEPTION_BASE`] + vector.
#[no_mangle]
extern "C" fn guestlib_exception(frame: &ExceptionFrame) -> ! {
    let cr2: u64;
    // SAFETY: we are in ring 0 here (exception gates have DPL 0 and run on rsp0).
    unsafe { core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack)) };
    crate::serial::force_unlock();
    crate::println!(
        "guest exception {} at rip={:#x} err={:#x}",
        frame.vector,
        frame.rip,
        frame.error
    );
    crate::println!(
        "guest exception detail: cs={:#x} rsp={:#x} rflags={:#x} cr2={:#x} rax={:#x} rdi={:#x}",
        frame.cs,
        frame.rsp,
        frame.rflags,
        cr2,
        frame.rax,
        frame.rdi
    );
    crate::exit(crate::EXIT_EXCEPTION_BASE + frame.vector as u32)
}
