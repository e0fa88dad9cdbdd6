//! The checks QEMU makes when it opens a qcow2 image, made before imago sees the image.
//!
//! imago trusts fields QEMU refuses (an L1 table too small for the virtual size, a
//! reference count table of no clusters, encrypted images read as plain data) and may
//! rewrite the header (clearing autoclear bits) before it refuses an image. Running these
//! checks first, with plain reads, means a refused image is never written, and the error
//! is QEMU's own text followed by the header field and its value.
//!
//! The backing chain is walked here too, without recursion: a chain that loops back on
//! itself (`a` → `a`, `a` → `b` → `a`) or is deeper than [`MAX_CHAIN`] is refused before
//! imago's recursive open could overflow a thread's stack.
//!
//! Field layout and meaning: QEMU's `docs/interop/qcow2.txt`.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Images in one backing chain, the top one included.
pub const MAX_CHAIN: usize = 64;

/// Header extension types (qcow2.txt, "Header extensions").
const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_CRYPTO: u32 = 0x0537_be77;
const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Incompatible feature bits this format revision defines: dirty, corrupt, external data
/// file, compression type, extended L2 entries.
const KNOWN_INCOMPATIBLE: u64 = 0x1f;
const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

/// QEMU's limits (block/qcow2.h).
const MAX_L1_BYTES: u64 = 32 << 20;
const MAX_REFTABLE_BYTES: u64 = 8 << 20;
const MAX_SNAPSHOTS: u64 = 65536;
const SNAPSHOT_HEADER_LEN: u64 = 40;

/// Why a qcow2 image is refused: QEMU's message, then the field and its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Qcow2Error {
    #[error("Could not read qcow2 header: {0}")]
    Read(String),
    #[error("Unsupported qcow2 version {0} (version)")]
    Version(u32),
    #[error("Unsupported cluster size: 2^{0} (cluster_bits {0})")]
    ClusterBits(u32),
    #[error("qcow2 header too short (header_length {0}, at least 104)")]
    HeaderShort(u32),
    #[error("qcow2 header exceeds cluster size (header_length {0}, cluster size {1})")]
    HeaderLong(u32, u64),
    #[error("Invalid backing file offset (backing_file_offset {0:#x})")]
    BackingOffset(u64),
    #[error("Backing file name too long (backing_file_size {0})")]
    BackingName(u32),
    #[error(
        "Unsupported qcow2 feature(s): Unknown incompatible feature: {0:x} (incompatible_features)"
    )]
    Incompatible(u64),
    #[error("qcow2: Image is corrupt; cannot be opened read/write (incompatible_features bit 1)")]
    Corrupt,
    #[error("the image was not closed cleanly and troupe cannot repair it: run 'qemu-img check -r all' (incompatible_features bit 0, dirty)")]
    Dirty,
    #[error("qcow2 feature '{name}' is not supported by troupe (incompatible_features bit {bit})")]
    Unsupported { bit: u32, name: &'static str },
    #[error("'data-file' is required for this image (incompatible_features bit 2, and no external data file name extension)")]
    DataFileRequired,
    #[error("data-file-raw requires a data file (autoclear_features bit 1)")]
    DataFileRaw,
    #[error("Reference count entry width too large; may not exceed 64 bits (refcount_order {0})")]
    RefcountOrder(u32),
    #[error("Unsupported encryption method {0} (crypt_method)")]
    CryptUnknown(u32),
    #[error("Use of AES-CBC encrypted qcow2 images is no longer supported in system emulators (crypt_method 1); convert it with 'qemu-img convert'")]
    CryptAes,
    #[error("Missing CRYPTO header for crypt method 2 (crypt_method 2)")]
    CryptNoHeader,
    #[error("LUKS-encrypted qcow2 images are not supported by troupe (crypt_method 2; it has no encrypt.key-secret): convert it with 'qemu-img convert'")]
    CryptLuks,
    #[error(
        "Header extension too large (extension {kind:#010x} at offset {offset:#x}, length {len})"
    )]
    Extension { kind: u32, offset: u64, len: u32 },
    #[error("ext_backing_format: len={0} too large (>=16)")]
    BackingFormat(u32),
    #[error("Reference count table too large (refcount_table_clusters {0})")]
    RefcountTableLarge(u32),
    #[error("Invalid reference count table offset (refcount_table_offset {0:#x})")]
    RefcountTableOffset(u64),
    #[error("Image does not contain a reference count table (refcount_table_clusters 0)")]
    RefcountTableNone,
    #[error("Image is corrupt: the reference count table has no block for the header's cluster (refcount_table_offset {0:#x}, entry 0 is 0 or past the end); repair it with 'qemu-img check -r all'")]
    RefcountBlockMissing(u64),
    #[error("Snapshot table too large (nb_snapshots {0})")]
    SnapshotsLarge(u32),
    #[error("Snapshot table offset invalid (snapshots_offset {0:#x})")]
    SnapshotsOffset(u64),
    #[error("Active L1 table too large (l1_size {0})")]
    L1Large(u32),
    #[error("Image is too big (size {0})")]
    TooBig(u64),
    #[error("L1 table is too small (l1_size {l1_size}; size {size} needs {needed})")]
    L1Small {
        l1_size: u32,
        size: u64,
        needed: u64,
    },
    #[error("Active L1 table offset invalid (l1_table_offset {0:#x})")]
    L1Offset(u64),
    #[error("Could not open backing file '{0}': the backing chain loops back to it")]
    Loop(PathBuf),
    #[error(
        "Could not open backing file '{0}': the backing chain is deeper than {MAX_CHAIN} images"
    )]
    TooDeep(PathBuf),
}

