//! The PC platform's devices, wired to buses, interrupt lines, chardevs and the supervisor.
//!
//! TEMPORARY: the serial port here is a minimal transmit-only stand-in until the 16550
//! model lands in `devices`.

use std::sync::{Arc, Mutex};

use actors::bus::{Bus, BusHandler};
use actors::chardev::ChardevHandle;
use actors::events::EventTx;
use anyhow::Result;
use devices::{ByteSink, SystemEvent, SystemEvents};

use crate::config::{DeviceKind, VmConfig};
use crate::vm::kvm::KvmVm;

/// COM1..COM4: (port, IRQ).
pub const COM_PORTS: [(u16, u32); 4] = [(0x3f8, 4), (0x2f8, 3), (0x3e8, 4), (0x2e8, 3)];

struct StandInUart {
    sink: Mutex<Box<dyn ByteSink>>,
}

impl BusHandler for StandInUart {
    fn read(&self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(match offset {
            5 => 0x60,
            2 => 0x01,
            _ => 0,
        });
    }
    fn write(&self, _base: u64, offset: u64, data: &[u8]) {
        if offset == 0 {
            self.sink.lock().unwrap().write_bytes(&data[..1]);
        }
    }
}

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
pub struct DeviceSet {}

impl DeviceSet {
    pub fn build(
        cfg: &VmConfig,
        _kvm: &KvmVm,
        pio: &Arc<Bus>,
        _mmio: &Arc<Bus>,
        events: &EventTx,
        serials: &[ChardevHandle],
    ) -> Result<Self> {
        for (i, ch) in serials.iter().enumerate().take(4) {
            let (port, _irq) = COM_PORTS[i];
            pio.insert(
                u64::from(port),
                8,
                &format!("serial{i}"),
                Arc::new(StandInUart {
                    sink: Mutex::new(ch.sink()),
                }),
            )?;
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
        Ok(Self {})
    }

    pub fn reset(&self) {}

    pub fn power_button(&self) -> bool {
        false
    }
}
