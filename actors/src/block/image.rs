//! Image formats behind one interface: raw and qcow2 (v2/v3, backing chains, zero and
//! compressed clusters) through the `imago` crate, and the `snapshot=on` overlay that keeps
//! every write in a temporary file so the image is never touched.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use futures::executor::block_on;
use imago::file::File as ImagoFile;
use imago::io_buffers::IoBuffer;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{FormatAccess, FormatDriverBuilder, PermissiveImplicitOpenGate, StorageOpenOptions};

/// What the backend's I/O threads work on; several requests may be in flight at once.
pub trait Image: Send + Sync {
    fn size(&self) -> u64;
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Make every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Deallocate; reads back as zeros.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()>;
}

/// A raw or qcow2 image opened through imago, for the thread pool (`aio=threads`, and the
/// base of a `snapshot=on` overlay): imago's API is async, and each call runs to its end
/// here with `block_on` (imago's own file storage does plain blocking system calls).
pub struct Imago {
    /// Reads, writes and flushes share it; discard (and a snapshot operation) needs it
    /// alone.
    access: std::sync::RwLock<FormatAccess<ImagoFile>>,
    /// O_DIRECT: buffers go through an aligned bounce buffer.
    direct: bool,
    /// How it was opened (to reopen it after a snapshot operation).
    path: std::path::PathBuf,
    qcow2: bool,
    writable: bool,
    /// The image could not be reopened after a snapshot operation: every request fails
    /// (the old metadata cache no longer describes the file).
    broken: std::sync::atomic::AtomicBool,
}

impl Imago {
    pub fn open(path: &Path, qcow2: bool, writable: bool, direct: bool) -> io::Result<Self> {
        Ok(Self {
            access: std::sync::RwLock::new(Self::access(path, qcow2, writable, direct)?),
            direct,
            path: path.to_path_buf(),
            qcow2,
            writable,
            broken: false.into(),
        })
    }

    fn access(
        path: &Path,
        qcow2: bool,
        writable: bool,
        direct: bool,
    ) -> io::Result<FormatAccess<ImagoFile>> {
        let sopts = StorageOpenOptions::new().write(writable).direct(direct);
        let gate = PermissiveImplicitOpenGate::default();
        let access = if qcow2 {
            FormatAccess::new(block_on(
                Qcow2::<ImagoFile>::builder_path(path)
                    .storage_open_options(sopts)
                    .write(writable)
                    .open(gate),
            )?)
        } else {
            FormatAccess::new(block_on(
                Raw::<ImagoFile>::builder_path(path)
                    .storage_open_options(sopts)
                    .write(writable)
                    .open(gate),
            )?)
        };
        Ok(access)
    }

    /// Run `f` with the image closed to imago: the requests in flight finish first and
    /// the cached metadata is written back; afterwards the image is opened afresh (what
    /// `f` changed in the file is what imago sees).
    pub fn exclusive<R>(&self, f: impl FnOnce() -> R) -> io::Result<R> {
        let mut a = self.access.write().unwrap_or_else(|e| e.into_inner());
        self.check()?;
        block_on(async {
            a.flush().await?;
            a.sync().await
        })?;
        let r = f();
        match Self::access(&self.path, self.qcow2, self.writable, self.direct) {
            Ok(new) => *a = new,
            Err(e) => {
                self.broken
                    .store(true, std::sync::atomic::Ordering::Release);
                return Err(e);
            }
        }
        Ok(r)
    }

    fn check(&self) -> io::Result<()> {
        if self.broken.load(std::sync::atomic::Ordering::Acquire) {
            return Err(io::Error::other(format!(
                "{} could not be reopened after a snapshot operation",
                self.path.display()
            )));
        }
        Ok(())
    }

    fn get(&self) -> std::sync::RwLockReadGuard<'_, FormatAccess<ImagoFile>> {
        self.access.read().unwrap_or_else(|e| e.into_inner())
    }

    fn bounce(&self, len: usize) -> io::Result<IoBuffer> {
        IoBuffer::new(len, self.get().mem_align().max(4096))
    }
}

