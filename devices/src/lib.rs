//! troupe's device models.
//!
//! Every model here is a plain state machine: it owns guest-visible registers, takes a
//! register access (`BusDevice`) or a typed request, and reports what happened through the
//! small traits in this file (an interrupt line, a byte sink, a system event). No KVM, no
//! tokio, no threads, no file descriptors: the `actors` crate hosts each model, and tests
//! drive them with the fakes in [`testing`].
//!
//! Data path: vCPU exit -> `actors::bus` -> `BusDevice::read/write` on the vCPU thread ->
//! the model updates its state, sets its `IrqLine`, posts output to its `ByteSink`. Models
//! on the hot exit path instead record what they want done as [`Effects`] (line levels,
//! bytes to post), which their host takes before it unlocks the model and carries out
//! after (STYLE.md, "The vCPU and the exit path").

pub mod acpi_pm;
pub mod block;
pub mod cpu_hotplug;
pub mod e1000;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod fw_cfg;
pub mod i8042;
pub mod ide;
pub mod mem_hotplug;
pub mod memory;
pub mod pci;
pub mod reset;
pub mod rtc;
pub mod serial;
pub mod state;
pub mod terminal;
pub mod textgrid;
pub mod usb;
pub mod vga;
pub mod virtio;

use std::sync::Arc;

pub use state::{check_roundtrip, restore_section, save_section, Section, Snapshot, StateError};

/// A device that answers guest port or memory accesses in the range it was mapped at.
///
/// `offset` is relative to the base of the range the device was registered with; `data`
/// is 1, 2, 4 or 8 bytes, little-endian, exactly as the guest accessed it.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// An interrupt line into the platform's interrupt controller (an ISA IRQ, a PCI INTx pin
/// after routing, or an MSI vector). Implemented in `actors` over KVM; faked in tests.
pub trait IrqLine: Send + Sync {
    /// Drive a level-triggered line.
    fn set_level(&self, high: bool);
    /// Deliver one edge (raise, then lower).
    fn pulse(&self) {
        self.set_level(true);
        self.set_level(false);
    }
}

/// Things a device asks of the whole machine. They go to the supervisor as events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemEvent {
    /// The guest asked for a platform reset (0xCF9, i8042 0xFE, ACPI reset register).
    ResetRequested,
    /// The guest entered S5 (ACPI soft-off) or otherwise asked to power off.
    PowerOffRequested,
    /// The guest wrote `value` to `isa-debug-exit`: the process exits with `(value << 1) | 1`.
    DebugExit(u32),
}

/// Where a device posts [`SystemEvent`]s. Must not block.
pub trait SystemEvents: Send + Sync {
    fn post(&self, event: SystemEvent);
}

/// Where a device posts bytes it emits (a UART's transmit side). Must not block: when
/// the backend is slow the implementation drops or buffers, it never stalls a vCPU.
pub trait ByteSink: Send {
    fn write_bytes(&mut self, data: &[u8]);
}

/// The most lines one model drives through [`Effects`].
pub const MAX_EFFECT_LINES: usize = 2;

/// What a model asks of the world outside it, recorded while its host holds its lock and
/// carried out by the host once the lock is released: no interrupt controller call and
/// no output is made under a model's lock, and a model needs no handle to either.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Effects {
    /// The level each of the model's lines (by index) was last set to, if it changed.
    pub lines: [Option<bool>; MAX_EFFECT_LINES],
    /// Bytes for the model's output, in order.
    pub output: Vec<u8>,
}

impl Effects {
    /// Line `i` is now `high`.
    pub fn set_line(&mut self, i: usize, high: bool) {
        if let Some(l) = self.lines.get_mut(i) {
            *l = Some(high);
        }
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.lines.iter().all(Option::is_none) && self.output.is_empty()
    }

    /// Carry them out: line `i` on `lines[i]`, output to `out`.
    pub fn apply(self, lines: &[&dyn IrqLine], out: Option<&mut dyn ByteSink>) {
        for (level, line) in self.lines.iter().zip(lines) {
            if let Some(high) = level {
                line.set_level(*high);
            }
        }
        if let Some(out) = out {
            if !self.output.is_empty() {
                out.write_bytes(&self.output);
            }
        }
    }
}

