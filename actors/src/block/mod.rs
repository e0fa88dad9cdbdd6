//! Block backends: one actor per drive, on its own I/O thread, owning the image file and
//! serving `devices::block` requests from the disk front ends (IDE now, virtio-blk later).
//!
//! A front end submits a [`BlockJob`] (the request plus a completion callback) with
//! [`BlockHandle::submit`], which never blocks a vCPU; the backend thread performs the I/O
//! with positioned reads and writes and runs the callback with the result (the callback
//! locks the front-end model and raises its interrupt).
//!
//! Formats: raw. Format probing follows QEMU's safety rule: an image probed as raw gets a
//! warning and its first sector may not be overwritten with a qcow2 header.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use devices::block::{BlockCompletion, BlockError, BlockInfo, BlockOp, BlockRequest};

/// How the image was opened (from the command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockOptions {
    pub path: PathBuf,
    pub read_only: bool,
    /// The format was given explicitly (`format=raw`); otherwise it was probed.
    pub format_given: bool,
    /// Flushes are no-ops (`cache=unsafe`).
    pub ignore_flush: bool,
    /// Every write is followed by a data sync (`cache=writethrough|directsync`).
    pub write_through: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("Could not open '{path}': {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("'{path}' is a qcow2 image; qcow2 support is not available yet (use a raw image)")]
    Qcow2 { path: PathBuf },
    #[error("'{path}' is empty")]
    Empty { path: PathBuf },
}

/// I/O counters for `info blockstats`.
#[derive(Debug, Default)]
pub struct BlockStats {
    pub rd_bytes: AtomicU64,
    pub wr_bytes: AtomicU64,
    pub rd_ops: AtomicU64,
    pub wr_ops: AtomicU64,
    pub flush_ops: AtomicU64,
    pub failed_ops: AtomicU64,
}

/// A request and where its answer goes.
pub struct BlockJob {
    pub request: BlockRequest,
    pub done: Box<dyn FnOnce(BlockCompletion) + Send>,
}

/// The front-end side of one drive's backend.
#[derive(Clone)]
pub struct BlockHandle {
    tx: crossbeam_channel::Sender<BlockJob>,
    pub info: BlockInfo,
    pub path: PathBuf,
    pub stats: Arc<BlockStats>,
}

impl BlockHandle {
    /// Queue a job; never blocks. If the backend is gone the job fails with an I/O error.
    pub fn submit(&self, job: BlockJob) {
        if let Err(e) = self.tx.send(job) {
            let job = e.into_inner();
            (job.done)(BlockCompletion {
                id: job.request.id,
                result: Err(BlockError::Io),
            });
        }
    }
}

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

fn probe_qcow2(f: &File) -> bool {
    let mut m = [0u8; 4];
    f.read_exact_at(&mut m, 0).is_ok() && &m == QCOW2_MAGIC
}

/// Open an image and start its backend thread (named `troupe-blk-<id>`).
pub fn open(id: &str, opts: BlockOptions) -> Result<BlockHandle, OpenError> {
    let open_err = |source| OpenError::Open {
        path: opts.path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!opts.read_only)
        .open(&opts.path)
        .map_err(open_err)?;
    if probe_qcow2(&file) {
        return Err(OpenError::Qcow2 {
            path: opts.path.clone(),
        });
    }
    let size = file.metadata().map_err(open_err)?.len();
    if size == 0 {
        return Err(OpenError::Empty {
            path: opts.path.clone(),
        });
    }
    if !opts.format_given {
        crate::report!(
            "troupe: warning: Image format was not specified for '{}' and probing guessed raw.\n         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n         Specify the 'raw' format explicitly to remove the restrictions.",
            opts.path.display()
        );
    }
    let info = BlockInfo {
        size,
        read_only: opts.read_only,
    };
    let stats = Arc::new(BlockStats::default());
    let (tx, rx) = crossbeam_channel::bounded::<BlockJob>(256);
    let st = stats.clone();
    let backend = RawBackend {
        file,
        size,
        opts: opts.clone(),
    };
    std::thread::Builder::new()
        .name(format!("troupe-blk-{id}"))
        .spawn(move || {
            for job in rx {
                let result = backend.serve(job.request.op, &st);
                if result.is_err() {
                    st.failed_ops.fetch_add(1, Ordering::Relaxed);
                }
                (job.done)(BlockCompletion {
                    id: job.request.id,
                    result,
                });
            }
        })
        .map_err(open_err)?;
    Ok(BlockHandle {
        tx,
        info,
        path: opts.path,
        stats,
    })
}

struct RawBackend {
    file: File,
    size: u64,
    opts: BlockOptions,
}

