//! Block backends: one actor per drive, on its own I/O thread, owning the image and
//! serving `devices::block` requests from the disk front ends (IDE, virtio-blk).
//!
//! A front end submits a [`BlockJob`] (the request plus a completion callback) with
//! [`BlockHandle::submit`], which never blocks a vCPU; the backend thread performs the I/O
//! and runs the callback with the result (the IDE callback locks its model and raises the
//! interrupt; the virtio-blk one wakes the device's worker).
//!
//! Formats: raw and qcow2 through `imago` ([`image`]); `snapshot=on` keeps writes in a
//! temporary overlay. Images are locked the way QEMU locks them ([`lock`]). Format
//! probing follows QEMU's safety rule: an image probed as raw gets a warning and its first
//! sector may not be overwritten with a qcow2 header.

mod image;
mod lock;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use devices::block::{BlockCompletion, BlockError, BlockInfo, BlockOp, BlockRequest};
use image::Image;

/// Image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

/// How the image was opened (from the command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockOptions {
    pub path: PathBuf,
    pub read_only: bool,
    /// The format given (`format=`); None = probed.
    pub format: Option<Format>,
    /// Flushes are no-ops (`cache=unsafe`).
    pub ignore_flush: bool,
    /// Every write is followed by a flush (`cache=writethrough|directsync`).
    pub write_through: bool,
    /// O_DIRECT (`cache=none|directsync`).
    pub direct: bool,
    /// `snapshot=on`: writes go to a temporary overlay.
    pub snapshot: bool,
}

impl BlockOptions {
    /// Raw, writable, page cache: what tests mostly want.
    pub fn raw(path: PathBuf) -> Self {
        Self {
            path,
            read_only: false,
            format: Some(Format::Raw),
            ignore_flush: false,
            write_through: false,
            direct: false,
            snapshot: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("Could not open '{path}': {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Could not open '{path}' as {format}: {source}")]
    Format {
        path: PathBuf,
        format: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("'{path}' is empty")]
    Empty { path: PathBuf },
    #[error(transparent)]
    Locked(#[from] lock::LockError),
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
    pub format: Format,
    pub stats: Arc<BlockStats>,
}

impl BlockHandle {
    /// Queue a job. If the backend is gone the job fails with an I/O error.
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
    let probe = File::open(&opts.path).map_err(open_err)?;
    let format = match opts.format {
        Some(f) => f,
        None if probe_qcow2(&probe) => Format::Qcow2,
        None => {
            crate::report!(
                "troupe: warning: Image format was not specified for '{}' and probing guessed raw.\n         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n         Specify the 'raw' format explicitly to remove the restrictions.",
                opts.path.display()
            );
            Format::Raw
        }
    };
    if format == Format::Raw && probe.metadata().map_err(open_err)?.len() == 0 {
        return Err(OpenError::Empty {
            path: opts.path.clone(),
        });
    }
    drop(probe);
    let writable = !opts.read_only && !opts.snapshot;
    let lock = lock::lock(&opts.path, writable)?;
    let img = image::Imago::open(&opts.path, format == Format::Qcow2, writable, opts.direct)
        .map_err(|source| OpenError::Format {
            path: opts.path.clone(),
            format: format.name(),
            source,
        })?;
    let img: Box<dyn Image> = if opts.snapshot {
        Box::new(image::Overlay::new(Box::new(img)).map_err(open_err)?)
    } else {
        Box::new(img)
    };
    let size = img.size();
    let info = BlockInfo {
        size,
        read_only: opts.read_only,
    };
    let stats = Arc::new(BlockStats::default());
    let (tx, rx) = crossbeam_channel::bounded::<BlockJob>(256);
    let st = stats.clone();
    let mut backend = Backend {
        img,
        size,
        opts: opts.clone(),
        probed_raw: opts.format.is_none() && format == Format::Raw,
        _lock: lock,
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
            // Every front end is gone: write back cached qcow2 metadata.
            let _ = backend.img.flush();
        })
        .map_err(open_err)?;
    Ok(BlockHandle {
        tx,
        info,
        path: opts.path,
        format,
        stats,
    })
}

struct Backend {
    img: Box<dyn Image>,
    size: u64,
    opts: BlockOptions,
    probed_raw: bool,
    _lock: lock::ImageLock,
}

impl Backend {
    fn check(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(BlockError::OutOfRange),
        }
    }

    fn io_err(&self, what: &str, e: std::io::Error) -> BlockError {
        tracing::warn!("{} {what}: {e}", self.opts.path.display());
        BlockError::Io
    }

