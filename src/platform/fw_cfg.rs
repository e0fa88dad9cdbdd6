//! What troupe tells the firmware through fw_cfg, following QEMU's `pc` machine: CPU
//! counts, RAM size and map (`etc/e820`), boot menu and timeouts, the serial console hint
//! when there is no display, the `bootorder` list from `bootindex=` and `-boot strict=`, and
//! (added by the table builders) ACPI and SMBIOS.

use devices::fw_cfg::{FwCfg, BOOT_MENU, MAX_CPUS, NB_CPUS, NOGRAPHIC, RAM_SIZE, UUID};

use crate::config::{DeviceKind, DriveInterface, VgaKind, VmConfig};
use crate::vm::kvm::IDENTITY_MAP_ADDR;
use crate::vm::memory::{RamLayout, HIGH_RAM_START};

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

/// QEMU's `etc/e820`: the RAM ranges and KVM's private pages, as {u64 addr, u64 len, u32
/// type} little-endian records.
pub fn e820_file(layout: &RamLayout) -> Vec<u8> {
    let mut v = Vec::new();
    let mut push = |addr: u64, len: u64, kind: u32| {
        v.extend_from_slice(&addr.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
    };
    push(0, layout.below_4g, E820_RAM);
    push(IDENTITY_MAP_ADDR, 0x4000, E820_RESERVED);
    if layout.above_4g > 0 {
        push(HIGH_RAM_START, layout.above_4g, E820_RAM);
    }
    v
}

/// A UUID string (8-4-4-4-12 hex) as the 16 bytes fw_cfg and SMBIOS carry.
pub fn uuid_bytes(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// QEMU's `bootorder` file: the OpenFirmware path of every device with a `bootindex=`, by
/// increasing index, one per line, then `HALT` under `-boot strict=on` (SeaBIOS then boots
/// nothing that is not listed). None when there is nothing to say (SeaBIOS's own order).
pub fn bootorder(cfg: &VmConfig) -> Option<String> {
    let mut entries: Vec<(u32, String)> = Vec::new();
    for d in &cfg.drives {
        if let (DriveInterface::Ide, Some(index), Some(b)) = (d.interface, d.index, d.bootindex) {
            // The PIIX IDE function is 00:01.1; drive@CHANNEL/disk@UNIT.
            entries.push((
                b,
                format!("/pci@i0cf8/ide@1,1/drive@{}/disk@{}", index / 2, index % 2),
            ));
        }
    }
    let pci = |(slot, func): (u8, u8), name: &str| {
        if func == 0 {
            format!("/pci@i0cf8/{name}@{slot:x}")
        } else {
            format!("/pci@i0cf8/{name}@{slot:x},{func:x}")
        }
    };
    for dev in &cfg.devices {
        let (Some(addr), Some(b)) = (dev.addr, dev.kind.bootindex()) else {
            continue;
        };
        let path = match &dev.kind {
            DeviceKind::VirtioBlk { .. } => format!("{}/disk@0,0", pci(addr, "scsi")),
            _ => format!("{}/ethernet-phy@0", pci(addr, "ethernet")),
        };
        entries.push((b, path));
    }
    entries.sort();
    let mut lines: Vec<String> = entries.into_iter().map(|(_, p)| p).collect();
    if cfg.boot_order.strict {
        lines.push("HALT".to_string());
    }
    (!lines.is_empty()).then(|| lines.join("\n"))
}

pub fn build(cfg: &VmConfig, layout: &RamLayout) -> FwCfg {
    let mut f = FwCfg::new();
    f.add_item(NB_CPUS, (cfg.smp.cpus as u16).to_le_bytes().to_vec());
    f.add_item(MAX_CPUS, (cfg.smp.maxcpus as u16).to_le_bytes().to_vec());
    f.add_item(RAM_SIZE, cfg.memory.to_le_bytes().to_vec());
    f.add_item(NOGRAPHIC, u16::from(cfg.nographic).to_le_bytes().to_vec());
    f.add_item(
        BOOT_MENU,
        u16::from(cfg.boot_order.menu).to_le_bytes().to_vec(),
    );
    if let Some(u) = cfg.uuid.as_deref().and_then(uuid_bytes) {
        f.add_item(UUID, u.to_vec());
    }
    let _ = f.add_file("etc/e820", e820_file(layout));
    // Memory hotplug: where the device-memory region ends, so the firmware puts 64-bit
    // BARs above it (QEMU's pc adds the file whenever the region exists).
    if cfg.maxmem > cfg.memory {
        let region = crate::vm::memory::DeviceMemory::pc(cfg.memory, cfg.memory_slots, cfg.maxmem);
        let _ = f.add_file(
            "etc/reserved-memory-end",
            region.reserved_end().to_le_bytes().to_vec(),
        );
    }
    if cfg.boot_order.menu {
        let wait = cfg.boot_order.splash_time_ms.unwrap_or(0).min(0xffff) as u16;
        let _ = f.add_file("etc/boot-menu-wait", wait.to_le_bytes().to_vec());
    }
    let _ = f.add_file(
        "etc/boot-fail-wait",
        (cfg.boot_order.reboot_timeout_ms as i32)
            .to_le_bytes()
            .to_vec(),
    );
    if let Some(order) = bootorder(cfg) {
        let mut bytes = order.into_bytes();
        bytes.push(0);
        let _ = f.add_file("bootorder", bytes);
    }
    // With nothing to look at (no VGA or -nographic), SeaBIOS should talk on COM1.
    if (cfg.nographic || cfg.vga == VgaKind::None) && !cfg.serials.is_empty() {
        let _ = f.add_file("etc/sercon-port", 0x3f8u16.to_le_bytes().to_vec());
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_records_ram_and_kvm_pages() {
        let v = e820_file(&RamLayout::pc(8 << 30));
        assert_eq!(v.len(), 3 * 20);
        assert_eq!(u64::from_le_bytes(v[8..16].try_into().unwrap()), 3 << 30);
        assert_eq!(u64::from_le_bytes(v[40..48].try_into().unwrap()), 1 << 32);
    }

    #[test]
    fn the_device_memory_region_is_placed_and_reserved_as_qemu_pc_does() {
        use crate::vm::memory::DeviceMemory;
        // QEMU 7.2 `-m 1G,slots=2,maxmem=4G`: etc/reserved-memory-end = 0x240000000.
        let r = DeviceMemory::pc(1 << 30, 2, 4 << 30);
        assert_eq!((r.base, r.capacity), (1 << 32, 3 << 30));
        assert_eq!(r.reserved_end(), 0x2_4000_0000);
        // RAM above 4 GiB moves it up to the next GiB boundary.
        let r = DeviceMemory::pc((4 << 30) + (512 << 20), 1, 6 << 30);
        assert_eq!(r.base, (4 << 30) + (2 << 30));
        assert_eq!(r.size, (1 << 30) + (512 << 20) + (1 << 30));
    }

    #[test]
    fn uuid_parses() {
        let u = uuid_bytes("12345678-9abc-def0-1122-334455667788").unwrap();
        assert_eq!(u[0], 0x12);
        assert_eq!(u[15], 0x88);
        assert!(uuid_bytes("nope").is_none());
    }
}
