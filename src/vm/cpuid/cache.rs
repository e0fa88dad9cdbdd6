//! Cache descriptions a CPU model reports (leaves 2, 4, 0x80000005/6 and 0x8000001D), the
//! values QEMU 7.2 uses: its "legacy" caches for most models and per-model caches for the
//! EPYC family, and the encodings of each leaf.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheModel {
    /// QEMU's legacy caches: different (inconsistent) values per leaf family.
    Legacy,
    Epyc,
    EpycRome,
    EpycMilan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheType {
    Data,
    Instruction,
    Unified,
}

/// One cache as QEMU describes it.
#[derive(Debug, Clone, Copy)]
pub struct Cache {
    pub kind: CacheType,
    pub level: u32,
    pub size: u32,
    pub line: u32,
    pub ways: u32,
    pub sets: u32,
    pub lines_per_tag: u32,
    pub self_init: bool,
    pub no_invd_sharing: bool,
    pub inclusive: bool,
    pub complex: bool,
}

const KIB: u32 = 1024;
const MIB: u32 = 1024 * 1024;

const fn cache(kind: CacheType, level: u32, size: u32, ways: u32, sets: u32) -> Cache {
    Cache {
        kind,
        level,
        size,
        line: 64,
        ways,
        sets,
        lines_per_tag: 1,
        self_init: level == 1 || level == 3,
        no_invd_sharing: level == 1,
        inclusive: level == 3,
        complex: level == 3,
    }
}

/// The four caches one family of leaves reports.
#[derive(Debug, Clone, Copy)]
pub struct CacheSet {
    pub l1d: Cache,
    pub l1i: Cache,
    pub l2: Cache,
    pub l3: Cache,
}

use CacheType::{Data, Instruction, Unified};

const LEGACY_L1D: Cache = Cache {
    lines_per_tag: 0,
    ..cache(Data, 1, 32 * KIB, 8, 64)
};
const LEGACY_L1I: Cache = Cache {
    lines_per_tag: 0,
    ..cache(Instruction, 1, 32 * KIB, 8, 64)
};
const LEGACY_L2: Cache = Cache {
    lines_per_tag: 0,
    self_init: true,
    no_invd_sharing: true,
    ..cache(Unified, 2, 4 * MIB, 16, 4096)
};
const LEGACY_L2_LEAF2: Cache = Cache {
    lines_per_tag: 0,
    ..cache(Unified, 2, 2 * MIB, 8, 0)
};
const LEGACY_L3: Cache = cache(Unified, 3, 16 * MIB, 16, 16384);
const LEGACY_L1D_AMD: Cache = cache(Data, 1, 64 * KIB, 2, 512);
const LEGACY_L1I_AMD: Cache = cache(Instruction, 1, 64 * KIB, 2, 512);
const LEGACY_L2_AMD: Cache = cache(Unified, 2, 512 * KIB, 16, 512);

const EPYC_L1D: Cache = cache(Data, 1, 32 * KIB, 8, 64);
const EPYC_L2: Cache = cache(Unified, 2, 512 * KIB, 8, 1024);

impl CacheModel {
    /// Caches for leaf 2, leaf 4 and the AMD leaves (0x80000005/6, 0x8000001D).
    pub fn sets(self) -> (CacheSet, CacheSet, CacheSet) {
        let model = |l1i: Cache, l3: Cache| CacheSet {
            l1d: EPYC_L1D,
            l1i,
            l2: EPYC_L2,
            l3,
        };
        let one = match self {
            CacheModel::Legacy => {
                let leaf2 = CacheSet {
                    l1d: LEGACY_L1D,
                    l1i: LEGACY_L1I,
                    l2: LEGACY_L2_LEAF2,
                    l3: LEGACY_L3,
                };
                let leaf4 = CacheSet {
                    l2: LEGACY_L2,
                    ..leaf2
                };
                let amd = CacheSet {
                    l1d: LEGACY_L1D_AMD,
                    l1i: LEGACY_L1I_AMD,
                    l2: LEGACY_L2_AMD,
                    l3: LEGACY_L3,
                };
                return (leaf2, leaf4, amd);
            }
            CacheModel::Epyc => model(
                cache(Instruction, 1, 64 * KIB, 4, 256),
                cache(Unified, 3, 8 * MIB, 16, 8192),
            ),
            CacheModel::EpycRome => model(
                cache(Instruction, 1, 32 * KIB, 8, 64),
                cache(Unified, 3, 16 * MIB, 16, 16384),
            ),
            CacheModel::EpycMilan => model(
                cache(Instruction, 1, 32 * KIB, 8, 64),
                cache(Unified, 3, 32 * MIB, 16, 32768),
            ),
        };
        (one, one, one)
    }
}

