//! Raw images on io_uring (`aio=io_uring`, and `aio=native`): an [`Engine`] is a ring
//! with up to [`MAX_IN_FLIGHT`] requests in it, reading and writing guest memory directly
//! (`ReadV`/`WriteV`). A virtio-blk worker drives its own engine from its own thread
//! (notify, submit, completion eventfd, used ring: no other thread in the path, as in
//! QEMU's iothread); other front ends (IDE) hand jobs to the drive's block actor thread,
//! which drives one with [`run`].

use std::alloc::Layout;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use devices::block::{BlockCompletion, BlockError, BlockOp, HostBuf};
use io_uring::{opcode, types, IoUring};
use vmm_sys_util::eventfd::EventFd;

use super::{account, BlockJob, BlockStats, Rules};

pub const MAX_IN_FLIGHT: usize = 128;

/// A buffer aligned for O_DIRECT.
struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
    layout: Layout,
}

// SAFETY: the buffer is plain heap memory owned by exactly one AlignedBuf.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let layout = Layout::from_size_align(len.max(1).next_multiple_of(512), 4096)
            .unwrap_or_else(|_| Layout::new::<u8>());
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Self { ptr, len, layout }
    }
    fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for layout.size() >= len bytes, initialised (zeroed).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

struct InFlight {
    job: BlockJob,
    buf: Option<AlignedBuf>,
    /// The iovecs a Readv/Writev entry points at.
    _iov: Vec<libc::iovec>,
}

// SAFETY: the iovecs point into guest RAM, a front end's buffer kept by the job, or the
// entry's own buffer, all of which outlive the entry; nothing else reads them through
// this struct.
unsafe impl Send for InFlight {}

/// Whether this kernel gives us a ring.
pub(super) fn available() -> bool {
    IoUring::new(8).is_ok()
}

/// How to open a raw image for io_uring (kept by the handle so a virtio-blk worker can
/// make its own engine and drive the ring from its own thread).
pub(crate) struct UringSpec {
    pub rules: Arc<Rules>,
    pub stats: Arc<BlockStats>,
}

impl UringSpec {
    fn open(&self, direct: bool) -> std::io::Result<File> {
        let o = &self.rules.opts;
        let mut oo = std::fs::OpenOptions::new();
        oo.read(true).write(!o.read_only && !o.snapshot);
        if direct {
            use std::os::unix::fs::OpenOptionsExt;
            oo.custom_flags(libc::O_DIRECT);
        }
        oo.open(&o.path)
    }

    /// A ring and the image's files, ready to take jobs.
    pub fn engine(&self) -> std::io::Result<Engine> {
        let ring = IoUring::new(256)?;
        let done = EventFd::new(libc::EFD_NONBLOCK)?;
        ring.submitter().register_eventfd(done.as_raw_fd())?;
        Ok(Engine {
            ring,
            done,
            file: self.open(self.rules.opts.direct)?,
            buffered: self.open(false)?,
            direct: self.rules.opts.direct,
            rules: self.rules.clone(),
            stats: self.stats.clone(),
            in_flight: HashMap::new(),
            waiting: VecDeque::new(),
            next: 0,
        })
    }
}

