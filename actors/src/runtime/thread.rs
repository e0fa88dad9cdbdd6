//! The one way to start an OS thread: [`spawn_thread`].
//!
//! It installs the thread's seccomp filter (by kind, see `sandbox`) before the body runs,
//! names the thread `troupe-<id>` (shortened to Linux's 15 characters), registers it in
//! the [`Registry`] with its kind, kernel thread id and pinned cores (what `info actors`
//! shows), runs its body under `catch_unwind`, and applies the actor's [`Restart`] policy
//! when the body panics: a restartable actor's body is run again on the same thread (its
//! restarts counted); a vital one is marked failed and reported to the supervisor, which
//! stops the VM in `internal-error`. A body that returns ends the thread and its entry.
//!
//! A restartable body is an `FnMut`: what must survive a restart (a tap descriptor, the
//! channels to the NIC) is captured by the closure and borrowed by each run; what one run
//! builds (a slirp instance, a frame buffer) is built inside it. A vital body usually owns
//! its state outright: wrap it in [`once`].

use std::sync::Arc;
use std::time::Duration;

use super::registry::{gettid, set_current, ActorState, Placement, Registry, Waker};
use super::spawn::{panic_text, Restart, MAX_RESTARTS};

/// What a thread actor is.
pub struct ThreadSpec {
    /// Actor id (`vcpu0`, `blk-drive0`, `slirp-u0`): unique, shown by `info actors`.
    pub id: String,
    /// What kind of actor (`vcpu`, `block`, `virtio-worker`, `nic-backend` ...).
    pub kind: &'static str,
    pub restart: Restart,
    /// Host cores the thread is pinned to, if it pins itself at start (shown only).
    pub cores: Option<Vec<usize>>,
    /// Wakes the thread for its next loop turn (its eventfd, a kick).
    pub wake: Option<Waker>,
    /// Its mailbox depth, if it has one.
    pub depth: Option<Box<dyn Fn() -> usize + Send + Sync>>,
    /// The OS thread name, when not [`thread_name`] of the id (QEMU's `CPU 0/KVM` under
    /// `-name debug-threads=on`).
    pub name: Option<String>,
}

impl ThreadSpec {
    pub fn new(id: impl Into<String>, kind: &'static str, restart: Restart) -> Self {
        Self {
            id: id.into(),
            kind,
            restart,
            cores: None,
            wake: None,
            depth: None,
            name: None,
        }
    }

    /// Name the OS thread `name` (at most 15 bytes are kept by Linux).
    pub fn name(mut self, name: Option<String>) -> Self {
        self.name = name;
        self
    }

    pub fn cores(mut self, cores: Option<Vec<usize>>) -> Self {
        self.cores = cores;
        self
    }

    pub fn wake(mut self, w: impl Fn() + Send + Sync + 'static) -> Self {
        self.wake = Some(Arc::new(w));
        self
    }

    pub fn depth(mut self, d: impl Fn() -> usize + Send + Sync + 'static) -> Self {
        self.depth = Some(Box::new(d));
        self
    }

    /// [`spawn_thread`] with this spec (reads like `std::thread::Builder`).
    pub fn spawn<F>(
        self,
        registry: &Registry,
        body: F,
    ) -> std::io::Result<std::thread::JoinHandle<()>>
    where
        F: FnMut() + Send + 'static,
    {
        spawn_thread(registry, self, body)
    }
}

/// A body that runs `f` once (later runs do nothing): for vital actors that own their
/// state.
pub fn once(f: impl FnOnce() + Send + 'static) -> impl FnMut() + Send + 'static {
    let mut f = Some(f);
    move || {
        if let Some(f) = f.take() {
            f()
        }
    }
}

/// Run `f`, which may block (a script, an image opened), on a one-shot thread actor `id` of
/// `kind`, and wait for what it returns without holding up the runtime's threads. A panic in
/// `f` comes back as its message (the actor is not vital: the caller reports it).
pub async fn run_blocking<T: Send + 'static>(
    registry: &Registry,
    id: &str,
    kind: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let who = id.to_string();
    ThreadSpec::new(id, kind, Restart::Never)
        .spawn(
            registry,
            once(move || {
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
                    .map_err(|p| format!("{who} panicked: {}", panic_text(p.as_ref())));
                let _ = tx.send(res);
            }),
        )
        .map_err(|e| format!("starting {id}: {e}"))?;
    rx.await
        .map_err(|_| format!("{id} ended without an answer"))?
}