    fn serve(&mut self, op: BlockOp, st: &BlockStats) -> Result<Vec<u8>, BlockError> {
        match op {
            BlockOp::Read { offset, len } => {
                self.check(offset, len as u64)?;
                let mut buf = vec![0u8; len];
                self.img
                    .read(offset, &mut buf)
                    .map_err(|e| self.io_err("read", e))?;
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
                if self.probed_raw && offset == 0 && data.starts_with(QCOW2_MAGIC) {
                    tracing::warn!(target: "guest_errors", "refusing a qcow2 header on probed-raw {}", self.opts.path.display());
                    return Err(BlockError::Io);
                }
                self.img
                    .write(offset, &data)
                    .map_err(|e| self.io_err("write", e))?;
                if self.opts.write_through {
                    self.img.flush().map_err(|e| self.io_err("flush", e))?;
                }
                st.wr_ops.fetch_add(1, Ordering::Relaxed);
                st.wr_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                Ok(Vec::new())
            }
            BlockOp::Flush => {
                st.flush_ops.fetch_add(1, Ordering::Relaxed);
                if !self.opts.ignore_flush && !self.opts.read_only {
                    self.img.flush().map_err(|e| self.io_err("flush", e))?;
                }
                Ok(Vec::new())
            }
            BlockOp::Discard { offset, len } | BlockOp::WriteZeroes { offset, len } => {
                if self.opts.read_only {
                    return Err(BlockError::ReadOnly);
                }
                self.check(offset, len)?;
                let r = if matches!(op, BlockOp::Discard { .. }) {
                    self.img.discard(offset, len)
                } else {
                    self.img.write_zeroes(offset, len)
                };
                r.map_err(|e| self.io_err("discard/write-zeroes", e))?;
                Ok(Vec::new())
            }
        }
    }
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
        let h = open("t", BlockOptions::raw(p.clone())).unwrap();
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
                read_only: true,
                ..BlockOptions::raw(p.clone())
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
        let p2 = tmp("probed", &[0u8; 1024]);
        let probed = open(
            "p",
            BlockOptions {
                format: None,
                ..BlockOptions::raw(p2.clone())
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
        let _ = std::fs::remove_file(p2);
    }
}

#[cfg(test)]
mod qcow2_tests {
    use super::*;

    fn run(h: &BlockHandle, op: BlockOp) -> Result<Vec<u8>, BlockError> {
        let (tx, rx) = std::sync::mpsc::channel();
        h.submit(BlockJob {
            request: BlockRequest { id: 1, op },
            done: Box::new(move |c| tx.send(c).unwrap()),
        });
        rx.recv().unwrap().result
    }

    fn qemu_img(args: &[&str]) -> bool {
        std::process::Command::new("qemu-img")
            .args(args)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    #[test]
    fn a_qcow2_overlay_reads_its_raw_backing_file() {
        let dir = std::env::temp_dir().join(format!("troupe-q2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("base.raw");
        let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&base, &data).unwrap();
        let top = dir.join("top.qcow2");
        if !qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            base.to_str().unwrap(),
            "-F",
            "raw",
            top.to_str().unwrap(),
        ]) {
            eprintln!("qemu-img not available: skipped");
            return;
        }
        let h = open(
            "q",
            BlockOptions {
                format: None,
                ..BlockOptions::raw(top.clone())
            },
        )
        .unwrap();
        assert_eq!(h.format, Format::Qcow2);
        assert_eq!(h.info.size, 4 << 20);
        for off in [0u64, 512, 65536 - 512, 1 << 20, (4 << 20) - 4096] {
            let got = run(
                &h,
                BlockOp::Read {
                    offset: off,
                    len: 4096.min((4 << 20) - off as usize),
                },
            )
            .unwrap();
            assert_eq!(
                got[..],
                data[off as usize..off as usize + got.len()],
                "offset {off}"
            );
        }
        run(
            &h,
            BlockOp::Write {
                offset: 1000 * 512,
                data: vec![0xab; 8192],
            },
        )
        .unwrap();
        run(&h, BlockOp::Flush).unwrap();
        let got = run(
            &h,
            BlockOp::Read {
                offset: 999 * 512,
                len: 1024,
            },
        )
        .unwrap();
        assert_eq!(got[..512], data[999 * 512..1000 * 512]);
        assert_eq!(got[512..], [0xab; 512]);
        drop(h);
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(qemu_img(&["check", "-q", top.to_str().unwrap()]));
        let _ = std::fs::remove_dir_all(dir);
    }
}
