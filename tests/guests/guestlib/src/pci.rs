//! PCI configuration access through mechanism #1 (ports 0xCF8/0xCFC), from ring 3.

use crate::io::{inl, outl};

fn address(dev: u8, func: u8, reg: u8) -> u32 {
    0x8000_0000 | (u32::from(dev) << 11) | (u32::from(func) << 8) | u32::from(reg & 0xfc)
}

/// 32-bit configuration read of bus 0.
pub fn read32(dev: u8, func: u8, reg: u8) -> u32 {
    outl(0xcf8, address(dev, func, reg));
    inl(0xcfc)
}

/// 32-bit configuration write of bus 0.
pub fn write32(dev: u8, func: u8, reg: u8, v: u32) {
    outl(0xcf8, address(dev, func, reg));
    outl(0xcfc, v);
}

/// The first function on bus 0 with this vendor and device id: (device, function).
pub fn find(vendor: u16, device: u16) -> Option<(u8, u8)> {
    let want = u32::from(vendor) | (u32::from(device) << 16);
    (0..32u8)
        .flat_map(|d| (0..8u8).map(move |f| (d, f)))
        .find(|&(d, f)| read32(d, f, 0) == want)
}

/// BAR `n`'s address, assigning `fallback` (and enabling memory decoding) when no
/// firmware did — under direct boot nothing programs BARs.
pub fn mem_bar(dev: u8, func: u8, n: u8, fallback: u32) -> u64 {
    let reg = 0x10 + 4 * n;
    let mut bar = read32(dev, func, reg) & !0xf;
    if bar == 0 {
        write32(dev, func, reg, fallback);
        bar = read32(dev, func, reg) & !0xf;
    }
    let cmd = read32(dev, func, 0x04);
    write32(dev, func, 0x04, cmd | 0x2);
    u64::from(bar)
}
