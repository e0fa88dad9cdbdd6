//! Saving and restoring KVM state on real VMs built the way `machine::build` builds them
//! (`KvmVm::create`, PC RAM, troupe's CPUID, the power-on template, `spawn_vcpu`). These
//! need /dev/kvm and fail when it is missing.
//!
//! The guest is a real-mode loop at 0x1000 that counts in AX and writes each value to an
//! I/O port, so the test sees where the guest is through its port writes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actors::bus::{Bus, BusHandler};
use actors::events::event_channel;
use actors::kvm_state::{
    restore_vm_state, save_vm_state, ClockState, CLOCK_KIND, IOAPIC_KIND, PIT_KIND, VERSION,
};
use actors::vcpu::{
    spawn_vcpu,
    state::{read_msrs, KIND as VCPU_KIND, MSR_IA32_TSC, VERSION as VCPU_VERSION},
    MsrValue, VcpuBootState, VcpuContext, VcpuError, VcpuHandle, VcpuState,
};
use devices::{Section, StateError};
use kvm_bindings::{kvm_irqchip, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER};
use vm_memory::{Bytes, GuestAddress};

use super::cpuid;
use super::kvm::KvmVm;
use super::memory::{self, RamLayout};
use super::regs::VcpuTemplate;
use super::topology::Topology;
use crate::config::{CpuConfig, SmpConfig};
use devices::memory::GuestMemoryMmap;

const PORT: u16 = 0x1234;
const CODE: u64 = 0x1000;
/// `mov dx, 0x1234` / `loop: inc ax` / `out dx, ax` / `jmp loop`.
const PROGRAM: [u8; 7] = [0xba, 0x34, 0x12, 0x40, 0xef, 0xeb, 0xfc];
/// RIP between the `inc` and the `out`: the next write is AX itself, not AX + 1.
const RIP_BEFORE_OUT: u64 = CODE + 4;

fn require_kvm() {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "these tests run real VMs: /dev/kvm is missing"
    );
}

/// Every value the guest wrote to [`PORT`].
#[derive(Default)]
struct PortLog(Mutex<Vec<u16>>);

impl BusHandler for PortLog {
    fn read(&self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write(&self, _base: u64, _offset: u64, data: &[u8]) {
        let v = match data {
            [lo, hi] => u16::from_le_bytes([*lo, *hi]),
            [b] => u16::from(*b),
            _ => 0xffff,
        };
        self.0.lock().unwrap().push(v);
    }
}

impl PortLog {
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn take(&self) -> Vec<u16> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
    fn last(&self) -> Option<u16> {
        self.0.lock().unwrap().last().copied()
    }
}

/// A one-vCPU PC-style VM running [`PROGRAM`] (paused until resumed).
struct CounterVm {
    _kvm: KvmVm,
    vcpu: VcpuHandle,
    log: Arc<PortLog>,
    _mem: GuestMemoryMmap,
}

impl CounterVm {
    fn new() -> Self {
        Self::with(|_| {})
    }

