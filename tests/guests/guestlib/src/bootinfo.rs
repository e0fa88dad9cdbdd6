//! What the loader told us: boot protocol, command line, memory map and (PVH) the RSDP.
//! Parsed once on the BSP in ring 3 and copied, so low memory can be reused afterwards
//! (the AP trampoline overwrites 0x8000).
//!
//! PVH (xen/include/public/arch-x86/hvm/start_info.h): EBX → `hvm_start_info`, magic
//! 0x336ec578; multiboot 1: EAX = 0x2BADB002, EBX → `multiboot_info`.

use crate::phys;

const PVH_MAGIC: u32 = 0x336E_C578;
const MULTIBOOT_MAGIC: u32 = 0x2BAD_B002;
const MAX_CMDLINE: usize = 1024;
/// Most memory-map entries kept.
pub const MAX_MEMMAP: usize = 64;

/// How we were booted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Pvh,
    Multiboot,
    /// Neither magic matched: no command line or memory map.
    Unknown,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Pvh => "pvh",
            Protocol::Multiboot => "multiboot",
            Protocol::Unknown => "unknown",
        }
    }
}

/// One memory-map entry (E820 types: 1 = usable RAM).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemRegion {
    pub base: u64,
    pub len: u64,
    pub kind: u32,
}

/// E820 type of usable RAM.
pub const MEM_USABLE: u32 = 1;

/// Boot information, owned (copied out of loader memory).
pub struct BootInfo {
    protocol: Protocol,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    memmap: [MemRegion; MAX_MEMMAP],
    memmap_len: usize,
    rsdp: u64,
    /// Multiboot mem_lower/mem_upper in KiB when the loader gave no memory map.
    mem_kib: Option<(u32, u32)>,
}

impl BootInfo {
    /// Reads what the loader left in EAX/EBX at the 32-bit entry.
    pub fn from_loader() -> BootInfo {
        let (eax, ebx) = crate::boot::boot_registers();
        let mut info = BootInfo {
            protocol: Protocol::Unknown,
            cmdline: [0; MAX_CMDLINE],
            cmdline_len: 0,
            memmap: [MemRegion::default(); MAX_MEMMAP],
            memmap_len: 0,
            rsdp: 0,
            mem_kib: None,
        };
        let ptr = ebx as u64;
        // PVH first: qboot (QEMU microvm's firmware) enters PVH kernels with EAX still
        // holding the multiboot magic.
        if ptr != 0 && phys::read_u32(ptr) == PVH_MAGIC {
            info.protocol = Protocol::Pvh;
            info.parse_pvh(ptr);
        } else if eax == MULTIBOOT_MAGIC && ptr != 0 {
            info.protocol = Protocol::Multiboot;
            info.parse_multiboot(ptr);
        }
        info
    }

    fn parse_pvh(&mut self, si: u64) {
        let version = phys::read_u32(si + 4);
        let cmdline = phys::read_u64(si + 24);
        self.rsdp = phys::read_u64(si + 32);
        if cmdline != 0 {
            self.copy_cmdline(cmdline);
        }
        if version >= 1 {
            let map = phys::read_u64(si + 40);
            let entries = phys::read_u32(si + 48) as usize;
            if map != 0 {
                for i in 0..entries.min(MAX_MEMMAP) {
                    let e = map + 24 * i as u64;
                    self.push_region(MemRegion {
                        base: phys::read_u64(e),
                        len: phys::read_u64(e + 8),
                        kind: phys::read_u32(e + 16),
                    });
                }
            }
        }
    }

