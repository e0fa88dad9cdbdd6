//! The sandbox: a seccomp filter on every thread, chosen by the thread's actor kind, with
//! QEMU's `-sandbox` switches layered on top (see `profiles.rs` for the lists).
//!
//! The binary calls [`configure`] once, before any other thread exists; from then on every
//! thread installs its own filter as it starts, before it runs anything else:
//! [`crate::runtime::spawn_thread`] threads with their actor's kind, tokio's threads (the
//! runtime's `on_thread_start`) as `tokio`, the main thread as `main` once the VM is built
//! and privileges are dropped. A filter is inherited by the threads a thread creates and
//! only ever narrows, so actor threads are created by one *thread starter* whose filter is
//! the widest (the deny layer only): each new thread narrows from there to its own list.
//!
//! A forbidden call traps: `trap.rs` writes a line naming the thread, its kind, the kind of
//! actor task it was running and the call, and ends the process. `TROUPE_SECCOMP_LOG=1`
//! turns the allow-lists' traps into kernel audit log lines instead (how the lists were
//! found; `dmesg` shows `comm=` and `syscall=`).
//!
//! Test builds (feature `fault-injection`) read `TROUPE_TEST_SECCOMP_VIOLATE=KIND`: each
//! thread or actor task of that kind makes a forbidden call (`iopl`) as it starts, so the
//! tests can watch the process die with the line.

mod policy;
mod profiles;
mod sysnames;
mod trap;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{mpsc, Arc, Mutex, OnceLock};

use seccompiler::BpfProgram;

pub use policy::{Elevate, Policy};
pub use profiles::{Ids, Profile};
pub use trap::EXIT_STATUS;

use crate::runtime::Registry;

/// Why the sandbox could not be set up, or refused something.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("compiling a seccomp filter: {0}")]
    Compile(String),
    #[error("installing the SIGSYS handler")]
    Handler(#[source] std::io::Error),
    #[error("installing the seccomp filter for a thread of kind {kind}")]
    Install {
        kind: &'static str,
        #[source]
        source: seccompiler::Error,
    },
    #[error("starting the thread starter")]
    Starter(#[source] std::io::Error),
    #[error("{0}: refused under -sandbox spawn=deny (it would start a program)")]
    SpawnDenied(String),
    #[error("the sandbox is already configured")]
    Configured,
}

type Job = Box<dyn FnOnce() + Send>;

struct State {
    policy: Policy,
    ids: Option<Ids>,
    log: bool,
    programs: Mutex<HashMap<Profile, Arc<Vec<BpfProgram>>>>,
}

static STATE: OnceLock<State> = OnceLock::new();
/// Where threads are started from when filters are on.
static STARTER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();

/// Set the process's sandbox: `policy`, and `ids` the credentials `-runas` will drop to
/// (the only credential change the filters let through). Call once, before any thread is
/// started; with filters on it installs the SIGSYS handler and starts the thread starter
/// (registered in `registry`).
pub fn configure(
    policy: Policy,
    ids: Option<Ids>,
    registry: &Registry,
) -> Result<(), SandboxError> {
    let enabled = policy.enabled;
    let state = State {
        policy,
        ids,
        log: std::env::var_os("TROUPE_SECCOMP_LOG").is_some_and(|v| v == "1"),
        programs: Mutex::new(HashMap::new()),
    };
    STATE.set(state).map_err(|_| SandboxError::Configured)?;
    if !enabled {
        return Ok(());
    }
    trap::install().map_err(SandboxError::Handler)?;
    let (tx, rx) = mpsc::channel::<Job>();
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), SandboxError>>(1);
    let reg = registry.clone();
    std::thread::Builder::new()
        .name("troupe-starter".into())
        .spawn(move || {
            reg.register_current_thread("thread-starter", "thread-starter");
            let _ = ready_tx.send(enter("thread-starter"));
            while let Ok(job) = rx.recv() {
                job();
            }
        })
        .map_err(SandboxError::Starter)?;
    ready_rx
        .recv()
        .map_err(|_| SandboxError::Starter(std::io::Error::other("it ended")))??;
    STARTER
        .set(Mutex::new(tx))
        .map_err(|_| SandboxError::Configured)?;
    Ok(())
}

