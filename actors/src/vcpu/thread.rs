//! The vCPU thread: pin, then loop over `KVM_RUN`, serving the control mailbox whenever
//! the run is interrupted and blocking on it while paused.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, TryRecvError};
use kvm_bindings::{kvm_mp_state, Msrs, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use super::{
    exit::{handle_exit, Buses, ExitCounters, ExitOutcome},
    kick,
    regs::{code_line, VcpuRegisters},
    state::{StateIo, VcpuState, KIND as STATE_KIND, VERSION as STATE_VERSION},
    Shared, VcpuBootState, VcpuError, VcpuHandle, VcpuMsg,
};
use crate::bus::Bus;
use crate::events::{EventTx, VmEvent};
use crate::runtime::{
    current, fault_point, gettid, once, spawn_thread, Registry, Restart, ThreadSpec,
};
use devices::memory::GuestMemoryMmap;

/// Clears `alive` when the vCPU thread's body ends, normally or by a panic.
struct AliveGuard(Arc<Shared>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Release);
    }
}

/// What a vCPU thread needs from the machine.
#[derive(Clone)]
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub mem: GuestMemoryMmap,
    pub events: EventTx,
    /// The coalesced MMIO ring (VGA window writes), applied before each exit is handled.
    pub coalesced: Option<Arc<crate::coalesced::CoalescedRing>>,
    /// `-name debug-threads=on`: name the thread as QEMU does, `CPU {index}/KVM`.
    pub debug_threads: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    Running,
    Paused,
    /// Stopped on a fault; only monitor requests and Stop are served.
    Faulted,
    Stopped,
}

struct VcpuThread {
    fd: VcpuFd,
    rx: Receiver<VcpuMsg>,
    ctx: VcpuContext,
    shared: Arc<Shared>,
}

/// Start the thread for vCPU `index` (actor `vcpu{index}`, thread `troupe-vcpu{index}`, or
/// QEMU's `CPU {index}/KVM` with `debug_threads`),
/// pinned to `cores` when given, in the paused state with `boot` loaded.
pub fn spawn_vcpu(
    fd: VcpuFd,
    index: u32,
    apic_id: u32,
    cores: Option<Vec<usize>>,
    boot: VcpuBootState,
    ctx: VcpuContext,
    registry: &Registry,
) -> Result<VcpuHandle, VcpuError> {
    kick::install_handler().map_err(|source| VcpuError::Affinity {
        cpu: index,
        cores: vec![],
        source,
    })?;
    let (tx, rx) = crossbeam_channel::bounded(64);
    let shared = Arc::new(Shared {
        index,
        apic_id,
        tid: AtomicI32::new(0),
        pthread: Mutex::new(None),
        alive: AtomicBool::new(true),
        cores: Mutex::new(None),
        counters: ExitCounters::default(),
        join: Mutex::new(None),
        parked: Mutex::new(None),
    });
    let mut t = VcpuThread {
        fd,
        rx,
        ctx,
        shared: shared.clone(),
    };
    t.load_boot_state(&boot)?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    // Not restartable: the thread owns the vCPU's fd and its place in the guest's
    // execution; a panic stops the VM in internal-error (see the supervisor).
    let kick_target = shared.clone();
    let depth_tx = tx.clone();
    let spec = ThreadSpec::new(format!("vcpu{index}"), "vcpu", Restart::Never)
        .name(t.ctx.debug_threads.then(|| format!("CPU {index}/KVM")))
        .cores(cores.clone())
        .wake(move || VcpuHandle::kick_shared(&kick_target))
        .depth(move || depth_tx.len());
    let join = spawn_thread(
        registry,
        spec,
        once(move || {
            let pinned = match cores {
                Some(c) => t.pin(c),
                None => Ok(()),
            };
            t.shared.tid.store(gettid(), Ordering::Release);
            let failed = pinned.is_err();
            let _ = ready_tx.send(pinned);
            // Marks the thread dead however `run` ends (a panic included): kicks stop.
            let _alive = AliveGuard(t.shared.clone());
            if !failed {
                t.run();
            }
            let VcpuThread { fd, shared, .. } = t;
            *shared.parked.lock().unwrap_or_else(|e| e.into_inner()) = Some(fd);
        }),
    )
    .map_err(|source| VcpuError::Affinity {
        cpu: index,
        cores: vec![],
        source,
    })?;
    {
        use std::os::unix::thread::JoinHandleExt;
        *shared.pthread.lock().unwrap_or_else(|e| e.into_inner()) = Some(join.as_pthread_t());
    }
    *shared.join.lock().unwrap_or_else(|e| e.into_inner()) = Some(join);
    ready_rx.recv().unwrap_or(Ok(()))?;
    Ok(VcpuHandle { tx, shared })
}

