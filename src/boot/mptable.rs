//! The Intel MultiProcessor Specification 1.4 table for direct boot: how OSes (and our test
//! guests) without ACPI find the CPUs, the I/O APIC and the ISA interrupt wiring. Placed in
//! the BIOS area (0xF0000–0xFFFFF) where the spec says to scan for the `_MP_` floating
//! pointer; the ACPI tables describe the same machine.

use devices::memory::GuestMemoryMmap;

use super::{write, BootError};

/// Where the floating pointer and configuration table go.
pub const MPTABLE_ADDR: u64 = 0xf_0000;
const LAPIC_ADDR: u32 = 0xfee0_0000;
const IOAPIC_ADDR: u32 = 0xfec0_0000;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// ISA IRQs routed through the I/O APIC (IRQ 2 is the cascade; IRQ 0 goes to pin 2).
const ISA_IRQS: u8 = 16;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Build the floating pointer + configuration table for CPUs with these APIC ids (the
/// first is the BSP), to be placed at `addr`.
pub fn build(apic_ids: &[u32], addr: u64) -> Vec<u8> {
    let ioapic_id = apic_ids
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .saturating_add(1)
        .min(0xfe) as u8;
    let mut entries = Vec::new();
    let mut count = 0u16;
    for (i, id) in apic_ids.iter().enumerate() {
        let mut e = [0u8; 20];
        e[0] = 0; // processor
        e[1] = *id as u8;
        e[2] = APIC_VERSION;
        e[3] = 1 | if i == 0 { 2 } else { 0 }; // enabled, BSP
        e[4..8].copy_from_slice(&0x600u32.to_le_bytes()); // family 6 signature
        e[8..12].copy_from_slice(&0x201u32.to_le_bytes()); // FPU, APIC
        entries.extend_from_slice(&e);
        count += 1;
    }
    // Bus 0: ISA.
    entries.extend_from_slice(&[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    count += 1;
    // The I/O APIC.
    let mut io = [2, ioapic_id, IOAPIC_VERSION, 1, 0, 0, 0, 0];
    io[4..8].copy_from_slice(&IOAPIC_ADDR.to_le_bytes());
    entries.extend_from_slice(&io);
    count += 1;
    // ISA IRQs: conforming polarity/trigger, IRQ0 → pin 2, others identity (skip 2).
    for irq in 0..ISA_IRQS {
        if irq == 2 {
            continue;
        }
        let pin = if irq == 0 { 2 } else { irq };
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, pin]);
        count += 1;
    }
    // LINT0: ExtINT from the PIC; LINT1: NMI; to every local APIC.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = addr + 16;
    let mut hdr = vec![0u8; 44];
    hdr[0..4].copy_from_slice(b"PCMP");
    hdr[4..6].copy_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    hdr[6] = 4; // spec 1.4
    hdr[8..16].copy_from_slice(b"TROUPE  ");
    hdr[16..28].copy_from_slice(b"PC          ");
    hdr[34..36].copy_from_slice(&count.to_le_bytes());
    hdr[36..40].copy_from_slice(&LAPIC_ADDR.to_le_bytes());
    let mut table = hdr;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = [0u8; 16];
    fp[0..4].copy_from_slice(b"_MP_");
    fp[4..8].copy_from_slice(&(table_addr as u32).to_le_bytes());
    fp[8] = 1; // length in 16-byte units
    fp[9] = 4;
    fp[10] = checksum(&fp);
    let mut out = fp.to_vec();
    out.extend_from_slice(&table);
    out
}

/// Write the MP table for these CPUs at [`MPTABLE_ADDR`].
pub fn write_mptable(mem: &GuestMemoryMmap, apic_ids: &[u32]) -> Result<(), BootError> {
    write(
        mem,
        MPTABLE_ADDR,
        &build(apic_ids, MPTABLE_ADDR),
        "MP table",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_processor_entries() {
        let t = build(&[0, 1, 2, 4], MPTABLE_ADDR);
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(sum(&t[..16]), 0);
        let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
        let cfg = &t[(ptr - MPTABLE_ADDR) as usize..];
        let len = u16::from_le_bytes([cfg[4], cfg[5]]) as usize;
        assert_eq!(&cfg[0..4], b"PCMP");
        assert_eq!(sum(&cfg[..len]), 0);
        let procs: Vec<(u8, u8)> = cfg[44..]
            .chunks(20)
            .take(4)
            .map(|e| {
                assert_eq!(e[0], 0);
                (e[1], e[3])
            })
            .collect();
        assert_eq!(procs, vec![(0, 3), (1, 1), (2, 1), (4, 1)]);
    }
}
