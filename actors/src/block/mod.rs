//! Block backends: one actor per drive, on its own I/O thread, owning the image and
//! serving `devices::block` requests from the disk front ends (IDE, virtio-blk).
//!
//! A front end submits a [`BlockJob`] (the request plus a completion callback) with
//! [`BlockHandle::submit`], which never blocks a vCPU; the backend thread performs the I/O
//! and runs the callback with the result (the IDE callback locks its model and raises the
//! interrupt; the virtio-blk one wakes the device's worker).
//!
//! Formats: raw and qcow2 through `imago` ([`image`]); `snapshot=on` keeps writes in a
//! temporary overlay. qcow2 internal snapshots (`savevm` and friends) are operations on a
//! drive's actor ([`snapshot`]), done on the closed image ([`qcow2_snapshot`]). Images are locked the way QEMU locks them ([`lock`]). Format
//! probing follows QEMU's safety rule: an image probed as raw gets a warning and its first
//! sector may not be overwritten with a qcow2 header.

pub mod activation;
mod image;
mod lock;
mod qcow2_check;
pub mod qcow2_snapshot;
mod qcow2_uring;
pub mod snapshot;
pub mod uring;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::runtime::{fault_point, once, spawn_thread, Registry, Restart, ThreadSpec};
use devices::block::{BlockCompletion, BlockError, BlockInfo, BlockOp, BlockRequest, HostBuf};
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
    /// How I/O is issued.
    pub aio: Aio,
}

/// I/O engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aio {
    /// A pool of I/O threads (qcow2 always; raw with `aio=threads`).
    Threads,
    /// io_uring for raw images (falls back to threads where the kernel has none).
    IoUring,
}

/// I/O threads per drive with the thread-pool engine.
const POOL_THREADS: usize = 4;

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
            aio: Aio::Threads,
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
    /// A qcow2 image (`path`, the top of the chain or a backing file) QEMU would refuse.
    #[error("Could not open '{path}': {reason}")]
    Qcow2 {
        path: PathBuf,
        reason: qcow2_check::Qcow2Error,
    },
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
    /// Rung after each job for engines that sleep in io_uring.
    doorbell: Option<Arc<vmm_sys_util::eventfd::EventFd>>,
    /// io_uring drives: how a front end makes an engine of its own (and the image lock
    /// it keeps while it does).
    uring: Option<(Arc<uring::UringSpec>, Arc<lock::ImageLock>)>,
    /// Snapshot operations, for drives that can hold snapshots ([`snapshot`]).
    snap: Option<crossbeam_channel::Sender<snapshot::SnapshotJob>>,
    /// The image's locks (held while the image is active).
    lock: Arc<lock::ImageLock>,
    /// The drive's id (in snapshot errors).
    id: String,
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
            return;
        }
        if let Some(d) = &self.doorbell {
            let _ = d.write(1);
        }
    }

    /// A ring of the caller's own on this drive (io_uring drives only): the caller submits
    /// and reaps on its own thread, with no hop through the block actor.
    pub fn own_engine(&self) -> Option<OwnEngine> {
        let (spec, lock) = self.uring.as_ref()?;
        match spec.engine() {
            Ok(engine) => Some(OwnEngine {
                engine,
                _lock: lock.clone(),
            }),
            Err(e) => {
                tracing::warn!("{}: io_uring: {e}", self.path.display());
                None
            }
        }
    }

    /// Which engine serves this drive.
    pub fn engine(&self) -> Aio {
        if self.doorbell.is_some() {
            Aio::IoUring
        } else {
            Aio::Threads
        }
    }
}

impl Drop for BlockHandle {
    /// An io_uring engine learns that its last front end is gone (and ends, letting the
    /// image go) only when it wakes: drop this handle's sender, then ring.
    fn drop(&mut self) {
        if let Some(d) = &self.doorbell {
            let (gone, _) = crossbeam_channel::bounded(0);
            drop(std::mem::replace(&mut self.tx, gone));
            let _ = d.write(1);
        }
    }
}

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

fn probe_qcow2(f: &File) -> bool {
    let mut m = [0u8; 4];
    f.read_exact_at(&mut m, 0).is_ok() && &m == QCOW2_MAGIC
}