/// The thread name for actor `id`: `troupe-<id>`, or `t-<id>`, or `t-` with the id's
/// head and tail around a `~`, whichever first fits Linux's 15 bytes.
pub fn thread_name(id: &str) -> String {
    const MAX: usize = 15;
    let full = format!("troupe-{id}");
    if full.len() <= MAX {
        return full;
    }
    let short = format!("t-{id}");
    if short.len() <= MAX {
        return short;
    }
    let chars: Vec<char> = id.chars().collect();
    let head: String = chars.iter().take(6).collect();
    let tail: String = chars[chars.len().saturating_sub(6)..].iter().collect();
    let mut name = format!("t-{head}~{tail}");
    while name.len() > MAX {
        name.pop();
    }
    name
}

/// Start thread actor `spec` running `body` (see the module comment for the policy).
pub fn spawn_thread<F>(
    registry: &Registry,
    spec: ThreadSpec,
    mut body: F,
) -> std::io::Result<std::thread::JoinHandle<()>>
where
    F: FnMut() + Send + 'static,
{
    let ThreadSpec {
        id,
        kind,
        restart,
        cores,
        wake,
        depth,
        name,
    } = spec;
    let depth = depth.unwrap_or_else(|| Box::new(|| 0));
    let entry = registry.register(&id, kind, Placement::Thread { tid: 0, cores }, move || {
        depth()
    });
    entry.set_waker(wake);
    let (reg, e) = (registry.clone(), entry.clone());
    let builder = std::thread::Builder::new().name(name.unwrap_or_else(|| thread_name(&id)));
    let start = move || {
        builder.spawn(move || {
            // The thread's filter goes on before anything else runs on it.
            if let Err(err) = crate::sandbox::enter(kind) {
                crate::report!("troupe: actor {} ({kind}): {err}", e.id);
                std::process::exit(1);
            }
            let tid = gettid();
            {
                let cores = match e.placement() {
                    Placement::Thread { cores, .. } => cores,
                    Placement::Runtime => None,
                };
                e.set_placement(Placement::Thread { tid, cores });
            }
            set_current(Some(e.clone()));
            let span = tracing::info_span!("actor", id = %e.id, kind = e.kind());
            let _span = span.enter();
            loop {
                e.set_state(ActorState::Running);
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut body)) {
                    Ok(()) => {
                        e.set_state(ActorState::Stopped);
                        reg.remove_entry(&e);
                        break;
                    }
                    Err(p) => {
                        let reason = panic_text(p.as_ref());
                        if restart == Restart::Always {
                            let n = e.note_restart();
                            if n <= MAX_RESTARTS {
                                crate::report!(
                                    "troupe: actor {} ({}) panicked: {reason}; restarting it (restart {n})",
                                    e.id,
                                    e.kind()
                                );
                                e.set_state(ActorState::Restarting);
                                // Back off a little so a crash loop cannot spin a core.
                                std::thread::sleep(Duration::from_millis(10 * u64::from(n.min(20))));
                                continue;
                            }
                            crate::report!(
                                "troupe: actor {} ({}) panicked: {reason}; given up after {MAX_RESTARTS} restarts",
                                e.id,
                                e.kind()
                            );
                            e.set_state(ActorState::Failed);
                            break;
                        }
                        crate::report!(
                            "troupe: vital actor {} ({}) panicked: {reason}",
                            e.id,
                            e.kind()
                        );
                        e.set_state(ActorState::Failed);
                        reg.report_failure(&e, &reason);
                        break;
                    }
                }
            }
            set_current(None);
        })
    };
    // With filters on, threads start from the thread starter (see `sandbox`).
    let spawned = crate::sandbox::on_starter(start)
        .unwrap_or_else(|| Err(std::io::Error::other("the thread starter is gone")));
    if spawned.is_err() {
        registry.remove_entry(&entry);
    }
    spawned
}

/// Every thread of this process: (kernel thread id, its name from `comm`).
pub fn process_threads() -> std::io::Result<Vec<(i32, String)>> {
    let mut out = Vec::new();
    for d in std::fs::read_dir("/proc/self/task")? {
        let d = d?;
        let Some(tid) = d.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        // A thread that ended between the listing and this read is simply not there.
        let comm = std::fs::read_to_string(d.path().join("comm"))
            .map(|c| c.trim_end().to_string())
            .unwrap_or_default();
        out.push((tid, comm));
    }
    out.sort();
    Ok(out)
}