impl RawBackend {
    fn check(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(BlockError::OutOfRange),
        }
    }

    fn serve(&self, op: BlockOp, st: &BlockStats) -> Result<Vec<u8>, BlockError> {
        match op {
            BlockOp::Read { offset, len } => {
                self.check(offset, len as u64)?;
                let mut buf = vec![0u8; len];
                self.file
                    .read_exact_at(&mut buf, offset)
                    .map_err(|_| BlockError::Io)?;
                st.rd_ops.fetch_add(1, Ordering::Relaxed);
                st.rd_bytes.fetch_add(len as u64, Ordering::Relaxed);
                Ok(buf)
            }
            BlockOp::Write { offset, data } => {
                if self.opts.read_only {
                    return Err(BlockError::ReadOnly);
                }
                self.check(offset, data.len() as u64)?;
                // A probed-raw image must not grow a format header (QEMU's rule): that
                // would let the guest turn its disk into a qcow2 pointing at host files.
                if !self.opts.format_given && offset == 0 && data.starts_with(QCOW2_MAGIC) {
                    tracing::warn!(target: "guest_errors", "refusing a qcow2 header on probed-raw {}", self.opts.path.display());
                    return Err(BlockError::Io);
                }
                self.file
                    .write_all_at(&data, offset)
                    .map_err(|_| BlockError::Io)?;
                if self.opts.write_through {
                    self.file.sync_data().map_err(|_| BlockError::Io)?;
                }
                st.wr_ops.fetch_add(1, Ordering::Relaxed);
                st.wr_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                Ok(Vec::new())
            }
            BlockOp::Flush => {
                st.flush_ops.fetch_add(1, Ordering::Relaxed);
                if !self.opts.ignore_flush && !self.opts.read_only {
                    self.file.sync_data().map_err(|_| BlockError::Io)?;
                }
                Ok(Vec::new())
            }
            BlockOp::Discard { offset, len } | BlockOp::WriteZeroes { offset, len } => {
                if self.opts.read_only {
                    return Err(BlockError::ReadOnly);
                }
                self.check(offset, len)?;
                punch_or_zero(&self.file, offset, len).map_err(|_| BlockError::Io)?;
                Ok(Vec::new())
            }
        }
    }
}

/// Deallocate a range (reads back zeros); falls back to writing zeros.
fn punch_or_zero(f: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on an open descriptor with a valid range.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let zeros = vec![0u8; 64 * 1024];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Whether `path` looks like a qcow2 image (for format probing at the edge).
pub fn is_qcow2(path: &Path) -> bool {
    File::open(path).map(|f| probe_qcow2(&f)).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str, data: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("troupe-blk-{}-{name}", std::process::id()));
        std::fs::write(&p, data).unwrap();
        p
    }

    fn run(h: &BlockHandle, op: BlockOp) -> Result<Vec<u8>, BlockError> {
        let (tx, rx) = std::sync::mpsc::channel();
        h.submit(BlockJob {
            request: BlockRequest { id: 7, op },
            done: Box::new(move |c| tx.send(c).unwrap()),
        });
        let c = rx.recv().unwrap();
        assert_eq!(c.id, 7);
        c.result
    }

    #[test]
    fn raw_reads_writes_flushes_and_checks_ranges() {
        let p = tmp("rw", &[1u8; 4096]);
        let h = open(
            "t",
            BlockOptions {
                path: p.clone(),
                read_only: false,
                format_given: true,
                ignore_flush: false,
                write_through: false,
            },
        )
        .unwrap();
        assert_eq!(h.info.size, 4096);
        run(
            &h,
            BlockOp::Write {
                offset: 512,
                data: vec![9; 512],
            },
        )
        .unwrap();
        run(&h, BlockOp::Flush).unwrap();
        assert_eq!(
            run(
                &h,
                BlockOp::Read {
                    offset: 510,
                    len: 4
                }
            )
            .unwrap(),
            [1, 1, 9, 9]
        );
        assert_eq!(
            run(
                &h,
                BlockOp::Read {
                    offset: 4000,
                    len: 200
                }
            ),
            Err(BlockError::OutOfRange)
        );
        run(
            &h,
            BlockOp::WriteZeroes {
                offset: 0,
                len: 1024,
            },
        )
        .unwrap();
        assert_eq!(
            run(
                &h,
                BlockOp::Read {
                    offset: 1000,
                    len: 30
                }
            )
            .unwrap()[..24],
            [0; 24]
        );
        assert_eq!(std::fs::read(&p).unwrap()[1024], 1);
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn read_only_and_probed_raw_rules() {
        let p = tmp("ro", &[0u8; 1024]);
        let ro = open(
            "ro",
            BlockOptions {
                path: p.clone(),
                read_only: true,
                format_given: true,
                ignore_flush: false,
                write_through: false,
            },
        )
        .unwrap();
        assert_eq!(
            run(
                &ro,
                BlockOp::Write {
                    offset: 0,
                    data: vec![1]
                }
            ),
            Err(BlockError::ReadOnly)
        );
        let probed = open(
            "p",
            BlockOptions {
                path: p.clone(),
                read_only: false,
                format_given: false,
                ignore_flush: false,
                write_through: false,
            },
        )
        .unwrap();
        let mut hdr = QCOW2_MAGIC.to_vec();
        hdr.resize(512, 0);
        assert_eq!(
            run(
                &probed,
                BlockOp::Write {
                    offset: 0,
                    data: hdr
                }
            ),
            Err(BlockError::Io)
        );
        run(
            &probed,
            BlockOp::Write {
                offset: 0,
                data: vec![0x55; 512],
            },
        )
        .unwrap();
        let _ = std::fs::remove_file(p);
    }
}
