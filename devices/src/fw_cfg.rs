//! QEMU's firmware configuration device (docs/specs/fw_cfg.txt), as SeaBIOS reads it on
//! x86: selector at 0x510 (16-bit), data at 0x511 (byte stream), and the DMA interface at
//! 0x514 (64-bit big-endian address of a `FWCfgDmaAccess` written as two halves; the write
//! to the low half at 0x518 runs the transfer). Map it at 0x510 with length 12.
//!
//! Items are numeric keys (signature, feature bits, CPU counts...) and named files listed
//! in the file directory (key 0x19). Every DMA address is bounds-checked against guest
//! RAM: a request pointing elsewhere gets the error bit, never a crash.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::memory::GuestMemoryMmap;
use crate::{BusDevice, Snapshot, StateError};

pub const SIGNATURE: u16 = 0x0000;
pub const ID: u16 = 0x0001;
pub const UUID: u16 = 0x0002;
pub const RAM_SIZE: u16 = 0x0003;
pub const NOGRAPHIC: u16 = 0x0004;
pub const NB_CPUS: u16 = 0x0005;
pub const BOOT_MENU: u16 = 0x000e;
pub const MAX_CPUS: u16 = 0x000f;
pub const FILE_DIR: u16 = 0x0019;
pub const FILE_FIRST: u16 = 0x0020;

const FEATURE_TRADITIONAL: u32 = 1;
const FEATURE_DMA: u32 = 2;
/// "QEMU CFG" read back from the DMA address register.
const DMA_SIGNATURE: u64 = 0x5145_4d55_2043_4647;

const DMA_ERROR: u32 = 0x01;
const DMA_READ: u32 = 0x02;
const DMA_SKIP: u32 = 0x04;
const DMA_SELECT: u32 = 0x08;
const DMA_WRITE: u32 = 0x10;

const MAX_NAME: usize = 55;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FwCfgError {
    #[error("fw_cfg file name {0:?} is longer than 55 bytes")]
    NameTooLong(String),
    #[error("fw_cfg file {0:?} already exists")]
    Duplicate(String),
    #[error("fw_cfg has no room for more files")]
    Full,
}

#[derive(Debug, Clone)]
struct File {
    data: Vec<u8>,
    writable: bool,
}

/// Selector and offset (the guest-visible state; contents are rebuilt by the machine).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwCfgState {
    pub selector: u16,
    pub offset: u32,
    pub dma_addr: u64,
}

pub struct FwCfg {
    items: BTreeMap<u16, Vec<u8>>,
    files: BTreeMap<String, File>,
    selector: u16,
    offset: u32,
    dma_addr: u64,
    mem: Option<GuestMemoryMmap>,
    errors: u64,
}

impl Default for FwCfg {
    fn default() -> Self {
        Self::new()
    }
}

impl FwCfg {
    pub fn new() -> Self {
        let mut items = BTreeMap::new();
        items.insert(SIGNATURE, b"QEMU".to_vec());
        items.insert(
            ID,
            (FEATURE_TRADITIONAL | FEATURE_DMA).to_le_bytes().to_vec(),
        );
        Self {
            items,
            files: BTreeMap::new(),
            selector: 0,
            offset: 0,
            dma_addr: 0,
            mem: None,
            errors: 0,
        }
    }

    /// Guest memory for DMA (without it, DMA requests are ignored).
    pub fn set_memory(&mut self, mem: GuestMemoryMmap) {
        self.mem = Some(mem);
    }

    /// Set a numeric item.
    pub fn add_item(&mut self, key: u16, data: Vec<u8>) {
        self.items.insert(key, data);
    }

