//! qcow2 internal snapshots (what `savevm`, `loadvm`, `delvm` and `info snapshots` stand
//! on), stored exactly as QEMU stores them, on an image nobody else has open (the block
//! actor closes imago first, and reopens it after).
//!
//! Layout (QEMU's `docs/interop/qcow2.txt`): a snapshot is an entry of the snapshot table
//! (header fields `nb_snapshots`, `snapshots_offset`) naming a copy of the L1 table. The L2
//! tables and data clusters are shared with the active L1 table and counted once per L1
//! table that reaches them; an active L1/L2 entry carries the COPIED flag exactly when the
//! refcount of what it points at is 1, which is how a writer (imago, QEMU) knows it must
//! copy a cluster before writing it. The VM state lives in guest clusters at and past the
//! virtual disk size (rounded up to a cluster), mapped only through the snapshot's own L1
//! copy; its length is the entry's `vm_state_size`.
//!
//! Crash safety: every change is a transaction of (1) new clusters written, (2) refcount
//! blocks written with, per cluster, the larger of the old and new counts, fsync, (3)
//! COPIED flags cleared where a count grew, (4) the header's fields in one write, fsync,
//! (5) refcount blocks written with the final counts, fsync, (6) COPIED flags set where a
//! count fell to 1. A crash at any point leaves the old state or the new one, at worst
//! with leaked clusters and COPIED flags out of step with those too-high counts (QEMU's
//! own order has the same windows; `qemu-img check -r all` repairs both), never a COPIED
//! flag on a cluster two tables reach, nor a count below its references.
//!
//! Reference counts are read whole into memory (one `u64` per cluster of the file).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

mod refcount;

const MAGIC: u32 = 0x5146_49fb;
/// L1/L2 entry bits (qcow2.txt, "Cluster mapping").
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Incompatible feature bits this module cannot work under: dirty (refcounts may be
/// stale), corrupt, external data file, extended L2 entries.
const INCOMPAT_REFUSED: &[(u64, &str)] = &[
    (1 << 0, "dirty"),
    (1 << 1, "corrupt"),
    (1 << 2, "external data file"),
    (1 << 4, "extended L2 entries"),
];
/// QEMU's limits (block/qcow2.h).
const MAX_SNAPSHOTS: usize = 65536;
const MAX_L1_BYTES: u64 = 32 << 20;
const MAX_NAME: usize = 65535;
/// Snapshot extra data troupe writes: vm_state_size_large, disk_size, icount.
const EXTRA_LEN: usize = 24;

/// A qcow2 internal snapshot failed; every variant names the image.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Snapshot '{name}' does not exist in '{path}'")]
    NotFound { path: PathBuf, name: String },
    #[error("'{path}' is not a qcow2 image")]
    NotQcow2 { path: PathBuf },
    #[error("'{path}': internal snapshots are not supported with the qcow2 feature '{feature}'")]
    Unsupported { path: PathBuf, feature: String },
    #[error("'{path}' is corrupt: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error("'{path}': {what}")]
    Limit { path: PathBuf, what: String },
    #[error("qcow2: Loading snapshots with different disk size is not supported ('{name}' of '{path}': {snapshot} bytes, the image has {image})")]
    SizeDiffers {
        path: PathBuf,
        name: String,
        snapshot: u64,
        image: u64,
    },
}

type Result<T> = std::result::Result<T, SnapshotError>;

/// One snapshot, as `qemu-img snapshot -l` and `info snapshots` list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub id: String,
    pub name: String,
    pub vm_state_size: u64,
    pub date_sec: u32,
    pub date_nsec: u32,
    pub vm_clock_ns: u64,
    /// None when the snapshot was taken without instruction counting (QEMU's -1).
    pub icount: Option<u64>,
    /// The virtual disk size when the snapshot was taken (absent in old v2 entries).
    pub disk_size: Option<u64>,
}

/// What a new snapshot records besides the disk.
#[derive(Debug, Clone, Default)]
pub struct NewSnapshot<'a> {
    pub name: &'a str,
    pub vm_state: &'a [u8],
    pub vm_clock_ns: u64,
    pub icount: Option<u64>,
    /// Wall-clock time (seconds, nanoseconds since the epoch).
    pub date: (u32, u32),
}

