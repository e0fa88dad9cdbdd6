//! Firmware mapping for `-bios` (SeaBIOS by default): the image is read-only memory at the
//! top of 4 GiB, and its last 128 KiB also appear at 0xE0000–0xFFFFF (the "isa-bios"
//! alias) — until the guest turns on shadow RAM there through the i440FX PAM registers.
//!
//! [`Shadow`] owns the thirteen PAM segments (0xC0000–0xFFFFF) and maps each as KVM
//! memory the way its PAM attribute says: the ROM alias (or nothing) when PAM routes it to
//! PCI, guest RAM read-write, or guest RAM read-only (writes then exit and are dropped).
//! SeaBIOS only ever uses those three: it enables read/write RAM, copies itself from the
//! high ROM alias, and finally makes its segments read-only.

use std::path::{Path, PathBuf};

use actors::host::mem::HostBuffer;

use super::kvm::{KvmVm, VmError};

/// Where the PAM segments start (0xC0000) and the isa-bios alias (0xE0000).
pub const SHADOW_START: u64 = 0xc_0000;
pub const ISA_BIOS_START: u64 = 0xe_0000;
pub const SHADOW_END: u64 = 0x10_0000;
/// The largest firmware image: 16 MiB below 4 GiB.
const MAX_BIOS: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    #[error("-bios: {source} (SeaBIOS is in the Debian package `seabios`)")]
    Read {
        path: PathBuf,
        #[source]
        source: crate::files::LoadError,
    },
    #[error("-bios {path}: {size} bytes is not a BIOS image size (a multiple of 64 KiB, at most 16 MiB)")]
    Size { path: PathBuf, size: usize },
    #[error(transparent)]
    Vm(#[from] VmError),
}

/// The firmware image, mapped read-only below 4 GiB.
pub struct Bios {
    image: HostBuffer,
}

impl Bios {
    pub fn load(path: &Path) -> Result<Self, FirmwareError> {
        let data = crate::files::read_bounded(path, MAX_BIOS, "the BIOS window below 4 GiB")
            .map_err(|source| FirmwareError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        if data.is_empty() || data.len() % 0x1_0000 != 0 || data.len() as u64 > MAX_BIOS {
            return Err(FirmwareError::Size {
                path: path.to_path_buf(),
                size: data.len(),
            });
        }
        let mut image = HostBuffer::new(data.len());
        image.as_mut_slice().copy_from_slice(&data);
        Ok(Self { image })
    }

    pub fn size(&self) -> u64 {
        self.image.len() as u64
    }

    /// Map the image at the top of 4 GiB (the reset vector is its last 16 bytes).
    pub fn map(&self, kvm: &KvmVm) -> Result<(), FirmwareError> {
        let gpa = (1u64 << 32) - self.size();
        kvm.map(
            gpa,
            self.size(),
            self.image.host_addr(),
            true,
            false,
            "pc.bios",
        )?;
        Ok(())
    }

    /// Host address of the byte the isa-bios alias shows at guest address `gpa`
    /// (0xE0000–0xFFFFF ↔ the image's last 128 KiB).
    fn alias_host(&self, gpa: u64) -> Option<u64> {
        let alias_len = (SHADOW_END - ISA_BIOS_START).min(self.size());
        let alias_start = SHADOW_END - alias_len;
        (gpa >= alias_start).then(|| self.image.host_addr() + self.size() - (SHADOW_END - gpa))
    }
}

/// What a PAM segment maps to (i440FX datasheet 3.2.18: RE/WE bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PamMode {
    /// Both off: accesses go to PCI (the ROM alias for 0xE0000+, nothing below).
    Pci,
    /// Reads from RAM, writes dropped.
    ReadOnly,
    /// Writes to RAM, reads from PCI: not used by SeaBIOS; treated as read-write RAM.
    WriteOnly,
    /// Read-write RAM.
    ReadWrite,
}

impl PamMode {
    /// From a PAM register nibble (bit 0 read enable, bit 1 write enable).
    pub fn from_bits(b: u8) -> Self {
        match b & 3 {
            0 => Self::Pci,
            1 => Self::ReadOnly,
            2 => Self::WriteOnly,
            _ => Self::ReadWrite,
        }
    }
}

/// The thirteen PAM segments: 0xF0000 (64 KiB), then 0xC0000.. in 16 KiB pieces.
pub fn pam_segments() -> [(u64, u64); 13] {
    let mut s = [(0xf_0000, 0x1_0000); 13];
    for (i, seg) in s.iter_mut().enumerate().skip(1) {
        *seg = (SHADOW_START + (i as u64 - 1) * 0x4000, 0x4000);
    }
    s
}

/// The current mapping of each PAM segment.
pub struct Shadow {
    /// Host address of guest RAM at guest address 0 (RAM below 4 GiB is contiguous).
    ram_host: u64,
    slots: [Option<(u32, PamMode)>; 13],
    modes: [Option<PamMode>; 13],
}

impl Shadow {
    pub fn new(ram_host: u64) -> Self {
        Self {
            ram_host,
            slots: [None; 13],
            modes: [None; 13],
        }
    }

    /// Apply PAM attributes; only segments whose mode changed are remapped.
    pub fn apply(
        &mut self,
        kvm: &KvmVm,
        bios: Option<&Bios>,
        modes: [PamMode; 13],
    ) -> Result<(), FirmwareError> {
        for (i, &(gpa, size)) in pam_segments().iter().enumerate() {
            let mode = match modes[i] {
                PamMode::WriteOnly => PamMode::ReadWrite,
                m => m,
            };
            if self.modes[i] == Some(mode) {
                continue;
            }
            if let Some((slot, _)) = self.slots[i].take() {
                kvm.unmap(slot)?;
            }
            let mapped = match mode {
                PamMode::Pci => match bios.and_then(|b| b.alias_host(gpa)) {
                    Some(host) => Some(kvm.map(gpa, size, host, true, false, "isa-bios")?),
                    None => None,
                },
                PamMode::ReadOnly => Some(kvm.map(
                    gpa,
                    size,
                    self.ram_host + gpa,
                    true,
                    false,
                    "pc.ram (shadow, ro)",
                )?),
                _ => Some(kvm.map(
                    gpa,
                    size,
                    self.ram_host + gpa,
                    false,
                    false,
                    "pc.ram (shadow)",
                )?),
            };
            self.slots[i] = mapped.map(|s| (s, mode));
            self.modes[i] = Some(mode);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_tile_c0000_to_100000() {
        let mut s: Vec<(u64, u64)> = pam_segments().to_vec();
        s.sort();
        let mut at = SHADOW_START;
        for (gpa, size) in s {
            assert_eq!(gpa, at);
            at += size;
        }
        assert_eq!(at, SHADOW_END);
    }

    #[test]
    fn pam_bits_decode() {
        assert_eq!(PamMode::from_bits(0), PamMode::Pci);
        assert_eq!(PamMode::from_bits(1), PamMode::ReadOnly);
        assert_eq!(PamMode::from_bits(3), PamMode::ReadWrite);
    }
}
