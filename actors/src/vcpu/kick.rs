//! Kicking a vCPU thread out of `KVM_RUN`.
//!
//! A kick is a real-time signal sent to the vCPU thread. Its handler sets the thread's
//! `kvm_run.immediate_exit`, so the kick is never lost: if it lands while the thread is in
//! `KVM_RUN`, the ioctl returns `EINTR`; if it lands between two runs, the next `KVM_RUN`
//! returns `EINTR` at once (after completing any half-done PIO/MMIO, per the KVM API docs).

use std::cell::Cell;
use std::sync::Once;

use kvm_bindings::kvm_run;

thread_local! {
    /// This thread's `kvm_run`, or null on threads that are not vCPUs.
    static RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal used for kicks.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_num: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let run = RUN.with(|r| r.get());
    if !run.is_null() {
        // SAFETY: `run` was registered by this very thread from its live VcpuFd mapping and
        // is cleared before that mapping goes away; a volatile byte store is
        // async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Install the kick handler once per process.
pub fn install_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut res = Ok(());
    ONCE.call_once(|| {
        res = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    res
}

/// Register the calling thread's `kvm_run` (or clear it with null).
pub fn set_thread_run(run: *mut kvm_run) {
    RUN.with(|r| r.set(run));
}

/// Send the kick to thread `pthread`.
pub fn kick(pthread: libc::pthread_t) {
    // SAFETY: the caller keeps the thread's JoinHandle alive (not joined), so the pthread_t
    // is valid; pthread_kill on a thread that has already returned is harmless.
    unsafe {
        libc::pthread_kill(pthread, kick_signal());
    }
}
