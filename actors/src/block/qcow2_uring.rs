//! qcow2 images on io_uring (`aio=io_uring`, the default): the block actor's thread owns a
//! ring and runs imago's async qcow2 driver on a small executor of its own, with up to
//! [`DEPTH`] guest requests in flight at once. imago reaches the image (and its backing
//! chain) through [`UringFile`], whose reads, writes, syncs and fallocates are ring
//! entries; the doorbell (new requests) is a poll entry on the same ring, so one
//! `io_uring_enter` waits for either.
//!
//! Rules the executor keeps: a request's future is never dropped while one of its entries
//! is in the ring (it owns the buffers the kernel reads and writes), and a discard runs
//! alone (imago's `discard_to_zero_unsafe` needs no other request in flight).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use crossbeam_channel::{Receiver, TryRecvError};
use futures::stream::{FuturesUnordered, StreamExt};
use imago::io_buffers::{IoVector, IoVectorMut};
use imago::qcow2::Qcow2;
use imago::storage::drivers::CommonStorageHelper;
use imago::{
    FormatAccess, FormatDriverBuilder, PermissiveImplicitOpenGate, Storage, StorageOpenOptions,
};
use io_uring::{opcode, types, IoUring};
use vmm_sys_util::eventfd::EventFd;

use super::qcow2_snapshot::SnapshotError;
use super::snapshot::SnapshotJob;
use super::{account, host_slice, io_err, BlockJob, BlockStats, Rules};
use devices::block::{BlockCompletion, BlockError, BlockOp};

/// Guest requests served at once.
const DEPTH: usize = 32;

/// `user_data` of the doorbell's poll entry.
const BELL: u64 = u64::MAX;

/// The ring of this thread and the completions not yet taken by their futures.
struct Reactor {
    ring: IoUring,
    next: u64,
    /// By `user_data`: the result once complete, and who to wake.
    slots: HashMap<u64, (Option<i32>, Option<Waker>)>,
}

thread_local! {
    static REACTOR: RefCell<Option<Reactor>> = const { RefCell::new(None) };
}

fn with_reactor<R>(f: impl FnOnce(&mut Reactor) -> R) -> R {
    REACTOR.with(|r| {
        f(r.borrow_mut()
            .as_mut()
            .expect("not on a qcow2 io_uring thread"))
    })
}

/// Queue `e`; the returned future gives its result. The caller keeps every buffer `e`
/// points at alive until then.
fn submit(e: io_uring::squeue::Entry) -> Op {
    with_reactor(|r| {
        let ud = r.next;
        r.next += 1;
        push(r, &e.user_data(ud));
        r.slots.insert(ud, (None, None));
        Op { ud }
    })
}

fn push(r: &mut Reactor, e: &io_uring::squeue::Entry) {
    // SAFETY: the entry's buffers are owned by the future awaiting it, which the executor
    // keeps until the completion arrives (see the module comment).
    while unsafe { r.ring.submission().push(e) }.is_err() {
        let _ = r.ring.submit();
    }
}

struct Op {
    ud: u64,
}

