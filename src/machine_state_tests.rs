//! Saving and restoring a whole running machine, built from a command line exactly as the
//! binary builds it (`cli::parse` → `machine::build` → the supervisor), running the
//! `virtio` test guest with `dev=rng count=0`: it sends virtio-rng requests one after the
//! other on the same queue and prints `vrng: request <i> got 64 bytes` for each, so its
//! serial output counts and the count depends on the device, the rings in guest RAM and
//! the worker's place in them all coming back together. These need /dev/kvm and fail
//! when it is missing.
//!
//! Guest RAM is not part of the machine's sections (a migration streams it on its own):
//! these tests copy it out of and back into the guest memory object themselves.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use actors::runtime::Registry;
use devices::memory::GuestMemoryMmap;
use devices::Section;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use std::sync::Arc;

use actors::chardev::ChardevHandle;
use actors::supervisor::SupervisorHandle;
use actors::vcpu::VcpuHandle;

use crate::machine::{self, Console, Vm};
use crate::vm::kvm::KvmVm;

const GUEST: &str = concat!(env!("TROUPE_GUEST_DIR"), "/virtio.elf");
/// Requests without end (the test quits the VM).
const APPEND: &str = "dev=rng count=0";

fn require_kvm() {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    assert!(ok, "/dev/kvm is not usable: these tests run real VMs");
}

