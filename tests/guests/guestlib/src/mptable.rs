//! Intel MultiProcessor Specification 1.4 tables: the `_MP_` floating pointer (EBDA's
//! first KiB, the last KiB of base memory, 0xF0000..0xFFFFF; §4) and the `PCMP`
//! configuration table's processor entries (§4.3.1), for machines without ACPI.

use crate::acpi::{new_list, CpuList, CpuSource};
use crate::phys::{read_u16, read_u32, read_u8};

fn checksum_ok(addr: u64, len: u64) -> bool {
    (0..len).fold(0u8, |s, i| s.wrapping_add(read_u8(addr + i))) == 0
}

fn scan(start: u64, len: u64) -> Option<u64> {
    (start..start + len).step_by(16).find(|&a| {
        read_u32(a) == u32::from_le_bytes(*b"_MP_") && {
            let l = read_u8(a + 8) as u64 * 16;
            l >= 16 && checksum_ok(a, l)
        }
    })
}

/// Physical address of a valid MP floating pointer structure.
pub fn find_floating_pointer() -> Option<u64> {
    let ebda = (read_u16(0x40E) as u64) << 4;
    if (0x80000..0xA0000).contains(&ebda) {
        if let Some(a) = scan(ebda, 1024) {
            return Some(a);
        }
    }
    let base_kib = read_u16(0x413) as u64;
    if (512..=640).contains(&base_kib) {
        if let Some(a) = scan(base_kib * 1024 - 1024, 1024) {
            return Some(a);
        }
    }
    scan(0xF0000, 0x10000)
}

/// Enabled processors from the MP configuration table.
pub fn cpus() -> Option<CpuList> {
    let fp = find_floating_pointer()?;
    let table = read_u32(fp + 4) as u64;
    if table == 0 || read_u32(table) != u32::from_le_bytes(*b"PCMP") {
        return None;
    }
    let len = read_u16(table + 4) as u64;
    if len < 44 || !checksum_ok(table, len) {
        return None;
    }
    let count = read_u16(table + 34);
    let mut list = new_list(CpuSource::MpTable, read_u32(table + 36) as u64);
    let mut off = 44;
    for _ in 0..count {
        if off >= len {
            break;
        }
        let e = table + off;
        match read_u8(e) {
            0 => {
                if off + 20 > len {
                    break;
                }
                if read_u8(e + 3) & 1 != 0 {
                    list.push(read_u8(e + 1) as u32);
                }
                off += 20;
            }
            1..=4 => off += 8,
            _ => break,
        }
    }
    Some(list)
}