impl Future for Op {
    type Output = i32;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<i32> {
        with_reactor(|r| {
            let Some(slot) = r.slots.get_mut(&self.ud) else {
                return Poll::Ready(-libc::EIO);
            };
            match slot.0 {
                Some(res) => {
                    r.slots.remove(&self.ud);
                    Poll::Ready(res)
                }
                None => {
                    slot.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
    }
}

/// Submit what is queued and, with `wait`, block for one completion; store results and
/// wake their futures. Returns whether the doorbell's poll completed.
fn turn(wait: bool) -> bool {
    let (bell, wakers) = with_reactor(|r| {
        let _ = if wait {
            r.ring.submit_and_wait(1)
        } else {
            r.ring.submit()
        };
        let done: Vec<(u64, i32)> = r
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        let mut bell = false;
        let mut wakers = Vec::new();
        for (ud, res) in done {
            if ud == BELL {
                bell = true;
            } else if let Some(s) = r.slots.get_mut(&ud) {
                s.0 = Some(res);
                wakers.extend(s.1.take());
            }
        }
        (bell, wakers)
    });
    wakers.into_iter().for_each(Waker::wake);
    bell
}

fn result(r: i32) -> io::Result<u64> {
    if r < 0 {
        Err(io::Error::from_raw_os_error(-r))
    } else {
        Ok(r as u64)
    }
}

/// One file of the image chain, its I/O on the thread's ring.
#[derive(Debug)]
pub(super) struct UringFile {
    file: std::fs::File,
    path: PathBuf,
    size: AtomicU64,
    /// O_DIRECT: imago aligns (and bounces) requests to this.
    align: usize,
    helper: CommonStorageHelper,
}

impl fmt::Display for UringFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())
    }
}

impl Storage for UringFile {
    async fn open(o: StorageOpenOptions) -> io::Result<Self> {
        let path = o
            .get_filename()
            .ok_or_else(|| io::Error::other("no file name"))?
            .to_path_buf();
        let mut oo = std::fs::OpenOptions::new();
        oo.read(true).write(o.get_writable());
        if o.get_direct() {
            oo.custom_flags(libc::O_DIRECT);
        }
        let file = oo.open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            file,
            path,
            size: AtomicU64::new(size),
            align: if o.get_direct() { 4096 } else { 1 },
            helper: CommonStorageHelper::default(),
        })
    }

    fn mem_align(&self) -> usize {
        self.align
    }

    fn req_align(&self) -> usize {
        self.align
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.size.load(Ordering::Relaxed))
    }

    fn get_filename(&self) -> Option<PathBuf> {
        Some(self.path.clone())
    }

    fn resolve_relative_path<P: AsRef<Path>>(&self, relative: P) -> io::Result<PathBuf> {
        Ok(self.path.parent().unwrap_or(Path::new("/")).join(relative))
    }

    async unsafe fn pure_readv(
        &self,
        mut bufv: IoVectorMut<'_>,
        mut offset: u64,
    ) -> io::Result<()> {
        let fd = types::Fd(self.file.as_raw_fd());
        while !bufv.is_empty() {
            // SAFETY: the iovecs point into `bufv`, which outlives the entry (awaited here).
            let iov = unsafe { bufv.as_iovec() };
            let e = opcode::Readv::new(fd, iov.as_ptr(), iov.len() as u32)
                .offset(offset)
                .build();
            let n = result(submit(e).await)?;
            if n == 0 {
                // Past the end of the file: zeros, as imago's own storage gives.
                bufv.fill(0);
                break;
            }
            bufv = bufv.split_tail_at(n);
            offset += n;
        }
        Ok(())
    }

    async unsafe fn pure_writev(&self, mut bufv: IoVector<'_>, mut offset: u64) -> io::Result<()> {
        let fd = types::Fd(self.file.as_raw_fd());
        while !bufv.is_empty() {
            // SAFETY: as in pure_readv.
            let iov = unsafe { bufv.as_iovec() };
            let e = opcode::Writev::new(fd, iov.as_ptr(), iov.len() as u32)
                .offset(offset)
                .build();
            let n = result(submit(e).await)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            bufv = bufv.split_tail_at(n);
            offset += n;
            self.size.fetch_max(offset, Ordering::Relaxed);
        }
        Ok(())
    }

    async unsafe fn pure_write_zeroes(&self, offset: u64, length: u64) -> io::Result<()> {
        let e = opcode::Fallocate::new(types::Fd(self.file.as_raw_fd()), length)
            .offset(offset)
            .mode(libc::FALLOC_FL_ZERO_RANGE)
            .build();
        result(submit(e).await)?;
        self.size.fetch_max(offset + length, Ordering::Relaxed);
        Ok(())
    }

    async unsafe fn pure_discard(&self, offset: u64, length: u64) -> io::Result<()> {
        let e = opcode::Fallocate::new(types::Fd(self.file.as_raw_fd()), length)
            .offset(offset)
            .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
            .build();
        // Discard is advisory: a file system that cannot punch holes keeps the data.
        let _ = submit(e).await;
        Ok(())
    }

    async fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    async fn sync(&self) -> io::Result<()> {
        let e = opcode::Fsync::new(types::Fd(self.file.as_raw_fd())).build();
        result(submit(e).await).map(|_| ())
    }

    async unsafe fn invalidate_cache(&self) -> io::Result<()> {
        Ok(())
    }

    fn get_storage_helper(&self) -> &CommonStorageHelper {
        &self.helper
    }
}

/// Set when any future of the executor is woken (by a completion or by an imago lock).
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

/// Run `f` to its end on this thread's ring (opening the image, the final write-back).
fn block_on<T>(f: impl Future<Output = T>) -> T {
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        flag.0.store(false, Ordering::Release);
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        let woken = flag.0.load(Ordering::Acquire);
        turn(!woken);
    }
}