    fn parse_multiboot(&mut self, mbi: u64) {
        let flags = phys::read_u32(mbi);
        if flags & (1 << 0) != 0 {
            self.mem_kib = Some((phys::read_u32(mbi + 4), phys::read_u32(mbi + 8)));
        }
        if flags & (1 << 2) != 0 {
            let cmdline = phys::read_u32(mbi + 16) as u64;
            if cmdline != 0 {
                self.copy_cmdline(cmdline);
            }
        }
        if flags & (1 << 6) != 0 {
            let len = phys::read_u32(mbi + 44) as u64;
            let addr = phys::read_u32(mbi + 48) as u64;
            let mut off = 0;
            while off + 24 <= len && self.memmap_len < MAX_MEMMAP {
                let e = addr + off;
                let size = phys::read_u32(e) as u64;
                self.push_region(MemRegion {
                    base: phys::read_u64(e + 4),
                    len: phys::read_u64(e + 12),
                    kind: phys::read_u32(e + 20),
                });
                off += size + 4;
                if size == 0 {
                    break;
                }
            }
        }
    }

    fn copy_cmdline(&mut self, addr: u64) {
        let mut n = 0;
        while n < MAX_CMDLINE {
            let b = phys::read_u8(addr + n as u64);
            if b == 0 {
                break;
            }
            self.cmdline[n] = b;
            n += 1;
        }
        // Keep only a valid UTF-8 prefix.
        self.cmdline_len = match core::str::from_utf8(&self.cmdline[..n]) {
            Ok(_) => n,
            Err(e) => e.valid_up_to(),
        };
    }

    fn push_region(&mut self, r: MemRegion) {
        if self.memmap_len < MAX_MEMMAP {
            self.memmap[self.memmap_len] = r;
            self.memmap_len += 1;
        }
    }

    /// The boot protocol that started us.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The kernel command line (`-append`), possibly empty.
    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }

    /// The value of `key=value` on the command line (the last one wins); `Some("")` for a
    /// bare `key`.
    pub fn arg(&self, key: &str) -> Option<&str> {
        crate::args::lookup(self.cmdline(), key)
    }

    /// `key=N` parsed as an unsigned number (decimal, or hex with `0x`).
    pub fn arg_u64(&self, key: &str) -> Option<u64> {
        self.arg(key).and_then(crate::args::parse_u64)
    }

    /// The memory map (empty if the loader gave none).
    pub fn memmap(&self) -> &[MemRegion] {
        &self.memmap[..self.memmap_len]
    }

    /// RSDP address from PVH start_info, if the loader gave one.
    pub fn rsdp_hint(&self) -> Option<u64> {
        (self.rsdp != 0).then_some(self.rsdp)
    }

    /// Usable RAM in bytes: the sum of the usable regions, or multiboot's
    /// mem_lower + mem_upper when there is no map.
    pub fn usable_bytes(&self) -> u64 {
        if self.memmap_len > 0 {
            self.memmap()
                .iter()
                .filter(|r| r.kind == MEM_USABLE)
                .map(|r| r.len)
                .sum()
        } else if let Some((lo, hi)) = self.mem_kib {
            (lo as u64 + hi as u64) * 1024
        } else {
            0
        }
    }

    /// Guest RAM size in MiB as a user would state it (`-m`): usable RAM below 4 GiB counted
    /// up to its highest address rounded up to 2 MiB (firmware and the PCI hole take bits of
    /// it), plus usable RAM above 4 GiB.
    pub fn ram_mib(&self) -> u64 {
        const FOUR_GIB: u64 = 1 << 32;
        const TWO_MIB: u64 = 2 << 20;
        if self.memmap_len == 0 {
            return self.usable_bytes().div_ceil(1 << 20);
        }
        let mut low_top = 0;
        let mut high = 0;
        for r in self.memmap().iter().filter(|r| r.kind == MEM_USABLE) {
            let end = r.base.saturating_add(r.len);
            if r.base >= FOUR_GIB {
                high += r.len;
            } else {
                low_top = low_top.max(end.min(FOUR_GIB));
                if end > FOUR_GIB {
                    high += end - FOUR_GIB;
                }
            }
        }
        (low_top.div_ceil(TWO_MIB) * TWO_MIB + high) >> 20
    }
}