/// A VM running the guest with COM1 into a file, the RTC, and a virtio-rng device.
struct Running {
    handle: SupervisorHandle,
    vcpus: Vec<VcpuHandle>,
    chardevs: Vec<ChardevHandle>,
    mem: GuestMemoryMmap,
    /// The rest of the machine, held until the end.
    _vm: (Arc<KvmVm>, Console),
    rt: tokio::runtime::Runtime,
    serial: PathBuf,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Running {
    fn start(name: &str, extra: &[&str]) -> Self {
        require_kvm();
        assert!(
            Path::new(GUEST).exists(),
            "test guest {GUEST} was not built"
        );
        let dir = std::env::temp_dir().join(format!("troupe-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let serial = dir.join("com1");
        let mut args: Vec<String> = [
            "-nodefaults",
            "-display",
            "none",
            "-m",
            "64",
            "-serial",
            &format!("file:{}", serial.display()),
            "-device",
            "virtio-rng-pci",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-kernel",
            GUEST,
            "-append",
            APPEND,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let cfg = match crate::cli::parse(&args).expect("the command line parses") {
            crate::cli::Invocation::Run(cfg) => cfg,
            crate::cli::Invocation::Print(t) => panic!("not a VM: {t}"),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let Vm {
            supervisor,
            chardevs,
            handle,
            vcpus,
            kvm,
            console,
            mem,
            ..
        } = machine::build(&cfg, None, &rt, &Registry::new()).expect("the VM builds");
        // The supervisor runs as in the binary; the test talks to it through its handle.
        rt.spawn(supervisor.run());
        Self {
            handle,
            vcpus,
            chardevs,
            mem,
            _vm: (kvm, console),
            rt,
            serial,
            _dir: TempDir(dir),
        }
    }

    fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Everything COM1 has written so far.
    fn output(&self) -> String {
        self.rt.block_on(async {
            for c in &self.chardevs {
                c.flush().await;
            }
        });
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Wait until the output past byte `from` holds `lines` more finished request lines.
    fn wait_for_requests(&self, from: usize, lines: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.output();
            let n = requests(out.get(from..).unwrap_or("")).len();
            if n >= lines {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "the guest printed {n} of {lines} request lines in 20 s; output:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&self) {
        self.rt.block_on(self.handle.stop()).unwrap().unwrap();
    }

    fn cont(&self) {
        self.rt.block_on(self.handle.cont()).unwrap().unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.rt.block_on(self.handle.quit());
        for v in &self.vcpus {
            v.stop_and_join();
        }
    }
}

/// A copy of guest RAM, region by region.
fn save_ram(mem: &GuestMemoryMmap) -> Vec<(GuestAddress, Vec<u8>)> {
    mem.iter()
        .map(|r| {
            let mut buf = vec![0u8; r.len() as usize];
            mem.read_slice(&mut buf, r.start_addr()).unwrap();
            (r.start_addr(), buf)
        })
        .collect()
}

fn restore_ram(mem: &GuestMemoryMmap, ram: &[(GuestAddress, Vec<u8>)]) {
    for (addr, bytes) in ram {
        mem.write_slice(bytes, *addr).unwrap();
    }
}

/// The sections as they would travel (a migration stream, a savevm file).
fn through_bytes(sections: &[Section]) -> Vec<Section> {
    serde_json::from_slice(&serde_json::to_vec(sections).unwrap()).unwrap()
}

/// The request numbers of every finished `vrng: request` line in `text` (a line still
/// being printed is left out), checking each is well formed.
fn requests(text: &str) -> Vec<u64> {
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| l.trim_end().strip_prefix("vrng: request "))
        .map(|rest| {
            let (i, what) = rest.split_once(' ').unwrap_or((rest, ""));
            assert_eq!(what, "got 64 bytes", "line {rest:?}");
            i.parse()
                .unwrap_or_else(|_| panic!("a torn request line: {rest:?}"))
        })
        .collect()
}

#[test]
fn a_restored_machine_continues_its_sequence_from_the_saved_point() {
    // Every kind of device the platform saves, not only those the guest drives.
    let vm = Running::start("save-restore", &["-vga", "std", "-device", "e1000"]);
    vm.wait_for_requests(0, 10);
    vm.stop();
    let at_save = vm.output();
    let ram = save_ram(vm.mem());
    let sections = through_bytes(&vm.rt.block_on(vm.handle.save_machine()).unwrap());
    let ids: Vec<&str> = sections.iter().map(|s| s.id.as_str()).collect();
    for want in [
        "pci/i440fx",
        "pci/rcr",
        "acpi-pm",
        "port92",
        "serial0",
        "rtc",
        "i8042",
        "fw_cfg",
        "ide",
        "vga",
        "vga/pci",
        "virtio-rng0",
        "virtio-rng0/queues",
        "e1000-0",
        "vcpu0",
        "ioapic",
        "kvmclock",
    ] {
        assert!(ids.contains(&want), "no section {want} in {ids:?}");
    }
    let saved_at = *requests(&at_save).last().unwrap();

    // Run on well past the saved point, then reset: the guest would start over.
    vm.cont();
    let ran_on = vm.wait_for_requests(at_save.len(), 20);
    vm.stop();
    vm.rt.block_on(vm.handle.reset()).unwrap().unwrap();
    assert_eq!(
        vm.rt.block_on(vm.handle.status()).unwrap(),
        actors::supervisor::RunState::Paused
    );
    let went_to = *requests(&ran_on).last().unwrap();
    assert!(went_to >= saved_at + 20, "{went_to} vs {saved_at}");

    restore_ram(vm.mem(), &ram);
    vm.rt
        .block_on(vm.handle.restore_machine(sections.clone()))
        .unwrap();
    // Every device is back where it was: saved again, it says what it said then (the
    // vCPUs' and KVM's clocks have moved on, so they are left out).
    let again = vm.rt.block_on(vm.handle.save_machine()).unwrap();
    let moving = ["pic", "ioapic", "pit", "kvmclock"];
    for s in sections
        .iter()
        .filter(|s| !s.id.starts_with("vcpu") && !moving.contains(&s.id.as_str()))
    {
        let now = again.iter().find(|a| a.id == s.id).unwrap();
        assert_eq!(now, s, "{} saves differently after its restore", s.id);
    }
    let before_cont = vm.output().len();
    vm.cont();
    let after = vm.wait_for_requests(before_cont, 20);

    // What COM1 printed up to the save, then what it printed after the restore: one
    // sequence from 1, with no gap, no repeat and no second start.
    let resumed = format!("{at_save}{}", &after[before_cont..]);
    let seq = requests(&resumed);
    assert!(seq.len() >= requests(&at_save).len() + 20);
    let expected: Vec<u64> = (1..=seq.len() as u64).collect();
    assert_eq!(
        seq, expected,
        "saved after request {saved_at}, ran to {went_to} before the reset; after the \
         restore:\n{resumed}"
    );
}

#[test]
fn a_section_from_another_version_or_a_missing_one_is_refused_by_name() {
    let vm = Running::start("save-refused", &["-S"]);
    let h = &vm.handle;
    let saved = vm.rt.block_on(h.save_machine()).unwrap();

    let mut newer = saved.clone();
    let serial = newer.iter_mut().find(|s| s.id == "serial0").unwrap();
    serial.version += 1;
    let e = vm.rt.block_on(h.restore_machine(newer)).unwrap_err();
    assert!(
        e.contains(
            "section 'serial0': serial state version 2 is not supported (this build reads 1)"
        ),
        "{e}"
    );

    let missing: Vec<Section> = saved
        .iter()
        .filter(|s| s.id != "virtio-rng0/queues")
        .cloned()
        .collect();
    let e = vm.rt.block_on(h.restore_machine(missing)).unwrap_err();
    assert!(
        e.contains("the saved state has no section 'virtio-rng0/queues'"),
        "{e}"
    );

    let mut foreign = saved.clone();
    let mut disk = foreign
        .iter()
        .find(|s| s.id == "virtio-rng0")
        .unwrap()
        .clone();
    disk.id = "virtio-blk0".into();
    foreign.push(disk);
    let e = vm.rt.block_on(h.restore_machine(foreign)).unwrap_err();
    assert!(
        e.contains("section 'virtio-blk0' (virtio-pci state) does not belong to this machine"),
        "{e}"
    );

    // Refused restores changed nothing: the machine starts and counts from the start.
    vm.rt.block_on(h.restore_machine(saved)).unwrap();
    vm.cont();
    let out = vm.wait_for_requests(0, 3);
    assert_eq!(requests(&out)[..3], [1, 2, 3], "{out}");
}

#[test]
fn a_stopped_vcpu_stays_stopped_when_a_pause_is_queued_behind_the_stop() {
    // The machine ending (the supervisor pausing it) while its owner stops the vCPUs: the
    // running thread finds Stop then Pause in one drain of its mailbox, and must end.
    let vm = Running::start("stop-final", &[]);
    vm.wait_for_requests(0, 1);
    let v = vm.vcpus[0].clone();
    v.post(actors::vcpu::VcpuMsg::Stop).unwrap();
    let (reply, _answer) = actors::runtime::reply_channel("test");
    let _ = v.post(actors::vcpu::VcpuMsg::Pause(reply));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        v.join();
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the vCPU thread ended after Stop");
}
