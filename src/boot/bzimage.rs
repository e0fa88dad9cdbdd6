//! Linux bzImage, 64-bit boot protocol (Documentation/x86/boot.rst): troupe fills the zero
//! page (`boot_params`: setup header, command line, initrd, e820, RSDP), builds identity
//! page tables for the first 4 GiB, and starts the BSP in long mode with RSI pointing at the
//! zero page.
//!
//! Fast path: on this kind of host the guest's ring-0 code is emulated, and a kernel's own
//! decompressor takes many minutes to unpack an xz payload. When the payload is gzip, xz or
//! zstd, troupe decompresses it on the host and loads the resulting `vmlinux` ELF at its
//! physical addresses, entering `startup_64` directly (what Firecracker does with an
//! uncompressed kernel). Otherwise — or if that fails — the protected-mode image is copied
//! to 1 MiB and entered at its 64-bit entry (load address + 0x200) so the guest
//! decompresses itself.

use actors::vcpu::VcpuBootState;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::ByteValued;

use super::{
    place_initrd, write, BootError, BootParams, BOOT_INFO_ADDR, CMDLINE_ADDR, CMDLINE_MAX,
    GDT_ADDR, HIGH_MEMORY, PAGE_TABLES_ADDR,
};
use crate::vm::regs::VcpuTemplate;
use devices::memory::GuestMemoryMmap;

const SETUP_HEADER_OFFSET: usize = 0x1f1;
const HDRS: u32 = 0x5372_6448; // "HdrS"
const XLF_KERNEL_64: u16 = 1;
const LOADFLAGS_LOADED_HIGH: u8 = 0x01;
const LOADFLAGS_CAN_USE_HEAP: u8 = 0x80;
const E820_MAX: usize = 128;

pub fn is_bzimage(k: &[u8]) -> bool {
    k.get(0x202..0x206)
        .is_some_and(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()) == HDRS)
}

fn header(k: &[u8]) -> Result<setup_header, BootError> {
    let size = std::mem::size_of::<setup_header>();
    let bytes = k
        .get(SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + size)
        .ok_or_else(|| BootError::Truncated("Linux setup header".into()))?;
    setup_header::from_slice(bytes)
        .copied()
        .ok_or_else(|| BootError::Truncated("Linux setup header".into()))
}

pub fn load(
    mem: &GuestMemoryMmap,
    kernel: &[u8],
    p: &BootParams<'_>,
    template: &VcpuTemplate,
) -> Result<VcpuBootState, BootError> {
    let mut hdr = header(kernel)?;
    if hdr.version < 0x020c || hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::Unsupported(format!(
            "Linux boot protocol {}.{:02} without a 64-bit entry point (needs 2.12+)",
            hdr.version >> 8,
            hdr.version & 0xff
        )));
    }
    let setup_sects = if hdr.setup_sects == 0 {
        4
    } else {
        hdr.setup_sects as usize
    };
    let pm_offset = (setup_sects + 1) * 512;
    let pm = kernel
        .get(pm_offset..)
        .filter(|b| !b.is_empty())
        .ok_or_else(|| BootError::Truncated("Linux protected-mode kernel".into()))?;
    let (entry, kernel_end) = match host_decompressed_vmlinux(pm, &hdr) {
        Some(vmlinux) => load_vmlinux(mem, &vmlinux)?,
        None => {
            let load_addr = if hdr.relocatable_kernel == 0 && hdr.pref_address >= HIGH_MEMORY {
                hdr.pref_address
            } else {
                HIGH_MEMORY
            };
            write(mem, load_addr, pm, "kernel")?;
            (
                load_addr + 0x200,
                load_addr + (pm.len() as u64).max(u64::from(hdr.init_size)),
            )
        }
    };

    hdr.type_of_loader = 0xff;
    hdr.loadflags |= LOADFLAGS_LOADED_HIGH | LOADFLAGS_CAN_USE_HEAP;
    hdr.heap_end_ptr = 0xfe00;
    hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    hdr.cmdline_size = (p.cmdline.len() + 1).min(CMDLINE_MAX) as u32;
    hdr.vid_mode = 0xffff;
    if let Some(initrd) = p.initrd {
        let max = if hdr.initrd_addr_max == 0 {
            0x37ff_ffff
        } else {
            u64::from(hdr.initrd_addr_max)
        };
        let addr = place_initrd(initrd.len() as u64, p.low_ram_end, max + 1, kernel_end)?;
        write(mem, addr, initrd, "initrd")?;
        hdr.ramdisk_image = addr as u32;
        hdr.ramdisk_size = initrd.len() as u32;
    }

    let mut zp = boot_params {
        hdr,
        ..Default::default()
    };
    for (i, e) in p.memmap.iter().take(E820_MAX).enumerate() {
        zp.e820_table[i] = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    zp.e820_entries = p.memmap.len().min(E820_MAX) as u8;
    zp.acpi_rsdp_addr = p.rsdp.unwrap_or(0);
    write(mem, BOOT_INFO_ADDR, zp.as_slice(), "Linux zero page")?;

    write_identity_page_tables(mem)?;
    let mut s = template.long_mode(entry, GDT_ADDR, PAGE_TABLES_ADDR, true);
    s.regs.rsi = BOOT_INFO_ADDR;
    Ok(s)
}

