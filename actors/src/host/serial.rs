//! The serial host: a 16550 model on the PIO bus, its transmit side posted to a chardev,
//! and an actor feeding the chardev's input into the receive FIFO with backpressure (bytes
//! that do not fit wait until the guest reads some; nothing typed is lost).
//!
//! Data path out: vCPU `out` → [`SerialPort`] → `Serial` (locked) → its effects, carried
//! out unlocked (`host::effects`): the bytes to `ChardevSink::try_send`, the line's level.
//! Data path in: chardev → [`FrontendEvent::Input`] → serial actor → `Serial::enqueue_input`
//! (locked) → IRQ (unlocked); when the FIFO is full the actor parks until the vCPU path signals that
//! the guest read the receive buffer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::serial::Serial;
use devices::{BusDevice, ByteSink, IrqLine};
use tokio::sync::{mpsc, Notify};

use crate::bus::BusHandler;
use crate::chardev::FrontendEvent;
use crate::host::effects::{Hosted, Outlets};
use crate::runtime::{spawn_supervised, PauseGate, Placement, Registry, Restart};

/// The bus side of one UART.
pub struct SerialPort {
    model: Hosted<Serial>,
    /// The actor has input waiting for FIFO space.
    waiting: AtomicBool,
    space: Notify,
    /// Input reaches the model (and raises its line) only while the VM runs.
    gate: Arc<PauseGate>,
}

impl SerialPort {
    /// The model, for save and restore (see [`Self::flush`]).
    pub fn model(&self) -> &Arc<Mutex<Serial>> {
        self.model.model()
    }

    /// Drive the line as the model last set it (after a restore through [`Self::model`]).
    pub fn flush(&self) {
        self.model.flush();
    }

    /// Power-on reset of the UART (its line falls).
    pub fn reset(&self) {
        self.model.run(Serial::reset);
    }

    /// The gate the input feeder takes its steps through (closed while the VM is
    /// stopped).
    pub fn gate(&self) -> Arc<PauseGate> {
        self.gate.clone()
    }
}

impl BusHandler for SerialPort {
    fn read(&self, _base: u64, offset: u64, data: &mut [u8]) {
        self.model.run(|m| m.read(offset, data));
        // A read of the receive buffer may have made room for queued input.
        if offset == 0 && self.waiting.load(Ordering::Acquire) {
            self.space.notify_one();
        }
    }

    fn write(&self, _base: u64, offset: u64, data: &[u8]) {
        self.model.run(|m| m.write(offset, data));
        // FCR writes can clear (or enable) the FIFO: room may have appeared.
        if offset == 2 && self.waiting.load(Ordering::Acquire) {
            self.space.notify_one();
        }
    }
}

/// Put `model` on the bus side, its interrupt on `irq` and its output to `out`, and start
/// its input actor, fed by `input` (the chardev's front-end channel). Returns the bus
/// handler to map at the UART's ports.
pub fn start_serial(
    rt: &tokio::runtime::Handle,
    registry: &Registry,
    id: &str,
    (model, irq, out): (Serial, Arc<dyn IrqLine>, Box<dyn ByteSink>),
    input: mpsc::Receiver<FrontendEvent>,
) -> Arc<SerialPort> {
    let outlets = Outlets {
        lines: vec![irq],
        out: Some(out),
    };
    let port = Arc::new(SerialPort {
        model: Hosted::new(model, outlets),
        waiting: AtomicBool::new(false),
        space: Notify::new(),
        gate: Arc::default(),
    });
    let depth_port = port.clone();
    let entry = registry.register(id, "serial", Placement::Runtime, move || {
        usize::from(depth_port.waiting.load(Ordering::Relaxed))
    });
    let input = Arc::new(tokio::sync::Mutex::new(input));
    let p = port.clone();
    spawn_supervised(
        rt,
        entry,
        Restart::Always,
        move || feed(p.clone(), input.clone()),
        |_| {},
    );
    port
}

async fn feed(
    port: Arc<SerialPort>,
    input: Arc<tokio::sync::Mutex<mpsc::Receiver<FrontendEvent>>>,
) {
    let mut input = input.lock().await;
    let mut pending: VecDeque<u8> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match input.recv().await {
                Some(FrontendEvent::Input(bytes)) => pending.extend(bytes),
                Some(_) => continue,
                None => return,
            }
        }
        // Offer what we have (not while the VM is stopped: bytes wait here, and the
        // chardev's channel fills and holds back the backend).
        port.gate.opened().await;
        let Some(step) = port.gate.try_step() else {
            continue;
        };
        let taken = {
            let (a, b) = pending.as_slices();
            port.model.run(|m| {
                let n = m.enqueue_input(a);
                if n == a.len() {
                    n + m.enqueue_input(b)
                } else {
                    n
                }
            })
        };
        drop(step);
        pending.drain(..taken);
        if pending.is_empty() {
            port.waiting.store(false, Ordering::Release);
            continue;
        }
        // FIFO full: wait for the guest to read (or for a periodic retry, in case the guest
        // resets the UART through a path that does not read RBR).
        port.waiting.store(true, Ordering::Release);
        let _ = tokio::time::timeout(Duration::from_millis(20), port.space.notified()).await;
    }
}