/// Filters are on for this process.
pub fn active() -> bool {
    STATE.get().is_some_and(|s| s.policy.enabled)
}

/// The policy in force (None: not configured, no filters).
pub fn policy() -> Option<&'static Policy> {
    STATE.get().map(|s| &s.policy)
}

/// Install the filters of `kind` on the calling thread (nothing when filters are off).
pub fn enter(kind: &'static str) -> Result<(), SandboxError> {
    let Some(st) = STATE.get().filter(|s| s.policy.enabled) else {
        return Ok(());
    };
    trap::set_thread(kind);
    let progs = st.programs_for(Profile::of(kind))?;
    for p in progs.iter() {
        seccompiler::apply_filter(p).map_err(|source| SandboxError::Install { kind, source })?;
    }
    violate_if_asked(kind);
    Ok(())
}

impl State {
    fn programs_for(&self, p: Profile) -> Result<Arc<Vec<BpfProgram>>, SandboxError> {
        let mut map = self.programs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = map.get(&p) {
            return Ok(v.clone());
        }
        let v = Arc::new(profiles::programs(p, &self.policy, self.ids, self.log)?);
        map.insert(p, v.clone());
        Ok(v)
    }
}

/// Run `f` (which starts a thread) on the thread starter when filters are on, so the new
/// thread inherits the widest filter and narrows it to its own; on the calling thread
/// otherwise. None if the starter is gone.
pub(crate) fn on_starter<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let Some(starter) = STARTER.get() else {
        return Some(f());
    };
    let (tx, rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    starter
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(job)
        .ok()?;
    rx.recv().ok()
}

/// Refuse `what` (a tap script, an `exec:` migration) when the policy denies starting
/// programs and the calling thread is already filtered (scripts run while the VM is
/// built, before the main thread's filter, still run): troupe says so rather than being
/// killed by its own filter.
pub fn may_spawn(what: impl FnOnce() -> String) -> Result<(), SandboxError> {
    match STATE.get() {
        Some(s) if s.policy.enabled && s.policy.deny_spawn && filtered() => {
            Err(SandboxError::SpawnDenied(what()))
        }
        _ => Ok(()),
    }
}

/// The calling thread runs under a seccomp filter.
pub fn filtered() -> bool {
    // SAFETY: PR_GET_SECCOMP takes no pointer; it returns the thread's mode.
    unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) == 2 }
}

/// `fut`, an actor task of `kind`, noting its kind on the thread while it is polled (for
/// the violation line).
pub fn tagged<F: Future>(kind: &'static str, fut: F) -> impl Future<Output = F::Output> {
    let mut fut = Box::pin(fut);
    let mut first = true;
    std::future::poll_fn(move |cx| {
        let prev = trap::set_task(kind);
        if std::mem::take(&mut first) && active() {
            violate_if_asked(kind);
        }
        let r = fut.as_mut().poll(cx);
        trap::set_task(prev);
        r
    })
}

/// Test builds: make a forbidden call if `TROUPE_TEST_SECCOMP_VIOLATE` names `kind`.
#[cfg(feature = "fault-injection")]
fn violate_if_asked(kind: &str) {
    static ASKED: OnceLock<Option<String>> = OnceLock::new();
    let asked = ASKED.get_or_init(|| std::env::var("TROUPE_TEST_SECCOMP_VIOLATE").ok());
    if asked.as_deref() == Some(kind) {
        // SAFETY: iopl(0) asks for the I/O privilege level a process already has; it is on
        // every deny list, so the filter traps it before the kernel sees it.
        unsafe { libc::syscall(libc::SYS_iopl, 0) };
    }
}

#[cfg(not(feature = "fault-injection"))]
fn violate_if_asked(_kind: &str) {}
