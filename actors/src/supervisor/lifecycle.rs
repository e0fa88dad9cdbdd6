//! Lifecycle state machine and the supervisor actor.

use std::sync::Arc;
use std::time::SystemTime;

use devices::SystemEvent;
use tokio::sync::broadcast;
use tracing::Instrument;

use crate::events::{EventRx, VmEvent};
use crate::runtime::{reply_channel, ActorError, Addr, Mailbox, MessageKind, Reply};
use crate::vcpu::{VcpuBootState, VcpuHandle};

/// QEMU's run states that troupe reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Prelaunch,
    Running,
    Paused,
    Shutdown,
    InternalError,
}

impl RunState {
    /// The name QMP `query-status` reports.
    pub fn qmp_name(self) -> &'static str {
        match self {
            Self::Prelaunch => "prelaunch",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Shutdown => "shutdown",
            Self::InternalError => "internal-error",
        }
    }

    /// The word HMP `info status` prints after `VM status: `.
    pub fn hmp_name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Prelaunch => "paused (prelaunch)",
            Self::Paused => "paused",
            Self::Shutdown => "paused (shutdown)",
            Self::InternalError => "paused (internal-error)",
        }
    }
}

/// What the rest of the machine must do on the supervisor's behalf.
pub trait Machine: Send + Sync + 'static {
    /// Put devices in their power-on state and reload firmware or kernel; return each
    /// vCPU's boot state, in vCPU index order. Called with every vCPU paused.
    fn reset(&self) -> Result<Vec<VcpuBootState>, String>;
    /// Press the ACPI power button. False when the machine has no way to ask the guest.
    fn power_button(&self) -> bool;
}

/// Broadcast to monitors (QMP events) as the lifecycle changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmNotification {
    Stop,
    Resume,
    /// `guest`: the guest asked; `reason` as QMP spells it (`guest-reset`,
    /// `host-qmp-system-reset`, ...).
    Reset {
        guest: bool,
        reason: &'static str,
    },
    Shutdown {
        guest: bool,
        reason: &'static str,
    },
    Powerdown,
    /// Free-form events other actors publish through the supervisor (DEVICE_DELETED ...):
    /// (event name, JSON data).
    Other {
        event: String,
        data: String,
    },
}

/// Why `Supervisor::run` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off (status 0).
    PoweredOff,
    /// `quit` from a monitor (status 0).
    Quit,
    /// The guest reset with `-no-reboot` (status 0).
    ResetNoReboot,
    /// isa-debug-exit wrote this value (status `(v << 1) | 1`).
    DebugExit(u32),
    /// A vCPU faulted and nothing is attached to inspect it (status 1).
    Fault(String),
    /// A vital actor failed (status 1).
    ActorFailed(String),
    /// Host signal (SIGINT/SIGTERM) (status 0 like QEMU: "terminating on signal").
    Signal(i32),
}

impl ExitReason {
    pub fn status(&self) -> i32 {
        match self {
            Self::PoweredOff | Self::Quit | Self::ResetNoReboot | Self::Signal(_) => 0,
            Self::DebugExit(v) => ((v << 1) | 1) as i32,
            Self::Fault(_) | Self::ActorFailed(_) => 1,
        }
    }
}

/// Requests to the supervisor.
pub enum SupervisorMsg {
    Status(Reply<RunState>),
    /// `stop`: pause every vCPU.
    Stop(Reply<Result<(), String>>),
    /// `cont`: resume (refused in `internal-error`/`shutdown` unless reset, like QEMU).
    Cont(Reply<Result<(), String>>),
    /// `system_reset` from a host interface.
    Reset(Reply<Result<(), String>>),
    /// `system_powerdown`.
    Powerdown(Reply<Result<(), String>>),
    /// `quit`.
    Quit(Reply<()>),
    /// A host signal asks the process to end.
    Signal(i32),
    /// Subscribe to lifecycle notifications.
    Subscribe(Reply<broadcast::Receiver<(SystemTime, VmNotification)>>),
    /// Publish a notification on behalf of another actor.
    Publish(VmNotification),
    /// The vCPU handles (for `info cpus`, `info registers`, pinning).
    Vcpus(Reply<Vec<VcpuHandle>>),
}

