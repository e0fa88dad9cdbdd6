//! Reference counts of a [`Qcow2Snapshots`] image: read whole into memory, changed
//! there, allocated from (first fit), and written back in the two phases the module
//! comment of [`super`] describes.

use super::{be64, Qcow2Snapshots, Result, SnapshotError};

impl Qcow2Snapshots {
    /// Entries of one refcount block.
    fn per_block(&self) -> usize {
        (self.cs() * 8 / u64::from(self.refcount_bits)) as usize
    }

    pub(super) fn read_refcounts(&mut self) -> Result<()> {
        let cs = self.cs();
        if !self.rt_offset.is_multiple_of(cs) || self.rt_clusters == 0 {
            return Err(self.corrupt(format!(
                "refcount table at {:#x} of {} clusters",
                self.rt_offset, self.rt_clusters
            )));
        }
        let rt_len = u64::from(self.rt_clusters) * cs;
        if rt_len > 8 << 20 {
            return Err(self.corrupt(format!("refcount table of {rt_len} bytes")));
        }
        let mut rt = vec![0u8; rt_len as usize];
        self.read(&mut rt, self.rt_offset)?;
        self.reftable = rt.chunks(8).map(|c| be64(c, 0) & !0x1ff).collect();
        let per = self.per_block();
        self.file_len = self.file.metadata().map_err(|e| self.err(e))?.len();
        let file_clusters = self.file_len.div_ceil(cs) as usize;
        let last = self
            .reftable
            .iter()
            .rposition(|&o| o != 0)
            .map_or(0, |i| i + 1);
        let mut rc = vec![0u64; file_clusters.max(1).min(last * per)];
        let mut block = vec![0u8; cs as usize];
        for (bi, &off) in self.reftable.iter().enumerate() {
            if off == 0 || bi * per >= rc.len() {
                continue;
            }
            if !off.is_multiple_of(cs) {
                return Err(self.corrupt(format!("refcount block at {off:#x}")));
            }
            self.read(&mut block, off)?;
            for j in 0..per.min(rc.len() - bi * per) {
                rc[bi * per + j] = self.decode(&block, j);
            }
        }
        // Counts past the file's end must be zero; anything else is kept, not lost.
        self.orig = rc.clone();
        self.cur = rc;
        Ok(())
    }

    fn decode(&self, block: &[u8], j: usize) -> u64 {
        let bits = self.refcount_bits as usize;
        if bits < 8 {
            let bit = j * bits;
            u64::from((block[bit / 8] >> (bit % 8)) & ((1u16 << bits) - 1) as u8)
        } else {
            let n = bits / 8;
            block[j * n..j * n + n]
                .iter()
                .fold(0u64, |a, &b| (a << 8) | u64::from(b))
        }
    }

    fn encode(&self, block: &mut [u8], j: usize, v: u64) {
        let bits = self.refcount_bits as usize;
        if bits < 8 {
            let bit = j * bits;
            let mask = (((1u16 << bits) - 1) as u8) << (bit % 8);
            block[bit / 8] = (block[bit / 8] & !mask) | (((v as u8) << (bit % 8)) & mask);
        } else {
            let n = bits / 8;
            for (k, b) in block[j * n..j * n + n].iter_mut().enumerate() {
                *b = (v >> (8 * (n - 1 - k))) as u8;
            }
        }
    }

    fn max_refcount(&self) -> u64 {
        if self.refcount_bits == 64 {
            u64::MAX
        } else {
            (1u64 << self.refcount_bits) - 1
        }
    }

    pub(super) fn get(v: &[u64], i: usize) -> u64 {
        v.get(i).copied().unwrap_or(0)
    }

    /// Add `delta` to the count of cluster `i`.
    pub(super) fn adjust(&mut self, i: usize, delta: i64) -> Result<()> {
        if i >= self.cur.len() && delta < 0 {
            return Err(self.corrupt(format!(
                "cluster {:#x} is referenced but has no refcount",
                (i as u64) << self.cluster_bits
            )));
        }
        if i >= self.cur.len() {
            self.cur.resize(i + 1, 0);
        }
        let old = self.cur[i];
        let new = old
            .checked_add_signed(delta)
            .filter(|&n| n <= self.max_refcount());
        let Some(new) = new else {
            return Err(if delta < 0 {
                self.corrupt(format!(
                    "cluster {:#x} is referenced more often than its refcount {old} says",
                    (i as u64) << self.cluster_bits
                ))
            } else {
                SnapshotError::Limit {
                    path: self.path.clone(),
                    what: format!(
                        "refcount overflow at cluster {:#x} ({}-bit refcounts)",
                        (i as u64) << self.cluster_bits,
                        self.refcount_bits
                    ),
                }
            });
        };
        self.cur[i] = new;
        self.dirty_blocks.insert(i / self.per_block());
        Ok(())
    }