/// One snapshot table entry as stored.
#[derive(Debug, Clone)]
struct Entry {
    l1_offset: u64,
    l1_size: u32,
    info: SnapshotInfo,
    /// The extra data as read (kept verbatim for entries troupe did not write).
    extra: Vec<u8>,
}

/// An open image, its header fields and refcounts in memory, during one operation.
pub struct Qcow2Snapshots {
    file: File,
    path: PathBuf,
    version: u32,
    cluster_bits: u32,
    size: u64,
    l1_offset: u64,
    l1_size: u32,
    rt_offset: u64,
    rt_clusters: u32,
    snapshots_offset: u64,
    refcount_bits: u32,
    entries: Vec<Entry>,
    /// Bytes the snapshot table takes on disk now.
    table_len: u64,
    /// The file's length when opened: nothing on disk may point past it.
    file_len: u64,
    /// Tests: stop (as a crash would) at this point of the next operation.
    #[cfg(test)]
    crash_at: Option<u32>,
    /// Reference counts by cluster index: as on disk when opened, and as they will be.
    orig: Vec<u64>,
    cur: Vec<u64>,
    /// Refcount block offset by block index (0: none).
    reftable: Vec<u64>,
    /// Blocks whose counts changed (to be written).
    dirty_blocks: BTreeSet<usize>,
    /// Blocks made in this operation (nothing on disk points at them yet).
    new_blocks: BTreeSet<usize>,
    /// The refcount table outgrew its clusters: a new one is written.
    reftable_moved: bool,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap_or_default())
}
fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

impl Qcow2Snapshots {
    /// Open `path` for reading (`writable` false: list and read only) and load its header,
    /// snapshot table and refcounts.
    pub fn open(path: &Path, writable: bool) -> Result<Self> {
        let io_err = |source| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(io_err)?;
        let mut h = [0u8; 104];
        let got = file.read_at(&mut h, 0).map_err(io_err)?;
        if got < 72 || be32(&h, 0) != MAGIC {
            return Err(SnapshotError::NotQcow2 {
                path: path.to_path_buf(),
            });
        }
        let version = be32(&h, 4);
        let cluster_bits = be32(&h, 20);
        let corrupt = |what: String| SnapshotError::Corrupt {
            path: path.to_path_buf(),
            what,
        };
        if !(2..=3).contains(&version) || !(9..=21).contains(&cluster_bits) {
            return Err(corrupt(format!(
                "unsupported version {version} or cluster_bits {cluster_bits}"
            )));
        }
        let refcount_bits = if version == 3 {
            if got < 104 {
                return Err(corrupt("short v3 header".into()));
            }
            let incompat = be64(&h, 72);
            for (bit, feature) in INCOMPAT_REFUSED {
                if incompat & bit != 0 {
                    return Err(SnapshotError::Unsupported {
                        path: path.to_path_buf(),
                        feature: (*feature).into(),
                    });
                }
            }
            let order = be32(&h, 96);
            if order > 6 {
                return Err(corrupt(format!("refcount_order {order}")));
            }
            1u32 << order
        } else {
            16
        };
        if be32(&h, 32) != 0 {
            return Err(SnapshotError::Unsupported {
                path: path.to_path_buf(),
                feature: "encryption".into(),
            });
        }
        let mut s = Self {
            file,
            path: path.to_path_buf(),
            version,
            cluster_bits,
            size: be64(&h, 24),
            l1_size: be32(&h, 36),
            l1_offset: be64(&h, 40),
            rt_offset: be64(&h, 48),
            rt_clusters: be32(&h, 56),
            snapshots_offset: be64(&h, 64),
            refcount_bits,
            entries: Vec::new(),
            table_len: 0,
            file_len: 0,
            #[cfg(test)]
            crash_at: None,
            orig: Vec::new(),
            cur: Vec::new(),
            reftable: Vec::new(),
            dirty_blocks: BTreeSet::new(),
            new_blocks: BTreeSet::new(),
            reftable_moved: false,
        };
        let nb = be32(&h, 60) as usize;
        if nb > MAX_SNAPSHOTS {
            return Err(corrupt(format!("nb_snapshots {nb}")));
        }
        s.read_snapshot_table(nb)?;
        s.read_refcounts()?;
        Ok(s)
    }