/// Serve jobs from `rx` on a ring of its own until every handle is gone (the drive's
/// block actor thread, for front ends that do not drive a ring themselves).
pub(super) fn run(
    mut engine: Engine,
    rx: crossbeam_channel::Receiver<BlockJob>,
    doorbell: Arc<EventFd>,
) {
    use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
    let Ok(epoll) = Epoll::new() else { return };
    for (fd, token) in [(engine.completion_fd(), 0u64), (doorbell.as_raw_fd(), 1)] {
        if epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
            .is_err()
        {
            return;
        }
    }
    let mut events = vec![EpollEvent::default(); 4];
    let mut closed = false;
    loop {
        let _ = doorbell.read();
        loop {
            match rx.try_recv() {
                Ok(job) => engine.submit(job),
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        engine.reap();
        if engine.busy() == 0 {
            // Only with nothing in flight: the kernel must not write into freed buffers.
            crate::runtime::fault_point();
            if closed {
                return;
            }
        }
        match epoll.wait(if closed { 100 } else { -1 }, &mut events) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// One io_uring with its requests in flight.
pub struct Engine {
    ring: IoUring,
    /// Signalled by the kernel for every completion.
    done: EventFd,
    file: File,
    buffered: File,
    direct: bool,
    rules: Arc<Rules>,
    stats: Arc<BlockStats>,
    in_flight: HashMap<u64, InFlight>,
    waiting: VecDeque<BlockJob>,
    next: u64,
}

fn iovecs(bufs: &[HostBuf]) -> Vec<libc::iovec> {
    bufs.iter()
        .map(|b| libc::iovec {
            iov_base: b.addr as *mut libc::c_void,
            iov_len: b.len,
        })
        .collect()
}

impl Engine {
    /// The eventfd that becomes readable when requests complete (for epoll).
    pub fn completion_fd(&self) -> std::os::fd::RawFd {
        self.done.as_raw_fd()
    }

    /// Requests queued or in flight.
    pub fn busy(&self) -> usize {
        self.in_flight.len() + self.waiting.len()
    }

    /// Take a job: into the ring (submitted at once), or answered now (checks failed,
    /// or a request the ring does not take), or queued while the ring is full.
    pub fn submit(&mut self, job: BlockJob) {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            self.waiting.push_back(job);
            return;
        }
        match self.start(job) {
            Some(job) => self.waiting.push_front(job),
            None => {
                if let Err(e) = self.ring.submit() {
                    tracing::warn!("io_uring_enter: {e}");
                }
            }
        }
    }

    /// Requests are in flight and each is small (≤ 64 KiB): their completions come within
    /// tens of microseconds, worth looking for before sleeping. (A 1 MiB transfer takes
    /// hundreds; spinning for it only takes a core from the vCPU.)
    pub fn small_in_flight(&self) -> bool {
        const SMALL: u64 = 64 << 10;
        !self.in_flight.is_empty()
            && self.in_flight.values().all(|f| {
                let len = match &f.job.request.op {
                    BlockOp::Read { len, .. } => *len as u64,
                    BlockOp::Write { data, .. } => data.len() as u64,
                    BlockOp::ReadV { bufs, .. } | BlockOp::WriteV { bufs, .. } => {
                        HostBuf::total(bufs)
                    }
                    _ => 0,
                };
                len <= SMALL
            })
    }

    /// Completions are waiting to be reaped.
    pub fn ready(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }

    /// Answer every completed request; then start queued ones.
    pub fn reap(&mut self) {
        let _ = self.done.read();
        loop {
            let done: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            if done.is_empty() {
                break;
            }
            for (ud, res) in done {
                if let Some(f) = self.in_flight.remove(&ud) {
                    self.finish(f, res);
                }
            }
        }
        let mut started = false;
        while self.in_flight.len() < MAX_IN_FLIGHT {
            let Some(job) = self.waiting.pop_front() else {
                break;
            };
            if let Some(job) = self.start(job) {
                self.waiting.push_front(job);
                break;
            }
            started = true;
        }
        if started {
            let _ = self.ring.submit();
        }
    }

    /// Put `job` in the submission queue (or answer it at once); gives it back if the
    /// queue is full.
    fn start(&mut self, job: BlockJob) -> Option<BlockJob> {
        if let Err(e) = self.rules.check(&job.request.op) {
            self.answer(job, Err(e));
            return None;
        }
        let fd = types::Fd(self.file.as_raw_fd());
        let direct = self.direct;
        let aligned =
            |off: u64, len: usize| !direct || (off.is_multiple_of(512) && len.is_multiple_of(512));
        let vec_ok = |off: u64, bufs: &[HostBuf]| {
            !bufs.is_empty()
                && (!direct
                    || (off.is_multiple_of(512)
                        && bufs
                            .iter()
                            .all(|b| b.addr.is_multiple_of(512) && b.len.is_multiple_of(512))))
        };
        let dsync = self.rules.opts.write_through;
        let mut iov = Vec::new();
        let (entry, buf) = match &job.request.op {
            BlockOp::Read { offset, len } if aligned(*offset, *len) => {
                let mut b = AlignedBuf::new(*len);
                let e = opcode::Read::new(fd, b.as_mut_slice().as_mut_ptr(), *len as u32)
                    .offset(*offset)
                    .build();
                (e, Some(b))
            }
            BlockOp::Write { offset, data } if aligned(*offset, data.len()) => {
                let mut b = AlignedBuf::new(data.len());
                b.as_mut_slice().copy_from_slice(data);
                let mut w = opcode::Write::new(fd, b.as_slice().as_ptr(), data.len() as u32)
                    .offset(*offset);
                if dsync {
                    w = w.rw_flags(libc::RWF_DSYNC);
                }
                (w.build(), Some(b))
            }
            BlockOp::ReadV { offset, bufs } if vec_ok(*offset, bufs) => {
                iov = iovecs(bufs);
                let e = opcode::Readv::new(fd, iov.as_ptr(), iov.len() as u32)
                    .offset(*offset)
                    .build();
                (e, None)
            }
            BlockOp::WriteV { offset, bufs } if vec_ok(*offset, bufs) => {
                iov = iovecs(bufs);
                let mut w = opcode::Writev::new(fd, iov.as_ptr(), iov.len() as u32).offset(*offset);
                if dsync {
                    w = w.rw_flags(libc::RWF_DSYNC);
                }
                (w.build(), None)
            }
            BlockOp::Flush if !self.rules.opts.ignore_flush && !self.rules.opts.read_only => (
                opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build(),
                None,
            ),
            _ => {
                // Rare or unaligned: served here, synchronously, on the buffered file.
                let mut r = super::serve_sync(&self.buffered, &job.request.op);
                let wrote = matches!(
                    job.request.op,
                    BlockOp::Write { .. } | BlockOp::WriteV { .. }
                );
                if r.is_ok() && wrote && dsync && self.buffered.sync_data().is_err() {
                    r = Err(BlockError::Io);
                }
                self.answer(job, r);
                return None;
            }
        };
        let ud = self.next;
        self.next += 1;
        let entry = entry.user_data(ud);
        // SAFETY: the buffer, iovecs and memory the entry points at stay alive (in
        // `in_flight`; guest RAM for the VM's life, a front end's buffer until the job's
        // completion, which is held in `in_flight`) until its completion is reaped.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            return Some(job);
        }
        self.in_flight.insert(
            ud,
            InFlight {
                job,
                buf,
                _iov: iov,
            },
        );
        None
    }

    fn finish(&self, f: InFlight, res: i32) {
        let r = if res < 0 {
            tracing::warn!(
                "{}: {}",
                self.rules.opts.path.display(),
                std::io::Error::from_raw_os_error(-res)
            );
            Err(BlockError::Io)
        } else {
            match (&f.job.request.op, f.buf) {
                (BlockOp::Read { len, .. }, Some(b)) if res as usize == *len => {
                    Ok(b.as_slice().to_vec())
                }
                (BlockOp::Write { data, .. }, _) if res as usize == data.len() => Ok(Vec::new()),
                (BlockOp::ReadV { bufs, .. } | BlockOp::WriteV { bufs, .. }, _)
                    if res as u64 == HostBuf::total(bufs) =>
                {
                    Ok(Vec::new())
                }
                (BlockOp::Flush, _) => Ok(Vec::new()),
                _ => Err(BlockError::Io), // short transfer
            }
        };
        self.answer(f.job, r);
    }

    fn answer(&self, job: BlockJob, r: Result<Vec<u8>, BlockError>) {
        account(&self.stats, &job.request.op, &r);
        (job.done)(BlockCompletion {
            id: job.request.id,
            result: r,
        });
    }
}