    /// Add a named file.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<(), FwCfgError> {
        self.insert_file(name, data, false)
    }

    /// Add a file the guest may write through DMA.
    pub fn add_writable_file(&mut self, name: &str, data: Vec<u8>) -> Result<(), FwCfgError> {
        self.insert_file(name, data, true)
    }

    fn insert_file(&mut self, name: &str, data: Vec<u8>, writable: bool) -> Result<(), FwCfgError> {
        if name.len() > MAX_NAME {
            return Err(FwCfgError::NameTooLong(name.into()));
        }
        if self.files.contains_key(name) {
            return Err(FwCfgError::Duplicate(name.into()));
        }
        if self.files.len() >= usize::from(0x4000 - FILE_FIRST) {
            return Err(FwCfgError::Full);
        }
        self.files.insert(name.into(), File { data, writable });
        Ok(())
    }

    /// Replace (or add) a file's contents.
    pub fn set_file(&mut self, name: &str, data: Vec<u8>) -> Result<(), FwCfgError> {
        match self.files.get_mut(name) {
            Some(f) => {
                f.data = data;
                Ok(())
            }
            None => self.add_file(name, data),
        }
    }

    /// A file's current contents (what the guest wrote, for writable files).
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(|f| f.data.as_slice())
    }

    /// DMA requests refused (bad addresses, writes to read-only items).
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Files are numbered in name order from 0x20, like QEMU.
    fn file_key(&self, name: &str) -> Option<u16> {
        self.files
            .keys()
            .position(|n| n == name)
            .map(|i| FILE_FIRST + i as u16)
    }

    fn directory(&self) -> Vec<u8> {
        let mut d = (self.files.len() as u32).to_be_bytes().to_vec();
        for (i, (name, f)) in self.files.iter().enumerate() {
            d.extend_from_slice(&(f.data.len() as u32).to_be_bytes());
            d.extend_from_slice(&(FILE_FIRST + i as u16).to_be_bytes());
            d.extend_from_slice(&[0, 0]);
            let mut n = [0u8; 56];
            n[..name.len()].copy_from_slice(name.as_bytes());
            d.extend_from_slice(&n);
        }
        d
    }

    /// The bytes behind key `key` (numeric item, directory or file).
    fn contents(&self, key: u16) -> Option<std::borrow::Cow<'_, [u8]>> {
        // Bit 14 is the (obsolete) write flag; bit 15 marks arch-local keys (0x8000..),
        // which are distinct items, not aliases of the generic ones.
        let key = key & !0x4000;
        if key == FILE_DIR {
            return Some(std::borrow::Cow::Owned(self.directory()));
        }
        if (FILE_FIRST..0x4000).contains(&key) {
            return self
                .files
                .values()
                .nth(usize::from(key - FILE_FIRST))
                .map(|f| std::borrow::Cow::Borrowed(f.data.as_slice()));
        }
        self.items
            .get(&key)
            .map(|v| std::borrow::Cow::Borrowed(v.as_slice()))
    }

    fn select(&mut self, key: u16) {
        self.selector = key;
        self.offset = 0;
    }

    fn read_byte(&mut self) -> u8 {
        let b = self
            .contents(self.selector)
            .and_then(|c| c.get(self.offset as usize).copied())
            .unwrap_or(0);
        if (self.offset as usize) < self.contents(self.selector).map_or(0, |c| c.len()) {
            self.offset += 1;
        }
        b
    }

    fn guest_error(&mut self, what: std::fmt::Arguments<'_>) {
        self.errors += 1;
        if self.errors <= 10 {
            tracing::warn!(target: "guest_errors", "fw_cfg: {what}");
        }
    }

    /// Run the DMA request at `addr` (fw_cfg.txt, "FWCfgDmaAccess").
    fn dma(&mut self, addr: u64) {
        let Some(mem) = self.mem.clone() else {
            return;
        };
        let mut req = [0u8; 16];
        if mem.read_slice(&mut req, GuestAddress(addr)).is_err() {
            self.guest_error(format_args!("DMA descriptor at {addr:#x} is outside RAM"));
            return;
        }
        let control = u32::from_be_bytes(req[0..4].try_into().unwrap_or_default());
        let length = u32::from_be_bytes(req[4..8].try_into().unwrap_or_default());
        let target = u64::from_be_bytes(req[8..16].try_into().unwrap_or_default());
        if control & DMA_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        tracing::trace!(target: "fw_cfg", "DMA control={control:#x} len={length} to={target:#x} sel={:#x} off={}", self.selector, self.offset);
        let mut status = 0u32;
        let avail = self
            .contents(self.selector)
            .map_or(0, |c| c.len())
            .saturating_sub(self.offset as usize);
        if control & DMA_READ != 0 {
            let n = (length as usize).min(avail);
            // The whole destination is checked before anything is built or written: a
            // length up to 4 GiB comes from the guest.
            let fits = length as usize <= 64 << 20
                && mem.check_range(
                    GuestAddress(target),
                    length as usize,
                    vm_memory::Permissions::ReadWrite,
                );
            let data: Vec<u8> = match self.contents(self.selector) {
                Some(c) if fits => c[self.offset as usize..self.offset as usize + n].to_vec(),
                _ => Vec::new(),
            };
            // Past the end of the item the device supplies zeros (fw_cfg.txt).
            let mut buf = data;
            if fits {
                buf.resize(length as usize, 0);
            }
            if !fits || mem.write_slice(&buf, GuestAddress(target)).is_err() {
                self.guest_error(format_args!(
                    "DMA read of {length} bytes to {target:#x} is outside RAM"
                ));
                status = DMA_ERROR;
            } else {
                self.offset += n as u32;
            }
        } else if control & DMA_WRITE != 0 {
            let writable = self
                .files
                .values()
                .nth(usize::from(
                    (self.selector & 0x3fff).wrapping_sub(FILE_FIRST),
                ))
                .is_some_and(|f| f.writable)
                && (FILE_FIRST..0x4000).contains(&(self.selector & 0xbfff));
            let mut buf = vec![0u8; (length as usize).min(avail)];
            if !writable {
                let sel = self.selector;
                self.guest_error(format_args!("DMA write to read-only item {sel:#x}"));
                status = DMA_ERROR;
            } else if mem.read_slice(&mut buf, GuestAddress(target)).is_err() {
                self.guest_error(format_args!("DMA write source {target:#x} is outside RAM"));
                status = DMA_ERROR;
            } else {
                let idx = usize::from((self.selector & 0x3fff) - FILE_FIRST);
                let off = self.offset as usize;
                if let Some(f) = self.files.values_mut().nth(idx) {
                    f.data[off..off + buf.len()].copy_from_slice(&buf);
                }
                self.offset += buf.len() as u32;
            }
        } else if control & DMA_SKIP != 0 {
            self.offset += (length as usize).min(avail) as u32;
        }
        // Completion: the control word becomes 0, or carries the error bit.
        if mem
            .write_slice(&status.to_be_bytes(), GuestAddress(addr))
            .is_err()
        {
            self.guest_error(format_args!("cannot complete DMA at {addr:#x}"));
        }
    }
}

