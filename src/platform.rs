//! The PC platform's devices, wired to buses, interrupt lines, chardevs and the supervisor.

use std::sync::Arc;

use actors::bus::{lock, Bus, BusHandler};
use actors::chardev::{ChardevHandle, FrontendEvent};
use actors::events::EventTx;
use actors::host::serial::{start_serial, SerialPort};
use actors::irq::KvmIrqLine;
use actors::runtime::Registry;
use anyhow::Result;
use devices::serial::Serial;
use devices::{SystemEvent, SystemEvents};
use tokio::sync::mpsc;

use crate::config::{DeviceKind, VmConfig};
use crate::vm::kvm::KvmVm;

/// COM1..COM4: (port, IRQ).
pub const COM_PORTS: [(u16, u32); 4] = [(0x3f8, 4), (0x2f8, 3), (0x3e8, 4), (0x2e8, 3)];

struct DebugExit(EventTx);

impl BusHandler for DebugExit {
    fn read(&self, _b: u64, _o: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&self, _b: u64, _o: u64, data: &[u8]) {
        let mut v = [0u8; 4];
        v[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
        SystemEvents::post(&self.0, SystemEvent::DebugExit(u32::from_le_bytes(v)));
    }
}

struct Sink80;
impl BusHandler for Sink80 {
    fn read(&self, _b: u64, _o: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&self, _b: u64, _o: u64, _d: &[u8]) {}
}

/// Every platform device, kept for reset and power-button requests.
pub struct DeviceSet {
    serials: Vec<Arc<SerialPort>>,
}

impl DeviceSet {
    pub fn build(
        cfg: &VmConfig,
        kvm: &KvmVm,
        pio: &Arc<Bus>,
        _mmio: &Arc<Bus>,
        events: &EventTx,
        serials: Vec<(ChardevHandle, mpsc::Receiver<FrontendEvent>)>,
        rt: &tokio::runtime::Handle,
        registry: &Registry,
    ) -> Result<Self> {
        let mut ports = Vec::new();
        for (i, (ch, input)) in serials.into_iter().enumerate().take(4) {
            let (port, irq) = COM_PORTS[i];
            let model = Serial::new(KvmIrqLine::new(kvm.vm.clone(), irq), ch.sink());
            let host = start_serial(rt, registry, &format!("serial{i}"), model, input);
            pio.insert(u64::from(port), 8, &format!("serial{i}"), host.clone())?;
            ports.push(host);
        }
        pio.insert(0x80, 1, "ioport80", Arc::new(Sink80))?;
        for d in &cfg.devices {
            if let DeviceKind::IsaDebugExit { iobase, iosize } = d.kind {
                pio.insert(
                    u64::from(iobase),
                    u64::from(iosize),
                    "isa-debug-exit",
                    Arc::new(DebugExit(events.clone())),
                )?;
            }
        }
        Ok(Self { serials: ports })
    }

    /// Power-on state for every device (`system_reset`, guest reset).
    pub fn reset(&self) {
        for s in &self.serials {
            lock(s.model()).reset();
        }
    }

    pub fn power_button(&self) -> bool {
        false
    }
}