impl MessageKind for SupervisorMsg {
    fn kind(&self) -> &'static str {
        match self {
            Self::Status(_) => "status",
            Self::Stop(_) => "stop",
            Self::Cont(_) => "cont",
            Self::Reset(_) => "reset",
            Self::Powerdown(_) => "powerdown",
            Self::Quit(_) => "quit",
            Self::Signal(_) => "signal",
            Self::Subscribe(_) => "subscribe",
            Self::Publish(_) => "publish",
            Self::Vcpus(_) => "vcpus",
        }
    }
}

/// The cloneable handle monitors and other actors use.
#[derive(Clone, Debug)]
pub struct SupervisorHandle {
    addr: Addr<SupervisorMsg>,
}

impl SupervisorHandle {
    async fn ask<T>(&self, f: impl FnOnce(Reply<T>) -> SupervisorMsg) -> Result<T, ActorError> {
        let (tx, rx) = reply_channel(self.addr.id());
        self.addr.send(f(tx)).await?;
        rx.recv().await
    }
    pub async fn status(&self) -> Result<RunState, ActorError> {
        self.ask(SupervisorMsg::Status).await
    }
    pub async fn stop(&self) -> Result<Result<(), String>, ActorError> {
        self.ask(SupervisorMsg::Stop).await
    }
    pub async fn cont(&self) -> Result<Result<(), String>, ActorError> {
        self.ask(SupervisorMsg::Cont).await
    }
    pub async fn reset(&self) -> Result<Result<(), String>, ActorError> {
        self.ask(SupervisorMsg::Reset).await
    }
    pub async fn powerdown(&self) -> Result<Result<(), String>, ActorError> {
        self.ask(SupervisorMsg::Powerdown).await
    }
    pub async fn quit(&self) -> Result<(), ActorError> {
        self.ask(SupervisorMsg::Quit).await
    }
    pub async fn subscribe(
        &self,
    ) -> Result<broadcast::Receiver<(SystemTime, VmNotification)>, ActorError> {
        self.ask(SupervisorMsg::Subscribe).await
    }
    pub async fn vcpus(&self) -> Result<Vec<VcpuHandle>, ActorError> {
        self.ask(SupervisorMsg::Vcpus).await
    }
    pub fn publish(&self, n: VmNotification) {
        let _ = self.addr.try_send(SupervisorMsg::Publish(n));
    }
    pub fn signal(&self, sig: i32) {
        let _ = self.addr.try_send(SupervisorMsg::Signal(sig));
    }
    pub fn depth(&self) -> usize {
        self.addr.depth()
    }
}

/// Policy knobs from the command line.
#[derive(Debug, Clone, Default)]
pub struct SupervisorConfig {
    /// `-S`.
    pub start_paused: bool,
    /// `-no-reboot`.
    pub no_reboot: bool,
    /// `-no-shutdown`.
    pub no_shutdown: bool,
    /// A monitor is configured: faults leave the VM inspectable instead of exiting.
    pub monitor_attached: bool,
}

pub struct Supervisor {
    state: RunState,
    cfg: SupervisorConfig,
    vcpus: Vec<VcpuHandle>,
    machine: Arc<dyn Machine>,
    events: EventRx,
    mailbox: Mailbox<SupervisorMsg>,
    notify: broadcast::Sender<(SystemTime, VmNotification)>,
}

impl Supervisor {
    pub fn new(
        cfg: SupervisorConfig,
        vcpus: Vec<VcpuHandle>,
        machine: Arc<dyn Machine>,
        events: EventRx,
    ) -> (Self, SupervisorHandle) {
        let (addr, mailbox) = crate::runtime::mailbox("supervisor", 256);
        let (notify, _) = broadcast::channel(256);
        (
            Self {
                state: RunState::Prelaunch,
                cfg,
                vcpus,
                machine,
                events,
                mailbox,
                notify,
            },
            SupervisorHandle { addr },
        )
    }

    fn publish(&self, n: VmNotification) {
        let _ = self.notify.send((SystemTime::now(), n));
    }

