//! virtio-blk: the configuration space and feature bits, and the translation of a
//! descriptor chain into a typed block request (and of its completion back into the
//! guest's buffers). The I/O itself is done by the drive's block backend actor.

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemory;

use super::chain::Chain;
use super::VirtioDeviceModel;
use crate::block::{BlockError, BlockOp, HostBuf};
use crate::{Snapshot, StateError};

pub const F_SIZE_MAX: u64 = 1 << 1;
pub const F_SEG_MAX: u64 = 1 << 2;
pub const F_RO: u64 = 1 << 5;
pub const F_BLK_SIZE: u64 = 1 << 6;
pub const F_FLUSH: u64 = 1 << 9;
pub const F_TOPOLOGY: u64 = 1 << 10;
pub const F_MQ: u64 = 1 << 12;
pub const F_DISCARD: u64 = 1 << 13;
pub const F_WRITE_ZEROES: u64 = 1 << 14;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;

pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

pub const SECTOR: u64 = 512;
/// Largest single buffer, and most data segments, the device accepts (QEMU's values).
pub const SIZE_MAX: u32 = 1 << 20;
pub const SEG_MAX: u32 = 254;
/// Most sectors one discard or write-zeroes segment may cover.
pub const MAX_DISCARD_SECTORS: u32 = (1 << 30) / 512;
/// The `serial=` string is at most this long (GET_ID).
pub const ID_BYTES: usize = 20;

/// What the command line configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlkConfig {
    /// Bytes.
    pub capacity: u64,
    pub read_only: bool,
    pub num_queues: u16,
    pub queue_size: u16,
    pub serial: String,
    pub discard: bool,
}

/// The device model (configuration space and features).
pub struct Blk {
    cfg: BlkConfig,
    space: Vec<u8>,
}

impl Blk {
    pub fn new(cfg: BlkConfig) -> Self {
        let mut s = vec![0u8; 60];
        s[0..8].copy_from_slice(&(cfg.capacity / SECTOR).to_le_bytes());
        s[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        s[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        // geometry (16..20) left 0; blk_size:
        s[20..24].copy_from_slice(&512u32.to_le_bytes());
        // topology: physical block exponent 0, alignment 0, min_io 1, opt_io 0.
        s[26..28].copy_from_slice(&1u16.to_le_bytes());
        s[34..36].copy_from_slice(&cfg.num_queues.to_le_bytes());
        s[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        s[40..44].copy_from_slice(&1u32.to_le_bytes());
        s[44..48].copy_from_slice(&1u32.to_le_bytes());
        s[48..52].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        s[52..56].copy_from_slice(&1u32.to_le_bytes());
        s[56] = u8::from(cfg.discard);
        Self { cfg, space: s }
    }

    pub fn config(&self) -> &BlkConfig {
        &self.cfg
    }
}

/// What the driver of a virtio-blk sees of its disk: the configuration space and
/// feature bits follow from these, and the driver sets nothing in it. Nothing is restored:
/// the disk on the destination (rebuilt from its own command line over the same image)
/// must show the guest the same, or the driver would find its disk changed under it
/// (another size, writes refused, a queue gone); a state that differs is refused, naming
/// the field.
///
/// Requests in flight are not here: the virtio-blk actor drains them to the backend before
/// it is saved, and saves the queues' ring indices next to the transport's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlkState {
    /// Bytes.
    pub capacity: u64,
    pub read_only: bool,
    pub num_queues: u16,
    pub queue_size: u16,
    /// The GET_ID answer.
    pub serial: String,
    pub discard: bool,
}

impl Snapshot for Blk {
    type State = BlkState;
    const KIND: &'static str = "virtio-blk";
    const VERSION: u32 = 1;

    fn save(&self) -> BlkState {
        let c = &self.cfg;
        BlkState {
            capacity: c.capacity,
            read_only: c.read_only,
            num_queues: c.num_queues,
            queue_size: c.queue_size,
            serial: c.serial.clone(),
            discard: c.discard,
        }
    }

    fn restore(&mut self, s: BlkState) -> Result<(), StateError> {
        let here = self.save();
        let differs = |field: &str, saved: &dyn std::fmt::Debug, now: &dyn std::fmt::Debug| {
            StateError::invalid(
                Self::KIND,
                format!("{field} is {saved:?} in the state but {now:?} on this disk"),
            )
        };
        macro_rules! same {
            ($f:ident) => {
                if s.$f != here.$f {
                    return Err(differs(stringify!($f), &s.$f, &here.$f));
                }
            };
        }
        same!(capacity);
        same!(read_only);
        same!(num_queues);
        same!(queue_size);
        same!(serial);
        same!(discard);
        Ok(())
    }
}

impl VirtioDeviceModel for Blk {
    fn device_type(&self) -> u16 {
        super::device_type::BLOCK
    }
    fn features(&self) -> u64 {
        let mut f = F_SIZE_MAX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_TOPOLOGY | F_WRITE_ZEROES;
        if self.cfg.read_only {
            f |= F_RO;
        }
        if self.cfg.num_queues > 1 {
            f |= F_MQ;
        }
        if self.cfg.discard {
            f |= F_DISCARD;
        }
        f
    }
    fn queue_sizes(&self) -> Vec<u16> {
        vec![self.cfg.queue_size; usize::from(self.cfg.num_queues)]
    }
    fn config_len(&self) -> usize {
        self.space.len()
    }
    fn config_read(&self, offset: usize, data: &mut [u8]) {
        super::read_bytes(&self.space, offset, data);
    }
    fn pci_class(&self) -> (u8, u8) {
        (0x01, 0x00)
    }
}

/// A request the device answers itself, without the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Immediate {
    /// GET_ID: the serial, NUL-padded.
    Id(Vec<u8>),
    /// Status to return with nothing written.
    Status(u8),
}

/// What a chain asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Backend(BlockOp),
    Immediate(Immediate),
}