/// What a thread the kernel itself created inside the process is (no code of ours runs
/// on it, so it cannot register): io_uring's workers and SQ pollers (`io-uring-kernel`),
/// KVM's NX huge page recovery worker (`kvm-kernel`, comm `kvm-nx-lpage-recovery`
/// truncated to 15 bytes). None for any other name.
pub fn kernel_thread_kind(comm: &str) -> Option<&'static str> {
    if comm.starts_with("iou-wrk-") || comm.starts_with("iou-sqp-") {
        Some("io-uring-kernel")
    } else if comm.starts_with("kvm-nx-lpage-re") {
        Some("kvm-kernel")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{event_channel, VmEvent};

    #[test]
    fn kernel_made_threads_are_told_apart_from_strangers() {
        assert_eq!(kernel_thread_kind("iou-wrk-4242"), Some("io-uring-kernel"));
        assert_eq!(kernel_thread_kind("iou-sqp-4242"), Some("io-uring-kernel"));
        assert_eq!(kernel_thread_kind("kvm-nx-lpage-re"), Some("kvm-kernel"));
        assert_eq!(kernel_thread_kind("troupe-io"), None);
    }

    #[test]
    fn names_fit_linux_and_stay_recognisable() {
        assert_eq!(thread_name("vcpu0"), "troupe-vcpu0");
        assert_eq!(thread_name("slirp-u0"), "troupe-slirp-u0");
        assert_eq!(thread_name("blk-drive0"), "t-blk-drive0");
        let n = thread_name("virtio-net-pci-0000:00:04.0");
        assert!(n.len() <= 15, "{n}");
        assert_eq!(n, "t-virtio~0:04.0");
    }

    fn wait_for(mut f: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_restartable_thread_runs_again_after_a_panic_and_its_entry_shows_it() {
        let reg = Registry::new();
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let r = runs.clone();
        let (tx, rx) = std::sync::mpsc::channel::<i32>();
        let j = spawn_thread(
            &reg,
            ThreadSpec::new("t-restart", "test", Restart::Always),
            move || {
                let n = r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tx.send(gettid()).unwrap();
                if n == 0 {
                    panic!("first run fails");
                }
            },
        )
        .unwrap();
        let tid = rx.recv().unwrap();
        assert_eq!(rx.recv().unwrap(), tid, "restarted on the same thread");
        j.join().unwrap();
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
        // It ended normally the second time: gone from the registry.
        assert!(reg.get("t-restart").is_none());
    }

    #[test]
    fn a_vital_thread_that_panics_is_failed_and_reported_with_id_kind_and_message() {
        let reg = Registry::new();
        let (events, mut rx) = event_channel();
        reg.set_failure_sink(events);
        let j = spawn_thread(
            &reg,
            ThreadSpec::new("vital0", "test", Restart::Never),
            once(|| panic!("the disk caught fire")),
        )
        .unwrap();
        j.join().unwrap();
        let e = reg.get("vital0").expect("a failed actor stays listed");
        assert_eq!(e.state(), ActorState::Failed);
        assert_eq!(
            rx.try_recv().unwrap(),
            VmEvent::ActorFailed {
                id: "vital0".into(),
                kind: "test",
                reason: "the disk caught fire".into()
            }
        );
    }

    #[test]
    fn a_thread_is_registered_with_its_kernel_thread_id() {
        let reg = Registry::new();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel::<i32>();
        let j = spawn_thread(
            &reg,
            ThreadSpec::new("tid0", "test", Restart::Never).cores(Some(vec![0])),
            once(move || {
                tid_tx.send(gettid()).unwrap();
                let _ = go_rx.recv();
            }),
        )
        .unwrap();
        let tid = tid_rx.recv().unwrap();
        wait_for(|| {
            reg.snapshot().iter().any(|a| {
                a.placement
                    == Placement::Thread {
                        tid,
                        cores: Some(vec![0]),
                    }
            })
        });
        assert!(process_threads().unwrap().iter().any(|(t, _)| *t == tid));
        go_tx.send(()).unwrap();
        j.join().unwrap();
        assert!(reg.get("tid0").is_none());
    }
}
