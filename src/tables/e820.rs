//! The memory map handed to directly booted kernels (e820 / PVH memmap / multiboot mmap),
//! shaped like what SeaBIOS reports on QEMU's `pc`.

use crate::boot::MemEntry;
use crate::vm::kvm::IDENTITY_MAP_ADDR;
use crate::vm::memory::{RamLayout, HIGH_RAM_START};

pub const RAM: u32 = 1;
pub const RESERVED: u32 = 2;

/// Where direct boot keeps its firmware tables (RSDP, ACPI, MP table): the BIOS area.
pub const TABLES_AREA: (u64, u64) = (0xe_0000, 0x10_0000);

pub fn e820(layout: &RamLayout) -> Vec<MemEntry> {
    let mut v = vec![
        MemEntry {
            addr: 0,
            size: 0x9_fc00,
            kind: RAM,
        },
        MemEntry {
            addr: 0x9_fc00,
            size: 0x400,
            kind: RESERVED,
        },
        MemEntry {
            addr: TABLES_AREA.0,
            size: TABLES_AREA.1 - TABLES_AREA.0,
            kind: RESERVED,
        },
        MemEntry {
            addr: 0x10_0000,
            size: layout.below_4g - 0x10_0000,
            kind: RAM,
        },
        MemEntry {
            addr: IDENTITY_MAP_ADDR,
            size: 0x4000,
            kind: RESERVED,
        },
    ];
    if layout.above_4g > 0 {
        v.push(MemEntry {
            addr: HIGH_RAM_START,
            size: layout.above_4g,
            kind: RAM,
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_for_small_and_large_guests() {
        let m = e820(&RamLayout::pc(128 << 20));
        assert_eq!(m[3].addr + m[3].size, 128 << 20);
        assert_eq!(m.iter().filter(|e| e.kind == RAM).count(), 2);
        let m = e820(&RamLayout::pc(8 << 30));
        let high = m.last().unwrap();
        assert_eq!((high.addr, high.size), (1 << 32, 5 << 30));
        // No two entries overlap.
        let mut s = m.clone();
        s.sort_by_key(|e| e.addr);
        for w in s.windows(2) {
            assert!(w[0].addr + w[0].size <= w[1].addr, "{w:?}");
        }
    }
}
