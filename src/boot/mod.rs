//! Direct kernel boot (`-kernel`, `-initrd`, `-append`): troupe loads the kernel itself and
//! starts the BSP at its entry point. The format is detected from the file:
//!
//! - a Linux **bzImage** (`HdrS` at 0x202): 64-bit boot protocol ([`bzimage`]);
//! - an **ELF with Xen's PHYS32_ENTRY note**: PVH ([`pvh`]);
//! - anything with a **multiboot 1** header in its first 8 KiB ([`multiboot`]).
//!
//! Low-memory layout used by all three (below the EBDA, above the real-mode IVT/BDA):
//! GDT at 0x500, boot info (PVH start_info / multiboot info / zero page) at 0x6000–0x8fff,
//! page tables at 0x9000–0xbfff, command line at 0x20000. Initrds go at the top of low
//! RAM. ACPI tables are placed by the caller; their RSDP address is handed on.

pub mod bzimage;
pub mod elf;
pub mod mptable;
pub mod multiboot;
pub mod pvh;

use actors::vcpu::VcpuBootState;
use vm_memory::{Bytes, GuestAddress};

use crate::vm::regs::{flat_gdt, VcpuTemplate};
use devices::memory::GuestMemoryMmap;

pub const GDT_ADDR: u64 = 0x500;
pub const BOOT_INFO_ADDR: u64 = 0x6000;
pub const PAGE_TABLES_ADDR: u64 = 0x9000;
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Longest command line accepted (Linux's COMMAND_LINE_SIZE on x86).
pub const CMDLINE_MAX: usize = 2048;
/// Kernels load at 1 MiB unless their headers say otherwise.
pub const HIGH_MEMORY: u64 = 0x10_0000;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("not an ELF file")]
    NotElf,
    #[error(
        "not a bootable kernel: no Linux bzImage header, no PVH ELF note, no multiboot header"
    )]
    NotAKernel,
    #[error("truncated or corrupt file: {0} extends past its end")]
    Truncated(String),
    #[error("unsupported kernel: {0}")]
    Unsupported(String),
    #[error("{what} ({size} bytes at {addr:#x}) does not fit in guest RAM")]
    DoesNotFit { what: String, addr: u64, size: u64 },
    #[error("kernel command line is {0} bytes; the limit is {CMDLINE_MAX}")]
    CmdlineTooLong(usize),
    #[error("the initrd ({0} bytes) does not fit in guest RAM below 4 GiB")]
    InitrdTooBig(u64),
}

/// A memory-map entry handed to the guest (e820 type numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemEntry {
    pub addr: u64,
    pub size: u64,
    /// 1 RAM, 2 reserved, 3 ACPI reclaimable, 4 ACPI NVS.
    pub kind: u32,
}

/// What the loader needs besides the kernel.
pub struct BootParams<'a> {
    pub initrd: Option<&'a [u8]>,
    pub cmdline: &'a str,
    pub memmap: &'a [MemEntry],
    /// Guest-physical address of the ACPI RSDP, if tables were placed.
    pub rsdp: Option<u64>,
    /// End of RAM below 4 GiB.
    pub low_ram_end: u64,
}

/// Which protocol a kernel image speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    BzImage,
    Pvh,
    Multiboot,
}

/// Detect the format without loading.
pub fn detect(kernel: &[u8]) -> Result<KernelKind, BootError> {
    if bzimage::is_bzimage(kernel) {
        return Ok(KernelKind::BzImage);
    }
    if elf::is_elf(kernel) {
        let img = elf::parse(kernel)?;
        if img.pvh_entry.is_some() {
            return Ok(KernelKind::Pvh);
        }
    }
    if multiboot::find_header(kernel).is_some() {
        return Ok(KernelKind::Multiboot);
    }
    if elf::is_elf(kernel) {
        return Err(BootError::Unsupported(
            "ELF kernel without a PVH note or multiboot header".into(),
        ));
    }
    Err(BootError::NotAKernel)
}

