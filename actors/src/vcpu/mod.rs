//! vCPU actors: one pinned OS thread per vCPU running `KVM_RUN`.
//!
//! The thread owns its `VcpuFd`. Others hold a [`VcpuHandle`] and send [`VcpuMsg`]s on a
//! crossbeam channel; sending kicks the thread out of `KVM_RUN` (see `kick.rs`), and the
//! loop reads its mailbox only when `KVM_RUN` returns interrupted, or while paused. Exits
//! go straight to the device on this thread through the buses (`exit.rs`); reset,
//! power-off, triple faults and KVM failures go to the supervisor as events.
//!
//! A vCPU starts paused; the supervisor resumes it when the VM starts running.
//!
//! While paused, a vCPU saves and restores its whole KVM state (`state.rs`) as a
//! `devices::Section` for savevm and migration, served on its own thread like `Registers`.

mod exit;
pub mod kick;
pub mod regs;
pub mod state;
mod thread;

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;
use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_sregs};

pub use exit::{handle_exit, Buses, ExitCounters, ExitOutcome};
pub use regs::VcpuRegisters;
pub use state::{FpuState, MsrValue, VcpuState};
pub use thread::{allowed_cores as thread_allowed_cores, spawn_vcpu, VcpuContext};

use crate::runtime::{reply_channel, ActorError, MessageKind, Reply};