    /// A VM whose vCPU starts from the power-on state changed by `setup`.
    fn with(setup: impl FnOnce(&mut VcpuBootState)) -> Self {
        require_kvm();
        let kvm = KvmVm::create().expect("KVM VM");
        let mem =
            memory::allocate(&RamLayout::pc(16 << 20), &Default::default()).expect("guest RAM");
        memory::register(&kvm, &mem).expect("RAM slots");
        mem.write_slice(&PROGRAM, GuestAddress(CODE)).unwrap();

        let smp = SmpConfig {
            cpus: 1,
            sockets: 1,
            cores: 1,
            threads: 1,
            maxcpus: 1,
        };
        let topo = Topology::from_smp(&smp);
        let cpu = CpuConfig::model("qemu64");
        let fd = kvm.create_vcpu(topo.apic_id(0)).expect("vCPU");
        let host = cpuid::HostCpu::read(&kvm.kvm).expect("host CPUID");
        let table = cpuid::resolve(&cpu, &host)
            .expect("qemu64")
            .table(&topo, 0, None)
            .expect("CPUID");
        fd.set_cpuid2(&table).expect("KVM_SET_CPUID2");
        let mut boot = VcpuTemplate::capture(&fd).expect("template").power_on(true);
        boot.regs.rip = CODE;
        boot.sregs.cs.selector = 0;
        boot.sregs.cs.base = 0;
        setup(&mut boot);

        let log = Arc::new(PortLog::default());
        let pio = Arc::new(Bus::new("pio"));
        pio.insert(u64::from(PORT), 2, "counter", log.clone())
            .unwrap();
        let (events, _) = event_channel();
        let ctx = VcpuContext {
            pio,
            mmio: Arc::new(Bus::new("mmio")),
            mem: mem.clone(),
            events,
            coalesced: None,
            debug_threads: false,
        };
        let vcpu = spawn_vcpu(
            fd,
            0,
            topo.apic_id(0),
            None,
            boot,
            ctx,
            &actors::runtime::Registry::new(),
        )
        .expect("vCPU thread");
        Self {
            _kvm: kvm,
            vcpu,
            log,
            _mem: mem,
        }
    }