    /// Where a test may stop an operation as a crash would (see the module comment for
    /// the steps): 0 new clusters written, 1 counts grown, 2 COPIED flags cleared, 3
    /// header written, 4 final counts written.
    fn crash_point(&self, _step: u32) -> Result<()> {
        #[cfg(test)]
        if self.crash_at == Some(_step) {
            return Err(self.err(io::Error::other(format!("simulated crash at step {_step}"))));
        }
        Ok(())
    }

    fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn err(&self, source: io::Error) -> SnapshotError {
        SnapshotError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, what: impl Into<String>) -> SnapshotError {
        SnapshotError::Corrupt {
            path: self.path.clone(),
            what: what.into(),
        }
    }

    fn read(&self, buf: &mut [u8], at: u64) -> Result<()> {
        // Past the end of the file reads as zeros (a table in a cluster not yet written).
        let mut done = 0;
        while done < buf.len() {
            let n = self
                .file
                .read_at(&mut buf[done..], at + done as u64)
                .map_err(|e| self.err(e))?;
            if n == 0 {
                buf[done..].fill(0);
                break;
            }
            done += n;
        }
        Ok(())
    }

    fn write(&self, buf: &[u8], at: u64) -> Result<()> {
        self.file.write_all_at(buf, at).map_err(|e| self.err(e))
    }

    fn sync(&self) -> Result<()> {
        self.file.sync_all().map_err(|e| self.err(e))
    }

    fn read_snapshot_table(&mut self, nb: usize) -> Result<()> {
        if nb == 0 {
            return Ok(());
        }
        if !self.snapshots_offset.is_multiple_of(self.cs()) {
            return Err(self.corrupt(format!(
                "snapshots_offset {:#x} is not cluster-aligned",
                self.snapshots_offset
            )));
        }
        let mut at = self.snapshots_offset;
        for _ in 0..nb {
            let mut hdr = [0u8; 40];
            self.read(&mut hdr, at)?;
            let id_len = be16(&hdr, 12) as usize;
            let name_len = be16(&hdr, 14) as usize;
            let extra_len = be32(&hdr, 36) as usize;
            if extra_len > 1024 {
                return Err(self.corrupt(format!("snapshot extra data of {extra_len} bytes")));
            }
            let mut rest = vec![0u8; extra_len + id_len + name_len];
            self.read(&mut rest, at + 40)?;
            let extra = rest[..extra_len].to_vec();
            let id = String::from_utf8_lossy(&rest[extra_len..extra_len + id_len]).into_owned();
            let name = String::from_utf8_lossy(&rest[extra_len + id_len..]).into_owned();
            let mut vm_state_size = u64::from(be32(&hdr, 32));
            if extra_len >= 8 {
                vm_state_size = be64(&extra, 0);
            }
            let disk_size = (extra_len >= 16).then(|| be64(&extra, 8));
            let icount = if extra_len >= 24 {
                Some(be64(&extra, 16)).filter(|&i| i != u64::MAX)
            } else {
                None
            };
            let l1_offset = be64(&hdr, 0);
            let l1_size = be32(&hdr, 8);
            if !l1_offset.is_multiple_of(self.cs()) || u64::from(l1_size) * 8 > MAX_L1_BYTES {
                return Err(self.corrupt(format!(
                    "snapshot '{name}': L1 table at {l1_offset:#x} of {l1_size} entries"
                )));
            }
            self.entries.push(Entry {
                l1_offset,
                l1_size,
                info: SnapshotInfo {
                    id,
                    name,
                    vm_state_size,
                    date_sec: be32(&hdr, 16),
                    date_nsec: be32(&hdr, 20),
                    vm_clock_ns: be64(&hdr, 24),
                    icount,
                    disk_size,
                },
                extra,
            });
            at += (40 + rest.len() as u64).next_multiple_of(8);
        }
        self.table_len = at - self.snapshots_offset;
        Ok(())
    }