/// The architectural state a vCPU (re)starts from: at power-on and at every reset.
#[derive(Clone, Default)]
pub struct VcpuBootState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: kvm_fpu,
    /// MSR index → value.
    pub msrs: Vec<(u32, u64)>,
    /// The BSP is runnable; APs wait for INIT/SIPI.
    pub runnable: bool,
    /// Local APIC registers (LINT0/LINT1 wiring).
    pub lapic: Option<kvm_lapic_state>,
}

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("vCPU {cpu}: {what} failed: {source}")]
    Kvm {
        cpu: u32,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {cpu}: cannot pin to host cores {cores:?}: {source}")]
    Affinity {
        cpu: u32,
        cores: Vec<usize>,
        #[source]
        source: std::io::Error,
    },
    #[error("vCPU {cpu}: cannot {what} its state while it is running (pause it first)")]
    NotPaused { cpu: u32, what: &'static str },
    #[error("vCPU {cpu}: {source}")]
    State {
        cpu: u32,
        #[source]
        source: devices::StateError,
    },
    #[error("vCPU {cpu}: KVM_SET_MSRS refused MSR {index:#x} = {value:#x}")]
    MsrRefused { cpu: u32, index: u32, value: u64 },
    #[error("vCPU {cpu}: {count} MSRs do not fit in one KVM_GET/SET_MSRS call")]
    TooManyMsrs { cpu: u32, count: usize },
    #[error("vCPU {cpu}: a {bytes}-byte XSAVE area does not fit this host's ({host} bytes)")]
    XsaveSize { cpu: u32, bytes: usize, host: usize },
    #[error("vCPU {cpu}: the saved state has {what}, which this host's KVM cannot restore")]
    Unsupported { cpu: u32, what: &'static str },
    #[error(transparent)]
    Actor(#[from] ActorError),
}

/// Messages a vCPU thread serves between exits.
pub enum VcpuMsg {
    /// Start or continue running the guest.
    Resume,
    /// Stop running after completing any half-done I/O; answers once paused.
    Pause(Reply<()>),
    /// Read the registers (`info registers`).
    Registers(Reply<Result<VcpuRegisters, VcpuError>>),
    /// Read the local APIC's register page (`info lapic`).
    Lapic(Reply<Result<kvm_bindings::kvm_lapic_state, VcpuError>>),
    /// Translate a guest virtual address with the vCPU's current page tables.
    TranslateGva(u64, Reply<Result<Option<u64>, VcpuError>>),
    /// Pin to these host cores (empty: any allowed core).
    SetAffinity(Vec<usize>, Reply<Result<(), VcpuError>>),
    /// Load a boot state (allowed while paused: the supervisor pauses first).
    Reset(Box<VcpuBootState>, Reply<Result<(), VcpuError>>),
    /// Save the whole KVM state as a section `vcpu{N}` of kind [`state::KIND`]. Answered
    /// only while paused (or stopped on a fault); a running vCPU answers `NotPaused`.
    Save(Reply<Result<devices::Section, VcpuError>>),
    /// Load a section saved by `Save` (from any vCPU of the same kind and version). Answered
    /// only while paused or faulted (a restore clears a fault: the vCPU is then paused);
    /// a running vCPU answers `NotPaused`. After an error other than `NotPaused` or `State`
    /// the vCPU holds part of the new state and must be restored again or reset.
    Restore(Box<devices::Section>, Reply<Result<(), VcpuError>>),
    /// End the thread.
    Stop,
}

impl MessageKind for VcpuMsg {
    fn kind(&self) -> &'static str {
        match self {
            Self::Resume => "resume",
            Self::Pause(_) => "pause",
            Self::Registers(_) => "registers",
            Self::Lapic(_) => "lapic",
            Self::TranslateGva(..) => "translate_gva",
            Self::SetAffinity(..) => "set_affinity",
            Self::Reset(..) => "reset",
            Self::Save(_) => "save",
            Self::Restore(..) => "restore",
            Self::Stop => "stop",
        }
    }
}

struct Shared {
    index: u32,
    apic_id: u32,
    tid: AtomicI32,
    pthread: Mutex<Option<libc::pthread_t>>,
    alive: AtomicBool,
    cores: Mutex<Option<Vec<usize>>>,
    counters: ExitCounters,
    join: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The vCPU's fd once its thread has ended (KVM cannot destroy a vCPU: an unplugged
    /// one is parked for the next plug of the same CPU, as QEMU does).
    parked: Mutex<Option<kvm_ioctls::VcpuFd>>,
}

/// The cloneable way to talk to one vCPU.
#[derive(Clone)]
pub struct VcpuHandle {
    tx: Sender<VcpuMsg>,
    shared: Arc<Shared>,
}

impl VcpuHandle {
    pub fn index(&self) -> u32 {
        self.shared.index
    }

    pub fn apic_id(&self) -> u32 {
        self.shared.apic_id
    }

    /// The vCPU thread's kernel thread id (what `info cpus` shows as `thread_id`).
    pub fn thread_id(&self) -> i32 {
        self.shared.tid.load(Ordering::Acquire)
    }

    /// Host cores the thread is pinned to (None: unpinned).
    pub fn cores(&self) -> Option<Vec<usize>> {
        self.shared
            .cores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn counters(&self) -> &ExitCounters {
        &self.shared.counters
    }

    /// Messages waiting.
    pub fn depth(&self) -> usize {
        self.tx.len()
    }

    fn id(&self) -> String {
        format!("vcpu{}", self.shared.index)
    }

    /// Post a message and kick the thread out of KVM_RUN so it sees it.
    pub fn post(&self, msg: VcpuMsg) -> Result<(), ActorError> {
        self.tx.send(msg).map_err(|_| ActorError::Gone(self.id()))?;
        self.kick();
        Ok(())
    }

    fn kick(&self) {
        Self::kick_shared(&self.shared);
    }

    fn kick_shared(shared: &Shared) {
        if !shared.alive.load(Ordering::Acquire) {
            return;
        }
        if let Some(t) = *shared.pthread.lock().unwrap_or_else(|e| e.into_inner()) {
            kick::kick(t);
        }
    }

    pub fn resume(&self) -> Result<(), ActorError> {
        self.post(VcpuMsg::Resume)
    }

    pub async fn pause(&self) -> Result<(), ActorError> {
        let (tx, rx) = reply_channel(&self.id());
        self.post(VcpuMsg::Pause(tx))?;
        rx.recv().await
    }

    pub async fn registers(&self) -> Result<VcpuRegisters, VcpuError> {
        let (tx, rx) = reply_channel(&self.id());
        self.post(VcpuMsg::Registers(tx))?;
        rx.recv().await?
    }

    pub async fn lapic(&self) -> Result<kvm_bindings::kvm_lapic_state, VcpuError> {
        let (tx, rx) = reply_channel(&self.id());
        self.post(VcpuMsg::Lapic(tx))?;
        rx.recv().await?
    }

    pub async fn translate_gva(&self, gva: u64) -> Result<Option<u64>, VcpuError> {
        let (tx, rx) = reply_channel(&self.id());
        self.post(VcpuMsg::TranslateGva(gva, tx))?;
        rx.recv().await?
    }

    pub async fn set_affinity(&self, cores: Vec<usize>) -> Result<(), VcpuError> {
        let (tx, rx) = reply_channel(&self.id());
        self.post(VcpuMsg::SetAffinity(cores, tx))?;
        rx.recv().await?
    }

    pub async fn reset(&self, state: VcpuBootState) -> Result<(), VcpuError> {
        let (tx, rx) = reply_channel(&self.id());
        self.post(VcpuMsg::Reset(Box::new(state), tx))?;
        rx.recv().await?
    }

    /// The vCPU's state as a section (the vCPU must be paused).
    pub async fn save(&self) -> Result<devices::Section, VcpuError> {
        let (tx, rx) = reply_channel(&self.id());
        self.post(VcpuMsg::Save(tx))?;
        rx.recv().await?
    }

    /// Load a section saved by [`VcpuHandle::save`] (the vCPU must be paused).
    pub async fn restore(&self, section: devices::Section) -> Result<(), VcpuError> {
        let (tx, rx) = reply_channel(&self.id());
        self.post(VcpuMsg::Restore(Box::new(section), tx))?;
        rx.recv().await?
    }

    /// End the thread (from a plain thread) and take back the vCPU's fd, for a later plug
    /// of the same CPU (None: the thread ended without giving it back).
    pub fn stop_and_park(&self) -> Option<kvm_ioctls::VcpuFd> {
        self.stop_and_join();
        self.shared
            .parked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Ask the thread to end and wait for it (from a plain thread or `spawn_blocking`).
    pub fn stop_and_join(&self) {
        let _ = self.post(VcpuMsg::Stop);
        self.join();
    }

    /// Wait for the thread to end (once it has been told to stop).
    pub fn join(&self) {
        let join = self
            .shared
            .join
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(j) = join {
            let _ = j.join();
        }
    }
}