/// Make this thread's ring and open the qcow2 image (and its backing chain) on it.
pub(super) fn open(path: &Path, writable: bool, direct: bool) -> io::Result<Qcow2Uring> {
    let ring = IoUring::new(256)?;
    REACTOR.with(|r| {
        *r.borrow_mut() = Some(Reactor {
            ring,
            next: 0,
            slots: HashMap::new(),
        })
    });
    Ok(Qcow2Uring {
        img: open_image(path, writable, direct)?,
        path: path.to_path_buf(),
        writable,
        direct,
    })
}

/// Open the image on this thread's ring (made by [`open`]).
fn open_image(path: &Path, writable: bool, direct: bool) -> io::Result<FormatAccess<UringFile>> {
    let sopts = StorageOpenOptions::new().write(writable).direct(direct);
    let q = block_on(
        Qcow2::<UringFile>::builder_path(path)
            .storage_open_options(sopts)
            .write(writable)
            .open(PermissiveImplicitOpenGate::default()),
    )?;
    Ok(FormatAccess::new(q))
}

/// An open qcow2 image on this thread's ring.
pub(super) struct Qcow2Uring {
    img: FormatAccess<UringFile>,
    path: PathBuf,
    writable: bool,
    direct: bool,
}

/// Why [`serve_until`] returned.
enum Stop {
    /// Every front end is gone.
    Closed,
    /// A snapshot operation, with nothing in flight.
    Snapshot(SnapshotJob),
}

fn flush_back(img: &FormatAccess<UringFile>) -> io::Result<()> {
    block_on(async {
        img.flush().await?;
        img.sync().await
    })
}

impl Qcow2Uring {
    pub fn size(&self) -> u64 {
        self.img.size()
    }

    /// Serve jobs from `rx` until every front end is gone, then write cached metadata back.
    /// A snapshot operation from `snap` waits for the requests in flight, then runs with
    /// the image closed to imago (cached metadata written back first), which then reopens
    /// it: imago's cache must not outlive what the operation changed in the file.
    pub fn run(
        mut self,
        rules: Arc<Rules>,
        stats: Arc<BlockStats>,
        rx: Receiver<BlockJob>,
        mut snap: Receiver<SnapshotJob>,
        bell: Arc<EventFd>,
    ) {
        let path = rules.opts.path.clone();
        loop {
            match serve_until(&self.img, &rules, &stats, &rx, &mut snap, &bell) {
                Stop::Closed => break,
                Stop::Snapshot(job) => {
                    if let Err(e) = flush_back(&self.img) {
                        job.reply.send(Err(SnapshotError::Io {
                            path: path.clone(),
                            source: e,
                        }));
                        continue;
                    }
                    let r = super::snapshot::perform(&path, job.op);
                    match open_image(&self.path, self.writable, self.direct) {
                        Ok(img) => {
                            self.img = img;
                            job.reply.send(r);
                        }
                        Err(e) => {
                            // Without an image every request must fail: ending the
                            // engine makes the handle fail them.
                            tracing::error!("{}: reopening after a snapshot: {e}", path.display());
                            job.reply.send(Err(SnapshotError::Io { path, source: e }));
                            return;
                        }
                    }
                }
            }
        }
        if let Err(e) = flush_back(&self.img) {
            tracing::warn!("{}: writing back qcow2 metadata: {e}", path.display());
        }
    }
}

/// The engine's loop: serve guest jobs until the front ends are gone or a snapshot
/// operation may run (nothing left in flight).
fn serve_until(
    img: &FormatAccess<UringFile>,
    rules: &Rules,
    stats: &BlockStats,
    rx: &Receiver<BlockJob>,
    snap: &mut Receiver<SnapshotJob>,
    bell: &EventFd,
) -> Stop {
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    let mut tasks = FuturesUnordered::new();
    // A discard waits here until nothing else is in flight.
    let mut held: Option<BlockJob> = None;
    // A snapshot operation waits, taking no new request, until nothing is in flight.
    let mut pending: Option<SnapshotJob> = None;
    let mut closed = false;
    let mut bell_armed = false;
    loop {
        if pending.is_none() {
            match snap.try_recv() {
                Ok(job) => pending = Some(job),
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => *snap = crossbeam_channel::never(),
            }
        }
        while pending.is_none() && held.is_none() && !closed && tasks.len() < DEPTH {
            match rx.try_recv() {
                Ok(job) if matches!(job.request.op, BlockOp::Discard { .. }) => held = Some(job),
                Ok(job) => tasks.push(serve(img, rules, stats, job, false)),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => closed = true,
            }
        }
        if tasks.is_empty() {
            if let Some(job) = held.take() {
                tasks.push(serve(img, rules, stats, job, true));
            }
        }
        if tasks.is_empty() {
            // Only with nothing in flight: the kernel must not write into freed buffers.
            crate::runtime::fault_point();
        }
        flag.0.store(false, Ordering::Release);
        while let Poll::Ready(Some(())) = tasks.poll_next_unpin(&mut cx) {}
        if tasks.is_empty() && held.is_none() {
            if let Some(job) = pending.take() {
                // An armed doorbell poll stays in the ring: its completion is harmless.
                return Stop::Snapshot(job);
            }
            if closed {
                return Stop::Closed;
            }
        }
        // Wait unless a future can go on without I/O (an imago lock came free). While
        // taking requests, the doorbell's poll entry is in the ring too, so a new
        // request ends the wait; a full queue (or a held discard) waits for I/O only.
        let wait = !flag.0.load(Ordering::Acquire);
        if wait && !bell_armed && tasks.len() < DEPTH && held.is_none() && pending.is_none() {
            let e = opcode::PollAdd::new(types::Fd(bell.as_raw_fd()), libc::POLLIN as u32)
                .build()
                .user_data(BELL);
            with_reactor(|r| push(r, &e));
            bell_armed = true;
        }
        // The doorbell's completion may come with any turn: re-arm after each.
        if turn(wait) {
            let _ = bell.read();
            bell_armed = false;
        }
    }
}