    /// Resume, wait for `writes` more port writes, pause.
    async fn run_for(&self, writes: usize) {
        let target = self.log.len() + writes;
        self.vcpu.resume().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.log.len() < target {
            assert!(
                Instant::now() < deadline,
                "the guest made only {} of {target} port writes in 60 s",
                self.log.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.vcpu.pause().await.unwrap();
    }
}

impl Drop for CounterVm {
    fn drop(&mut self) {
        self.vcpu.stop_and_join();
    }
}

fn decode(section: &Section) -> VcpuState {
    section
        .decode(VCPU_KIND, VCPU_VERSION)
        .expect("a vCPU section")
}

fn through_bytes(section: &Section) -> Section {
    let bytes = serde_json::to_vec(section).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn restored_vcpu_continues_counting_from_the_saved_value() {
    let vm = CounterVm::new();
    vm.run_for(50).await;
    let last_before_save = vm.log.last().unwrap();
    let section = through_bytes(&vm.vcpu.save().await.unwrap());
    assert_eq!(section.id, "vcpu0");
    assert_eq!(section.kind, "vcpu");
    let saved = decode(&section);
    let ax = saved.regs.rax as u16;
    // The saved registers are where the guest stopped: AX is the last value written,
    // or one more if the vCPU stopped between the `inc` and the `out`.
    let next = if saved.regs.rip == RIP_BEFORE_OUT {
        assert_eq!(ax, last_before_save.wrapping_add(1));
        ax
    } else {
        assert_eq!(ax, last_before_save, "rip {:#x}", saved.regs.rip);
        ax.wrapping_add(1)
    };

    // Let it run on well past the saved point, then go back.
    vm.run_for(200).await;
    let ran_to = vm.log.last().unwrap();
    assert!(
        ran_to.wrapping_sub(next) >= 150,
        "ran to {ran_to}, saved {next}"
    );
    vm.log.take();
    vm.vcpu.restore(section.clone()).await.unwrap();
    vm.run_for(20).await;
    let after = vm.log.take();
    let expected: Vec<u16> = (0..after.len() as u16)
        .map(|i| next.wrapping_add(i))
        .collect();
    assert_eq!(after, expected, "the guest did not continue from {next}");

    // Save and restore are refused while the vCPU runs.
    vm.vcpu.resume().unwrap();
    let err = vm.vcpu.save().await.expect_err("save while running");
    assert!(matches!(err, VcpuError::NotPaused { cpu: 0, .. }), "{err}");
    let err = vm
        .vcpu
        .restore(section)
        .await
        .expect_err("restore while running");
    assert!(matches!(err, VcpuError::NotPaused { cpu: 0, .. }), "{err}");
    vm.vcpu.pause().await.unwrap();
}

/// `a` and `b` hold the same state, field by field, except the TSC (it counts on while
/// the vCPU is paused).
fn assert_same_state(a: &VcpuState, b: &VcpuState) {
    let msrs = |s: &VcpuState| -> Vec<(u32, u64)> {
        s.msrs
            .iter()
            .filter(|m| m.index != MSR_IA32_TSC)
            .map(|m| (m.index, m.value))
            .collect()
    };
    assert_eq!(msrs(a), msrs(b), "MSRs differ");
    let (serde_json::Value::Object(a), serde_json::Value::Object(b)) = (
        serde_json::to_value(a).unwrap(),
        serde_json::to_value(b).unwrap(),
    ) else {
        panic!("a vCPU state is a JSON object");
    };
    for (field, value) in a.iter().filter(|(k, _)| *k != "msrs") {
        assert_eq!(Some(value), b.get(field), "field {field} differs");
    }
}

/// MSRs given values a fresh vCPU does not have: LSTAR, KERNEL_GS_BASE, SYSENTER_EIP, PAT
/// (entry 0 write-combining), the first fixed-range MTRR (write-back).
const DISTINCT_MSRS: [(u32, u64); 5] = [
    (0xc000_0082, 0xffff_ffff_8100_0000),
    (0xc000_0102, 0xffff_8880_0000_1000),
    (0x176, 0xffff_ffff_8100_2000),
    (0x277, 0x0007_0406_0007_0401),
    (0x250, 0x0606_0606_0606_0606),
];
const APIC_TPR: usize = 0x80;

fn lapic_tpr(s: &VcpuState) -> u8 {
    s.lapic.regs[APIC_TPR] as u8
}

#[tokio::test]
async fn a_fresh_vcpu_restored_from_a_section_saves_the_same_state() {
    let a = CounterVm::with(|boot| {
        boot.msrs.extend(DISTINCT_MSRS);
        // CR8 is the APIC's task priority (KVM_SET_SREGS writes it after the LAPIC).
        boot.sregs.cr8 = 2;
    });
    a.run_for(30).await;
    let section = through_bytes(&a.vcpu.save().await.unwrap());
    let mut saved = decode(&section);
    // XMM0 as a program would leave it: in the XSAVE area (standard format: XMM0 at byte
    // 160, XSTATE_BV at 512, SSE is bit 1) and so in what KVM_GET_FPU reports.
    let xsave = saved.xsave.as_mut().expect("this host has XSAVE");
    xsave[40..44].fill(0xabab_abab);
    xsave[128] |= 1 << 1;
    saved.fpu.xmm[0] = [0xab; 16];
    let section = Section::new(&section.id, VCPU_KIND, VCPU_VERSION, &saved).unwrap();
    for (index, name) in [
        (MSR_IA32_TSC, "TSC"),
        (0x1b, "APIC base"),
        (0x277, "PAT"),
        (0xc000_0080, "EFER"),
        (0xc000_0082, "LSTAR"),
        (0x174, "SYSENTER_CS"),
        (0x4b56_4d01, "kvmclock system time"),
    ] {
        assert!(
            saved.msr(index).is_some(),
            "MSR {name} ({index:#x}) not saved"
        );
    }

    // Another VM, its vCPU fresh from power-on (never run).
    let b = CounterVm::new();
    let fresh = decode(&b.vcpu.save().await.unwrap());
    for (index, value) in DISTINCT_MSRS {
        assert_eq!(saved.msr(index), Some(value), "MSR {index:#x} saved");
        assert_ne!(fresh.msr(index), Some(value), "MSR {index:#x} fresh");
    }
    assert_eq!(saved.fpu.xmm[0], [0xab; 16]);
    assert_ne!(fresh.fpu.xmm[0], [0xab; 16]);
    assert_eq!((lapic_tpr(&saved), lapic_tpr(&fresh)), (0x20, 0));
    b.vcpu.restore(section.clone()).await.unwrap();
    let again = decode(&b.vcpu.save().await.unwrap());
    assert_same_state(&again, &saved);
    let (t0, t1) = (
        saved.msr(MSR_IA32_TSC).unwrap(),
        again.msr(MSR_IA32_TSC).unwrap(),
    );
    // The TSC restarts from the saved value; it has only run for the time the test took.
    assert!(t1 >= t0, "TSC went back: {t1} < {t0}");
    assert!(t1 - t0 < 50_000_000_000, "TSC jumped from {t0} to {t1}");

    // And b now runs a's program from where a stopped.
    b.run_for(5).await;
    let ax = saved.regs.rax as u16;
    let first = b.log.take()[0];
    assert!(
        first == ax || first == ax.wrapping_add(1),
        "{first} after {ax}"
    );

    // Sections of another kind or version are refused, naming the problem.
    let mut other = section.clone();
    other.kind = "serial".into();
    let err = b.vcpu.restore(other).await.expect_err("another kind");
    assert!(
        matches!(
            &err,
            VcpuError::State {
                source: StateError::Kind { .. },
                ..
            }
        ),
        "{err}"
    );
    let mut newer = section;
    newer.version = VCPU_VERSION + 1;
    let err = b.vcpu.restore(newer).await.expect_err("another version");
    assert!(
        matches!(
            &err,
            VcpuError::State {
                source: StateError::Version { .. },
                ..
            }
        ),
        "{err}"
    );

    // An MSR this host's KVM does not have is refused, not dropped.
    let mut bogus = saved.clone();
    bogus.msrs.push(MsrValue {
        index: NO_SUCH_MSR,
        value: 1,
    });
    let section = Section::new("vcpu0", VCPU_KIND, VCPU_VERSION, &bogus).unwrap();
    let err = b.vcpu.restore(section).await.expect_err("an unknown MSR");
    assert_eq!(
        err.to_string(),
        "vCPU 0: KVM_SET_MSRS refused MSR 0xdeadbeef = 0x1"
    );
}

/// An MSR index no x86 CPU has.
const NO_SUCH_MSR: u32 = 0xdead_beef;

#[test]
fn msrs_kvm_refuses_are_left_out_and_the_rest_still_read() {
    require_kvm();
    let kvm = KvmVm::create().expect("KVM VM");
    let fd = kvm.create_vcpu(0).expect("vCPU");
    let (values, refused) =
        read_msrs(&fd, 0, &[0x1b, NO_SUCH_MSR, 0x277, NO_SUCH_MSR + 1]).unwrap();
    let read: Vec<u32> = values.iter().map(|m| m.index).collect();
    assert_eq!(read, [0x1b, 0x277]);
    assert_eq!(refused, [NO_SUCH_MSR, NO_SUCH_MSR + 1]);
    // PAT's power-on value (SDM vol. 3 §11.12.4).
    assert_eq!(values[1].value, 0x0007_0406_0007_0406);
}

fn chip(kvm: &KvmVm, chip_id: u32) -> kvm_irqchip {
    let mut c = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    kvm.vm.get_irqchip(&mut c).unwrap();
    c
}

/// Program PIT channel 0, IOAPIC pin 5 and the master PIC's mask.
fn program(kvm: &KvmVm, count: u32, mode: u8, redir: u64, imr: u8) {
    let mut pit = kvm.vm.get_pit2().unwrap();
    pit.channels[0].count = count;
    pit.channels[0].mode = mode;
    pit.channels[0].rw_mode = 3;
    pit.channels[0].gate = 1;
    kvm.vm.set_pit2(&pit).unwrap();
    let mut io = chip(kvm, KVM_IRQCHIP_IOAPIC);
    // SAFETY: chip 2 is the IOAPIC, so `ioapic` is the union member KVM filled in.
    unsafe { io.chip.ioapic.redirtbl[5].bits = redir };
    kvm.vm.set_irqchip(&io).unwrap();
    let mut pic = chip(kvm, KVM_IRQCHIP_PIC_MASTER);
    // Chip 0 is the master PIC: `pic` is the union member KVM filled in.
    pic.chip.pic.imr = imr;
    kvm.vm.set_irqchip(&pic).unwrap();
}

/// (count, mode, IOAPIC pin 5, PIC mask) as KVM reports them.
fn programmed(kvm: &KvmVm) -> (u32, u8, u64, u8) {
    let pit = kvm.vm.get_pit2().unwrap();
    let io = chip(kvm, KVM_IRQCHIP_IOAPIC);
    let pic = chip(kvm, KVM_IRQCHIP_PIC_MASTER);
    // SAFETY: chips 2 and 0 are the IOAPIC and master PIC, the members read here.
    let (redir, imr) = unsafe { (io.chip.ioapic.redirtbl[5].bits, pic.chip.pic.imr) };
    (pit.channels[0].count, pit.channels[0].mode, redir, imr)
}

#[test]
fn vm_state_brings_back_the_pit_ioapic_and_pic() {
    require_kvm();
    let kvm = KvmVm::create().expect("KVM VM");
    // Masked, level-triggered vector 0x35 to APIC 0.
    let redir = (1 << 16) | (1 << 15) | 0x35;
    program(&kvm, 0x1234, 2, redir, 0xfb);
    let saved_as = programmed(&kvm);
    assert_eq!(saved_as, (0x1234, 2, redir, 0xfb));
    let sections: Vec<Section> = save_vm_state(&kvm.vm)
        .unwrap()
        .iter()
        .map(through_bytes)
        .collect();
    let kinds: Vec<&str> = sections.iter().map(|s| s.kind.as_str()).collect();
    assert_eq!(kinds, ["kvm-pic", "kvm-ioapic", "kvm-pit", "kvm-clock"]);

    program(&kvm, 0x4321, 3, (1 << 16) | 0x77, 0xff);
    assert_ne!(programmed(&kvm), saved_as);
    restore_vm_state(&kvm.vm, &sections).unwrap();
    assert_eq!(programmed(&kvm), saved_as);

    // Incomplete or foreign state is refused before anything is written.
    program(&kvm, 0x4321, 3, (1 << 16) | 0x77, 0xff);
    let without_pit: Vec<Section> = sections
        .iter()
        .filter(|s| s.kind != PIT_KIND)
        .cloned()
        .collect();
    let err = restore_vm_state(&kvm.vm, &without_pit).unwrap_err();
    assert_eq!(err.to_string(), "the VM state has no 'kvm-pit' section");
    let mut foreign = sections.clone();
    foreign.push(Section::new("serial0", "serial", 1, &0u8).unwrap());
    let err = restore_vm_state(&kvm.vm, &foreign).unwrap_err();
    assert!(err.to_string().contains("'serial0' (serial)"), "{err}");
    let mut newer = sections.clone();
    for s in newer.iter_mut().filter(|s| s.kind == IOAPIC_KIND) {
        s.version = VERSION + 1;
    }
    let err = restore_vm_state(&kvm.vm, &newer).unwrap_err();
    assert!(err.to_string().contains("version 2"), "{err}");
    assert_eq!(programmed(&kvm), (0x4321, 3, (1 << 16) | 0x77, 0xff));
}

#[test]
fn restored_kvmclock_continues_from_the_saved_time() {
    require_kvm();
    let kvm = KvmVm::create().expect("KVM VM");
    let sections = save_vm_state(&kvm.vm).unwrap();
    let clock: ClockState = sections
        .iter()
        .find(|s| s.kind == CLOCK_KIND)
        .unwrap()
        .decode(CLOCK_KIND, VERSION)
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let before = kvm.vm.get_clock().unwrap().clock;
    assert!(
        before >= clock.clock + 1_000_000_000,
        "kvmclock did not run for the second slept: {} -> {before}",
        clock.clock
    );
    restore_vm_state(&kvm.vm, &sections).unwrap();
    let after = kvm.vm.get_clock().unwrap().clock;
    assert!(
        after >= clock.clock && after - clock.clock < 100_000_000,
        "after restore kvmclock is {after}, saved {}",
        clock.clock
    );
}