/// Leaf 2 one-byte descriptors (Intel SDM vol. 2A, CPUID leaf 2 table) for the caches
/// above: (descriptor, level, type, size, ways, line).
const LEAF2_DESCRIPTORS: &[(u8, u32, CacheType, u32, u32, u32)] = &[
    (0x21, 2, Unified, 256 * KIB, 8, 64),
    (0x2c, 1, Data, 32 * KIB, 8, 64),
    (0x30, 1, Instruction, 32 * KIB, 8, 64),
    (0x4b, 3, Unified, 8 * MIB, 16, 64),
    (0x4d, 3, Unified, 16 * MIB, 16, 64),
    (0x7d, 2, Unified, 2 * MIB, 8, 64),
    (0x80, 2, Unified, 512 * KIB, 8, 64),
    (0x87, 2, Unified, MIB, 8, 64),
];

/// The leaf 2 descriptor of `c`, or 0xFF ("use leaf 4").
pub fn leaf2_descriptor(c: &Cache) -> u32 {
    LEAF2_DESCRIPTORS
        .iter()
        .find(|d| {
            d.1 == c.level && d.2 == c.kind && d.3 == c.size && d.4 == c.ways && d.5 == c.line
        })
        .map_or(0xff, |d| u32::from(d.0))
}

fn type_code(k: CacheType) -> u32 {
    match k {
        Data => 1,
        Instruction => 2,
        Unified => 3,
    }
}

/// EBX, ECX, EDX of leaf 4 / 0x8000001D for `c`; EAX's type, level and self-init bits.
pub fn deterministic(c: &Cache) -> [u32; 4] {
    let eax = type_code(c.kind) | (c.level << 5) | (u32::from(c.self_init) << 8);
    let ebx = (c.line - 1) | ((c.ways - 1) << 22);
    let ecx = c.sets - 1;
    let edx =
        u32::from(c.no_invd_sharing) | (u32::from(c.inclusive) << 1) | (u32::from(c.complex) << 2);
    [eax, ebx, ecx, edx]
}

/// 0x80000005 ECX/EDX encoding of an L1 cache.
pub fn l1_amd(c: &Cache) -> u32 {
    ((c.size / KIB) << 24) | (c.ways << 16) | (c.lines_per_tag << 8) | c.line
}

/// AMD's 4-bit associativity code (0x80000006).
pub fn amd_assoc(ways: u32) -> u32 {
    match ways {
        0 | 1 => ways,
        2 => 2,
        4 => 4,
        8 => 6,
        16 => 8,
        32 => 0xa,
        48 => 0xb,
        64 => 0xc,
        96 => 0xd,
        128 => 0xe,
        0xff => 0xf,
        _ => 0,
    }
}

/// 0x80000006 ECX (L2) and EDX (L3, or 0 without one).
pub fn l2_l3_amd(l2: &Cache, l3: Option<&Cache>) -> (u32, u32) {
    let ecx =
        ((l2.size / KIB) << 16) | (amd_assoc(l2.ways) << 12) | (l2.lines_per_tag << 8) | l2.line;
    let edx = l3.map_or(0, |l3| {
        ((l3.size / (512 * KIB)) << 18)
            | (amd_assoc(l3.ways) << 12)
            | (l3.lines_per_tag << 8)
            | l3.line
    });
    (ecx, edx)
}