/// A model that records [`Effects`]: its host takes them after every call into the model,
/// before it releases the model's lock.
pub trait Effectful {
    /// What the calls since the last take asked for (and forget it).
    fn take_effects(&mut self) -> Effects;
}

/// Shared handle types used when wiring models.
pub type SharedIrq = Arc<dyn IrqLine>;
pub type SharedEvents = Arc<dyn SystemEvents>;

/// Fakes for unit tests of models (and of hosts in `actors`).
pub mod testing {
    use super::*;
    use std::sync::Mutex;

    /// An interrupt line that records its level and every edge.
    #[derive(Default)]
    pub struct FakeIrq {
        pub level: std::sync::atomic::AtomicBool,
        pub raised: std::sync::atomic::AtomicUsize,
    }

    impl IrqLine for FakeIrq {
        fn set_level(&self, high: bool) {
            use std::sync::atomic::Ordering::SeqCst;
            if high && !self.level.swap(true, SeqCst) {
                self.raised.fetch_add(1, SeqCst);
            } else if !high {
                self.level.store(false, SeqCst);
            }
        }
    }

    impl FakeIrq {
        pub fn is_high(&self) -> bool {
            self.level.load(std::sync::atomic::Ordering::SeqCst)
        }
        pub fn edges(&self) -> usize {
            self.raised.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// Records system events.
    #[derive(Default)]
    pub struct FakeEvents(pub Mutex<Vec<SystemEvent>>);

    impl SystemEvents for FakeEvents {
        fn post(&self, event: SystemEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    impl FakeEvents {
        pub fn taken(&self) -> Vec<SystemEvent> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    /// Collects bytes written to it; clones share the buffer.
    #[derive(Default, Clone)]
    pub struct FakeSink(pub Arc<Mutex<Vec<u8>>>);

    impl ByteSink for FakeSink {
        fn write_bytes(&mut self, data: &[u8]) {
            self.0.lock().unwrap().extend_from_slice(data);
        }
    }

    impl FakeSink {
        pub fn contents(&self) -> Vec<u8> {
            self.0.lock().unwrap().clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sections are matched to models by kind: two models sharing one would take each
    /// other's state. Every model with a `Snapshot` is listed here.
    #[test]
    fn every_model_has_its_own_kind() {
        let kinds = [
            <acpi_pm::AcpiPm as Snapshot>::KIND,
            <e1000::E1000 as Snapshot>::KIND,
            <fw_cfg::FwCfg as Snapshot>::KIND,
            <i8042::I8042 as Snapshot>::KIND,
            <ide::Ide as Snapshot>::KIND,
            <mem_hotplug::MemHotplug as Snapshot>::KIND,
            <pci::ConfigSpace as Snapshot>::KIND,
            <pci::PciHost as Snapshot>::KIND,
            <pci::PlainFunction as Snapshot>::KIND,
            <pci::i440fx::I440fx as Snapshot>::KIND,
            <pci::piix::Piix3Isa as Snapshot>::KIND,
            <pci::piix::Piix4Pm as Snapshot>::KIND,
            <reset::ResetControl as Snapshot>::KIND,
            <reset::Port92 as Snapshot>::KIND,
            <rtc::Rtc as Snapshot>::KIND,
            <serial::Serial as Snapshot>::KIND,
            <vga::Vga as Snapshot>::KIND,
            <virtio::pci::VirtioPci as Snapshot>::KIND,
            <virtio::blk::Blk as Snapshot>::KIND,
            <virtio::console::Console as Snapshot>::KIND,
            <virtio::input::Tablet as Snapshot>::KIND,
            <virtio::net::Net as Snapshot>::KIND,
            <virtio::rng::Rng as Snapshot>::KIND,
            <usb::uhci::Uhci as Snapshot>::KIND,
        ];
        let mut seen = std::collections::BTreeSet::new();
        for k in kinds {
            assert!(seen.insert(k), "two models save under kind {k:?}");
        }
    }
}
