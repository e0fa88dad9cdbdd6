//! Multiboot 1: the BSP enters in 32-bit flat protected mode with EAX = 0x2BADB002 and
//! EBX pointing at the multiboot information structure (memory sizes, command line,
//! modules, memory map, boot loader name).

use actors::vcpu::VcpuBootState;
use devices::memory::GuestMemoryMmap;

use super::{
    elf, load_elf_segments, place_initrd, write, zero, BootError, BootParams, BOOT_INFO_ADDR,
    CMDLINE_ADDR, GDT_ADDR,
};
use crate::vm::regs::VcpuTemplate;

const MAGIC: u32 = 0x1bad_b002;
const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
const SEARCH: usize = 8192;
const FLAG_AOUT_KLUDGE: u32 = 1 << 16;
/// Bits 0-15 a loader must understand: 0 page-align modules, 1 memory info, 2 video mode.
const KNOWN_REQUIRED: u32 = 0b111;

const MODS_ADDR: u64 = BOOT_INFO_ADDR + 0x100;
const MMAP_ADDR: u64 = BOOT_INFO_ADDR + 0x200;
const LOADER_NAME_ADDR: u64 = BOOT_INFO_ADDR + 0xf00;

/// The multiboot header: offset in the file and its words.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub offset: usize,
    pub flags: u32,
    pub header_addr: u32,
    pub load_addr: u32,
    pub load_end_addr: u32,
    pub bss_end_addr: u32,
    pub entry_addr: u32,
}

pub fn find_header(k: &[u8]) -> Option<Header> {
    let word =
        |o: usize| -> Option<u32> { Some(u32::from_le_bytes(k.get(o..o + 4)?.try_into().ok()?)) };
    (0..SEARCH.min(k.len()).saturating_sub(11))
        .step_by(4)
        .find_map(|off| {
            let magic = word(off)?;
            let flags = word(off + 4)?;
            let sum = word(off + 8)?;
            if magic != MAGIC || magic.wrapping_add(flags).wrapping_add(sum) != 0 {
                return None;
            }
            Some(Header {
                offset: off,
                flags,
                header_addr: word(off + 12).unwrap_or(0),
                load_addr: word(off + 16).unwrap_or(0),
                load_end_addr: word(off + 20).unwrap_or(0),
                bss_end_addr: word(off + 24).unwrap_or(0),
                entry_addr: word(off + 28).unwrap_or(0),
            })
        })
}

pub fn load(
    mem: &GuestMemoryMmap,
    kernel: &[u8],
    p: &BootParams<'_>,
    template: &VcpuTemplate,
) -> Result<VcpuBootState, BootError> {
    let h = find_header(kernel).ok_or(BootError::NotAKernel)?;
    if h.flags & 0xffff & !KNOWN_REQUIRED != 0 {
        return Err(BootError::Unsupported(format!(
            "multiboot header requires features {:#x}",
            h.flags & 0xffff & !KNOWN_REQUIRED
        )));
    }
    let (entry, kernel_end) = if h.flags & FLAG_AOUT_KLUDGE != 0 {
        // Load addresses from the header: file offset of load_addr is
        // offset - (header_addr - load_addr).
        let delta =
            h.header_addr.checked_sub(h.load_addr).ok_or_else(|| {
                BootError::Unsupported("multiboot header_addr below load_addr".into())
            })? as usize;
        let start = h.offset.checked_sub(delta).ok_or_else(|| {
            BootError::Truncated("multiboot load area before start of file".into())
        })?;
        let len = if h.load_end_addr == 0 {
            kernel.len() - start
        } else {
            h.load_end_addr.saturating_sub(h.load_addr) as usize
        };
        let data = kernel
            .get(start..start + len)
            .ok_or_else(|| BootError::Truncated(format!("multiboot load area ({len} bytes)")))?;
        write(mem, u64::from(h.load_addr), data, "kernel")?;
        let end = u64::from(h.load_addr) + len as u64;
        let bss_end = u64::from(h.bss_end_addr).max(end);
        zero(mem, end, bss_end - end, "kernel bss")?;
        (u64::from(h.entry_addr), bss_end)
    } else {
        let img = elf::parse(kernel)?;
        let end = load_elf_segments(mem, kernel, &img)?;
        (img.entry & 0xffff_ffff, end)
    };

    let mut flags: u32 = 1 | (1 << 2) | (1 << 6) | (1 << 9);
    let mut info = vec![0u8; 0x58];
    let low_kib = p
        .memmap
        .iter()
        .find(|e| e.addr == 0 && e.kind == 1)
        .map_or(640, |e| (e.size / 1024).min(640));
    let upper_kib = p
        .memmap
        .iter()
        .find(|e| e.addr <= 0x10_0000 && e.addr + e.size > 0x10_0000 && e.kind == 1)
        .map_or(0, |e| (e.addr + e.size - 0x10_0000) / 1024);
    put(&mut info, 4, low_kib as u32);
    put(&mut info, 8, upper_kib.min(u64::from(u32::MAX)) as u32);
    put(&mut info, 12, 0xffff_ffff); // boot_device: none
    put(&mut info, 16, CMDLINE_ADDR as u32);
    if let Some(initrd) = p.initrd {
        let addr = place_initrd(
            initrd.len() as u64,
            p.low_ram_end,
            u64::from(u32::MAX),
            kernel_end,
        )?;
        write(mem, addr, initrd, "module")?;
        let mut m = Vec::new();
        for v in [addr as u32, (addr + initrd.len() as u64) as u32, 0, 0] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        write(mem, MODS_ADDR, &m, "multiboot module list")?;
        flags |= 1 << 3;
        put(&mut info, 20, 1);
        put(&mut info, 24, MODS_ADDR as u32);
    }
    let mut mm = Vec::new();
    for e in p.memmap {
        mm.extend_from_slice(&20u32.to_le_bytes());
        mm.extend_from_slice(&e.addr.to_le_bytes());
        mm.extend_from_slice(&e.size.to_le_bytes());
        mm.extend_from_slice(&e.kind.to_le_bytes());
    }
    write(mem, MMAP_ADDR, &mm, "multiboot memory map")?;
    put(&mut info, 44, mm.len() as u32);
    put(&mut info, 48, MMAP_ADDR as u32);
    write(mem, LOADER_NAME_ADDR, b"troupe\0", "boot loader name")?;
    put(&mut info, 64, LOADER_NAME_ADDR as u32);
    put(&mut info, 0, flags);
    write(mem, BOOT_INFO_ADDR, &info, "multiboot info")?;

    let mut s = template.protected_mode(entry, GDT_ADDR, true);
    s.regs.rax = u64::from(BOOTLOADER_MAGIC);
    s.regs.rbx = BOOT_INFO_ADDR;
    Ok(s)
}

fn put(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_needs_a_valid_checksum() {
        let mut k = vec![0u8; 64];
        let flags = 3u32;
        k[8..12].copy_from_slice(&MAGIC.to_le_bytes());
        k[12..16].copy_from_slice(&flags.to_le_bytes());
        k[16..20].copy_from_slice(&(0u32.wrapping_sub(MAGIC).wrapping_sub(flags)).to_le_bytes());
        assert_eq!(find_header(&k).unwrap().offset, 8);
        k[16] ^= 1;
        assert!(find_header(&k).is_none());
    }
}