/// One guest request, start to completion. `alone`: nothing else is in flight (discard).
fn serve<'a>(
    img: &'a FormatAccess<UringFile>,
    rules: &'a Rules,
    stats: &'a BlockStats,
    job: BlockJob,
    alone: bool,
) -> Pin<Box<dyn Future<Output = ()> + 'a>> {
    Box::pin(async move {
        let r = match rules.check(&job.request.op) {
            Ok(()) => serve_op(img, rules, &job.request.op, alone).await,
            Err(e) => Err(e),
        };
        account(stats, &job.request.op, &r);
        (job.done)(BlockCompletion {
            id: job.request.id,
            result: r,
        });
    })
}

async fn serve_op(
    img: &FormatAccess<UringFile>,
    rules: &Rules,
    op: &BlockOp,
    alone: bool,
) -> Result<Vec<u8>, BlockError> {
    let path = &rules.opts.path;
    let flush = || async {
        img.flush().await?;
        img.sync().await
    };
    match op {
        BlockOp::Read { offset, len } => {
            let mut buf = vec![0u8; *len];
            img.read(&mut buf[..], *offset)
                .await
                .map_err(|e| io_err(path, "read", e))?;
            Ok(buf)
        }
        BlockOp::ReadV { offset, bufs } => {
            let mut v = IoVectorMut::with_capacity(bufs.len());
            for b in bufs {
                // SAFETY: ReadV buffers are guest RAM, mapped for the VM's life.
                v.push(unsafe { host_slice(b) });
            }
            img.readv(v, *offset)
                .await
                .map_err(|e| io_err(path, "read", e))?;
            Ok(Vec::new())
        }
        BlockOp::Write { .. } | BlockOp::WriteV { .. } => {
            let w = match op {
                BlockOp::Write { offset, data } => img.write(&data[..], *offset).await,
                BlockOp::WriteV { offset, bufs } => {
                    let mut v = IoVector::with_capacity(bufs.len());
                    for b in bufs {
                        // SAFETY: as for ReadV.
                        v.push(unsafe { &*host_slice(b) });
                    }
                    img.writev(v, *offset).await
                }
                _ => unreachable!(),
            };
            w.map_err(|e| io_err(path, "write", e))?;
            if rules.opts.write_through {
                flush().await.map_err(|e| io_err(path, "flush", e))?;
            }
            Ok(Vec::new())
        }
        BlockOp::Flush => {
            if !rules.opts.ignore_flush && !rules.opts.read_only {
                flush().await.map_err(|e| io_err(path, "flush", e))?;
            }
            Ok(Vec::new())
        }
        BlockOp::WriteZeroes { offset, len } => {
            img.write_zeroes(*offset, *len)
                .await
                .map_err(|e| io_err(path, "write-zeroes", e))?;
            Ok(Vec::new())
        }
        BlockOp::Discard { offset, len } => {
            debug_assert!(alone);
            // SAFETY: the executor runs a discard only with no other request in flight,
            // so no data mapping of another request can be affected.
            unsafe { img.discard_to_zero_unsafe(*offset, *len) }
                .await
                .map_err(|e| io_err(path, "discard", e))?;
            Ok(Vec::new())
        }
    }
}