impl BusDevice for FwCfg {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 2) => data.copy_from_slice(&self.selector.to_le_bytes()),
            (1, _) => {
                for b in data.iter_mut() {
                    *b = self.read_byte();
                }
            }
            // The DMA register reads back the signature (big-endian).
            (4..=11, _) => {
                let sig = DMA_SIGNATURE.to_be_bytes();
                for (i, b) in data.iter_mut().enumerate() {
                    *b = sig.get(offset as usize - 4 + i).copied().unwrap_or(0);
                }
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 2) => self.select(u16::from_le_bytes([data[0], data[1]])),
            (0, 1) => self.select(u16::from(data[0])),
            (4, 4) => {
                let hi = u32::from_be_bytes(data.try_into().unwrap_or_default());
                self.dma_addr = (u64::from(hi) << 32) | (self.dma_addr & 0xffff_ffff);
            }
            (8, 4) => {
                let lo = u32::from_be_bytes(data.try_into().unwrap_or_default());
                let addr = (self.dma_addr & !0xffff_ffff) | u64::from(lo);
                self.dma_addr = 0;
                self.dma(addr);
            }
            (4, 8) => {
                let addr = u64::from_be_bytes(data.try_into().unwrap_or_default());
                self.dma_addr = 0;
                self.dma(addr);
            }
            // Writes to the data port are ignored (fw_cfg.txt: deprecated).
            _ => {}
        }
    }
}

impl Snapshot for FwCfg {
    type State = FwCfgState;
    const KIND: &'static str = "fw_cfg";
    const VERSION: u32 = 1;
    fn save(&self) -> FwCfgState {
        FwCfgState {
            selector: self.selector,
            offset: self.offset,
            dma_addr: self.dma_addr,
        }
    }
    fn restore(&mut self, s: FwCfgState) -> Result<(), StateError> {
        // The items are the machine's own (rebuilt before the restore): a position past
        // the end of the selected one is not a state this device can be in.
        let len = self.contents(s.selector).map_or(0, |c| c.len());
        if s.offset as usize > len {
            return Err(StateError::invalid(
                Self::KIND,
                format!(
                    "offset {} is past the end of item {:#x} ({len} bytes)",
                    s.offset, s.selector
                ),
            ));
        }
        self.selector = s.selector;
        self.offset = s.offset;
        self.dma_addr = s.dma_addr;
        Ok(())
    }
}

impl FwCfg {
    /// The key of file `name` (for tests and the boot order logic).
    pub fn key_of(&self, name: &str) -> Option<u16> {
        self.file_key(name)
    }

