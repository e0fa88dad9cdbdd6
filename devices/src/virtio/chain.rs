//! Descriptor chains of a split virtqueue, walked defensively: a chain that loops, runs
//! past the queue, points outside guest RAM, nests indirect tables or puts a
//! device-readable buffer after a device-writable one is an error the device reports by
//! setting NEEDS_RESET — never a panic, a hang or an access outside guest memory.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// The most descriptors one chain may have, indirect tables included.
pub const MAX_CHAIN: usize = 4096;

/// One buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("descriptor index {0} is outside the table")]
    IndexOutOfRange(u16),
    #[error("descriptor chain loops or is longer than its table")]
    TooLong,
    #[error("descriptor table at {0:#x} is outside guest RAM")]
    TableOutsideRam(u64),
    #[error("buffer at {addr:#x} (length {len}) is outside guest RAM")]
    OutsideRam { addr: u64, len: u32 },
    #[error("an indirect table inside an indirect table")]
    NestedIndirect,
    #[error("indirect table length {0} is not a multiple of 16 or is empty")]
    BadIndirectLength(u32),
    #[error("a device-readable buffer follows a device-writable one")]
    WrongDirection,
}

/// A chain: its head index (what goes into the used ring) and its buffers in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    pub descs: Vec<Desc>,
}

fn read_desc<M: GuestMemory>(mem: &M, table: u64, i: u16) -> Result<(Desc, u16, u16), ChainError> {
    let mut raw = [0u8; 16];
    let at = table + u64::from(i) * 16;
    mem.read_slice(&mut raw, GuestAddress(at))
        .map_err(|_| ChainError::TableOutsideRam(at))?;
    let addr = u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default());
    let len = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
    let flags = u16::from_le_bytes([raw[12], raw[13]]);
    let next = u16::from_le_bytes([raw[14], raw[15]]);
    Ok((
        Desc {
            addr,
            len,
            write: flags & F_WRITE != 0,
        },
        flags,
        next,
    ))
}

fn in_ram<M: GuestMemory>(mem: &M, d: &Desc) -> bool {
    d.len == 0
        || (d.addr.checked_add(u64::from(d.len)).is_some()
            && mem.check_range(
                GuestAddress(d.addr),
                d.len as usize,
                vm_memory::Permissions::ReadWrite,
            ))
}

/// Walk the chain starting at `head` in the descriptor table at `table` (of `size`
/// entries).
pub fn walk<M: GuestMemory>(
    mem: &M,
    table: u64,
    size: u16,
    head: u16,
) -> Result<Chain, ChainError> {
    let mut descs = Vec::new();
    let (mut tbl, mut n, mut i) = (table, size, head);
    let mut indirect = false;
    let mut steps = 0usize;
    loop {
        if i >= n {
            return Err(ChainError::IndexOutOfRange(i));
        }
        steps += 1;
        if steps > usize::from(n) || descs.len() >= MAX_CHAIN {
            return Err(ChainError::TooLong);
        }
        let (d, flags, next) = read_desc(mem, tbl, i)?;
        if flags & F_INDIRECT != 0 {
            if indirect {
                return Err(ChainError::NestedIndirect);
            }
            if d.len == 0 || d.len % 16 != 0 || d.len / 16 > 65535 {
                return Err(ChainError::BadIndirectLength(d.len));
            }
            if !in_ram(mem, &d) {
                return Err(ChainError::TableOutsideRam(d.addr));
            }
            // The indirect table replaces the rest of the chain (NEXT is ignored).
            indirect = true;
            tbl = d.addr;
            n = (d.len / 16) as u16;
            i = 0;
            steps = 0;
            continue;
        }
        if !in_ram(mem, &d) {
            return Err(ChainError::OutsideRam {
                addr: d.addr,
                len: d.len,
            });
        }
        if !d.write && descs.last().is_some_and(|p: &Desc| p.write) {
            return Err(ChainError::WrongDirection);
        }
        descs.push(d);
        if flags & F_NEXT == 0 {
            return Ok(Chain { head, descs });
        }
        i = next;
    }
}

impl Chain {
    /// Total bytes of device-readable buffers.
    pub fn readable_len(&self) -> u64 {
        self.descs
            .iter()
            .filter(|d| !d.write)
            .map(|d| u64::from(d.len))
            .sum()
    }

    /// Total bytes of device-writable buffers.
    pub fn writable_len(&self) -> u64 {
        self.descs
            .iter()
            .filter(|d| d.write)
            .map(|d| u64::from(d.len))
            .sum()
    }

    /// The guest ranges of `len` bytes starting `skip` bytes into the readable (or
    /// writable) buffers.
    pub fn ranges(&self, write: bool, mut skip: u64, mut len: u64) -> Vec<(u64, usize)> {
        let mut out = Vec::new();
        for d in self.descs.iter().filter(|d| d.write == write) {
            if len == 0 {
                break;
            }
            let dl = u64::from(d.len);
            if skip >= dl {
                skip -= dl;
                continue;
            }
            let n = (dl - skip).min(len);
            out.push((d.addr + skip, n as usize));
            len -= n;
            skip = 0;
        }
        out
    }