    /// Add `delta` to every cluster touched by `[offset, offset + len)`.
    pub(super) fn adjust_range(&mut self, offset: u64, len: u64, delta: i64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let first = offset >> self.cluster_bits;
        let last = (offset + len - 1) >> self.cluster_bits;
        for c in first..=last {
            self.adjust(c as usize, delta)?;
        }
        Ok(())
    }

    fn free_index(&self, from: usize) -> usize {
        let mut i = from.max(1);
        while Self::get(&self.cur, i) != 0 || Self::get(&self.orig, i) != 0 {
            i += 1;
        }
        i
    }

    /// `n` contiguous clusters, free both on disk and in this operation, with count 1.
    pub(super) fn alloc(&mut self, n: u64) -> Result<u64> {
        let n = n.max(1) as usize;
        let mut start = self.free_index(0);
        loop {
            match (start..start + n)
                .find(|&i| Self::get(&self.cur, i) != 0 || Self::get(&self.orig, i) != 0)
            {
                None => break,
                Some(busy) => start = self.free_index(busy + 1),
            }
        }
        for i in start..start + n {
            self.adjust(i, 1)?;
        }
        for i in start..start + n {
            self.cover(i)?;
        }
        Ok((start as u64) << self.cluster_bits)
    }

    /// Make sure a refcount block holds the count of cluster `i`.
    fn cover(&mut self, i: usize) -> Result<()> {
        let bi = i / self.per_block();
        if bi >= self.reftable.len() {
            self.reftable.resize(bi + 1, 0);
            self.reftable_moved = true;
        }
        if self.reftable[bi] != 0 {
            return Ok(());
        }
        let c = self.free_index(0);
        self.adjust(c, 1)?;
        self.reftable[bi] = (c as u64) << self.cluster_bits;
        self.new_blocks.insert(bi);
        self.dirty_blocks.insert(bi);
        self.cover(c)
    }

    /// Write the dirty refcount blocks, each count `pick(orig, cur)`.
    fn write_refblocks(&self, pick: impl Fn(u64, u64) -> u64) -> Result<()> {
        let per = self.per_block();
        let mut block = vec![0u8; self.cs() as usize];
        for &bi in &self.dirty_blocks {
            block.fill(0);
            for j in 0..per {
                let i = bi * per + j;
                let v = pick(Self::get(&self.orig, i), Self::get(&self.cur, i));
                if v != 0 {
                    self.encode(&mut block, j, v);
                }
            }
            self.write(&block, self.reftable[bi])?;
        }
        Ok(())
    }

    /// Phase one: counts only grow on disk; a grown refcount table is written to new
    /// clusters (the header switches to it in [`Self::write_header`]).
    pub(super) fn commit_grow(&mut self) -> Result<()> {
        if self.reftable_moved {
            let cs = self.cs();
            let old = (self.rt_offset, u64::from(self.rt_clusters) * cs);
            loop {
                let clusters = (self.reftable.len() as u64 * 8).div_ceil(cs) + 1;
                let off = self.alloc(clusters)?;
                if self.reftable.len() as u64 * 8 <= clusters * cs {
                    self.reftable.resize((clusters * cs / 8) as usize, 0);
                    self.rt_offset = off;
                    self.rt_clusters = clusters as u32;
                    break;
                }
                self.adjust_range(off, clusters * cs, -1)?;
            }
            self.adjust_range(old.0, old.1, -1)?;
            let mut rt = Vec::with_capacity(self.reftable.len() * 8);
            for o in &self.reftable {
                rt.extend_from_slice(&o.to_be_bytes());
            }
            self.write_refblocks(u64::max)?;
            self.write(&rt, self.rt_offset)?;
        } else {
            self.write_refblocks(u64::max)?;
            // New blocks are reachable once their table entries are written.
            for &bi in &self.new_blocks {
                self.write(
                    &self.reftable[bi].to_be_bytes(),
                    self.rt_offset + bi as u64 * 8,
                )?;
            }
        }
        self.sync()
    }

    /// Phase two: the final counts (frees take effect).
    pub(super) fn commit_final(&mut self) -> Result<()> {
        self.write_refblocks(|_, c| c)?;
        self.sync()?;
        self.orig.clone_from(&self.cur);
        self.dirty_blocks.clear();
        self.new_blocks.clear();
        self.reftable_moved = false;
        Ok(())
    }
}
