//! PVH boot (Xen's `hvm_start_info`, version 1): the BSP enters the ELF's PHYS32_ENTRY in
//! 32-bit flat protected mode with paging off and EBX pointing at the start info.

use actors::vcpu::VcpuBootState;
use devices::memory::GuestMemoryMmap;

use super::{
    elf, load_elf_segments, place_initrd, write, BootError, BootParams, BOOT_INFO_ADDR,
    CMDLINE_ADDR, GDT_ADDR,
};
use crate::vm::regs::VcpuTemplate;

const START_INFO_MAGIC: u32 = 0x336e_c578;
const START_INFO_SIZE: u64 = 56;
const MODLIST_ADDR: u64 = BOOT_INFO_ADDR + 0x100;
const MEMMAP_ADDR: u64 = BOOT_INFO_ADDR + 0x200;
const MAX_MEMMAP: usize = 128;

pub fn load(
    mem: &GuestMemoryMmap,
    kernel: &[u8],
    p: &BootParams<'_>,
    template: &VcpuTemplate,
) -> Result<VcpuBootState, BootError> {
    let img = elf::parse(kernel)?;
    let entry = img
        .pvh_entry
        .ok_or_else(|| BootError::Unsupported("no PVH entry note".into()))?;
    let kernel_end = load_elf_segments(mem, kernel, &img)?;

    let mut nr_modules = 0u32;
    if let Some(initrd) = p.initrd {
        let addr = place_initrd(
            initrd.len() as u64,
            p.low_ram_end,
            u64::from(u32::MAX),
            kernel_end,
        )?;
        write(mem, addr, initrd, "initrd")?;
        let mut m = Vec::with_capacity(32);
        m.extend_from_slice(&addr.to_le_bytes());
        m.extend_from_slice(&(initrd.len() as u64).to_le_bytes());
        m.extend_from_slice(&0u64.to_le_bytes());
        m.extend_from_slice(&0u64.to_le_bytes());
        write(mem, MODLIST_ADDR, &m, "PVH module list")?;
        nr_modules = 1;
    }

    let entries = &p.memmap[..p.memmap.len().min(MAX_MEMMAP)];
    let mut mm = Vec::with_capacity(entries.len() * 24);
    for e in entries {
        mm.extend_from_slice(&e.addr.to_le_bytes());
        mm.extend_from_slice(&e.size.to_le_bytes());
        mm.extend_from_slice(&e.kind.to_le_bytes());
        mm.extend_from_slice(&0u32.to_le_bytes());
    }
    write(mem, MEMMAP_ADDR, &mm, "PVH memory map")?;

    let mut si = Vec::with_capacity(START_INFO_SIZE as usize);
    si.extend_from_slice(&START_INFO_MAGIC.to_le_bytes());
    si.extend_from_slice(&1u32.to_le_bytes()); // version
    si.extend_from_slice(&0u32.to_le_bytes()); // flags
    si.extend_from_slice(&nr_modules.to_le_bytes());
    si.extend_from_slice(&(if nr_modules > 0 { MODLIST_ADDR } else { 0 }).to_le_bytes());
    si.extend_from_slice(&CMDLINE_ADDR.to_le_bytes());
    si.extend_from_slice(&p.rsdp.unwrap_or(0).to_le_bytes());
    si.extend_from_slice(&MEMMAP_ADDR.to_le_bytes());
    si.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    si.extend_from_slice(&0u32.to_le_bytes());
    write(mem, BOOT_INFO_ADDR, &si, "PVH start info")?;

    let mut s = template.protected_mode(entry, GDT_ADDR, true);
    s.regs.rbx = BOOT_INFO_ADDR;
    Ok(s)
}