/// Why a chain is not a block request at all (the device sets NEEDS_RESET).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlkChainError {
    #[error("request header shorter than 16 bytes")]
    ShortHeader,
    #[error("no device-writable status byte")]
    NoStatus,
}

/// Turn a chain into a request. Bad sector ranges and unknown types are answered with a
/// status (the driver's fault, reported to it); a chain without a header or a status byte
/// is a malformed ring.
pub fn parse<M: GuestMemory>(
    mem: &M,
    chain: &Chain,
    cfg: &BlkConfig,
) -> Result<Parsed, BlkChainError> {
    let mut hdr = [0u8; 16];
    if chain.readable_len() < 16 || chain.read_at(mem, 0, &mut hdr) < 16 {
        return Err(BlkChainError::ShortHeader);
    }
    if chain.writable_len() < 1 {
        return Err(BlkChainError::NoStatus);
    }
    let ty = u32::from_le_bytes(hdr[0..4].try_into().unwrap_or_default());
    let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or_default());
    let ioerr = Ok(Parsed::Immediate(Immediate::Status(S_IOERR)));
    let in_range = |off: u64, len: u64| off.checked_add(len).is_some_and(|end| end <= cfg.capacity);
    match ty {
        T_IN | T_OUT => {
            let Some(offset) = sector.checked_mul(SECTOR) else {
                return ioerr;
            };
            let len = if ty == T_IN {
                chain.writable_len() - 1
            } else {
                chain.readable_len() - 16
            };
            if len % SECTOR != 0 || !in_range(offset, len) {
                return ioerr;
            }
            if ty == T_OUT && cfg.read_only {
                return ioerr;
            }
            // Straight to and from guest memory when every buffer lies in one region.
            if let Some(bufs) =
                host_bufs(mem, chain, ty == T_IN, if ty == T_IN { 0 } else { 16 }, len)
            {
                return Ok(Parsed::Backend(if ty == T_IN {
                    BlockOp::ReadV { offset, bufs }
                } else {
                    BlockOp::WriteV { offset, bufs }
                }));
            }
            if ty == T_IN {
                return Ok(Parsed::Backend(BlockOp::Read {
                    offset,
                    len: len as usize,
                }));
            }
            let mut data = vec![0u8; len as usize];
            chain.read_at(mem, 16, &mut data);
            Ok(Parsed::Backend(BlockOp::Write { offset, data }))
        }
        T_FLUSH => Ok(Parsed::Backend(BlockOp::Flush)),
        T_GET_ID => {
            let mut id = cfg.serial.as_bytes().to_vec();
            id.resize(ID_BYTES, 0);
            Ok(Parsed::Immediate(Immediate::Id(id)))
        }
        T_DISCARD | T_WRITE_ZEROES => {
            if ty == T_DISCARD && !cfg.discard {
                return Ok(Parsed::Immediate(Immediate::Status(S_UNSUPP)));
            }
            if cfg.read_only {
                return ioerr;
            }
            // One segment (max_discard_seg = max_write_zeroes_seg = 1).
            let mut seg = [0u8; 16];
            if chain.readable_len() != 32 || chain.read_at(mem, 16, &mut seg) < 16 {
                return ioerr;
            }
            let s = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
            let n = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
            let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
            let (Some(offset), len) = (s.checked_mul(SECTOR), u64::from(n) * SECTOR) else {
                return ioerr;
            };
            if n > MAX_DISCARD_SECTORS || !in_range(offset, len) || flags & !1 != 0 {
                return ioerr;
            }
            Ok(Parsed::Backend(if ty == T_DISCARD {
                BlockOp::Discard { offset, len }
            } else {
                BlockOp::WriteZeroes { offset, len }
            }))
        }
        _ => Ok(Parsed::Immediate(Immediate::Status(S_UNSUPP))),
    }
}