/// What the rest of the chain walk needs from one image's header.
#[derive(Debug)]
struct Checked {
    /// The backing file name as stored, and its format from the header extension.
    backing: Option<(String, Option<String>)>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

/// QEMU's `validate_table_offset`: the table fits below 2^63 and starts on a cluster.
fn table_ok(offset: u64, entries: u64, entry_len: u64, cluster_size: u64) -> bool {
    let Some(size) = entries
        .checked_mul(entry_len)
        .filter(|&s| s <= i64::MAX as u64)
    else {
        return false;
    };
    (i64::MAX as u64 - size) >= offset && offset.is_multiple_of(cluster_size)
}

/// Check one qcow2 image's header as QEMU's `qcow2_do_open` does. `writable`: it is
/// opened read/write (only the top of a chain is).
fn check_header(f: &File, writable: bool) -> Result<Checked, Qcow2Error> {
    let read = |buf: &mut [u8], at: u64| {
        f.read_exact_at(buf, at)
            .map_err(|e| Qcow2Error::Read(e.to_string()))
    };
    let mut h = [0u8; 104];
    read(&mut h[..72], 0)?;
    let version = be32(&h, 4);
    if !(2..=3).contains(&version) {
        return Err(Qcow2Error::Version(version));
    }
    let cluster_bits = be32(&h, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(Qcow2Error::ClusterBits(cluster_bits));
    }
    let cluster_size = 1u64 << cluster_bits;
    let (incompatible, autoclear, refcount_order, header_length) = if version == 3 {
        read(&mut h[72..104], 72)?;
        let header_length = be32(&h, 100);
        if header_length < 104 {
            return Err(Qcow2Error::HeaderShort(header_length));
        }
        if u64::from(header_length) > cluster_size {
            return Err(Qcow2Error::HeaderLong(header_length, cluster_size));
        }
        (be64(&h, 72), be64(&h, 88), be32(&h, 96), header_length)
    } else {
        (0, 0, 4, 72)
    };
    let backing_offset = be64(&h, 8);
    let backing_size = be32(&h, 16);
    if backing_offset > cluster_size {
        return Err(Qcow2Error::BackingOffset(backing_offset));
    }
    let unknown = incompatible & !KNOWN_INCOMPATIBLE;
    if unknown != 0 {
        return Err(Qcow2Error::Incompatible(unknown));
    }
    if incompatible & INCOMPAT_CORRUPT != 0 && writable {
        return Err(Qcow2Error::Corrupt);
    }
    // What QEMU can do but imago (and so troupe) cannot: refused here, before imago
    // could rewrite the header of an image it then refuses.
    let unsupported = incompatible & !INCOMPAT_DATA_FILE;
    if unsupported & INCOMPAT_DIRTY != 0 {
        return Err(Qcow2Error::Dirty);
    }
    if unsupported != 0 {
        let bit = unsupported.trailing_zeros();
        let name = match bit {
            1 => "corrupt",
            3 => "compression type",
            _ => "extended L2 entries",
        };
        return Err(Qcow2Error::Unsupported { bit, name });
    }
    if refcount_order > 6 {
        return Err(Qcow2Error::RefcountOrder(refcount_order));
    }
    let crypt_method = be32(&h, 32);
    if crypt_method > 2 {
        return Err(Qcow2Error::CryptUnknown(crypt_method));
    }

    // Header extensions, up to the backing file name (or the end of the first cluster).
    let end = if backing_offset != 0 {
        backing_offset
    } else {
        cluster_size
    };
    let mut offset = u64::from(header_length);
    let (mut backing_format, mut has_crypto, mut has_data_file) = (None, false, false);
    while offset < end {
        let mut e = [0u8; 8];
        read(&mut e, offset)?;
        let (kind, len) = (be32(&e, 0), be32(&e, 4));
        let data_at = offset + 8;
        if data_at > end || u64::from(len) > end - data_at {
            return Err(Qcow2Error::Extension { kind, offset, len });
        }
        match kind {
            EXT_END => break,
            EXT_BACKING_FORMAT => {
                if len >= 16 {
                    return Err(Qcow2Error::BackingFormat(len));
                }
                let mut name = vec![0u8; len as usize];
                read(&mut name, data_at)?;
                backing_format = Some(String::from_utf8_lossy(&name).into_owned());
            }
            EXT_CRYPTO => has_crypto = true,
            EXT_DATA_FILE => has_data_file = true,
            _ => {}
        }
        offset = data_at + u64::from(len).next_multiple_of(8);
    }

    if incompatible & INCOMPAT_DATA_FILE != 0 && !has_data_file {
        return Err(Qcow2Error::DataFileRequired);
    }
    if incompatible & INCOMPAT_DATA_FILE == 0 && autoclear & AUTOCLEAR_DATA_FILE_RAW != 0 {
        return Err(Qcow2Error::DataFileRaw);
    }
    match crypt_method {
        1 => return Err(Qcow2Error::CryptAes),
        2 if !has_crypto => return Err(Qcow2Error::CryptNoHeader),
        2 => return Err(Qcow2Error::CryptLuks),
        _ => {}
    }

    let refcount_table_offset = be64(&h, 48);
    let refcount_table_clusters = be32(&h, 56);
    if u64::from(refcount_table_clusters) > MAX_REFTABLE_BYTES / cluster_size {
        return Err(Qcow2Error::RefcountTableLarge(refcount_table_clusters));
    }
    if refcount_table_clusters == 0 {
        return Err(Qcow2Error::RefcountTableNone);
    }
    if !table_ok(
        refcount_table_offset,
        u64::from(refcount_table_clusters),
        cluster_size,
        cluster_size,
    ) {
        return Err(Qcow2Error::RefcountTableOffset(refcount_table_offset));
    }

    if writable {
        // The header's own cluster is allocated in every image qemu-img writes, so its
        // refcount block exists. Without one, imago's allocator (the first write) recurses
        // until the drive's thread overflows its stack, which aborts the whole process.
        let mut entry = [0u8; 8];
        let first = read(&mut entry, refcount_table_offset).map(|()| be64(&entry, 0));
        if first.unwrap_or(0) == 0 {
            return Err(Qcow2Error::RefcountBlockMissing(refcount_table_offset));
        }
    }

    let nb_snapshots = be32(&h, 60);
    let snapshots_offset = be64(&h, 64);
    if u64::from(nb_snapshots) > MAX_SNAPSHOTS {
        return Err(Qcow2Error::SnapshotsLarge(nb_snapshots));
    }
    if !table_ok(
        snapshots_offset,
        u64::from(nb_snapshots),
        SNAPSHOT_HEADER_LEN,
        cluster_size,
    ) {
        return Err(Qcow2Error::SnapshotsOffset(snapshots_offset));
    }

    let l1_size = be32(&h, 36);
    let l1_table_offset = be64(&h, 40);
    let size = be64(&h, 24);
    if u64::from(l1_size) > MAX_L1_BYTES / 8 {
        return Err(Qcow2Error::L1Large(l1_size));
    }
    // Each L2 table has a cluster of 8-byte entries (16-byte with extended L2 entries).
    let l2_bits = if incompatible & INCOMPAT_EXTENDED_L2 != 0 {
        cluster_bits - 4
    } else {
        cluster_bits - 3
    };
    let needed = size.div_ceil(1u64 << (cluster_bits + l2_bits));
    if needed > i32::MAX as u64 {
        return Err(Qcow2Error::TooBig(size));
    }
    if u64::from(l1_size) < needed {
        return Err(Qcow2Error::L1Small {
            l1_size,
            size,
            needed,
        });
    }
    if !table_ok(l1_table_offset, u64::from(l1_size), 8, cluster_size) {
        return Err(Qcow2Error::L1Offset(l1_table_offset));
    }

    let backing = if backing_offset != 0 {
        if backing_size > 1023 || backing_offset + u64::from(backing_size) > cluster_size {
            return Err(Qcow2Error::BackingName(backing_size));
        }
        let mut name = vec![0u8; backing_size as usize];
        read(&mut name, backing_offset)?;
        Some((String::from_utf8_lossy(&name).into_owned(), backing_format))
    } else {
        None
    };
    Ok(Checked { backing })
}

/// Check the qcow2 image at `path` and every qcow2 image in its backing chain. Files that
/// cannot be opened, or are not qcow2, end the walk: opening them reports that.
pub fn check_chain(path: &Path, writable: bool) -> Result<(), (PathBuf, Qcow2Error)> {
    let mut seen: Vec<(u64, u64)> = Vec::new();
    let mut current = path.to_path_buf();
    let mut top = true;
    loop {
        let Ok(f) = File::open(&current) else {
            return Ok(());
        };
        let Ok(meta) = f.metadata() else {
            return Ok(());
        };
        if seen.contains(&(meta.dev(), meta.ino())) {
            return Err((path.to_path_buf(), Qcow2Error::Loop(current)));
        }
        if seen.len() >= MAX_CHAIN {
            return Err((path.to_path_buf(), Qcow2Error::TooDeep(current)));
        }
        seen.push((meta.dev(), meta.ino()));
        let mut magic = [0u8; 4];
        if f.read_exact_at(&mut magic, 0).is_err() || &magic != super::QCOW2_MAGIC {
            return Ok(());
        }
        let checked = check_header(&f, top && writable).map_err(|e| (current.clone(), e))?;
        let Some((name, format)) = checked.backing else {
            return Ok(());
        };
        if format.as_deref().is_some_and(|f| f != "qcow2") {
            // A raw (or other) backing file has no header to check and no chain.
            return Ok(());
        }
        // A relative name is relative to the directory of the image that names it.
        let next = Path::new(&name);
        current = if next.is_absolute() {
            next.to_path_buf()
        } else {
            current.parent().unwrap_or_else(|| Path::new("")).join(next)
        };
        top = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_offsets_are_checked_as_qemu_does() {
        assert!(table_ok(0x30000, 1, 8, 0x10000));
        assert!(!table_ok(0x30001, 1, 8, 0x10000));
        assert!(!table_ok(0, u64::MAX / 4, 8, 0x10000));
        assert!(!table_ok(i64::MAX as u64, 1, 8, 0x10000));
        // An empty table at offset 0 is fine (QEMU accepts it).
        assert!(table_ok(0, 0, 40, 0x10000));
    }
}
