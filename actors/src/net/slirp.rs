//! The user-mode network backend: libslirp (the library QEMU uses) with a thread of its
//! own. The thread creates the `Slirp` instance, polls the host sockets slirp asks for plus
//! a wake eventfd, and runs slirp's timers. The guest's frames go into slirp on the NIC's
//! own thread, under the lock every call into libslirp holds, so what slirp answers at
//! once (ARP, pings to the gateway, TCP acknowledgements and the data they release) is
//! queued for the guest before the NIC looks again, with no thread hop. After a batch of
//! frames the NIC also looks at slirp's sockets once without waiting ([`SlirpPort::settle`]:
//! data an acknowledgement made room for is read and sent at once) and wakes the slirp
//! thread to poll any socket the frames opened. Frames for the guest go through a
//! bounded channel: a full queue drops the frame and counts it (no unbounded memory when
//! the guest stops reading).

use std::ffi::{c_char, c_int, c_void, CString};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use libslirp_sys as sys;
use vmm_sys_util::eventfd::EventFd;

use crate::runtime::{fault_point, Registry, Restart, ThreadSpec};

/// Frames queued in each direction.
const QUEUE: usize = 256;

/// What user networking needs (from `-netdev user,...`).
#[derive(Debug, Clone)]
pub struct SlirpOptions {
    pub net: Ipv4Addr,
    pub prefix: u8,
    pub host: Ipv4Addr,
    pub dhcpstart: Ipv4Addr,
    pub dns: Ipv4Addr,
    /// IPv6: (prefix, prefix length, host, DNS); None with `ipv6=off`.
    pub ipv6: Option<(
        std::net::Ipv6Addr,
        u8,
        std::net::Ipv6Addr,
        std::net::Ipv6Addr,
    )>,
    pub restrict: bool,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub tftp: Option<String>,
    pub bootfile: Option<String>,
    /// (udp, host addr, host port, guest addr, guest port).
    pub hostfwd: Vec<(bool, Ipv4Addr, u16, Ipv4Addr, u16)>,
    pub guestfwd: Vec<GuestFwd>,
}

/// `guestfwd=tcp:ADDR:PORT-chardev:ID`: a guest connection to ADDR:PORT goes to a chardev.
/// Bytes from the guest go out through `to_chardev` (a bounded channel: a chardev that does
/// not keep up holds the slirp thread back, as QEMU's blocking write does); bytes for the
/// guest come in through [`SlirpControl::guestfwd_input`].
#[derive(Debug, Clone)]
pub struct GuestFwd {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub to_chardev: tokio::sync::mpsc::Sender<Vec<u8>>,
}

/// Most bytes held for a guestfwd connection the guest is not reading (or has not opened
/// yet); beyond it, input is dropped with a warning.
const GUESTFWD_PENDING: usize = 1 << 20;

/// What a guestfwd's write callback gets as its opaque pointer.
struct GuestFwdSink {
    to_chardev: tokio::sync::mpsc::Sender<Vec<u8>>,
}