    async fn pause_all(&mut self) {
        for v in &self.vcpus {
            if let Err(e) = v.pause().await {
                tracing::warn!("pausing vcpu{}: {e}", v.index());
            }
        }
    }

    fn resume_all(&self) {
        for v in &self.vcpus {
            if let Err(e) = v.resume() {
                tracing::warn!("resuming vcpu{}: {e}", v.index());
            }
        }
    }

    async fn stop(&mut self) {
        if self.state == RunState::Running {
            self.pause_all().await;
            self.state = RunState::Paused;
            self.publish(VmNotification::Stop);
        }
    }

    fn cont(&mut self) -> Result<(), String> {
        match self.state {
            RunState::Running => Ok(()),
            RunState::Paused | RunState::Prelaunch => {
                self.state = RunState::Running;
                self.publish(VmNotification::Resume);
                self.resume_all();
                Ok(())
            }
            RunState::InternalError => Err("Resetting the Virtual Machine is required".into()),
            RunState::Shutdown => Err("Resetting the Virtual Machine is required".into()),
        }
    }

    /// Reset the machine; the run state is kept (a paused VM stays paused) except that a
    /// faulted or shut-down VM becomes runnable again.
    async fn reset(&mut self, guest: bool, reason: &'static str) -> Result<(), String> {
        let was_running = self.state == RunState::Running;
        self.pause_all().await;
        let boots = self.machine.reset()?;
        for (v, b) in self.vcpus.iter().zip(boots) {
            v.reset(b).await.map_err(|e| e.to_string())?;
        }
        self.publish(VmNotification::Reset { guest, reason });
        // Like QEMU, a reset makes a stopped-for-good VM startable again (with `cont`).
        if matches!(self.state, RunState::InternalError | RunState::Shutdown) {
            self.state = RunState::Paused;
        }
        if was_running {
            self.resume_all();
        }
        Ok(())
    }

    /// Run until the VM should end; returns why.
    pub async fn run(mut self) -> ExitReason {
        let mailbox = self.mailbox.clone();
        let mut mb = mailbox.open().await;
        if !self.cfg.start_paused {
            self.state = RunState::Running;
            self.resume_all();
        }
        loop {
            tokio::select! {
                ev = self.events.recv() => {
                    let Some(ev) = ev else { continue };
                    if let Some(exit) = self.on_event(ev).await {
                        self.finish().await;
                        return exit;
                    }
                }
                msg = mb.recv() => {
                    let Some(msg) = msg else { continue };
                    let span = tracing::debug_span!("msg", kind = msg.kind());
                    if let Some(exit) = self.on_msg(msg).instrument(span).await {
                        self.finish().await;
                        return exit;
                    }
                }
            }
        }
    }

    async fn finish(&mut self) {
        if self.state == RunState::Running {
            self.pause_all().await;
        }
    }

    async fn on_event(&mut self, ev: VmEvent) -> Option<ExitReason> {
        tracing::debug!(?ev, "event");
        match ev {
            VmEvent::System(SystemEvent::DebugExit(v)) => Some(ExitReason::DebugExit(v)),
            VmEvent::System(SystemEvent::PowerOffRequested) => {
                self.publish(VmNotification::Shutdown {
                    guest: true,
                    reason: "guest-shutdown",
                });
                if self.cfg.no_shutdown {
                    self.pause_all().await;
                    self.state = RunState::Shutdown;
                    self.publish(VmNotification::Stop);
                    None
                } else {
                    Some(ExitReason::PoweredOff)
                }
            }
            VmEvent::System(SystemEvent::ResetRequested) | VmEvent::TripleFault { .. } => {
                if self.cfg.no_reboot {
                    self.publish(VmNotification::Shutdown {
                        guest: true,
                        reason: "guest-reset",
                    });
                    return Some(ExitReason::ResetNoReboot);
                }
                if let Err(e) = self.reset(true, "guest-reset").await {
                    return Some(ExitReason::Fault(format!("reset failed: {e}")));
                }
                None
            }
            VmEvent::VcpuFault { cpu, report } => {
                self.pause_all().await;
                self.state = RunState::InternalError;
                self.publish(VmNotification::Stop);
                if self.cfg.monitor_attached {
                    tracing::error!(
                        "vcpu{cpu} stopped on a KVM failure; VM is in internal-error state"
                    );
                    None
                } else {
                    Some(ExitReason::Fault(report))
                }
            }
            VmEvent::ActorFailed { id, kind, reason } => {
                // As a vCPU fault: everything stops in internal-error, inspectable from a
                // monitor; with none attached the process ends with status 1. A dead
                // vCPU answers a pause at once (its mailbox is gone), so this cannot hang.
                let report = format!("actor {id} ({kind}) failed: {reason}");
                crate::report!("troupe: {report}; the VM is stopped (internal-error)");
                if self.state != RunState::InternalError {
                    self.pause_all().await;
                    self.state = RunState::InternalError;
                    self.publish(VmNotification::Stop);
                }
                if self.cfg.monitor_attached {
                    None
                } else {
                    Some(ExitReason::ActorFailed(report))
                }
            }
        }
    }

