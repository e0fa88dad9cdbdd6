//! ACPI discovery from ring 3: the RSDP (PVH start_info's pointer, else the EBDA's first
//! KiB and 0xE0000..0xFFFFF per ACPI 6.5 §5.2.5.1), the RSDT/XSDT, and the MADT's enabled
//! local APICs (§5.2.12). Falls back to the Intel MP table when there is no MADT.

use crate::bootinfo::BootInfo;
use crate::phys::{read_u16, read_u32, read_u64, read_u8};

/// Largest table we are willing to walk (bounds loops on garbage).
const MAX_TABLE_LEN: u32 = 1 << 20;
/// Most CPUs a [`CpuList`] records.
pub const MAX_LISTED_CPUS: usize = 256;

/// Where the CPU list came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuSource {
    Madt,
    MpTable,
    /// No table found: the BSP alone.
    None,
}

impl CpuSource {
    pub fn name(self) -> &'static str {
        match self {
            CpuSource::Madt => "madt",
            CpuSource::MpTable => "mptable",
            CpuSource::None => "none",
        }
    }
}

/// Enabled CPUs (APIC ids in table order) and the local APIC's address.
#[derive(Clone)]
pub struct CpuList {
    pub source: CpuSource,
    pub lapic_base: u64,
    ids: [u32; MAX_LISTED_CPUS],
    len: usize,
}

impl CpuList {
    fn new(source: CpuSource, lapic_base: u64) -> CpuList {
        CpuList {
            source,
            lapic_base,
            ids: [0; MAX_LISTED_CPUS],
            len: 0,
        }
    }

    pub(crate) fn push(&mut self, id: u32) {
        if self.len < MAX_LISTED_CPUS && !self.ids().contains(&id) {
            self.ids[self.len] = id;
            self.len += 1;
        }
    }

    /// APIC ids in table order; a CPU's index is its position here.
    pub fn ids(&self) -> &[u32] {
        &self.ids[..self.len]
    }

    /// Number of enabled CPUs.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A list of these APIC ids (a CPU learnt of some other way, such as ACPI CPU hotplug),
    /// to start with [`crate::smp::start_aps`].
    pub fn of_ids(ids: &[u32]) -> CpuList {
        let mut l = CpuList::new(CpuSource::None, 0xfee0_0000);
        for &id in ids {
            l.push(id);
        }
        l
    }

    /// Index of `apic_id` in the list.
    pub fn index_of(&self, apic_id: u32) -> Option<usize> {
        self.ids().iter().position(|&i| i == apic_id)
    }
}

/// The CPUs from the MADT, else the MP table, else just the BSP.
pub fn discover_cpus(boot: &BootInfo) -> CpuList {
    if let Some(rsdp) = find_rsdp(boot.rsdp_hint()) {
        if let Some(madt) = find_table(rsdp, b"APIC") {
            let list = madt_cpus(madt);
            if !list.is_empty() {
                return list;
            }
        }
    }
    if let Some(list) = crate::mptable::cpus() {
        if !list.is_empty() {
            return list;
        }
    }
    let mut list = CpuList::new(CpuSource::None, 0xFEE0_0000);
    list.push(crate::cpu::apic_id());
    list
}

fn checksum_ok(addr: u64, len: u32) -> bool {
    let mut sum = 0u8;
    for i in 0..len as u64 {
        sum = sum.wrapping_add(read_u8(addr + i));
    }
    sum == 0
}

fn signature_at(addr: u64, sig: &[u8]) -> bool {
    sig.iter()
        .enumerate()
        .all(|(i, &b)| read_u8(addr + i as u64) == b)
}

fn rsdp_valid(addr: u64) -> bool {
    if !signature_at(addr, b"RSD PTR ") || !checksum_ok(addr, 20) {
        return false;
    }
    if read_u8(addr + 15) >= 2 {
        let len = read_u32(addr + 20);
        if !(36..=4096).contains(&len) || !checksum_ok(addr, len) {
            return false;
        }
    }
    true
}

fn scan_rsdp(start: u64, len: u64) -> Option<u64> {
    (start..start + len).step_by(16).find(|&a| rsdp_valid(a))
}

/// Physical address of a valid RSDP.
pub fn find_rsdp(hint: Option<u64>) -> Option<u64> {
    if let Some(h) = hint {
        if h < (1 << 32) && rsdp_valid(h) {
            return Some(h);
        }
    }
    let ebda = (read_u16(0x40E) as u64) << 4;
    if (0x80000..0xA0000).contains(&ebda) {
        if let Some(a) = scan_rsdp(ebda, 1024) {
            return Some(a);
        }
    }
    scan_rsdp(0xE0000, 0x20000)
}

/// Length of the SDT at `addr` if its header and checksum look right.
fn sdt_len(addr: u64) -> Option<u32> {
    if addr == 0 || addr >= (1 << 32) {
        return None;
    }
    let len = read_u32(addr + 4);
    (36..=MAX_TABLE_LEN)
        .contains(&len)
        .then_some(len)
        .filter(|&l| checksum_ok(addr, l))
}