/// Bytes the guest sent on a guestfwd connection.
unsafe extern "C" fn guestfwd_write(buf: *const c_void, len: usize, opaque: *mut c_void) -> isize {
    // SAFETY: opaque is the GuestFwdSink registered with this callback, alive as long as
    // the slirp instance; buf holds len bytes for the duration of the call.
    let (sink, data) = unsafe {
        (
            &*(opaque as *const GuestFwdSink),
            std::slice::from_raw_parts(buf as *const u8, len),
        )
    };
    match sink.to_chardev.blocking_send(data.to_vec()) {
        Ok(()) => len as isize,
        Err(_) => -1,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SlirpError {
    #[error("could not start user-mode networking (slirp)")]
    Init,
    #[error("could not set up host forwarding rule '{0}' (port in use or not permitted)")]
    HostFwd(String),
    #[error("could not set up guest forwarding rule for {0}")]
    GuestFwd(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Counters.
#[derive(Debug, Default)]
pub struct SlirpStats {
    pub to_guest_dropped: AtomicU64,
    pub to_slirp_dropped: AtomicU64,
}

/// Run-time changes (the monitor's `hostfwd_add` / `hostfwd_remove`).
enum Ctl {
    AddFwd {
        rule: (bool, Ipv4Addr, u16, Ipv4Addr, u16),
        reply: Sender<bool>,
    },
    RemoveFwd {
        rule: (bool, Ipv4Addr, u16),
        reply: Sender<bool>,
    },
    /// libslirp's connection table, as `info usernet` prints it.
    Info { reply: Sender<String> },
    /// Bytes from a guestfwd's chardev, for the guest.
    GuestFwdIn {
        addr: Ipv4Addr,
        port: u16,
        data: Vec<u8>,
    },
}

/// Changes a running slirp instance (cheap to clone).
#[derive(Clone)]
pub struct SlirpControl {
    tx: Sender<Ctl>,
    wake: Arc<EventFd>,
}

impl SlirpControl {
    fn ask(&self, make: impl FnOnce(Sender<bool>) -> Ctl) -> bool {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.tx.send(make(tx)).is_err() {
            return false;
        }
        let _ = self.wake.write(1);
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .unwrap_or(false)
    }

    /// Forward host (addr, port) to guest (addr, port); false if it cannot be bound.
    pub fn add_hostfwd(&self, udp: bool, ha: Ipv4Addr, hp: u16, ga: Ipv4Addr, gp: u16) -> bool {
        self.ask(|reply| Ctl::AddFwd {
            rule: (udp, ha, hp, ga, gp),
            reply,
        })
    }

    /// libslirp's table of sockets and forwardings (the body of `info usernet`), or None
    /// if the backend does not answer.
    pub fn connection_info(&self) -> Option<String> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.tx.send(Ctl::Info { reply: tx }).ok()?;
        let _ = self.wake.write(1);
        rx.recv_timeout(std::time::Duration::from_secs(5)).ok()
    }

    /// Bytes from the chardev of the guestfwd rule for (addr, port), for the guest.
    pub fn guestfwd_input(&self, addr: Ipv4Addr, port: u16, data: Vec<u8>) {
        if self.tx.send(Ctl::GuestFwdIn { addr, port, data }).is_ok() {
            let _ = self.wake.write(1);
        }
    }

    /// Remove the forwarding of host (addr, port); false if there was none.
    pub fn remove_hostfwd(&self, udp: bool, ha: Ipv4Addr, hp: u16) -> bool {
        self.ask(|reply| Ctl::RemoveFwd {
            rule: (udp, ha, hp),
            reply,
        })
    }
}

/// The live instance, shared by the slirp thread and the NIC: every call into libslirp
/// (and so every callback into [`State`]) happens with this locked.
struct Shared {
    /// Null once cleaned up.
    slirp: *mut sys::Slirp,
    /// The NIC's end is gone (netdev_del, or the VM ending): the thread cleans up.
    closed: bool,
    /// Counts the NIC's socket passes: slirp keeps each socket's place in the last poll
    /// set filled, so the thread must not read results from a set filled before one.
    generation: u64,
    /// The poll set of the NIC's passes.
    nic_polls: Vec<libc::pollfd>,
}

// SAFETY: the pointer is only used with the mutex around Shared held.
unsafe impl Send for Shared {}

type SharedSlirp = Arc<std::sync::Mutex<Shared>>;

fn lock_shared(s: &SharedSlirp) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Cleans the instance up when the slirp thread leaves (closing its sockets), under the
/// lock, so the NIC never reaches a freed instance.
struct SlirpGuard(SharedSlirp);

impl Drop for SlirpGuard {
    fn drop(&mut self) {
        let mut g = lock_shared(&self.0);
        if !g.slirp.is_null() {
            // SAFETY: the instance came from slirp_new and is used no more (the pointer is
            // cleared under the same lock every user takes).
            unsafe { sys::slirp_cleanup(g.slirp) };
            g.slirp = std::ptr::null_mut();
        }
    }
}

/// The NIC's end of a slirp backend.
pub struct SlirpPort {
    /// Run-time changes to this backend.
    pub control: SlirpControl,
    shared: SharedSlirp,
    slirp_wake: Arc<EventFd>,
    from_slirp: Receiver<Vec<u8>>,
    /// Readable when frames for the guest are queued.
    pub ready: Arc<EventFd>,
    pub stats: Arc<SlirpStats>,
}

impl Drop for SlirpPort {
    fn drop(&mut self) {
        lock_shared(&self.shared).closed = true;
        let _ = self.slirp_wake.write(1);
    }
}

impl SlirpPort {
    /// A frame from the guest, into slirp now (call [`Self::settle`] after a batch).
    pub fn send(&self, frame: &[u8]) {
        let g = lock_shared(&self.shared);
        if g.slirp.is_null() {
            self.stats.to_slirp_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let len = frame.len().min(c_int::MAX as usize) as c_int;
        // SAFETY: the instance is live (not cleared) and the lock is held; the frame is
        // valid for its length during the call.
        unsafe { sys::slirp_input(g.slirp, frame.as_ptr(), len) };
    }

    /// After a batch of frames from the guest: serve the host sockets that are ready now
    /// (without waiting), then wake the slirp thread to poll the sockets as they are.
    pub fn settle(&self) {
        let mut g = lock_shared(&self.shared);
        if g.slirp.is_null() {
            return;
        }
        let slirp = g.slirp;
        let mut polls = std::mem::take(&mut g.nic_polls);
        polls.clear();
        let mut timeout: u32 = 0;
        // SAFETY: the instance is live and the lock is held.
        unsafe { fill_polls(slirp, &mut polls, &mut timeout) };
        // SAFETY: a valid array of its length; no waiting.
        let r = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 0) };
        // SAFETY: as above.
        unsafe { serve_polls(slirp, &mut polls, r < 0) };
        g.nic_polls = polls;
        g.generation += 1;
        drop(g);
        let _ = self.slirp_wake.write(1);
    }

    /// Clear the "frames ready" signal; call before draining with [`Self::recv`], so a
    /// frame queued meanwhile signals again.
    pub fn ack(&self) {
        let _ = self.ready.read();
    }

    /// The next frame for the guest, if any.
    pub fn recv(&self) -> Option<Vec<u8>> {
        self.from_slirp.try_recv().ok()
    }
}

struct Timer {
    cb: sys::SlirpTimerCb,
    opaque: *mut c_void,
    expire_ms: Option<i64>,
}

/// State the C callbacks reach through their opaque pointer (owned by the slirp thread;
/// the callbacks run with [`Shared`] locked, on whichever thread called into slirp).
struct State {
    start: Instant,
    to_guest: Sender<Vec<u8>>,
    ready: Arc<EventFd>,
    stats: Arc<SlirpStats>,
    /// Boxed: slirp holds pointers to the timers, which must not move when the list grows.
    #[allow(clippy::vec_box)]
    timers: Vec<Box<Timer>>,
}

/// The State behind slirp's opaque pointer, freed when the thread ends (after the
/// instance: declare it before the [`SlirpGuard`]). Reached only through the pointer, with
/// [`Shared`] locked.
struct StateBox(*mut State);

impl Drop for StateBox {
    fn drop(&mut self) {
        // SAFETY: the pointer came from Box::into_raw and the instance using it is gone.
        drop(unsafe { Box::from_raw(self.0) });
    }
}

#[link(name = "glib-2.0")]
unsafe extern "C" {
    /// libslirp returns g_malloc'd strings (slirp_connection_info).
    fn g_free(p: *mut c_void);
}

unsafe extern "C" fn send_packet(buf: *const c_void, len: usize, opaque: *mut c_void) -> isize {
    // SAFETY: opaque is the State this thread owns; buf/len come from slirp.
    let st = unsafe { &mut *(opaque as *mut State) };
    // SAFETY: slirp passes a valid buffer of `len` bytes.
    let frame = unsafe { std::slice::from_raw_parts(buf as *const u8, len) }.to_vec();
    match st.to_guest.try_send(frame) {
        Ok(()) => {
            let _ = st.ready.write(1);
        }
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            st.stats.to_guest_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
    len as isize
}

unsafe extern "C" fn guest_error(msg: *const c_char, _opaque: *mut c_void) {
    // SAFETY: slirp passes a NUL-terminated string.
    let m = unsafe { std::ffi::CStr::from_ptr(msg) };
    tracing::warn!(target: "guest_errors", "slirp: {}", m.to_string_lossy());
}

unsafe extern "C" fn clock_get_ns(opaque: *mut c_void) -> i64 {
    // SAFETY: opaque is our State.
    let st = unsafe { &*(opaque as *const State) };
    st.start.elapsed().as_nanos() as i64
}

unsafe extern "C" fn timer_new(
    cb: sys::SlirpTimerCb,
    cb_opaque: *mut c_void,
    opaque: *mut c_void,
) -> *mut c_void {
    // SAFETY: opaque is our State.
    let st = unsafe { &mut *(opaque as *mut State) };
    let mut t = Box::new(Timer {
        cb,
        opaque: cb_opaque,
        expire_ms: None,
    });
    let p: *mut Timer = t.as_mut();
    st.timers.push(t);
    p as *mut c_void
}

unsafe extern "C" fn timer_free(timer: *mut c_void, opaque: *mut c_void) {
    // SAFETY: opaque is our State.
    let st = unsafe { &mut *(opaque as *mut State) };
    st.timers
        .retain(|t| !std::ptr::eq(t.as_ref(), timer as *const Timer));
}

unsafe extern "C" fn timer_mod(timer: *mut c_void, expire_ms: i64, _opaque: *mut c_void) {
    // SAFETY: timer came from timer_new and is still in the State's list.
    let t = unsafe { &mut *(timer as *mut Timer) };
    t.expire_ms = Some(expire_ms);
}

unsafe extern "C" fn register_poll_fd(_fd: c_int, _opaque: *mut c_void) {}
unsafe extern "C" fn unregister_poll_fd(_fd: c_int, _opaque: *mut c_void) {}
unsafe extern "C" fn notify(_opaque: *mut c_void) {}

unsafe extern "C" fn add_poll(fd: c_int, events: c_int, opaque: *mut c_void) -> c_int {
    // SAFETY: opaque is the poll set fill_polls passed to slirp_pollfds_fill.
    let pollfds = unsafe { &mut *(opaque as *mut Vec<libc::pollfd>) };
    let mut ev = 0;
    if events & sys::SLIRP_POLL_IN != 0 {
        ev |= libc::POLLIN;
    }
    if events & sys::SLIRP_POLL_OUT != 0 {
        ev |= libc::POLLOUT;
    }
    if events & sys::SLIRP_POLL_PRI != 0 {
        ev |= libc::POLLPRI;
    }
    pollfds.push(libc::pollfd {
        fd,
        events: ev,
        revents: 0,
    });
    (pollfds.len() - 1) as c_int
}

unsafe extern "C" fn get_revents(idx: c_int, opaque: *mut c_void) -> c_int {
    // SAFETY: opaque is the poll set serve_polls passed to slirp_pollfds_poll.
    let pollfds = unsafe { &*(opaque as *const Vec<libc::pollfd>) };
    let Some(p) = pollfds.get(idx as usize) else {
        return 0;
    };
    let mut r = 0;
    if p.revents & libc::POLLIN != 0 {
        r |= sys::SLIRP_POLL_IN;
    }
    if p.revents & libc::POLLOUT != 0 {
        r |= sys::SLIRP_POLL_OUT;
    }
    if p.revents & libc::POLLPRI != 0 {
        r |= sys::SLIRP_POLL_PRI;
    }
    if p.revents & libc::POLLERR != 0 {
        r |= sys::SLIRP_POLL_ERR;
    }
    if p.revents & libc::POLLHUP != 0 {
        r |= sys::SLIRP_POLL_HUP;
    }
    r
}

static CALLBACKS: sys::SlirpCb = sys::SlirpCb {
    send_packet: Some(send_packet),
    guest_error: Some(guest_error),
    clock_get_ns: Some(clock_get_ns),
    timer_new: Some(timer_new),
    timer_free: Some(timer_free),
    timer_mod: Some(timer_mod),
    register_poll_fd: Some(register_poll_fd),
    unregister_poll_fd: Some(unregister_poll_fd),
    notify: Some(notify),
};

fn addr(a: Ipv4Addr) -> sys::in_addr {
    sys::in_addr::from(a)
}

/// Bind one forwarding rule; false if slirp could not (port in use, not permitted).
///
/// # Safety
/// `slirp` must be a live instance used only from this thread.
unsafe fn add_fwd(
    slirp: *mut sys::Slirp,
    (udp, ha, hp, ga, gp): (bool, Ipv4Addr, u16, Ipv4Addr, u16),
) -> bool {
    // SAFETY: per the function's contract; plain values.
    let r = unsafe {
        sys::slirp_add_hostfwd(
            slirp,
            c_int::from(udp),
            addr(ha),
            c_int::from(hp),
            addr(ga),
            c_int::from(gp),
        )
    };
    r >= 0
}

/// Add the sockets slirp wants polled to `polls`, lowering `timeout` (ms) to slirp's next
/// deadline.
///
/// # Safety
/// `slirp` must be live, with [`Shared`] locked.
unsafe fn fill_polls(slirp: *mut sys::Slirp, polls: &mut Vec<libc::pollfd>, timeout: &mut u32) {
    let opaque = polls as *mut Vec<libc::pollfd> as *mut c_void;
    // SAFETY: per the function's contract; add_poll gets this poll set.
    unsafe { sys::slirp_pollfds_fill(slirp, timeout, Some(add_poll), opaque) };
}

/// Let slirp serve the sockets `polls` (as [`fill_polls`] filled it, then polled) found
/// ready; `failed`: the poll itself failed.
///
/// # Safety
/// As [`fill_polls`], and no fill since the one that made `polls`.
unsafe fn serve_polls(slirp: *mut sys::Slirp, polls: &mut Vec<libc::pollfd>, failed: bool) {
    let opaque = polls as *mut Vec<libc::pollfd> as *mut c_void;
    // SAFETY: per the function's contract; get_revents reads this poll set.
    unsafe { sys::slirp_pollfds_poll(slirp, c_int::from(failed), Some(get_revents), opaque) };
}

fn addr6(a: Option<std::net::Ipv6Addr>) -> sys::in6_addr {
    sys::in6_addr {
        s6_addr: a.map_or([0; 16], |a| a.octets()),
    }
}

fn cstr(s: &Option<String>) -> Option<CString> {
    s.as_ref().and_then(|s| CString::new(s.as_str()).ok())
}

fn ptr(c: &Option<CString>) -> *const c_char {
    c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())
}

/// Start the slirp thread (actor `slirp-<id>`); returns the NIC's end once slirp is up
/// and every `hostfwd` rule is bound (or the error saying which one could not be).
///
/// The thread is restartable: a panic drops its slirp instance (closing its sockets: the
/// guest's TCP connections through it are lost) and the thread builds a new one from the
/// same options, on the same channels and eventfds the NIC holds, so frames flow again
/// and every `hostfwd` rule is bound anew. Rules added at run time (`hostfwd_add`) are not
/// carried over.
pub fn start(registry: &Registry, id: &str, opts: SlirpOptions) -> Result<SlirpPort, SlirpError> {
    let (to_guest_tx, to_guest_rx) = crossbeam_channel::bounded::<Vec<u8>>(QUEUE);
    let slirp_wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
    let ready = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
    let stats = Arc::new(SlirpStats::default());
    let (up_tx, up_rx) = crossbeam_channel::bounded::<Result<(), SlirpError>>(1);
    let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded::<Ctl>();
    let (wake, rdy, st) = (slirp_wake.clone(), ready.clone(), stats.clone());
    let shared: SharedSlirp = Arc::new(std::sync::Mutex::new(Shared {
        slirp: std::ptr::null_mut(),
        closed: false,
        generation: 0,
        nic_polls: Vec::new(),
    }));
    let shared_t = shared.clone();
    let waker = slirp_wake.clone();
    ThreadSpec::new(format!("slirp-{id}"), "nic-backend", Restart::Always)
        .wake(move || {
            let _ = waker.write(1);
        })
        .spawn(registry, move || {
            let state = StateBox(Box::into_raw(Box::new(State {
                start: Instant::now(),
                to_guest: to_guest_tx.clone(),
                ready: rdy.clone(),
                stats: st.clone(),
                timers: Vec::new(),
            })));
            let opaque = state.0 as *mut c_void;
            let mut pollfds: Vec<libc::pollfd> = Vec::new();
            let hostname = cstr(&opts.hostname);
            let domain = cstr(&opts.domainname);
            let tftp = cstr(&opts.tftp);
            let bootfile = cstr(&opts.bootfile);
            let v6 = opts.ipv6;
            let mask = if opts.prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(opts.prefix))
            };
            let cfg = sys::SlirpConfig {
                version: 1,
                restricted: c_int::from(opts.restrict),
                in_enabled: true,
                vnetwork: addr(opts.net),
                vnetmask: addr(Ipv4Addr::from(mask)),
                vhost: addr(opts.host),
                in6_enabled: v6.is_some(),
                vprefix_addr6: addr6(v6.map(|v| v.0)),
                vprefix_len: v6.map_or(0, |v| v.1),
                vhost6: addr6(v6.map(|v| v.2)),
                vhostname: ptr(&hostname),
                tftp_server_name: std::ptr::null(),
                tftp_path: ptr(&tftp),
                bootfile: ptr(&bootfile),
                vdhcp_start: addr(opts.dhcpstart),
                vnameserver: addr(opts.dns),
                vnameserver6: addr6(v6.map(|v| v.3)),
                vdnssearch: std::ptr::null_mut(),
                vdomainname: ptr(&domain),
                if_mtu: 0,
                if_mru: 0,
                disable_host_loopback: false,
                enable_emu: false,
                outbound_addr: std::ptr::null(),
                outbound_addr6: std::ptr::null(),
                disable_dns: false,
                disable_dhcp: false,
            };
            let sinks: Vec<Box<GuestFwdSink>> = opts
                .guestfwd
                .iter()
                .map(|g| {
                    Box::new(GuestFwdSink {
                        to_chardev: g.to_chardev.clone(),
                    })
                })
                .collect();
            // SAFETY: cfg, CALLBACKS, the opaque State and the guestfwd sinks outlive the
            // Slirp instance: the guard below, declared after them, is dropped first.
            let slirp = unsafe { sys::slirp_new(&cfg, &CALLBACKS, opaque) };
            if slirp.is_null() {
                let _ = up_tx.send(Err(SlirpError::Init));
                return;
            }
            // On every way out of this thread (a rule that cannot bind, the NIC's end
            // dropped by netdev_del or at exit) the instance goes, closing its sockets.
            lock_shared(&shared_t).slirp = slirp;
            let _cleanup = SlirpGuard(shared_t.clone());
            for &(udp, ha, hp, ga, gp) in &opts.hostfwd {
                // SAFETY: slirp is live and this is its thread.
                if !unsafe { add_fwd(slirp, (udp, ha, hp, ga, gp)) } {
                    let rule = format!("{}:{ha}:{hp}-{ga}:{gp}", if udp { "udp" } else { "tcp" });
                    let _ = up_tx.send(Err(SlirpError::HostFwd(rule)));
                    return;
                }
            }
            for (g, sink) in opts.guestfwd.iter().zip(&sinks) {
                let mut a = addr(g.addr);
                let opaque = sink.as_ref() as *const GuestFwdSink as *mut c_void;
                // SAFETY: slirp is live and this is its thread; the sink outlives slirp (both
                // live until this thread ends).
                let r = unsafe {
                    sys::slirp_add_guestfwd(
                        slirp,
                        Some(guestfwd_write),
                        opaque,
                        &mut a,
                        c_int::from(g.port),
                    )
                };
                if r < 0 {
                    let _ = up_tx.send(Err(SlirpError::GuestFwd(format!("{}:{}", g.addr, g.port))));
                    return;
                }
            }
            // Bytes for the guest on guestfwd connections, until it can take them.
            let mut pending: Vec<(Ipv4Addr, u16, Vec<u8>)> = Vec::new();
            let _ = up_tx.send(Ok(()));
            loop {
                let _ = wake.read();
                fault_point();
                let g = lock_shared(&shared_t);
                if g.closed {
                    // The NIC is gone: the VM is shutting down, or netdev_del.
                    return;
                }
                while let Ok(c) = ctl_rx.try_recv() {
                    match c {
                        Ctl::AddFwd { rule, reply } => {
                            // SAFETY: slirp is live and this is its thread.
                            let _ = reply.send(unsafe { add_fwd(slirp, rule) });
                        }
                        Ctl::RemoveFwd {
                            rule: (udp, ha, hp),
                            reply,
                        } => {
                            // SAFETY: slirp is live; plain values.
                            let r = unsafe {
                                sys::slirp_remove_hostfwd(
                                    slirp,
                                    c_int::from(udp),
                                    addr(ha),
                                    c_int::from(hp),
                                )
                            };
                            let _ = reply.send(r >= 0);
                        }
                        Ctl::GuestFwdIn {
                            addr: a,
                            port,
                            data,
                        } => match pending.iter_mut().find(|p| p.0 == a && p.1 == port) {
                            Some(p) if p.2.len() + data.len() > GUESTFWD_PENDING => {
                                tracing::warn!(
                                    "guestfwd {a}:{port}: the guest is not reading; input dropped"
                                );
                            }
                            Some(p) => p.2.extend_from_slice(&data),
                            None => pending.push((a, port, data)),
                        },
                        Ctl::Info { reply } => {
                            // SAFETY: slirp is live; the result is a g_malloc'd C string
                            // we own and free.
                            let text = unsafe {
                                let p = sys::slirp_connection_info(slirp);
                                if p.is_null() {
                                    String::new()
                                } else {
                                    let t =
                                        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned();
                                    g_free(p.cast());
                                    t
                                }
                            };
                            let _ = reply.send(text);
                        }
                    }
                }
                // Guestfwd input, as much as each guest socket takes now.
                for (a, port, data) in pending.iter_mut() {
                    // SAFETY: slirp is live and this is its thread.
                    let room =
                        unsafe { sys::slirp_socket_can_recv(slirp, addr(*a), c_int::from(*port)) };
                    let n = room.min(data.len()).min(c_int::MAX as usize);
                    if n > 0 {
                        // SAFETY: as above; data holds at least n bytes.
                        unsafe {
                            sys::slirp_socket_recv(
                                slirp,
                                addr(*a),
                                c_int::from(*port),
                                data.as_ptr(),
                                n as c_int,
                            )
                        };
                        data.drain(..n);
                    }
                }
                pending.retain(|p| !p.2.is_empty());
                // Poll slirp's sockets and our wake-up (soon again while input waits).
                let mut timeout: u32 = if pending.is_empty() { 1000 } else { 10 };
                pollfds.clear();
                pollfds.push(libc::pollfd {
                    fd: wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                // SAFETY: slirp is live and Shared locked.
                unsafe { fill_polls(slirp, &mut pollfds, &mut timeout) };
                // SAFETY: the State is only reached with Shared locked, as it is.
                let st = unsafe { &*state.0 };
                let now_ms = st.start.elapsed().as_millis() as i64;
                for t in &st.timers {
                    if let Some(e) = t.expire_ms {
                        timeout = timeout.min((e - now_ms).clamp(0, 1000) as u32);
                    }
                }
                // The NIC may call into slirp while this thread waits (the poll set is
                // this thread's alone: callbacks on the NIC's thread never touch it).
                let filled = g.generation;
                drop(g);
                // SAFETY: pollfds is a valid array of its length, used by this thread only.
                let r = unsafe {
                    libc::poll(
                        pollfds.as_mut_ptr(),
                        pollfds.len() as libc::nfds_t,
                        timeout as c_int,
                    )
                };
                let g = lock_shared(&shared_t);
                if g.closed {
                    return;
                }
                // If the NIC made a pass meanwhile, this set's places are stale: what was
                // ready still is, and the next round polls it again.
                if g.generation == filled {
                    // SAFETY: slirp is live and Shared locked.
                    unsafe { serve_polls(slirp, &mut pollfds, r < 0) };
                }
                // Timers due.
                // SAFETY: as above, with Shared locked.
                let st = unsafe { &mut *state.0 };
                let now_ms = st.start.elapsed().as_millis() as i64;
                let due: Vec<(sys::SlirpTimerCb, *mut c_void)> = st
                    .timers
                    .iter_mut()
                    .filter(|t| t.expire_ms.is_some_and(|e| e <= now_ms))
                    .map(|t| {
                        t.expire_ms = None;
                        (t.cb, t.opaque)
                    })
                    .collect();
                for (cb, o) in due {
                    if let Some(cb) = cb {
                        // SAFETY: slirp's own callback with its own opaque.
                        unsafe { cb(o) };
                    }
                }
                drop(g);
            }
        })?;
    match up_rx.recv() {
        Ok(Ok(())) => Ok(SlirpPort {
            control: SlirpControl {
                tx: ctl_tx,
                wake: slirp_wake.clone(),
            },
            shared,
            slirp_wake,
            from_slirp: to_guest_rx,
            ready,
            stats,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(SlirpError::Init),
    }
}