/// Open an image and start its backend thread (named `troupe-blk-<id>`).
///
/// The engine threads (actors `blk-<id>`, or `blk-<id>-<n>` for the thread pool) are not
/// restartable: they own requests in flight (io_uring entries pointing into their buffers,
/// cached qcow2 metadata not yet written back), which a rebuilt engine could neither finish
/// nor account for; a panic stops the VM in internal-error.
pub fn open(registry: &Registry, id: &str, opts: BlockOptions) -> Result<BlockHandle, OpenError> {
    open_as(registry, id, opts, true)
}

/// Open an image the way an incoming migration's destination does: inactive, taking no
/// lock (the source still writes it) until [`Activation::activate`].
pub fn open_inactive(
    registry: &Registry,
    id: &str,
    opts: BlockOptions,
) -> Result<BlockHandle, OpenError> {
    open_as(registry, id, opts, false)
}

fn open_as(
    registry: &Registry,
    id: &str,
    opts: BlockOptions,
    active: bool,
) -> Result<BlockHandle, OpenError> {
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
    if format == Format::Qcow2 {
        // Before imago, which may write the header of an image it then refuses.
        qcow2_check::check_chain(&opts.path, writable)
            .map_err(|(path, reason)| OpenError::Qcow2 { path, reason })?;
    }
    let lock = Arc::new(if active {
        lock::lock(&opts.path, writable)?
    } else {
        lock::unlocked(&opts.path, writable)?
    });
    let stats = Arc::new(BlockStats::default());
    let (tx, rx) = crossbeam_channel::bounded::<BlockJob>(256);
    let probed_raw = opts.format.is_none() && format == Format::Raw;
    let spawn_err = |source| OpenError::Open {
        path: opts.path.clone(),
        source,
    };
    let format_err = |source| OpenError::Format {
        path: opts.path.clone(),
        format: format.name(),
        source,
    };
    // Snapshot operations reach qcow2 drives the guest writes to.
    let (snap_tx, snap_rx) = crossbeam_channel::bounded::<snapshot::SnapshotJob>(4);
    let snap = (format == Format::Qcow2 && writable).then_some(snap_tx);
    // The handle, once the drive's engine runs.
    let handle = |tx, doorbell, uring, size| BlockHandle {
        tx,
        doorbell,
        uring,
        snap: snap.clone(),
        lock: lock.clone(),
        id: id.to_string(),
        info: BlockInfo {
            size,
            read_only: opts.read_only,
        },
        path: opts.path.clone(),
        format,
        stats: stats.clone(),
    };
    if format == Format::Raw && !opts.snapshot && opts.aio == Aio::IoUring && uring::available() {
        let size = std::fs::metadata(&opts.path).map_err(open_err)?.len();
        let spec = Arc::new(uring::UringSpec {
            rules: Arc::new(Rules {
                opts: opts.clone(),
                size,
                probed_raw,
            }),
            stats: stats.clone(),
        });
        // The block actor's own ring, for front ends that hand it jobs (IDE).
        let engine = spec.engine().map_err(open_err)?;
        let doorbell =
            Arc::new(vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).map_err(open_err)?);
        let bell = doorbell.clone();
        let held = lock.clone();
        spawn_thread(
            registry,
            engine_spec(format!("blk-{id}"), &doorbell),
            once(move || {
                let _lock = held;
                uring::run(engine, rx, bell)
            }),
        )
        .map_err(spawn_err)?;
        return Ok(handle(tx, Some(doorbell), Some((spec, lock.clone())), size));
    }
    if format == Format::Qcow2 && !opts.snapshot && opts.aio == Aio::IoUring && uring::available() {
        // The image is opened on the block actor's thread: its ring is that thread's.
        let doorbell =
            Arc::new(vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).map_err(open_err)?);
        let (bell, held, st) = (doorbell.clone(), lock.clone(), stats.clone());
        let (up_tx, up_rx) = std::sync::mpsc::channel();
        let o = opts.clone();
        spawn_thread(
            registry,
            engine_spec(format!("blk-{id}"), &doorbell),
            once(move || {
                let _lock = held;
                let q = match qcow2_uring::open(&o.path, writable, o.direct) {
                    Ok(q) => q,
                    Err(e) => {
                        let _ = up_tx.send(Err(e));
                        return;
                    }
                };
                let rules = Arc::new(Rules {
                    opts: o,
                    size: q.size(),
                    probed_raw,
                });
                let _ = up_tx.send(Ok(q.size()));
                q.run(rules, st, rx, snap_rx, bell);
            }),
        )
        .map_err(spawn_err)?;
        let size = up_rx
            .recv()
            .map_err(|_| std::io::Error::other("the block thread ended"))
            .and_then(|r| r)
            .map_err(format_err)?;
        return Ok(handle(tx, Some(doorbell), None, size));
    }
    let img = image::Imago::open(&opts.path, format == Format::Qcow2, writable, opts.direct)
        .map_err(format_err)?;
    // The image snapshot operations close and reopen (qcow2 drives the guest writes to).
    let (img, snap_img): (Arc<dyn Image>, Option<Arc<image::Imago>>) = if opts.snapshot {
        let overlay = image::Overlay::new(Box::new(img)).map_err(open_err)?;
        (Arc::new(overlay), None)
    } else {
        let img = Arc::new(img);
        (img.clone(), snap.is_some().then_some(img))
    };
    let size = img.size();
    let rules = Arc::new(Rules {
        opts: opts.clone(),
        size,
        probed_raw,
    });
    for n in 0..POOL_THREADS {
        let (rx, img, rules, st, lock) = (
            rx.clone(),
            img.clone(),
            rules.clone(),
            stats.clone(),
            lock.clone(),
        );
        let snap_img = snap_img.clone();
        let mut snap_rx = match snap_img {
            Some(_) => snap_rx.clone(),
            None => crossbeam_channel::never(),
        };
        spawn_thread(
            registry,
            ThreadSpec::new(format!("blk-{id}-{n}"), "block", Restart::Never),
            once(move || {
                let _lock = lock;
                loop {
                    let job = crossbeam_channel::select! {
                        recv(rx) -> job => match job {
                            Ok(job) => job,
                            Err(_) => break,
                        },
                        recv(snap_rx) -> job => {
                            let Ok(job) = job else {
                                snap_rx = crossbeam_channel::never();
                                continue;
                            };
                            if let Some(img) = &snap_img {
                                let path = &rules.opts.path;
                                let r = img
                                    .exclusive(|| snapshot::perform(path, job.op))
                                    .map_err(|source| qcow2_snapshot::SnapshotError::Io {
                                        path: path.clone(),
                                        source,
                                    })
                                    .and_then(|r| r);
                                job.reply.send(r);
                            }
                            continue;
                        }
                    };
                    fault_point();
                    let r = rules
                        .check(&job.request.op)
                        .and_then(|()| serve_image(img.as_ref(), &rules, &job.request.op));
                    account(&st, &job.request.op, &r);
                    (job.done)(BlockCompletion {
                        id: job.request.id,
                        result: r,
                    });
                }
                // Every front end is gone: write back cached qcow2 metadata.
                let _ = img.flush();
            }),
        )
        .map_err(spawn_err)?;
    }
    Ok(handle(tx, None, None, size))
}