/// The host addresses of `len` bytes of the chain's writable (or readable) buffers,
/// starting `skip` bytes in (a buffer that straddles guest RAM regions becomes several);
/// None if some part is not guest RAM.
fn host_bufs<M: GuestMemory>(
    mem: &M,
    chain: &Chain,
    write: bool,
    skip: u64,
    len: u64,
) -> Option<Vec<HostBuf>> {
    let mut out = Vec::new();
    for (addr, n) in chain.ranges(write, skip, len) {
        if n == 0 {
            continue;
        }
        let access = if write {
            vm_memory::Permissions::Write
        } else {
            vm_memory::Permissions::Read
        };
        for s in mem
            .get_slices(vm_memory::GuestAddress(addr), n, access)
            .ok()?
        {
            let s = s.ok()?;
            if write {
                // The host's I/O writes these pages through the raw address, which the
                // memory's dirty bitmap cannot see.
                vm_memory::bitmap::Bitmap::mark_dirty(s.bitmap(), 0, s.len());
            }
            out.push(HostBuf {
                addr: s.ptr_guard_mut().as_ptr() as usize,
                len: s.len(),
            });
        }
    }
    Some(out)
}

/// Answer a request whose data went straight to guest memory: the status byte after
/// `data_len` bytes. Returns the used length.
pub fn complete_direct<M: GuestMemory>(mem: &M, chain: &Chain, data_len: u64, status: u8) -> u32 {
    let status_at = chain.writable_len() - 1;
    chain.write_at(mem, status_at, &[status]);
    (data_len + 1) as u32
}

/// Write a request's answer into its chain: data (reads, GET_ID) then the status byte
/// right after the data. Returns the used length (bytes written).
pub fn complete<M: GuestMemory>(mem: &M, chain: &Chain, data: &[u8], status: u8) -> u32 {
    let n = chain.write_at(mem, 0, data);
    let status_at = chain.writable_len() - 1;
    chain.write_at(mem, status_at, &[status]);
    (n + 1) as u32
}

/// The status byte for a backend result.
pub fn status_of(r: &Result<Vec<u8>, BlockError>) -> u8 {
    match r {
        Ok(_) => S_OK,
        Err(_) => S_IOERR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(capacity: u64) -> BlkConfig {
        BlkConfig {
            capacity,
            read_only: false,
            num_queues: 2,
            queue_size: 256,
            serial: "disk0".into(),
            discard: true,
        }
    }

    fn config_space(b: &Blk) -> Vec<u8> {
        let mut v = vec![0u8; b.config_len()];
        b.config_read(0, &mut v);
        v
    }

    #[test]
    fn a_disk_restores_only_onto_a_disk_that_looks_the_same() {
        let disk = Blk::new(cfg(1 << 30));
        let back = crate::check_roundtrip(&disk, Blk::new(cfg(1 << 30)));
        assert_eq!(config_space(&back), config_space(&disk));
        assert_eq!(back.features(), disk.features());
        // A destination whose image is another size would change the disk under the driver.
        let err = Blk::new(cfg(2 << 30))
            .restore(disk.save())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("capacity is 1073741824 in the state but 2147483648"),
            "{err}"
        );
    }
}