impl VcpuThread {
    fn index(&self) -> u32 {
        self.shared.index
    }

    fn kvm_err(&self, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
        let cpu = self.index();
        move |source| VcpuError::Kvm { cpu, what, source }
    }

    fn pin(&mut self, cores: Vec<usize>) -> Result<(), VcpuError> {
        set_affinity(&cores).map_err(|source| VcpuError::Affinity {
            cpu: self.index(),
            cores: cores.clone(),
            source,
        })?;
        let pinned = if cores.is_empty() { None } else { Some(cores) };
        if let Some(e) = current() {
            e.set_cores(pinned.clone());
        }
        *self.shared.cores.lock().unwrap_or_else(|e| e.into_inner()) = pinned;
        Ok(())
    }

    fn load_boot_state(&mut self, b: &VcpuBootState) -> Result<(), VcpuError> {
        if let Some(lapic) = &b.lapic {
            self.fd
                .set_lapic(lapic)
                .map_err(self.kvm_err("KVM_SET_LAPIC"))?;
        }
        self.fd
            .set_sregs(&b.sregs)
            .map_err(self.kvm_err("KVM_SET_SREGS"))?;
        self.fd
            .set_regs(&b.regs)
            .map_err(self.kvm_err("KVM_SET_REGS"))?;
        self.fd
            .set_fpu(&b.fpu)
            .map_err(self.kvm_err("KVM_SET_FPU"))?;
        if !b.msrs.is_empty() {
            let entries: Vec<kvm_bindings::kvm_msr_entry> = b
                .msrs
                .iter()
                .map(|&(index, data)| kvm_bindings::kvm_msr_entry {
                    index,
                    data,
                    ..Default::default()
                })
                .collect();
            let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::Kvm {
                cpu: self.index(),
                what: "building the MSR list",
                source: kvm_ioctls::Error::new(libc::E2BIG),
            })?;
            self.fd
                .set_msrs(&msrs)
                .map_err(self.kvm_err("KVM_SET_MSRS"))?;
        }
        let mp_state = if b.runnable {
            KVM_MP_STATE_RUNNABLE
        } else {
            KVM_MP_STATE_UNINITIALIZED
        };
        self.fd
            .set_mp_state(kvm_mp_state { mp_state })
            .map_err(self.kvm_err("KVM_SET_MP_STATE"))?;
        Ok(())
    }

    fn read_registers(&self) -> Result<VcpuRegisters, VcpuError> {
        let regs = self.fd.get_regs().map_err(self.kvm_err("KVM_GET_REGS"))?;
        let sregs = self.fd.get_sregs().map_err(self.kvm_err("KVM_GET_SREGS"))?;
        let fpu = self.fd.get_fpu().map_err(self.kvm_err("KVM_GET_FPU"))?;
        let debug = self
            .fd
            .get_debug_regs()
            .map_err(self.kvm_err("KVM_GET_DEBUGREGS"))?;
        let mp = self
            .fd
            .get_mp_state()
            .map_err(self.kvm_err("KVM_GET_MP_STATE"))?;
        let events = self.fd.get_vcpu_events().ok();
        Ok(VcpuRegisters {
            regs,
            sregs,
            fpu,
            debug,
            halted: mp.mp_state == kvm_bindings::KVM_MP_STATE_HALTED,
            interrupt_shadow: events.is_some_and(|e| e.interrupt.shadow != 0),
        })
    }

    fn translate(&self, gva: u64) -> Result<Option<u64>, VcpuError> {
        let t = self
            .fd
            .translate_gva(gva)
            .map_err(self.kvm_err("KVM_TRANSLATE"))?;
        Ok((t.valid != 0).then_some(t.physical_address))
    }

    /// Serve one control message; returns the state to continue in.
    fn serve(&mut self, msg: VcpuMsg, state: RunState) -> RunState {
        let next = self.serve_one(msg, state);
        // Stop is final: a Pause or Resume queued behind it (the supervisor pausing the
        // machine as it ends while its owner stops the thread) is answered but does not
        // bring the thread back to wait for messages no one will send.
        if state == RunState::Stopped {
            RunState::Stopped
        } else {
            next
        }
    }

    fn serve_one(&mut self, msg: VcpuMsg, state: RunState) -> RunState {
        fault_point();
        let _span =
            tracing::debug_span!("msg", kind = crate::runtime::MessageKind::kind(&msg)).entered();
        match msg {
            VcpuMsg::Resume => match state {
                RunState::Faulted => RunState::Faulted,
                _ => RunState::Running,
            },
            VcpuMsg::Pause(reply) => {
                // We only get here after KVM_RUN returned EINTR (or while not running),
                // which KVM does after completing any half-done PIO/MMIO: safe to report
                // paused and to read or replace the state.
                reply.send(());
                match state {
                    RunState::Faulted => RunState::Faulted,
                    _ => RunState::Paused,
                }
            }
            VcpuMsg::Registers(reply) => {
                reply.send(self.read_registers());
                state
            }
            VcpuMsg::Lapic(reply) => {
                reply.send(self.fd.get_lapic().map_err(self.kvm_err("KVM_GET_LAPIC")));
                state
            }
            VcpuMsg::TranslateGva(gva, reply) => {
                reply.send(self.translate(gva));
                state
            }
            VcpuMsg::SetAffinity(cores, reply) => {
                reply.send(self.pin(cores));
                state
            }
            VcpuMsg::Reset(boot, reply) => {
                // The machine starts over: a pending "the guest ended the VM" is void.
                self.ctx.events.clear_ending();
                let r = self.load_boot_state(&boot);
                let ok = r.is_ok();
                reply.send(r);
                match state {
                    // A reset clears a fault: the machine starts over.
                    RunState::Faulted if ok => RunState::Paused,
                    s => s,
                }
            }
            VcpuMsg::Save(reply) => {
                reply.send(self.save_section(state));
                state
            }
            VcpuMsg::Restore(section, reply) => {
                let r = self.restore_section(state, &section);
                let ok = r.is_ok();
                reply.send(r);
                match state {
                    // A restored vCPU has a whole new state: the fault is gone with the old.
                    RunState::Faulted if ok => RunState::Paused,
                    s => s,
                }
            }
            VcpuMsg::Stop => RunState::Stopped,
        }
    }

    fn state_io(&self) -> StateIo<'_> {
        StateIo {
            fd: &self.fd,
            cpu: self.index(),
        }
    }

    fn save_section(&self, state: RunState) -> Result<devices::Section, VcpuError> {
        let cpu = self.index();
        if state == RunState::Running {
            return Err(VcpuError::NotPaused { cpu, what: "save" });
        }
        let s = self.state_io().save()?;
        devices::Section::new(&format!("vcpu{cpu}"), STATE_KIND, STATE_VERSION, &s)
            .map_err(|source| VcpuError::State { cpu, source })
    }

    fn restore_section(
        &self,
        state: RunState,
        section: &devices::Section,
    ) -> Result<(), VcpuError> {
        let cpu = self.index();
        if state == RunState::Running {
            return Err(VcpuError::NotPaused {
                cpu,
                what: "restore",
            });
        }
        let s: VcpuState = section
            .decode(STATE_KIND, STATE_VERSION)
            .map_err(|source| VcpuError::State { cpu, source })?;
        self.state_io().restore(&s)
    }

    fn run(&mut self) {
        let run_ptr: *mut kvm_bindings::kvm_run = self.fd.get_kvm_run();
        kick::set_thread_run(run_ptr);
        let mut state = RunState::Paused;
        loop {
            match state {
                RunState::Stopped => break,
                RunState::Paused | RunState::Faulted => match self.rx.recv() {
                    Ok(msg) => state = self.serve(msg, state),
                    Err(_) => break,
                },
                RunState::Running => state = self.run_once(),
            }
        }
        kick::set_thread_run(std::ptr::null_mut());
    }

    fn drain_mailbox(&mut self, mut state: RunState) -> RunState {
        fault_point();
        loop {
            match self.rx.try_recv() {
                Ok(msg) => state = self.serve(msg, state),
                Err(TryRecvError::Empty) => return state,
                Err(TryRecvError::Disconnected) => return RunState::Stopped,
            }
        }
    }

    fn run_once(&mut self) -> RunState {
        let buses = Buses {
            pio: &self.ctx.pio,
            mmio: &self.ctx.mmio,
        };
        let result = self.fd.run();
        if let Some(c) = &self.ctx.coalesced {
            c.drain();
        }
        let outcome = match result {
            Ok(exit) => handle_exit(exit, &buses, &self.shared.counters),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                return self.drain_mailbox(RunState::Running);
            }
            Err(e) => ExitOutcome::Unexpected(format!("KVM_RUN failed: {e}")),
        };
        match outcome {
            // The guest asked for the VM to end during this exit: do not re-enter.
            ExitOutcome::Continue if self.ctx.events.ending() => RunState::Paused,
            ExitOutcome::Continue => RunState::Running,
            ExitOutcome::TripleFault => {
                tracing::warn!(cpu = self.index(), "triple fault: resetting");
                self.ctx
                    .events
                    .post(VmEvent::TripleFault { cpu: self.index() });
                // Wait for the supervisor's reset (it pauses, then resets us).
                RunState::Paused
            }
            ExitOutcome::SystemEvent(kind) => {
                let ev = match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => devices::SystemEvent::ResetRequested,
                    _ => devices::SystemEvent::PowerOffRequested,
                };
                self.ctx.events.post(VmEvent::System(ev));
                RunState::Paused
            }
            ExitOutcome::InternalError => {
                let report = self.internal_error_report();
                self.fault(report)
            }
            ExitOutcome::FailEntry(reason) => {
                let report = format!(
                    "KVM: entry failed, hardware error 0x{reason:x}\n{}",
                    self.state_report()
                );
                self.fault(report)
            }
            ExitOutcome::Unexpected(what) => {
                let report = format!("KVM: unexpected exit: {what}\n{}", self.state_report());
                self.fault(report)
            }
        }
    }

    fn fault(&mut self, report: String) -> RunState {
        {
            use std::io::Write as _;
            let _ = std::io::stderr().write_all(report.as_bytes());
        }
        self.ctx.events.post(VmEvent::VcpuFault {
            cpu: self.index(),
            report,
        });
        RunState::Faulted
    }

    /// QEMU's `kvm_handle_internal_error` text followed by the register dump with code.
    fn internal_error_report(&mut self) -> String {
        use std::fmt::Write;
        let run = self.fd.get_kvm_run();
        // SAFETY: exit_reason was KVM_EXIT_INTERNAL_ERROR, so `internal` is the active union
        // member; we copy plain integers out of it.
        let (suberror, data) = unsafe {
            let i = &run.__bindgen_anon_1.internal;
            let n = (i.ndata as usize).min(i.data.len());
            (i.suberror, i.data[..n].to_vec())
        };
        let mut s = format!("KVM internal error. Suberror: {suberror}\n");
        for (i, d) in data.iter().enumerate() {
            let _ = writeln!(s, "extra data[{i}]: 0x{d:016x}");
        }
        if suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION {
            s.push_str("emulation failure\n");
        }
        s.push_str(&self.state_report());
        s
    }

    /// Registers and the code bytes around the instruction pointer.
    fn state_report(&self) -> String {
        const BACKWARD: u64 = 20;
        const TOTAL: u64 = 50;
        let Ok(regs) = self.read_registers() else {
            return "(registers unavailable)\n".into();
        };
        let mut s = regs.dump(false);
        let pc = regs.pc_linear();
        let byte = |lin: u64| -> Option<u8> {
            let phys = self.translate(lin).ok().flatten()?;
            self.ctx.mem.read_obj::<u8>(GuestAddress(phys)).ok()
        };
        let start = pc.saturating_sub(BACKWARD);
        let before: Vec<Option<u8>> = (start..pc).map(byte).collect();
        let from: Vec<Option<u8>> = (pc..pc + (TOTAL - BACKWARD)).map(byte).collect();
        s.push_str(&code_line(&before, &from));
        s.push('\n');
        s
    }
}

/// Pin the calling thread to `cores` (empty: every core the process may use).
fn set_affinity(cores: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let all = allowed_cores()?;
    let wanted: Vec<usize> = if cores.is_empty() {
        all
    } else {
        cores.to_vec()
    };
    for &c in &wanted {
        if c >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: c is below CPU_SETSIZE, checked above.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: pid 0 means the calling thread; `set` is a valid cpu_set_t.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Host cores this process may run on.
pub fn allowed_cores() -> std::io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 = calling thread; the buffer is a valid cpu_set_t of the given size.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: i is below CPU_SETSIZE.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect())
}