/// Largest decompressed kernel troupe will produce (a guard against decompression bombs).
const MAX_VMLINUX: u64 = 512 << 20;

/// The payload (protocol 2.08+: `payload_offset`/`payload_length` inside the protected-mode
/// image) decompressed on the host, if it is a format troupe reads and an ELF comes out.
fn host_decompressed_vmlinux(pm: &[u8], hdr: &setup_header) -> Option<Vec<u8>> {
    use std::io::Read;
    if hdr.version < 0x0208 || hdr.payload_length == 0 {
        return None;
    }
    let start = hdr.payload_offset as usize;
    let payload = pm.get(start..start.checked_add(hdr.payload_length as usize)?)?;
    let mut out = Vec::new();
    let ok = if payload.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(payload)
            .take(MAX_VMLINUX)
            .read_to_end(&mut out)
            .is_ok()
    } else if payload.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        // The kernel build appends the uncompressed size (4 bytes) after the xz stream.
        // The kernel's xz streams use the x86 BCJ filter; liblzma reads them. The build
        // appends the uncompressed size after the stream, which the decoder ignores.
        let mut d = xz2::read::XzDecoder::new(payload).take(MAX_VMLINUX);
        d.read_to_end(&mut out).is_ok() || !out.is_empty()
    } else if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        ruzstd::decoding::StreamingDecoder::new(payload)
            .map(|d| d.take(MAX_VMLINUX).read_to_end(&mut out).is_ok())
            .unwrap_or(false)
    } else {
        false
    };
    if !ok || !super::elf::is_elf(&out) {
        if !out.is_empty() || ok {
            tracing::debug!("bzImage payload did not decompress to an ELF; the guest will");
        }
        return None;
    }
    Some(out)
}

/// Load a decompressed `vmlinux` at its physical addresses; returns (physical entry of
/// `startup_64`, end of the image).
fn load_vmlinux(mem: &GuestMemoryMmap, vmlinux: &[u8]) -> Result<(u64, u64), BootError> {
    let img = super::elf::parse(vmlinux)?;
    let end = super::load_elf_segments(mem, vmlinux, &img)?;
    // vmlinux's e_entry is the physical address of startup_64 (ENTRY(phys_startup_64)).
    Ok((img.entry, end))
}

/// Identity-map the first 4 GiB with 2 MiB pages: PML4 at 0x9000, PDPT at 0xa000, four
/// page directories at 0xb000..0xefff (the BOOT_INFO/page-table area stays below the
/// EBDA).
fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    let pml4 = PAGE_TABLES_ADDR;
    let pdpt = pml4 + 0x1000;
    let pd = pdpt + 0x1000; // 4 page directories: 0xb000..0xefff
    write(mem, pml4, &(pdpt | 0x3).to_le_bytes(), "page tables")?;
    let mut pdpt_bytes = Vec::with_capacity(32);
    for i in 0..4u64 {
        pdpt_bytes.extend_from_slice(&((pd + i * 0x1000) | 0x3).to_le_bytes());
    }
    write(mem, pdpt, &pdpt_bytes, "page tables")?;
    let mut pd_bytes = Vec::with_capacity(4 * 4096);
    for i in 0..(4 * 512u64) {
        pd_bytes.extend_from_slice(&((i << 21) | 0x83).to_le_bytes());
    }
    write(mem, pd, &pd_bytes, "page tables")
}