/// Load `kernel` (and initrd, command line, memory map) into `mem`; return the BSP's
/// starting state.
pub fn load(
    mem: &GuestMemoryMmap,
    kernel: &[u8],
    p: &BootParams<'_>,
    template: &VcpuTemplate,
) -> Result<VcpuBootState, BootError> {
    if p.cmdline.len() >= CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong(p.cmdline.len()));
    }
    write(mem, GDT_ADDR, &gdt_bytes(), "GDT")?;
    let mut cmd = p.cmdline.as_bytes().to_vec();
    cmd.push(0);
    write(mem, CMDLINE_ADDR, &cmd, "command line")?;
    match detect(kernel)? {
        KernelKind::BzImage => bzimage::load(mem, kernel, p, template),
        KernelKind::Pvh => pvh::load(mem, kernel, p, template),
        KernelKind::Multiboot => multiboot::load(mem, kernel, p, template),
    }
}

fn gdt_bytes() -> Vec<u8> {
    flat_gdt().iter().flat_map(|d| d.to_le_bytes()).collect()
}

/// Write `data` at `addr`, naming `what` if it does not fit.
pub(crate) fn write(
    mem: &GuestMemoryMmap,
    addr: u64,
    data: &[u8],
    what: &str,
) -> Result<(), BootError> {
    mem.write_slice(data, GuestAddress(addr))
        .map_err(|_| BootError::DoesNotFit {
            what: what.into(),
            addr,
            size: data.len() as u64,
        })
}

/// Zero `size` bytes at `addr` (ELF .bss).
pub(crate) fn zero(
    mem: &GuestMemoryMmap,
    addr: u64,
    size: u64,
    what: &str,
) -> Result<(), BootError> {
    const CHUNK: usize = 1 << 16;
    let zeros = [0u8; CHUNK];
    let mut done = 0;
    while done < size {
        let n = (size - done).min(CHUNK as u64) as usize;
        write(mem, addr + done, &zeros[..n], what)?;
        done += n as u64;
    }
    Ok(())
}

/// Load the PT_LOAD segments of an ELF image.
pub(crate) fn load_elf_segments(
    mem: &GuestMemoryMmap,
    kernel: &[u8],
    img: &elf::ElfImage,
) -> Result<u64, BootError> {
    let mut end = 0;
    for (i, s) in img.segments.iter().enumerate() {
        let what = format!("kernel segment {i}");
        let data = &kernel[s.file_offset as usize..(s.file_offset + s.file_size) as usize];
        write(mem, s.paddr, data, &what)?;
        if s.mem_size > s.file_size {
            zero(mem, s.paddr + s.file_size, s.mem_size - s.file_size, &what)?;
        }
        end = end.max(s.paddr + s.mem_size);
    }
    Ok(end)
}

/// Where an initrd of `size` bytes goes: page-aligned at the top of low RAM, below
/// `limit`, above `kernel_end`.
pub(crate) fn place_initrd(
    size: u64,
    low_ram_end: u64,
    limit: u64,
    kernel_end: u64,
) -> Result<u64, BootError> {
    let top = low_ram_end.min(limit);
    let addr = top.checked_sub(size).ok_or(BootError::InitrdTooBig(size))? & !0xfff;
    if addr < kernel_end.max(HIGH_MEMORY) {
        return Err(BootError::InitrdTooBig(size));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_are_not_a_kernel() {
        assert!(matches!(detect(&[0u8; 4096]), Err(BootError::NotAKernel)));
        assert!(matches!(detect(b"hello"), Err(BootError::NotAKernel)));
    }

    #[test]
    fn initrd_goes_page_aligned_at_the_top() {
        assert_eq!(
            place_initrd(0x1800, 0x800_0000, u64::MAX, 0x20_0000).unwrap(),
            0x7ff_e000
        );
        assert!(place_initrd(0x800_0000, 0x800_0000, u64::MAX, 0x20_0000).is_err());
    }
}