impl Image for Imago {
    fn size(&self) -> u64 {
        self.get().size()
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check()?;
        if self.direct {
            let mut b = self.bounce(buf.len())?;
            block_on(self.get().read(&mut b, offset))?;
            buf.copy_from_slice(b.as_ref().into_slice());
            return Ok(());
        }
        block_on(self.get().read(buf, offset))
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check()?;
        if self.direct {
            let mut b = self.bounce(data.len())?;
            b.as_mut().into_slice().copy_from_slice(data);
            return block_on(self.get().write(&b, offset));
        }
        block_on(self.get().write(data, offset))
    }

    fn flush(&self) -> io::Result<()> {
        self.check()?;
        let a = self.get();
        block_on(async {
            a.flush().await?;
            a.sync().await
        })
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check()?;
        block_on(
            self.access
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .discard_to_zero(offset, len),
        )
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check()?;
        block_on(self.get().write_zeroes(offset, len))
    }
}

impl Drop for Imago {
    fn drop(&mut self) {
        // imago keeps qcow2 metadata (L2 tables, refcounts) cached: write it back (not
        // a cache that no longer describes the file).
        if *self.broken.get_mut() {
            return;
        }
        let a = self.access.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = block_on(a.flush());
    }
}

const SECTOR: u64 = 512;

/// `snapshot=on`: reads come from the image until a sector is written; written sectors
/// live in an unnamed temporary file that vanishes with the process.
pub struct Overlay {
    base: Box<dyn Image>,
    top: File,
    /// One bit per 512-byte sector: written since start. Held across each request, so
    /// requests on the overlay are served one at a time.
    written: std::sync::Mutex<Vec<u64>>,
}

impl Overlay {
    pub fn new(base: Box<dyn Image>) -> io::Result<Self> {
        let top = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .open(std::env::temp_dir())?;
        top.set_len(base.size())?;
        let sectors = base.size().div_ceil(SECTOR);
        Ok(Self {
            base,
            top,
            written: std::sync::Mutex::new(vec![0; sectors.div_ceil(64) as usize]),
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_locked(&self, map: &[u64], offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let is_written = |s: u64| map[(s / 64) as usize] & (1 << (s % 64)) != 0;
        let mut pos = 0usize;
        while pos < buf.len() {
            let at = offset + pos as u64;
            let s = at / SECTOR;
            let top = is_written(s);
            // Extend the run while sectors come from the same place.
            let mut end = ((s + 1) * SECTOR - offset).min(buf.len() as u64) as usize;
            while end < buf.len() && is_written((offset + end as u64) / SECTOR) == top {
                end = (end + SECTOR as usize).min(buf.len());
            }
            if top {
                self.top.read_exact_at(&mut buf[pos..end], at)?;
            } else {
                self.base.read(at, &mut buf[pos..end])?;
            }
            pos = end;
        }
        Ok(())
    }

    /// Write whole sectors: a partial sector is completed from what reads see now.
    fn write_sectors(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut map = self.map();
        let start = offset / SECTOR * SECTOR;
        let end = (offset + data.len() as u64).div_ceil(SECTOR) * SECTOR;
        if start == offset && end == offset + data.len() as u64 {
            self.top.write_all_at(data, offset)?;
        } else {
            let mut buf = vec![0u8; (end - start) as usize];
            self.read_locked(&map, start, &mut buf)?;
            let at = (offset - start) as usize;
            buf[at..at + data.len()].copy_from_slice(data);
            self.top.write_all_at(&buf, start)?;
        }
        for s in start / SECTOR..end / SECTOR {
            map[(s / 64) as usize] |= 1 << (s % 64);
        }
        Ok(())
    }
}

impl Image for Overlay {
    fn size(&self) -> u64 {
        self.base.size()
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let map = self.map();
        self.read_locked(&map, offset, buf)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.write_sectors(offset, data)
    }

    fn flush(&self) -> io::Result<()> {
        // The overlay is thrown away at exit: nothing to make durable.
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let zeros = vec![0u8; 64 * 1024];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.write_sectors(offset + done, &zeros[..n])?;
            done += n as u64;
        }
        Ok(())
    }
}