/// An io_uring engine thread's actor: its doorbell wakes it.
fn engine_spec(id: String, doorbell: &Arc<vmm_sys_util::eventfd::EventFd>) -> ThreadSpec {
    let bell = doorbell.clone();
    ThreadSpec::new(id, "block", Restart::Never).wake(move || {
        let _ = bell.write(1);
    })
}

/// An io_uring engine owned by a front end (see [`BlockHandle::own_engine`]).
pub struct OwnEngine {
    pub engine: uring::Engine,
    _lock: Arc<lock::ImageLock>,
}

/// What every engine checks before doing a request.
pub(crate) struct Rules {
    opts: BlockOptions,
    size: u64,
    probed_raw: bool,
}

impl Rules {
    fn range(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(BlockError::OutOfRange),
        }
    }

    fn check(&self, op: &BlockOp) -> Result<(), BlockError> {
        let writes = !matches!(
            op,
            BlockOp::Read { .. } | BlockOp::ReadV { .. } | BlockOp::Flush
        );
        if writes && self.opts.read_only {
            return Err(BlockError::ReadOnly);
        }
        match op {
            BlockOp::Read { offset, len } => self.range(*offset, *len as u64),
            BlockOp::Write { offset, data } => {
                self.range(*offset, data.len() as u64)?;
                // A probed-raw image must not grow a format header (QEMU's rule): that
                // would let the guest turn its disk into a qcow2 pointing at host files.
                if self.probed_raw && *offset == 0 && data.starts_with(QCOW2_MAGIC) {
                    tracing::warn!(target: "guest_errors", "refusing a qcow2 header on probed-raw {}", self.opts.path.display());
                    return Err(BlockError::Io);
                }
                Ok(())
            }
            BlockOp::Flush => Ok(()),
            BlockOp::Discard { offset, len } | BlockOp::WriteZeroes { offset, len } => {
                self.range(*offset, *len)
            }
            BlockOp::ReadV { offset, bufs } => self.range(*offset, HostBuf::total(bufs)),
            BlockOp::WriteV { offset, bufs } => {
                self.range(*offset, HostBuf::total(bufs))?;
                if self.probed_raw && *offset == 0 {
                    let mut head = [0u8; 4];
                    let mut n = 0;
                    for b in bufs {
                        // SAFETY: HostBuf ranges stay mapped while the request runs.
                        let src = unsafe { host_slice(b) };
                        let k = (4 - n).min(src.len());
                        head[n..n + k].copy_from_slice(&src[..k]);
                        n += k;
                        if n == 4 {
                            break;
                        }
                    }
                    if &head == QCOW2_MAGIC {
                        tracing::warn!(target: "guest_errors", "refusing a qcow2 header on probed-raw {}", self.opts.path.display());
                        return Err(BlockError::Io);
                    }
                }
                Ok(())
            }
        }
    }
}