    async fn on_msg(&mut self, msg: SupervisorMsg) -> Option<ExitReason> {
        match msg {
            SupervisorMsg::Status(r) => r.send(self.state),
            SupervisorMsg::Stop(r) => {
                self.stop().await;
                r.send(Ok(()));
            }
            SupervisorMsg::Cont(r) => r.send(self.cont()),
            SupervisorMsg::Reset(r) => {
                let res = self.reset(false, "host-qmp-system-reset").await;
                r.send(res);
            }
            SupervisorMsg::Powerdown(r) => {
                self.publish(VmNotification::Powerdown);
                if self.machine.power_button() {
                    r.send(Ok(()));
                } else {
                    r.send(Err("the machine has no ACPI power button".into()));
                }
            }
            SupervisorMsg::Quit(r) => {
                self.publish(VmNotification::Shutdown {
                    guest: false,
                    reason: "host-qmp-quit",
                });
                r.send(());
                return Some(ExitReason::Quit);
            }
            SupervisorMsg::Signal(sig) => {
                self.publish(VmNotification::Shutdown {
                    guest: false,
                    reason: "host-signal",
                });
                return Some(ExitReason::Signal(sig));
            }
            SupervisorMsg::Subscribe(r) => r.send(self.notify.subscribe()),
            SupervisorMsg::Publish(n) => self.publish(n),
            SupervisorMsg::Vcpus(r) => r.send(self.vcpus.clone()),
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::event_channel;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct FakeMachine {
        resets: AtomicUsize,
        button: bool,
    }

    impl Machine for FakeMachine {
        fn reset(&self) -> Result<Vec<VcpuBootState>, String> {
            self.resets.fetch_add(1, Ordering::SeqCst);
            Ok(vec![])
        }
        fn power_button(&self) -> bool {
            self.button
        }
    }

    fn start(
        cfg: SupervisorConfig,
    ) -> (
        SupervisorHandle,
        crate::events::EventTx,
        Arc<FakeMachine>,
        tokio::task::JoinHandle<ExitReason>,
    ) {
        let (tx, rx) = event_channel();
        let m = Arc::new(FakeMachine {
            resets: AtomicUsize::new(0),
            button: true,
        });
        let (sup, h) = Supervisor::new(cfg, vec![], m.clone(), rx);
        let j = tokio::spawn(sup.run());
        (h, tx, m, j)
    }

    #[tokio::test]
    async fn stop_and_cont_change_state_and_notify_before_answering() {
        let (h, _tx, _m, _j) = start(SupervisorConfig::default());
        let mut sub = h.subscribe().await.unwrap();
        assert_eq!(h.status().await.unwrap(), RunState::Running);
        h.stop().await.unwrap().unwrap();
        // The STOP notification is already queued when the answer arrives.
        assert_eq!(sub.try_recv().unwrap().1, VmNotification::Stop);
        assert_eq!(h.status().await.unwrap(), RunState::Paused);
        h.cont().await.unwrap().unwrap();
        assert_eq!(sub.try_recv().unwrap().1, VmNotification::Resume);
        assert_eq!(h.status().await.unwrap(), RunState::Running);
    }

    #[tokio::test]
    async fn start_paused_is_prelaunch_until_cont() {
        let (h, _tx, _m, _j) = start(SupervisorConfig {
            start_paused: true,
            ..Default::default()
        });
        assert_eq!(h.status().await.unwrap(), RunState::Prelaunch);
        h.cont().await.unwrap().unwrap();
        assert_eq!(h.status().await.unwrap(), RunState::Running);
    }

    #[tokio::test]
    async fn guest_reset_resets_the_machine_unless_no_reboot() {
        let (h, tx, m, _j) = start(SupervisorConfig::default());
        let mut sub = h.subscribe().await.unwrap();
        tx.post(VmEvent::System(SystemEvent::ResetRequested));
        assert_eq!(
            sub.recv().await.unwrap().1,
            VmNotification::Reset {
                guest: true,
                reason: "guest-reset"
            }
        );
        assert_eq!(m.resets.load(Ordering::SeqCst), 1);

        let (_h, tx, _m, j) = start(SupervisorConfig {
            no_reboot: true,
            ..Default::default()
        });
        tx.post(VmEvent::TripleFault { cpu: 0 });
        assert_eq!(j.await.unwrap(), ExitReason::ResetNoReboot);
    }

    #[tokio::test]
    async fn power_off_exits_or_stops_with_no_shutdown() {
        let (_h, tx, _m, j) = start(SupervisorConfig::default());
        tx.post(VmEvent::System(SystemEvent::PowerOffRequested));
        assert_eq!(j.await.unwrap(), ExitReason::PoweredOff);

        let (h, tx, _m, _j) = start(SupervisorConfig {
            no_shutdown: true,
            ..Default::default()
        });
        tx.post(VmEvent::System(SystemEvent::PowerOffRequested));
        while h.status().await.unwrap() != RunState::Shutdown {
            tokio::task::yield_now().await;
        }
        assert!(
            h.cont().await.unwrap().is_err(),
            "cont needs a reset after shutdown"
        );
        h.reset().await.unwrap().unwrap();
        assert_eq!(h.status().await.unwrap(), RunState::Paused);
    }

    #[tokio::test]
    async fn fault_exits_without_monitor_and_waits_with_one() {
        let (_h, tx, _m, j) = start(SupervisorConfig::default());
        tx.post(VmEvent::VcpuFault {
            cpu: 0,
            report: "boom".into(),
        });
        assert_eq!(j.await.unwrap(), ExitReason::Fault("boom".into()));
        assert_eq!(ExitReason::Fault(String::new()).status(), 1);

        let (h, tx, _m, _j) = start(SupervisorConfig {
            monitor_attached: true,
            ..Default::default()
        });
        tx.post(VmEvent::VcpuFault {
            cpu: 0,
            report: "boom".into(),
        });
        while h.status().await.unwrap() != RunState::InternalError {
            tokio::task::yield_now().await;
        }
        h.quit().await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_vital_actor_stops_in_internal_error_or_exits_without_monitor() {
        let failed = || VmEvent::ActorFailed {
            id: "blk-d0".into(),
            kind: "block",
            reason: "boom".into(),
        };
        let (_h, tx, _m, j) = start(SupervisorConfig::default());
        tx.post(failed());
        let r = j.await.unwrap();
        assert_eq!(
            r,
            ExitReason::ActorFailed("actor blk-d0 (block) failed: boom".into())
        );
        assert_eq!(r.status(), 1);

        let (h, tx, _m, _j) = start(SupervisorConfig {
            monitor_attached: true,
            ..Default::default()
        });
        let mut sub = h.subscribe().await.unwrap();
        tx.post(failed());
        assert_eq!(sub.recv().await.unwrap().1, VmNotification::Stop);
        assert_eq!(h.status().await.unwrap(), RunState::InternalError);
        assert!(h.cont().await.unwrap().is_err());
        h.quit().await.unwrap();
    }

    #[tokio::test]
    async fn debug_exit_status_is_qemus() {
        let (_h, tx, _m, j) = start(SupervisorConfig::default());
        tx.post(VmEvent::System(SystemEvent::DebugExit(5)));
        let r = j.await.unwrap();
        assert_eq!(r, ExitReason::DebugExit(5));
        assert_eq!(r.status(), 11);
    }
}