    /// Header bytes 36..72 (L1, refcount table and snapshot table fields) in one write,
    /// then fsync.
    fn write_header(&self) -> Result<()> {
        let mut h = Vec::with_capacity(36);
        h.extend_from_slice(&self.l1_size.to_be_bytes());
        h.extend_from_slice(&self.l1_offset.to_be_bytes());
        h.extend_from_slice(&self.rt_offset.to_be_bytes());
        h.extend_from_slice(&self.rt_clusters.to_be_bytes());
        h.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        h.extend_from_slice(&self.snapshots_offset.to_be_bytes());
        self.write(&h, 36)?;
        self.sync()
    }

    fn read_l1(&self, offset: u64, entries: u32) -> Result<Vec<u64>> {
        let mut b = vec![0u8; entries as usize * 8];
        self.read(&mut b, offset)?;
        Ok(b.chunks(8).map(|c| be64(c, 0)).collect())
    }

    fn read_l2(&self, offset: u64) -> Result<Vec<u64>> {
        if !offset.is_multiple_of(self.cs()) {
            return Err(self.corrupt(format!("L2 table at unaligned offset {offset:#x}")));
        }
        let mut b = vec![0u8; self.cs() as usize];
        self.read(&mut b, offset)?;
        Ok(b.chunks(8).map(|c| be64(c, 0)).collect())
    }

    fn write_table(&self, t: &[u64], offset: u64, pad_to: u64) -> Result<()> {
        let mut b = Vec::with_capacity(pad_to as usize);
        for e in t {
            b.extend_from_slice(&e.to_be_bytes());
        }
        b.resize((b.len() as u64).max(pad_to) as usize, 0);
        self.write(&b, offset)
    }

    /// The host range an L2 entry holds (compressed: every cluster it touches).
    fn l2_allocation(&self, e: u64) -> Option<(u64, u64)> {
        if e & COMPRESSED != 0 {
            let shift = 62 - (self.cluster_bits - 8);
            let off = e & ((1u64 << shift) - 1);
            let sectors = ((e >> shift) & ((1u64 << (self.cluster_bits - 8)) - 1)) + 1;
            Some((off, sectors * 512 - (off & 511)))
        } else {
            let off = e & OFFSET_MASK;
            (off != 0).then_some((off, self.cs()))
        }
    }

    /// Count one more (or one fewer) reference from an L1 table to each L2 table and,
    /// through them, each data cluster.
    fn add_refs(&mut self, l1: &[u64], delta: i64) -> Result<()> {
        for &l1e in l1 {
            let l2 = l1e & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            for e in self.read_l2(l2)? {
                if let Some((off, len)) = self.l2_allocation(e) {
                    if e & COMPRESSED == 0 && !off.is_multiple_of(self.cs())
                        || off + len > self.file_len
                    {
                        return Err(self.corrupt(format!(
                            "data cluster at {off:#x} (L2 entry {e:#x} in the table at {l2:#x})"
                        )));
                    }
                    self.adjust_range(off, len, delta)?;
                }
            }
            if l2 >= self.file_len {
                return Err(self.corrupt(format!("L2 table at {l2:#x} past the end")));
            }
            self.adjust(l2 as usize >> self.cluster_bits, delta)?;
        }
        Ok(())
    }

    /// Make COPIED flags of the active table `l1` follow `rc` (count 1 ⇔ COPIED); flags
    /// are only set with `set`. Rewrites changed L2 tables in place; returns whether `l1`
    /// changed.
    fn fix_copied(&self, l1: &mut [u64], rc: impl Fn(usize) -> u64, set: bool) -> Result<bool> {
        let mut l1_changed = false;
        for l1e in l1.iter_mut() {
            let l2 = *l1e & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            let l2_private = rc(l2 as usize >> self.cluster_bits) == 1;
            let mut t = self.read_l2(l2)?;
            let mut changed = false;
            for e in t.iter_mut() {
                let want = match self.l2_allocation(*e) {
                    Some((off, _)) if *e & COMPRESSED == 0 => {
                        rc(off as usize >> self.cluster_bits) == 1
                    }
                    _ => false,
                };
                let has = *e & COPIED != 0;
                if has && !want || !has && want && set && l2_private {
                    *e ^= COPIED;
                    changed = true;
                }
            }
            if changed {
                self.write_table(&t, l2, 0)?;
            }
            let has = *l1e & COPIED != 0;
            if has && !l2_private || !has && l2_private && set {
                *l1e ^= COPIED;
                l1_changed = true;
            }
        }
        Ok(l1_changed)
    }