    /// Gather `buf.len()` readable bytes starting `skip` bytes in; returns how many were
    /// available.
    pub fn read_at<M: GuestMemory>(&self, mem: &M, skip: u64, buf: &mut [u8]) -> usize {
        let mut done = 0;
        for (addr, n) in self.ranges(false, skip, buf.len() as u64) {
            if mem
                .read_slice(&mut buf[done..done + n], GuestAddress(addr))
                .is_err()
            {
                break;
            }
            done += n;
        }
        done
    }

    /// Scatter `data` into the writable buffers starting `skip` bytes in; returns how
    /// many bytes were written.
    pub fn write_at<M: GuestMemory>(&self, mem: &M, skip: u64, data: &[u8]) -> usize {
        let mut done = 0;
        for (addr, n) in self.ranges(true, skip, data.len() as u64) {
            if mem
                .write_slice(&data[done..done + n], GuestAddress(addr))
                .is_err()
            {
                break;
            }
            done += n;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn put(m: &GuestMemoryMmap, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        m.write_slice(&raw, GuestAddress(table + u64::from(i) * 16))
            .unwrap();
    }

    #[test]
    fn a_well_formed_chain_with_an_indirect_table_reads_and_writes() {
        let m = mem();
        put(&m, 0x1000, 0, 0x8000, 3, F_NEXT, 5);
        put(&m, 0x1000, 5, 0x3000, 32, F_INDIRECT, 0);
        put(&m, 0x3000, 0, 0x9000, 4, F_NEXT | F_WRITE, 1);
        put(&m, 0x3000, 1, 0xa000, 4, F_WRITE, 0);
        m.write_slice(b"abc", GuestAddress(0x8000)).unwrap();
        let c = walk(&m, 0x1000, 8, 0).unwrap();
        assert_eq!(c.descs.len(), 3);
        assert_eq!((c.readable_len(), c.writable_len()), (3, 8));
        let mut b = [0u8; 2];
        assert_eq!(c.read_at(&m, 1, &mut b), 2);
        assert_eq!(&b, b"bc");
        assert_eq!(c.write_at(&m, 2, b"wxyz"), 4);
        let mut out = [0u8; 4];
        m.read_slice(&mut out, GuestAddress(0x9000)).unwrap();
        assert_eq!(&out[2..], b"wx");
        m.read_slice(&mut out, GuestAddress(0xa000)).unwrap();
        assert_eq!(&out[..2], b"yz");
    }

    #[test]
    fn hostile_chains_are_errors() {
        let m = mem();
        // A loop: 0 -> 1 -> 0.
        put(&m, 0x1000, 0, 0x8000, 1, F_NEXT, 1);
        put(&m, 0x1000, 1, 0x8000, 1, F_NEXT, 0);
        assert_eq!(walk(&m, 0x1000, 4, 0), Err(ChainError::TooLong));
        // Next index past the table.
        put(&m, 0x1000, 0, 0x8000, 1, F_NEXT, 9);
        assert_eq!(walk(&m, 0x1000, 4, 0), Err(ChainError::IndexOutOfRange(9)));
        // A buffer outside RAM, and one whose end wraps.
        put(&m, 0x1000, 0, 0x4000_0000, 16, 0, 0);
        assert!(matches!(
            walk(&m, 0x1000, 4, 0),
            Err(ChainError::OutsideRam { .. })
        ));
        put(&m, 0x1000, 0, u64::MAX - 4, 16, 0, 0);
        assert!(matches!(
            walk(&m, 0x1000, 4, 0),
            Err(ChainError::OutsideRam { .. })
        ));
        // Readable after writable.
        put(&m, 0x1000, 0, 0x8000, 1, F_NEXT | F_WRITE, 1);
        put(&m, 0x1000, 1, 0x8000, 1, 0, 0);
        assert_eq!(walk(&m, 0x1000, 4, 0), Err(ChainError::WrongDirection));
        // Nested indirect tables and bad indirect lengths.
        put(&m, 0x1000, 0, 0x3000, 16, F_INDIRECT, 0);
        put(&m, 0x3000, 0, 0x3000, 16, F_INDIRECT, 0);
        assert_eq!(walk(&m, 0x1000, 4, 0), Err(ChainError::NestedIndirect));
        put(&m, 0x1000, 0, 0x3000, 20, F_INDIRECT, 0);
        assert_eq!(
            walk(&m, 0x1000, 4, 0),
            Err(ChainError::BadIndirectLength(20))
        );
        // A table outside RAM.
        assert!(matches!(
            walk(&m, 0x7fff_0000, 4, 0),
            Err(ChainError::TableOutsideRam(_))
        ));
    }

    #[test]
    fn random_tables_never_panic() {
        let m = mem();
        let mut x: u64 = 0x1234_5678;
        for round in 0..2000 {
            for i in 0..16u16 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let addr = if x & 1 == 0 { x % 0x10_0000 } else { x };
                put(
                    &m,
                    0x2000,
                    i,
                    addr,
                    (x >> 20) as u32 % 0x2000,
                    (x >> 40) as u16 & 7,
                    (x >> 50) as u16 % 20,
                );
            }
            let _ = walk(&m, 0x2000, 16, round % 16);
        }
    }
}