/// Finds the table with signature `sig` through the XSDT (ACPI 2+) or the RSDT.
pub fn find_table(rsdp: u64, sig: &[u8; 4]) -> Option<u64> {
    let revision = read_u8(rsdp + 15);
    let xsdt = if revision >= 2 {
        read_u64(rsdp + 24)
    } else {
        0
    };
    let (root, entry) = if xsdt != 0 && sdt_len(xsdt).is_some() {
        (xsdt, 8u64)
    } else {
        (read_u32(rsdp + 16) as u64, 4u64)
    };
    let len = sdt_len(root)? as u64;
    let mut off = 36;
    while off + entry <= len {
        let t = if entry == 8 {
            read_u64(root + off)
        } else {
            read_u32(root + off) as u64
        };
        if sdt_len(t).is_some() && signature_at(t, sig) {
            return Some(t);
        }
        off += entry;
    }
    None
}

/// Enabled local APICs (types 0 and 9) and the LAPIC address (with a type-5 override).
pub fn madt_cpus(madt: u64) -> CpuList {
    let len = read_u32(madt + 4) as u64;
    let mut list = CpuList::new(CpuSource::Madt, read_u32(madt + 36) as u64);
    let mut off = 44;
    while off + 2 <= len {
        let e = madt + off;
        let kind = read_u8(e);
        let elen = read_u8(e + 1) as u64;
        if elen < 2 || off + elen > len {
            break;
        }
        match kind {
            0 if elen >= 8 && read_u32(e + 4) & 1 != 0 => list.push(read_u8(e + 3) as u32),
            9 if elen >= 16 && read_u32(e + 8) & 1 != 0 => list.push(read_u32(e + 4)),
            5 if elen >= 12 => list.lapic_base = read_u64(e + 4),
            _ => {}
        }
        off += elen;
    }
    list
}

/// Builds a list by hand (the MP-table parser uses this).
pub(crate) fn new_list(source: CpuSource, lapic_base: u64) -> CpuList {
    CpuList::new(source, lapic_base)
}

/// PM1 status: the power button was pressed (ACPI 6.5 §4.8.3.1.1, table 4.16).
const PWRBTN_STS: u16 = 1 << 8;
/// PM1 control: sleep enable (§4.8.3.2.1, table 4.18); SLP_TYP is bits 10..12.
const SLP_EN: u16 = 1 << 13;

/// The fixed-hardware power-management registers the FADT names (PM1a event and control
/// blocks, §5.2.9) and the sleep type of `\_S5` (soft off) from the DSDT.
#[derive(Clone, Copy, Debug)]
pub struct PmBlock {
    pub pm1a_evt: u16,
    pub pm1a_cnt: u16,
    pub s5_slp_typ: u8,
}

impl PmBlock {
    /// The PM block of the machine, if its FADT has one and its DSDT a `\_S5` package.
    pub fn find(boot: &BootInfo) -> Option<PmBlock> {
        let rsdp = find_rsdp(boot.rsdp_hint())?;
        let fadt = find_table(rsdp, b"FACP")?;
        let fadt_len = read_u32(fadt + 4) as u64;
        let pm1a_evt = read_u32(fadt + 56) as u16;
        let pm1a_cnt = read_u32(fadt + 64) as u16;
        if pm1a_evt == 0 || pm1a_cnt == 0 {
            return None;
        }
        let mut dsdt = read_u32(fadt + 40) as u64;
        if fadt_len >= 148 && read_u64(fadt + 140) != 0 {
            dsdt = read_u64(fadt + 140);
        }
        let len = sdt_len(dsdt)? as u64;
        Some(PmBlock {
            pm1a_evt,
            pm1a_cnt,
            s5_slp_typ: s5_slp_typ(dsdt, len)?,
        })
    }

    /// Whether the power button was pressed since the last look (the status bit is
    /// cleared by writing it back, §4.8.3.1).
    pub fn take_power_button(&self) -> bool {
        let sts = crate::io::inw(self.pm1a_evt);
        if sts & PWRBTN_STS == 0 {
            return false;
        }
        crate::io::outw(self.pm1a_evt, PWRBTN_STS);
        true
    }

    /// Enter S5: the machine turns off (returns only if it did not).
    pub fn power_off(&self) {
        let cnt = crate::io::inw(self.pm1a_cnt) & !(7 << 10);
        crate::io::outw(
            self.pm1a_cnt,
            cnt | ((self.s5_slp_typ as u16 & 7) << 10) | SLP_EN,
        );
    }
}

/// The first value of the DSDT's `Name (_S5, Package () { a, ... })`: NameOp 0x08,
/// `_S5_`, PackageOp 0x12, PkgLength (its lead byte's bits 7:6 count the bytes that
/// follow it), NumElements, then ZeroOp, OneOp or BytePrefix 0x0A + byte (ACPI 6.5
/// §20.2.5.4, §20.2.4, §20.2.3).
fn s5_slp_typ(dsdt: u64, len: u64) -> Option<u8> {
    // The name may carry the root prefix `\` (0x5C) between NameOp and `_S5_`.
    let mut b = dsdt + 38;
    // The shortest: `_S5_`, PackageOp, PkgLength, NumElements, ZeroOp.
    while b + 8 <= dsdt + len {
        let named = read_u8(b - 1) == 0x08 || (read_u8(b - 1) == 0x5C && read_u8(b - 2) == 0x08);
        if named && signature_at(b, b"_S5_") && read_u8(b + 4) == 0x12 {
            let pkg_len_bytes = 1 + (read_u8(b + 5) >> 6) as u64;
            let first = b + 5 + pkg_len_bytes + 1;
            return match read_u8(first) {
                0x00 => Some(0),
                0x01 => Some(1),
                0x0A => Some(read_u8(first + 1)),
                _ => None,
            };
        }
        b += 1;
    }
    None
}
