//! TEMPORARY e820 until `tables` lands.

use crate::boot::MemEntry;
use crate::vm::memory::RamLayout;

pub fn e820(l: &RamLayout) -> Vec<MemEntry> {
    let mut v = vec![
        MemEntry {
            addr: 0,
            size: 0x9fc00,
            kind: 1,
        },
        MemEntry {
            addr: 0x9fc00,
            size: 0x400,
            kind: 2,
        },
        MemEntry {
            addr: 0xf0000,
            size: 0x10000,
            kind: 2,
        },
        MemEntry {
            addr: 0x10_0000,
            size: l.below_4g - 0x10_0000,
            kind: 1,
        },
    ];
    if l.above_4g > 0 {
        v.push(MemEntry {
            addr: 1 << 32,
            size: l.above_4g,
            kind: 1,
        });
    }
    v
}
