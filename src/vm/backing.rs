//! Where guest RAM comes from: anonymous memory (the default), a file (`-mem-path`,
//! `memory-backend-file`; on hugetlbfs, huge pages) or a memfd (`memory-backend-memfd`,
//! optionally `hugetlb=on`), and what the host is told about it (`prealloc`, KSM `merge`,
//! `mlockall`).
//!
//! All RAM ranges of one VM share one file, each at its own offset, so the file holds the
//! guest's RAM in guest order (below 4 GiB first). Huge pages are counted before anything
//! is mapped, and mapped with a reservation, so a host without enough of them refuses to
//! start the guest rather than killing it with SIGBUS later.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use vm_memory::FileOffset;

use crate::config::{RamBacking, RamSource};

/// `statfs` magic of hugetlbfs.
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// Ways backing guest RAM can fail (all at start, before the guest runs).
#[derive(Debug, Error)]
pub enum BackingError {
    /// The `mem-path` cannot be opened or created.
    #[error("can't open backing store {path} for guest RAM")]
    Open {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `memfd_create` failed.
    #[error("cannot create a memfd for guest RAM ({what})")]
    Memfd {
        /// What was asked (`hugetlb=on,hugetlbsize=...`).
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The host has no huge pages of the size asked for.
    #[error("hugetlbsize={0}: the host has no huge pages of this size")]
    HugePageSize(u64),
    /// RAM that is not a whole number of huge pages.
    #[error("guest RAM of {size} bytes is not a multiple of the huge page size {page} bytes")]
    HugePageMultiple {
        /// RAM size.
        size: u64,
        /// Page size.
        page: u64,
    },
    /// Fewer free huge pages than the guest needs.
    #[error(
        "guest RAM needs {needed} huge pages of {page_kib} kB but only {free} are free \
         (raise /proc/sys/vm/nr_hugepages or /sys/kernel/mm/hugepages/hugepages-{page_kib}kB/nr_hugepages)"
    )]
    HugePagesShort {
        /// Pages needed.
        needed: u64,
        /// Pages free (not reserved).
        free: u64,
        /// Page size in KiB.
        page_kib: u64,
    },
    /// Sizing the backing file failed.
    #[error("cannot size backing store {path} to {size} bytes")]
    Truncate {
        /// The file.
        path: PathBuf,
        /// Wanted size.
        size: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `mmap` failed.
    #[error("unable to map backing store for guest RAM ({size} bytes)")]
    Map {
        /// Range size.
        size: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Preallocation failed (memory or huge pages ran out).
    #[error("cannot preallocate guest RAM ({size} bytes)")]
    Prealloc {
        /// Range size.
        size: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `-overcommit mem-lock=on` and `mlockall` failed.
    #[error("locking memory failed (-overcommit mem-lock=on)")]
    Lock(#[source] std::io::Error),
}

/// One mapped RAM range.
pub struct Mapped {
    /// Host address of the range.
    pub host: *mut u8,
    /// The file behind it and the range's offset in it (None: anonymous).
    pub file: Option<FileOffset>,
    /// The mapping's `mmap` flags.
    pub flags: i32,
    /// Backed by huge pages (hugetlbfs or a hugetlb memfd).
    pub hugetlb: bool,
}

/// The file that backs RAM, once opened.
struct Backing {
    file: Arc<File>,
    /// Huge page size, when the file is on hugetlbfs.
    huge_page: Option<u64>,
    /// Its size before troupe sized it (a named file may already hold pages).
    old_size: u64,
    /// What to name in errors.
    path: PathBuf,
}

/// Map every range of `sizes` (bytes each, in guest order) as `backing` says.
/// Anonymous ranges go to `anonymous` (troupe's 2 MiB-aligned anonymous mapping).
pub fn map(
    backing: &RamBacking,
    sizes: &[u64],
    anonymous: impl Fn(usize, i32) -> std::io::Result<*mut u8>,
) -> Result<Vec<Mapped>, BackingError> {
    let total: u64 = sizes.iter().sum();
    let file = match &backing.source {
        RamSource::Anonymous => None,
        RamSource::File(path) => Some(open_path(path)?),
        RamSource::Memfd {
            hugetlb,
            hugetlbsize,
        } => Some(open_memfd(*hugetlb, *hugetlbsize)?),
    };
    let Some(b) = file else {
        let flags = if backing.share {
            libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE
        } else {
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE
        };
        return sizes
            .iter()
            .map(|&size| {
                let host = anonymous(size as usize, flags)
                    .map_err(|source| BackingError::Map { size, source })?;
                Ok(Mapped {
                    host,
                    file: None,
                    flags,
                    hugetlb: false,
                })
            })
            .collect();
    };
    if let Some(page) = b.huge_page {
        if !total.is_multiple_of(page) {
            return Err(BackingError::HugePageMultiple { size: total, page });
        }
        let needed = total.saturating_sub(b.old_size) / page;
        let free = free_huge_pages(page);
        if needed > free {
            return Err(BackingError::HugePagesShort {
                needed,
                free,
                page_kib: page >> 10,
            });
        }
    }
    if b.old_size < total {
        b.file
            .set_len(total)
            .map_err(|source| BackingError::Truncate {
                path: b.path.clone(),
                size: total,
                source,
            })?;
    }
    seal(&b.file);
    // A hugetlb mapping reserves its pages here (no MAP_NORESERVE): if another process took
    // them since the count above, mmap fails now rather than the guest faulting later.
    let flags = if backing.share {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    };
    let mut out = Vec::new();
    let mut offset = 0u64;
    for &size in sizes {
        // SAFETY: a new mapping of a file this function owns; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                b.file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            let source = std::io::Error::last_os_error();
            return Err(match b.huge_page {
                Some(page) if source.raw_os_error() == Some(libc::ENOMEM) => {
                    BackingError::HugePagesShort {
                        needed: total / page,
                        free: free_huge_pages(page),
                        page_kib: page >> 10,
                    }
                }
                _ => BackingError::Map { size, source },
            });
        }
        out.push(Mapped {
            host: p.cast(),
            file: Some(FileOffset::from_arc(b.file.clone(), offset)),
            flags,
            hugetlb: b.huge_page.is_some(),
        });
        offset += size;
    }
    Ok(out)
}

/// `-mem-path PATH`: a new unlinked file when PATH is a directory (as QEMU), else PATH.
fn open_path(path: &Path) -> Result<Backing, BackingError> {
    let open_err = |source| BackingError::Open {
        path: path.to_path_buf(),
        source,
    };
    let file = if path.is_dir() {
        let mut n = 0u32;
        loop {
            let name = path.join(format!("troupe_back_mem.{}.{n}", std::process::id()));
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&name)
            {
                Ok(f) => {
                    // The file lives as long as the mapping; nobody else needs its name.
                    let _ = std::fs::remove_file(&name);
                    break f;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(open_err(e)),
            }
        }
    } else {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(open_err)?
    };
    let old_size = file.metadata().map_err(open_err)?.len();
    Ok(Backing {
        huge_page: hugetlbfs_page_size(&file),
        file: Arc::new(file),
        old_size,
        path: path.to_path_buf(),
    })
}

/// `memory-backend-memfd[,hugetlb=on[,hugetlbsize=N]]`.
fn open_memfd(hugetlb: bool, hugetlbsize: u64) -> Result<Backing, BackingError> {
    let mut flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    let what = if hugetlb {
        format!("hugetlb=on,hugetlbsize={hugetlbsize}")
    } else {
        "hugetlb=off".to_string()
    };
    let mut page = None;
    if hugetlb {
        let size = if hugetlbsize == 0 {
            default_huge_page_size()
        } else {
            hugetlbsize
        };
        if !size.is_power_of_two()
            || !Path::new(&format!(
                "/sys/kernel/mm/hugepages/hugepages-{}kB",
                size >> 10
            ))
            .exists()
        {
            return Err(BackingError::HugePageSize(size));
        }
        flags |= libc::MFD_HUGETLB | (size.trailing_zeros() << libc::MFD_HUGE_SHIFT);
        page = Some(size);
    }
    let name = CString::new("troupe-ram").unwrap_or_default();
    // SAFETY: memfd_create with a valid C string; the new fd is owned below.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(BackingError::Memfd {
            what,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    Ok(Backing {
        file: Arc::new(file),
        huge_page: page,
        old_size: 0,
        path: PathBuf::from("memfd:troupe-ram"),
    })
}

/// Fix a memfd's size (QEMU's `seal=on`); a no-op for files that cannot be sealed.
fn seal(file: &File) {
    // SAFETY: fcntl on an fd this process owns; a failure changes nothing.
    unsafe {
        libc::fcntl(
            file.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL,
        );
    }
}

/// The huge page size of the hugetlbfs `file` is on, or None if it is elsewhere.
fn hugetlbfs_page_size(file: &File) -> Option<u64> {
    // SAFETY: a zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs on an open fd into a struct of the right type.
    let r = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    (r == 0 && st.f_type == HUGETLBFS_MAGIC).then_some(st.f_bsize as u64)
}

/// The host's default huge page size (`Hugepagesize:` in /proc/meminfo; 2 MiB if unknown).
fn default_huge_page_size() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("Hugepagesize:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(2 << 20, |k| k << 10)
}

/// Huge pages of `page` bytes free and not reserved by another mapping.
fn free_huge_pages(page: u64) -> u64 {
    let dir = format!("/sys/kernel/mm/hugepages/hugepages-{}kB", page >> 10);
    let read = |name: &str| {
        std::fs::read_to_string(format!("{dir}/{name}"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    read("free_hugepages").saturating_sub(read("resv_hugepages"))
}

/// Allocate every page of `[host, host + len)` now (`-mem-prealloc`, `prealloc=on`).
pub fn prealloc(host: *mut u8, len: usize) -> Result<(), BackingError> {
    const MADV_POPULATE_WRITE: i32 = 23;
    // SAFETY: the range is one guest RAM mapping; populating changes no contents.
    let r = unsafe { libc::madvise(host.cast(), len, MADV_POPULATE_WRITE) };
    if r == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EINVAL) {
        return Err(BackingError::Prealloc {
            size: len as u64,
            source: err,
        });
    }
    // Kernels before 5.14: touch each page, writing back what it holds.
    let page = 4096;
    for off in (0..len).step_by(page) {
        // SAFETY: `off` lies inside the mapping; the byte is written back unchanged before
        // the guest runs.
        unsafe {
            let p = host.add(off);
            p.write_volatile(p.read_volatile());
        }
    }
    Ok(())
}

/// `merge=on`: KSM may merge identical pages of the range (`MADV_MERGEABLE`). Failure (a
/// kernel without KSM, a shared mapping) only loses the merging, as with QEMU.
pub fn mark_mergeable(host: *mut u8, len: usize) {
    // SAFETY: the range is one guest RAM mapping; the advice changes only how the kernel
    // may back it.
    let r = unsafe { libc::madvise(host.cast(), len, libc::MADV_MERGEABLE) };
    if r != 0 {
        tracing::debug!(
            "madvise(MADV_MERGEABLE): {}",
            std::io::Error::last_os_error()
        );
    }
}

/// `-overcommit mem-lock=on`: lock everything troupe has and will map.
pub fn lock_all() -> Result<(), BackingError> {
    // SAFETY: mlockall takes no pointers.
    let r = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) };
    if r != 0 {
        return Err(BackingError::Lock(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anon(size: usize, flags: i32) -> std::io::Result<*mut u8> {
        // SAFETY: a new anonymous mapping.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(p.cast())
    }

    #[test]
    fn a_directory_gets_one_unlinked_file_holding_every_range_in_order() {
        let dir = std::env::temp_dir().join(format!("troupe-backing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let backing = RamBacking {
            source: RamSource::File(dir.clone()),
            share: true,
            ..Default::default()
        };
        let m = map(&backing, &[1 << 20, 2 << 20], anon).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "file unlinked");
        let f = m[1].file.as_ref().unwrap();
        assert_eq!(f.start(), 1 << 20);
        assert_eq!(f.file().metadata().unwrap().len(), 3 << 20);
        // SAFETY: inside the second range, mapped shared.
        unsafe { m[1].host.add(5).write(0xAB) };
        let mut byte = [0u8];
        std::os::unix::fs::FileExt::read_at(f.file(), &mut byte, (1 << 20) + 5).unwrap();
        assert_eq!(byte[0], 0xAB, "the shared mapping writes the file");
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn a_memfd_backs_ram_and_prealloc_populates_it() {
        let backing = RamBacking {
            source: RamSource::Memfd {
                hugetlb: false,
                hugetlbsize: 0,
            },
            ..Default::default()
        };
        let m = map(&backing, &[4 << 20], anon).unwrap();
        prealloc(m[0].host, 4 << 20).unwrap();
        assert_eq!(m[0].flags, libc::MAP_PRIVATE);
    }

    #[test]
    fn an_unknown_huge_page_size_is_refused() {
        assert!(matches!(
            open_memfd(true, 3 << 20),
            Err(BackingError::HugePageSize(s)) if s == 3 << 20
        ));
    }
}