    pub fn reset(&mut self) {
        self.selector = 0;
        self.offset = 0;
        self.dma_addr = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(f: &mut FwCfg, key: u16) {
        f.write(0, &key.to_le_bytes());
    }

    fn read(f: &mut FwCfg, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                let mut b = [0];
                f.read(1, &mut b);
                b[0]
            })
            .collect()
    }

    fn cfg() -> FwCfg {
        let mut f = FwCfg::new();
        f.add_file("etc/e820", vec![1, 2, 3]).unwrap();
        f.add_file("bootorder", b"/pci@i0cf8/ide@1,1/drive@1/disk@0\n".to_vec())
            .unwrap();
        f.add_item(NB_CPUS, 4u16.to_le_bytes().to_vec());
        f
    }

    #[test]
    fn a_file_read_half_way_goes_on_after_restore() {
        let mut f = cfg();
        let key = f.key_of("bootorder").unwrap();
        sel(&mut f, key);
        assert_eq!(read(&mut f, 5), b"/pci@");
        let mut back = crate::check_roundtrip(&f, cfg());
        assert_eq!(read(&mut back, 8), b"i0cf8/id");
        assert_eq!(read(&mut f, 8), b"i0cf8/id");
    }

    #[test]
    fn signature_features_and_items() {
        let mut f = cfg();
        sel(&mut f, SIGNATURE);
        assert_eq!(read(&mut f, 4), b"QEMU");
        sel(&mut f, ID);
        assert_eq!(read(&mut f, 4), [3, 0, 0, 0]);
        sel(&mut f, NB_CPUS);
        assert_eq!(read(&mut f, 3), [4, 0, 0], "reads past the end are 0");
        let mut sig = [0u8; 8];
        f.read(4, &mut sig);
        assert_eq!(&sig, b"QEMU CFG");
    }

    #[test]
    fn arch_local_keys_do_not_alias_generic_ones() {
        let mut f = cfg();
        sel(&mut f, 0x8000);
        assert_eq!(
            read(&mut f, 2),
            [0, 0],
            "an absent arch item reads as zeros, not \"QE\""
        );
        f.add_item(0x8000, vec![7, 0]);
        sel(&mut f, 0x8000);
        assert_eq!(read(&mut f, 2), [7, 0]);
    }

    #[test]
    fn directory_lists_files_sorted_and_selects_them() {
        let mut f = cfg();
        sel(&mut f, FILE_DIR);
        let d = read(&mut f, 4 + 2 * 64);
        assert_eq!(u32::from_be_bytes(d[0..4].try_into().unwrap()), 2);
        let e0 = &d[4..68];
        let bootorder = b"/pci@i0cf8/ide@1,1/drive@1/disk@0\n".len();
        assert_eq!(
            u32::from_be_bytes(e0[0..4].try_into().unwrap()) as usize,
            bootorder
        );
        assert_eq!(u16::from_be_bytes([e0[4], e0[5]]), 0x20);
        assert!(e0[8..].starts_with(b"bootorder\0"));
        let e1 = &d[68..132];
        assert!(e1[8..].starts_with(b"etc/e820\0"));
        sel(&mut f, 0x21);
        assert_eq!(read(&mut f, 3), [1, 2, 3]);
        assert_eq!(f.key_of("etc/e820"), Some(0x21));
        assert_eq!(
            f.add_file("etc/e820", vec![]),
            Err(FwCfgError::Duplicate("etc/e820".into()))
        );
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn dma_at(f: &mut FwCfg, addr: u64) {
        f.write(4, &((addr >> 32) as u32).to_be_bytes());
        f.write(8, &(addr as u32).to_be_bytes());
    }

    fn put_req(m: &GuestMemoryMmap, at: u64, control: u32, len: u32, target: u64) {
        let mut r = control.to_be_bytes().to_vec();
        r.extend_from_slice(&len.to_be_bytes());
        r.extend_from_slice(&target.to_be_bytes());
        m.write_slice(&r, GuestAddress(at)).unwrap();
    }

    #[test]
    fn dma_select_skip_read() {
        let m = mem();
        let mut f = cfg();
        f.set_memory(m.clone());
        put_req(&m, 0x100, (0x21 << 16) | DMA_SELECT | DMA_SKIP, 1, 0);
        dma_at(&mut f, 0x100);
        assert_eq!(m.read_obj::<u32>(GuestAddress(0x100)).unwrap(), 0);
        put_req(&m, 0x100, DMA_READ, 4, 0x200);
        dma_at(&mut f, 0x100);
        let mut out = [0u8; 4];
        m.read_slice(&mut out, GuestAddress(0x200)).unwrap();
        assert_eq!(out, [2, 3, 0, 0]);
        assert_eq!(m.read_obj::<u32>(GuestAddress(0x100)).unwrap(), 0);
    }

    #[test]
    fn dma_outside_ram_sets_the_error_bit_and_never_panics() {
        let m = mem();
        let mut f = cfg();
        f.set_memory(m.clone());
        put_req(
            &m,
            0x100,
            (0x20 << 16) | DMA_SELECT | DMA_READ,
            16,
            0xffff_0000,
        );
        dma_at(&mut f, 0x100);
        assert_eq!(
            u32::from_be_bytes(m.read_obj::<[u8; 4]>(GuestAddress(0x100)).unwrap()),
            DMA_ERROR
        );
        dma_at(&mut f, 0x1234_5678_0000);
        put_req(&m, 0x100, DMA_WRITE, 4, 0x300);
        dma_at(&mut f, 0x100);
        assert_ne!(
            u32::from_be_bytes(m.read_obj::<[u8; 4]>(GuestAddress(0x100)).unwrap()) & DMA_ERROR,
            0,
            "writing a read-only file fails"
        );
        assert!(f.errors() >= 3);
    }

    /// Found by the fw_cfg fuzz target: a read longer than RAM built a buffer of the
    /// guest's length (up to 4 GiB, filled byte by byte), then wrote as much of it as
    /// fitted, zeroing guest RAM from the target address up.
    #[test]
    fn a_dma_read_longer_than_ram_is_refused_without_touching_ram() {
        let m = mem();
        let mut f = cfg();
        f.set_memory(m.clone());
        for len in [64 << 20, u32::MAX] {
            m.write_slice(&[0xaa; 16], GuestAddress(0x8000)).unwrap();
            put_req(&m, 0x100, (0x19 << 16) | DMA_SELECT | DMA_READ, len, 0x7ff0);
            dma_at(&mut f, 0x100);
            assert_eq!(
                u32::from_be_bytes(m.read_obj::<[u8; 4]>(GuestAddress(0x100)).unwrap()),
                DMA_ERROR
            );
            assert_eq!(
                m.read_obj::<[u8; 16]>(GuestAddress(0x8000)).unwrap(),
                [0xaa; 16]
            );
        }
        // The directory was not consumed: a good read still starts at its beginning.
        put_req(&m, 0x100, DMA_READ, 4, 0x200);
        dma_at(&mut f, 0x100);
        assert_eq!(
            m.read_obj::<[u8; 4]>(GuestAddress(0x200)).unwrap(),
            [0, 0, 0, 2]
        );
    }

    /// Found by the device_state fuzz target: a restored offset past the end of the
    /// selected item made the next DMA read slice out of range and panic.
    #[test]
    fn a_restored_offset_past_the_selected_item_is_refused() {
        let m = mem();
        let mut f = cfg();
        f.set_memory(m.clone());
        let bad = FwCfgState {
            selector: NB_CPUS,
            offset: 2550,
            dma_addr: 0,
        };
        let err = f.restore(bad).unwrap_err().to_string();
        assert!(
            err.contains("offset 2550 is past the end of item 0x5 (2 bytes)"),
            "{err}"
        );
        // The device is as it was, and a DMA read works.
        put_req(
            &m,
            0x100,
            (u32::from(NB_CPUS) << 16) | DMA_SELECT | DMA_READ,
            2,
            0x200,
        );
        dma_at(&mut f, 0x100);
        assert_eq!(m.read_obj::<[u8; 2]>(GuestAddress(0x200)).unwrap(), [4, 0]);
        // The end itself is a position a guest can reach, and restores.
        let end = FwCfgState {
            selector: NB_CPUS,
            offset: 2,
            dma_addr: 0,
        };
        f.restore(end).unwrap();
    }

    #[test]
    fn writable_files_accept_dma_writes() {
        let m = mem();
        let mut f = FwCfg::new();
        f.add_writable_file("etc/w", vec![0; 4]).unwrap();
        f.set_memory(m.clone());
        m.write_slice(&[9, 8, 7, 6], GuestAddress(0x400)).unwrap();
        put_req(&m, 0x100, (0x20 << 16) | DMA_SELECT | DMA_WRITE, 4, 0x400);
        dma_at(&mut f, 0x100);
        assert_eq!(f.file("etc/w").unwrap(), [9, 8, 7, 6]);
    }
}
