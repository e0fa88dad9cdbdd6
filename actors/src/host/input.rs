//! The input host: the i8042 (PS/2 keyboard and mouse) on ports 0x60/0x64, and an actor
//! that applies typed input messages from VNC clients and the monitor (`sendkey`,
//! `mouse_move`) to it. Senders never block: a full mailbox drops the event and counts it.
//! The actor itself holds events back while the PS/2 device's 16-byte queue is full (a
//! fast typist or a script outrunning a polling guest loses nothing), resuming when the
//! vCPU path reports that the guest read the data port.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::i8042::{KeyCode, I8042};
use devices::BusDevice;
use tokio::sync::Notify;

use crate::bus::{lock, BusHandler};
use crate::runtime::{
    mailbox, spawn_supervised, Addr, MessageKind, PauseGate, Placement, Registry, Restart,
};

/// Input for the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputMsg {
    Key {
        key: KeyCode,
        down: bool,
    },
    /// Relative motion (screen convention: +dy is down), wheel, buttons (bit 0 left,
    /// 1 right, 2 middle).
    Mouse {
        dx: i32,
        dy: i32,
        dz: i32,
        buttons: u8,
    },
}

impl MessageKind for InputMsg {
    fn kind(&self) -> &'static str {
        match self {
            Self::Key { .. } => "key",
            Self::Mouse { .. } => "mouse",
        }
    }
}

/// Where input goes; cheap to clone into every VNC client and monitor session.
#[derive(Clone)]
pub struct InputHandle {
    addr: Addr<InputMsg>,
    model: Arc<Mutex<I8042>>,
    dropped: Arc<AtomicU64>,
}

impl InputHandle {
    /// Queue an event; never blocks (dropped and counted when the guest is not keeping up).
    pub fn send(&self, msg: InputMsg) {
        if self.addr.try_send(msg).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queue an event, waiting for room (for `sendkey`, which must not lose keys).
    pub async fn send_wait(&self, msg: InputMsg) {
        let _ = self.addr.send(msg).await;
    }

    pub fn key(&self, key: KeyCode, down: bool) {
        self.send(InputMsg::Key { key, down });
    }

    /// Keyboard LED state (VNC's LED pseudo-encoding).
    pub fn leds(&self) -> u8 {
        lock(&self.model).leds()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The i8042 on the PIO bus; wakes the input actor when the guest drains the output.
pub struct I8042Port {
    model: Arc<Mutex<I8042>>,
    waiting: AtomicBool,
    room: Notify,
    /// Input reaches the model (and raises IRQ 1/12) only while the VM runs.
    gate: Arc<PauseGate>,
}

impl I8042Port {
    pub fn model(&self) -> &Arc<Mutex<I8042>> {
        &self.model
    }

    /// The gate the input actor takes its steps through (closed while the VM is
    /// stopped).
    pub fn gate(&self) -> Arc<PauseGate> {
        self.gate.clone()
    }
}

impl BusHandler for I8042Port {
    fn read(&self, _base: u64, offset: u64, data: &mut [u8]) {
        lock(&self.model).read(offset, data);
        if offset == 0 && self.waiting.load(Ordering::Acquire) {
            self.room.notify_one();
        }
    }

    fn write(&self, _base: u64, offset: u64, data: &[u8]) {
        lock(&self.model).write(offset, data);
        if self.waiting.load(Ordering::Acquire) {
            self.room.notify_one();
        }
    }
}

/// Start the input actor; returns its handle and the bus handler for 0x60–0x64.
pub fn start_input(
    rt: &tokio::runtime::Handle,
    registry: &Registry,
    model: I8042,
) -> (InputHandle, Arc<I8042Port>) {
    let model = Arc::new(Mutex::new(model));
    let port = Arc::new(I8042Port {
        model: model.clone(),
        waiting: AtomicBool::new(false),
        room: Notify::new(),
        gate: Arc::default(),
    });
    let (addr, mb) = mailbox::<InputMsg>("i8042", 256);
    let a = addr.clone();
    let entry = registry.register("i8042", "input", Placement::Runtime, move || a.depth());
    let p = port.clone();
    spawn_supervised(
        rt,
        entry,
        Restart::Always,
        move || {
            let mb = mb.clone();
            let p = p.clone();
            async move {
                let mut mb = mb.open().await;
                while let Some(msg) = mb.recv().await {
                    loop {
                        // Not while the VM is stopped: events wait in the mailbox.
                        p.gate.opened().await;
                        let Some(step) = p.gate.try_step() else {
                            continue;
                        };
                        let applied = {
                            let mut dev = lock(&p.model);
                            let fits = match msg {
                                InputMsg::Key { .. } => dev.key_fits(),
                                InputMsg::Mouse { .. } => dev.mouse_fits(),
                            };
                            if fits {
                                match msg {
                                    InputMsg::Key { key, down } => dev.key_event(key, down),
                                    InputMsg::Mouse {
                                        dx,
                                        dy,
                                        dz,
                                        buttons,
                                    } => dev.mouse_event(dx, dy, dz, buttons),
                                }
                            }
                            fits
                        };
                        drop(step);
                        if applied {
                            p.waiting.store(false, Ordering::Release);
                            break;
                        }
                        // Hold the event until the device has room for it (a pause may
                        // come meanwhile: no step is held while waiting).
                        p.waiting.store(true, Ordering::Release);
                        let _ = tokio::time::timeout(Duration::from_millis(20), p.room.notified())
                            .await;
                    }
                }
            }
        },
        |_| {},
    );
    (
        InputHandle {
            addr,
            model,
            dropped: Arc::new(AtomicU64::new(0)),
        },
        port,
    )
}

impl crate::display::input::InputSink for InputHandle {
    fn send(&self, ev: crate::display::input::InputEvent) {
        use crate::display::input::InputEvent;
        match ev {
            InputEvent::Key { key, down } => InputHandle::send(self, InputMsg::Key { key, down }),
            InputEvent::RawKey { number, down } => match KeyCode::from_number(number) {
                Some(key) => InputHandle::send(self, InputMsg::Key { key, down }),
                None => {
                    tracing::debug!(target: "unimp", "no PS/2 scancode for key number {number:#x}")
                }
            },
            InputEvent::PointerRel {
                dx,
                dy,
                dz,
                buttons,
            } => {
                // RFB masks: 1 left, 2 middle, 4 right; PS/2: bit 0 left, 1 right, 2 middle.
                let b = u8::from(buttons.left())
                    | (u8::from(buttons.right()) << 1)
                    | (u8::from(buttons.middle()) << 2);
                InputHandle::send(
                    self,
                    InputMsg::Mouse {
                        dx,
                        dy,
                        dz,
                        buttons: b,
                    },
                );
            }
            // No absolute device on the i8042: VNC sends relative motion instead.
            InputEvent::PointerAbs { .. } => {}
        }
    }
}