    fn max_rc(&self) -> impl Fn(usize) -> u64 + '_ {
        |i| Self::get(&self.orig, i).max(Self::get(&self.cur, i))
    }

    fn final_rc(&self) -> impl Fn(usize) -> u64 + '_ {
        |i| Self::get(&self.cur, i)
    }

    /// The snapshots, in table order.
    pub fn list(&self) -> Vec<SnapshotInfo> {
        self.entries.iter().map(|e| e.info.clone()).collect()
    }

    /// The virtual disk size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Where the VM state starts (QEMU's `qcow2_vm_state_offset`).
    fn vm_state_offset(&self) -> u64 {
        self.size.next_multiple_of(self.cs())
    }

    /// Find by name, then by id (as `qemu-img snapshot` does).
    fn find(&self, name: &str) -> Result<usize> {
        self.entries
            .iter()
            .position(|e| e.info.name == name)
            .or_else(|| self.entries.iter().position(|e| e.info.id == name))
            .ok_or_else(|| SnapshotError::NotFound {
                path: self.path.clone(),
                name: name.into(),
            })
    }

    /// Whether a snapshot of that name (or id) exists.
    pub fn has(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// Write `entries` as the new snapshot table in fresh clusters (the old one is freed
    /// in memory); the header switches to it.
    fn new_table(&mut self) -> Result<()> {
        let mut t = Vec::new();
        for e in &self.entries {
            let id = e.info.id.as_bytes();
            let name = e.info.name.as_bytes();
            t.extend_from_slice(&e.l1_offset.to_be_bytes());
            t.extend_from_slice(&e.l1_size.to_be_bytes());
            t.extend_from_slice(&(id.len() as u16).to_be_bytes());
            t.extend_from_slice(&(name.len() as u16).to_be_bytes());
            t.extend_from_slice(&e.info.date_sec.to_be_bytes());
            t.extend_from_slice(&e.info.date_nsec.to_be_bytes());
            t.extend_from_slice(&e.info.vm_clock_ns.to_be_bytes());
            t.extend_from_slice(&(e.info.vm_state_size as u32).to_be_bytes());
            t.extend_from_slice(&(e.extra.len() as u32).to_be_bytes());
            t.extend_from_slice(&e.extra);
            t.extend_from_slice(id);
            t.extend_from_slice(name);
            t.resize(t.len().next_multiple_of(8), 0);
        }
        if self.table_len > 0 {
            self.adjust_range(self.snapshots_offset, self.table_len, -1)?;
        }
        if t.is_empty() {
            self.snapshots_offset = 0;
        } else {
            let clusters = (t.len() as u64).div_ceil(self.cs());
            self.snapshots_offset = self.alloc(clusters)?;
            t.resize((clusters * self.cs()) as usize, 0);
            self.write(&t, self.snapshots_offset)?;
        }
        self.table_len = t.len() as u64;
        Ok(())
    }

    /// Take a snapshot of the active disk state with `new.vm_state`. Names need not be
    /// unique (QEMU allows it; `savevm` deletes the old one first).
    pub fn create(&mut self, new: &NewSnapshot<'_>) -> Result<SnapshotInfo> {
        if self.entries.len() >= MAX_SNAPSHOTS || new.name.len() > MAX_NAME {
            return Err(SnapshotError::Limit {
                path: self.path.clone(),
                what: format!(
                    "cannot add snapshot '{}': too many snapshots or the name is too long",
                    new.name
                ),
            });
        }
        let cs = self.cs();
        let active = self.read_l1(self.l1_offset, self.l1_size)?;
        self.add_refs(&active, 1)?;
        let mut snap_l1: Vec<u64> = active.iter().map(|e| e & !COPIED).collect();

        // The VM state: fresh data clusters, mapped only through the snapshot's L1 copy.
        let vm_off = self.vm_state_offset();
        if !new.vm_state.is_empty() {
            let len = new.vm_state.len() as u64;
            let n = len.div_ceil(cs);
            let data = self.alloc(n)?;
            self.write(new.vm_state, data)?;
            let tail = (n * cs - len) as usize;
            self.write(&vec![0u8; tail], data + len)?;
            let per_l2 = cs / 8;
            let last_l1 = ((vm_off + len - 1) / cs / per_l2) as usize;
            if (last_l1 as u64 + 1) * 8 > MAX_L1_BYTES {
                return Err(SnapshotError::Limit {
                    path: self.path.clone(),
                    what: format!("VM state of {len} bytes does not fit the L1 table"),
                });
            }
            if snap_l1.len() <= last_l1 {
                snap_l1.resize(last_l1 + 1, 0);
            }
            let mut private: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
            for k in 0..n {
                let g = vm_off / cs + k;
                let (l1i, l2i) = ((g / per_l2) as usize, (g % per_l2) as usize);
                if let std::collections::btree_map::Entry::Vacant(slot) = private.entry(l1i) {
                    let shared = snap_l1[l1i] & OFFSET_MASK;
                    let t = if shared != 0 {
                        // The copy keeps the table's references; the table loses this one.
                        self.adjust(shared as usize >> self.cluster_bits, -1)?;
                        self.read_l2(shared)?
                    } else {
                        vec![0; per_l2 as usize]
                    };
                    slot.insert(t);
                }
                let t = private.get_mut(&l1i).expect("inserted above");
                let old = std::mem::replace(&mut t[l2i], data + k * cs);
                if let Some((off, len)) = self.l2_allocation(old) {
                    self.adjust_range(off, len, -1)?;
                }
            }
            for (l1i, t) in private {
                let off = self.alloc(1)?;
                self.write_table(&t, off, cs)?;
                snap_l1[l1i] = off;
            }
        }
        let l1_bytes = snap_l1.len() as u64 * 8;
        let l1_off = self.alloc(l1_bytes.div_ceil(cs))?;
        self.write_table(&snap_l1, l1_off, l1_bytes.next_multiple_of(cs))?;

        let next_id = self
            .entries
            .iter()
            .filter_map(|e| e.info.id.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let info = SnapshotInfo {
            id: next_id.to_string(),
            name: new.name.to_string(),
            vm_state_size: new.vm_state.len() as u64,
            date_sec: new.date.0,
            date_nsec: new.date.1,
            vm_clock_ns: new.vm_clock_ns,
            icount: new.icount,
            disk_size: Some(self.size),
        };
        let mut extra = Vec::with_capacity(EXTRA_LEN);
        extra.extend_from_slice(&info.vm_state_size.to_be_bytes());
        extra.extend_from_slice(&self.size.to_be_bytes());
        extra.extend_from_slice(&info.icount.unwrap_or(u64::MAX).to_be_bytes());
        self.entries.push(Entry {
            l1_offset: l1_off,
            l1_size: snap_l1.len() as u32,
            info: info.clone(),
            extra,
        });
        self.new_table()?;
        self.crash_point(0)?;

        self.commit_grow()?;
        self.crash_point(1)?;
        // The active tables now share everything: no COPIED flag may stay.
        let mut active = active;
        if self.fix_copied(&mut active, self.max_rc(), false)? {
            self.write_table(&active, self.l1_offset, 0)?;
        }
        self.sync()?;
        self.crash_point(2)?;
        self.write_header()?;
        self.crash_point(3)?;
        self.commit_final()?;
        self.crash_point(4)?;
        Ok(info)
    }

    /// Delete the snapshot named `name` (or with that id).
    pub fn delete(&mut self, name: &str) -> Result<SnapshotInfo> {
        let idx = self.find(name)?;
        let e = self.entries[idx].clone();
        let l1 = self.read_l1(e.l1_offset, e.l1_size)?;
        self.add_refs(&l1, -1)?;
        self.adjust_range(e.l1_offset, u64::from(e.l1_size) * 8, -1)?;
        self.entries.remove(idx);
        self.new_table()?;
        self.commit_grow()?;
        self.crash_point(1)?;
        self.write_header()?;
        self.crash_point(3)?;
        self.commit_final()?;
        self.crash_point(4)?;
        self.settle_copied()?;
        Ok(e.info)
    }

    /// Set COPIED where a count fell to 1 (after the final counts are on disk).
    fn settle_copied(&mut self) -> Result<()> {
        let mut active = self.read_l1(self.l1_offset, self.l1_size)?;
        if self.fix_copied(&mut active, self.final_rc(), true)? {
            self.write_table(&active, self.l1_offset, 0)?;
        }
        self.sync()
    }

    /// Make the snapshot named `name` (or with that id) the active disk state; returns its
    /// VM state.
    pub fn load(&mut self, name: &str) -> Result<Vec<u8>> {
        let idx = self.find(name)?;
        let e = self.entries[idx].clone();
        if let Some(d) = e.info.disk_size.filter(|&d| d != self.size) {
            return Err(SnapshotError::SizeDiffers {
                path: self.path.clone(),
                name: e.info.name,
                snapshot: d,
                image: self.size,
            });
        }
        let cs = self.cs();
        let snap_l1 = self.read_l1(e.l1_offset, e.l1_size)?;
        let old = self.read_l1(self.l1_offset, self.l1_size)?;
        self.add_refs(&snap_l1, 1)?;
        self.add_refs(&old, -1)?;
        let mut l1: Vec<u64> = snap_l1.iter().map(|e| e & !COPIED).collect();
        l1.resize(l1.len().max(self.l1_size as usize), 0);
        let bytes = l1.len() as u64 * 8;
        let off = self.alloc(bytes.div_ceil(cs))?;
        self.write_table(&l1, off, bytes.next_multiple_of(cs))?;
        self.adjust_range(self.l1_offset, u64::from(self.l1_size) * 8, -1)?;
        self.commit_grow()?;
        self.crash_point(1)?;
        // Shared tables must carry no COPIED flag before the header points at them.
        if self.fix_copied(&mut l1, self.max_rc(), false)? {
            self.write_table(&l1, off, 0)?;
        }
        self.sync()?;
        self.crash_point(2)?;
        self.l1_offset = off;
        self.l1_size = l1.len() as u32;
        self.write_header()?;
        self.crash_point(3)?;
        self.commit_final()?;
        self.crash_point(4)?;
        self.settle_copied()?;
        self.read_vm_state(&snap_l1, e.info.vm_state_size)
    }

    /// The VM state of the snapshot named `name`, without loading it.
    pub fn vm_state(&self, name: &str) -> Result<Vec<u8>> {
        let e = &self.entries[self.find(name)?];
        let l1 = self.read_l1(e.l1_offset, e.l1_size)?;
        self.read_vm_state(&l1, e.info.vm_state_size)
    }

    fn read_vm_state(&self, l1: &[u64], len: u64) -> Result<Vec<u8>> {
        // QEMU writes every byte of the VM state: it cannot be longer than the file.
        if len > self.file_len {
            return Err(self.corrupt(format!("VM state of {len} bytes")));
        }
        let cs = self.cs();
        let per_l2 = cs / 8;
        let start = self.vm_state_offset();
        let mut out = vec![0u8; len as usize];
        let mut l2_cache: Option<(u64, Vec<u64>)> = None;
        for (k, chunk) in out.chunks_mut(cs as usize).enumerate() {
            let g = start / cs + k as u64;
            let l1e = l1.get((g / per_l2) as usize).copied().unwrap_or(0) & OFFSET_MASK;
            if l1e == 0 {
                continue;
            }
            if l2_cache.as_ref().map(|c| c.0) != Some(l1e) {
                l2_cache = Some((l1e, self.read_l2(l1e)?));
            }
            let e = l2_cache.as_ref().expect("filled above").1[(g % per_l2) as usize];
            if e & COMPRESSED != 0 {
                return Err(SnapshotError::Unsupported {
                    path: self.path.clone(),
                    feature: "compressed VM state".into(),
                });
            }
            let off = e & OFFSET_MASK;
            if off != 0 && e & 1 == 0 {
                self.read(chunk, off)?;
            }
        }
        Ok(out)
    }

    /// The version of the image (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }
}

#[cfg(test)]
pub(crate) mod tests;