/// Run `io(image offset, buffer)` over each guest buffer in turn.
fn each_buf(
    offset: u64,
    bufs: &[HostBuf],
    mut io: impl FnMut(u64, &mut [u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut at = offset;
    for b in bufs {
        // SAFETY: guest RAM named by the front end (see `host_slice`).
        io(at, unsafe { host_slice(b) })?;
        at += b.len as u64;
    }
    Ok(())
}

/// A guest buffer as a byte slice.
///
/// # Safety
/// `b` must describe memory mapped while the request runs (guest RAM, or a front end's
/// buffer kept for the request: what front ends put in `ReadV`/`WriteV`); the guest may
/// change guest RAM concurrently, as with any DMA.
pub(crate) unsafe fn host_slice<'a>(b: &HostBuf) -> &'a mut [u8] {
    // SAFETY: per the function's contract.
    unsafe { std::slice::from_raw_parts_mut(b.addr as *mut u8, b.len) }
}

/// Count a finished request for `info blockstats`.
pub(crate) fn account(st: &BlockStats, op: &BlockOp, r: &Result<Vec<u8>, BlockError>) {
    if r.is_err() {
        st.failed_ops.fetch_add(1, Ordering::Relaxed);
        return;
    }
    match op {
        BlockOp::Read { len, .. } => {
            st.rd_ops.fetch_add(1, Ordering::Relaxed);
            st.rd_bytes.fetch_add(*len as u64, Ordering::Relaxed);
        }
        BlockOp::Write { data, .. } => {
            st.wr_ops.fetch_add(1, Ordering::Relaxed);
            st.wr_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        BlockOp::ReadV { bufs, .. } => {
            st.rd_ops.fetch_add(1, Ordering::Relaxed);
            st.rd_bytes
                .fetch_add(HostBuf::total(bufs), Ordering::Relaxed);
        }
        BlockOp::WriteV { bufs, .. } => {
            st.wr_ops.fetch_add(1, Ordering::Relaxed);
            st.wr_bytes
                .fetch_add(HostBuf::total(bufs), Ordering::Relaxed);
        }
        BlockOp::Flush => {
            st.flush_ops.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> BlockError {
    tracing::warn!("{} {what}: {e}", path.display());
    BlockError::Io
}

/// One checked request on an image (thread-pool engine).
fn serve_image(img: &dyn Image, rules: &Rules, op: &BlockOp) -> Result<Vec<u8>, BlockError> {
    let path = &rules.opts.path;
    match op {
        BlockOp::Read { offset, len } => {
            let mut buf = vec![0u8; *len];
            img.read(*offset, &mut buf)
                .map_err(|e| io_err(path, "read", e))?;
            Ok(buf)
        }
        BlockOp::Write { offset, data } => {
            img.write(*offset, data)
                .map_err(|e| io_err(path, "write", e))?;
            if rules.opts.write_through {
                img.flush().map_err(|e| io_err(path, "flush", e))?;
            }
            Ok(Vec::new())
        }
        BlockOp::Flush => {
            if !rules.opts.ignore_flush && !rules.opts.read_only {
                img.flush().map_err(|e| io_err(path, "flush", e))?;
            }
            Ok(Vec::new())
        }
        BlockOp::Discard { offset, len } => {
            img.discard(*offset, *len)
                .map_err(|e| io_err(path, "discard", e))?;
            Ok(Vec::new())
        }
        BlockOp::WriteZeroes { offset, len } => {
            img.write_zeroes(*offset, *len)
                .map_err(|e| io_err(path, "write-zeroes", e))?;
            Ok(Vec::new())
        }
        BlockOp::ReadV { offset, bufs } => {
            each_buf(*offset, bufs, |at, b| img.read(at, b))
                .map_err(|e| io_err(path, "read", e))?;
            Ok(Vec::new())
        }
        BlockOp::WriteV { offset, bufs } => {
            each_buf(*offset, bufs, |at, b| img.write(at, b))
                .map_err(|e| io_err(path, "write", e))?;
            if rules.opts.write_through {
                img.flush().map_err(|e| io_err(path, "flush", e))?;
            }
            Ok(Vec::new())
        }
    }
}

/// One checked request on a raw file with plain system calls (what io_uring leaves to the
/// thread: unaligned O_DIRECT requests, discard, write-zeroes, ignored flushes).
fn serve_sync(f: &File, op: &BlockOp) -> Result<Vec<u8>, BlockError> {
    let io = |_| BlockError::Io;
    match op {
        BlockOp::Read { offset, len } => {
            let mut buf = vec![0u8; *len];
            f.read_exact_at(&mut buf, *offset).map_err(io)?;
            Ok(buf)
        }
        BlockOp::Write { offset, data } => {
            f.write_all_at(data, *offset).map_err(io)?;
            Ok(Vec::new())
        }
        BlockOp::Flush => Ok(Vec::new()),
        BlockOp::Discard { offset, len } | BlockOp::WriteZeroes { offset, len } => {
            punch_or_zero(f, *offset, *len).map_err(io)?;
            Ok(Vec::new())
        }
        BlockOp::ReadV { offset, bufs } => {
            each_buf(*offset, bufs, |at, b| f.read_exact_at(b, at)).map_err(io)?;
            Ok(Vec::new())
        }
        BlockOp::WriteV { offset, bufs } => {
            each_buf(*offset, bufs, |at, b| f.write_all_at(b, at)).map_err(io)?;
            Ok(Vec::new())
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

    /// Whether this process has `path` open.
    fn open_here(path: &Path) -> bool {
        let want = std::fs::canonicalize(path).unwrap();
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .any(|p| p == want)
    }

    #[test]
    fn the_image_is_closed_once_the_last_handle_goes_on_every_engine() {
        for (aio, format) in [
            (Aio::Threads, Format::Raw),
            (Aio::IoUring, Format::Raw),
            (Aio::IoUring, Format::Qcow2),
        ] {
            let p = tmp(&format!("close-{aio:?}-{format:?}"), &[5u8; 4096]);
            if format == Format::Qcow2 {
                let q = p.with_extension("q");
                let made = std::process::Command::new("qemu-img")
                    .args(["convert", "-O", "qcow2"])
                    .args([&p, &q])
                    .status()
                    .expect("qemu-img (qemu-utils)");
                assert!(made.success());
                std::fs::rename(&q, &p).unwrap();
            }
            let h = open(
                &Registry::new(),
                "t",
                BlockOptions {
                    aio,
                    format: Some(format),
                    ..BlockOptions::raw(p.clone())
                },
            )
            .unwrap();
            let other = h.clone();
            assert_eq!(
                run(&other, BlockOp::Read { offset: 0, len: 2 }).unwrap(),
                [5, 5]
            );
            drop(h);
            assert!(open_here(&p), "{aio:?} {format:?}: a handle is left");
            drop(other);
            // An io_uring engine sleeps in epoll: the last handle going must wake it.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while open_here(&p) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{aio:?} {format:?}: the image stayed open with no handle left"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let _ = std::fs::remove_file(&p);
        }
    }

    #[test]
    fn raw_reads_writes_flushes_and_checks_ranges_on_every_engine() {
        for (aio, direct) in [
            (Aio::Threads, false),
            (Aio::IoUring, false),
            (Aio::IoUring, true),
        ] {
            raw_engine(aio, direct);
        }
    }

    fn raw_engine(aio: Aio, direct: bool) {
        let p = tmp(&format!("rw-{aio:?}-{direct}"), &[1u8; 4096]);
        let h = open(
            &Registry::new(),
            "t",
            BlockOptions {
                aio,
                direct,
                ..BlockOptions::raw(p.clone())
            },
        )
        .unwrap();
        assert_eq!(h.engine(), aio);
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
            &Registry::new(),
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
            &Registry::new(),
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
            &Registry::new(),
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
