//! The USB host: the PIIX3 UHCI model (`devices::usb::uhci`) on its BAR4 ports, a frame
//! timer actor that runs the guest's schedule once a millisecond while the controller runs,
//! and the input sinks that hand console input to the HID devices on its ports.
//!
//! Data path: guest register access → vCPU exit → [`UhciIo`] → the model under its lock
//! (a write also wakes the timer, since it may have set Run/Stop). The timer actor
//! (`usb-uhci`, tokio) sleeps while the controller is halted or the VM paused; running, it
//! calls `Uhci::run_frame` every millisecond, which reads and writes the schedule in guest
//! memory and drives INTx. VNC and the monitor post pointer and key events through
//! [`HidSink`]: a short lock of the model that updates the device's input state; the next
//! interrupt-IN poll from the guest picks it up. The timer actor answers the model's
//! `Save`/`Restore` (section `usb-uhci`) while paused, so no frame runs in the middle of one.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::memory::GuestMemoryMmap;
use devices::usb::hid::HidKind;
use devices::usb::uhci::{Uhci, UhciError};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::bus::{lock, BusHandler};
use crate::display::input::{Buttons, InputEvent, InputSink};
use crate::runtime::{
    find_section, only_sections, spawn_supervised, Control, ControlError, ControlHandle, Placement,
    Registry, Restart,
};

/// The actor's id, and its section's.
pub const ID: &str = "usb-uhci";

/// One frame (UHCI 1.1 §1.2: 1 ms frames).
const FRAME: Duration = Duration::from_millis(1);
/// Frames run at most per wake-up when the timer fell behind; past that the controller
/// skips ahead (as a real one would not, but a guest cannot tell a late frame from a slow
/// bus).
const CATCH_UP: u32 = 8;

/// A device plugged into a root port, for `info usb` and `query-mice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsbDeviceInfo {
    /// 1-based root port.
    pub port: usize,
    pub kind: HidKind,
    /// `-device ...,id=`.
    pub id: Option<String>,
    /// The address the guest gave it (0 before enumeration).
    pub address: u8,
}

/// The controller, its timer and what is plugged in.
pub struct UhciHost {
    model: Arc<Mutex<Uhci>>,
    wake: Arc<Notify>,
    control: ControlHandle,
    attached: Mutex<Vec<(usize, HidKind, Option<String>)>>,
}

impl UhciHost {
    /// The PCI function to put on the bus.
    pub fn function(&self) -> Arc<Mutex<dyn devices::pci::PciFunction>> {
        self.model.clone()
    }

    pub fn model(&self) -> &Arc<Mutex<Uhci>> {
        &self.model
    }

    /// The handler for BAR4.
    pub fn io(self: &Arc<Self>) -> Arc<dyn BusHandler> {
        Arc::new(UhciIo(self.clone()))
    }

    /// The timer actor's control mailbox.
    pub fn control(&self) -> ControlHandle {
        self.control.clone()
    }

    /// Plug a `kind` device into `port` (1-based) or the first free one; returns the port.
    pub fn attach(
        &self,
        port: Option<usize>,
        kind: HidKind,
        id: Option<&str>,
    ) -> Result<usize, UhciError> {
        let n = lock(&self.model).attach(port, kind)?;
        lock(&self.attached).push((n, kind, id.map(str::to_string)));
        Ok(n)
    }

    /// The devices plugged in, in the order they were.
    pub fn devices(&self) -> Vec<UsbDeviceInfo> {
        let m = lock(&self.model);
        lock(&self.attached)
            .iter()
            .map(|(port, kind, id)| UsbDeviceInfo {
                port: *port,
                kind: *kind,
                id: id.clone(),
                address: m.device(*port).map_or(0, |d| d.address()),
            })
            .collect()
    }

    /// The input sink for the device on `port`.
    pub fn sink(self: &Arc<Self>, port: usize) -> HidSink {
        HidSink {
            host: self.clone(),
            port,
            last_buttons: AtomicU8::new(0),
        }
    }
}

/// BAR4: the UHCI registers.
pub struct UhciIo(Arc<UhciHost>);

impl BusHandler for UhciIo {
    fn read(&self, _base: u64, offset: u64, data: &mut [u8]) {
        lock(&self.0.model).io_read(offset, data);
    }
    fn write(&self, _base: u64, offset: u64, data: &[u8]) {
        lock(&self.0.model).io_write(offset, data);
        self.0.wake.notify_one();
    }
}

fn not_paused(what: &'static str) -> ControlError {
    ControlError::NotPaused {
        actor: ID.into(),
        what,
    }
}

fn restore(model: &Mutex<Uhci>, sections: &[devices::Section]) -> Result<(), devices::StateError> {
    only_sections(sections, &[ID])?;
    devices::restore_section(&mut *lock(model), find_section(sections, ID)?)
}

/// Start the frame timer actor for `model`, whose schedule lives in `mem`.
pub fn start_uhci(
    rt: &tokio::runtime::Handle,
    registry: &Registry,
    model: Uhci,
    mem: GuestMemoryMmap,
) -> Arc<UhciHost> {
    let model = Arc::new(Mutex::new(model));
    let wake = Arc::new(Notify::new());
    let (addr, mailbox) = crate::runtime::mailbox::<Control>(ID, 8);
    let depth = addr.clone();
    let control = ControlHandle::new(ID, move |c| addr.try_send(c));
    let entry = registry.register(ID, "usb", Placement::Runtime, move || depth.depth());
    let m = model.clone();
    let w = wake.clone();
    spawn_supervised(
        rt,
        entry,
        Restart::Always,
        move || {
            let m = m.clone();
            let w = w.clone();
            let mem = mem.clone();
            let mailbox = mailbox.clone();
            async move {
                let mut mb = mailbox.open().await;
                let mut paused = false;
                let mut next = Instant::now();
                loop {
                    let running = !paused && lock(&m).running();
                    let wait = async {
                        if running {
                            tokio::time::sleep_until(next).await;
                            true
                        } else {
                            w.notified().await;
                            false
                        }
                    };
                    tokio::select! {
                        ticked = wait => {
                            let now = Instant::now();
                            if !ticked {
                                // Woken by a register write: the first frame is due now.
                                next = now;
                                continue;
                            }
                            let mut n = 0;
                            while next <= now && n < CATCH_UP {
                                crate::runtime::fault_point();
                                lock(&m).run_frame(&mem);
                                next += FRAME;
                                n += 1;
                            }
                            if next <= now {
                                next = now + FRAME;
                            }
                        }
                        msg = mb.recv() => match msg {
                            // Frames run to completion inside this task: none is half done.
                            Some(Control::Pause(reply)) => {
                                paused = true;
                                reply.send(());
                            }
                            Some(Control::Resume) => {
                                paused = false;
                                next = Instant::now();
                            }
                            Some(Control::Save(reply)) => reply.send(if paused {
                                Ok(vec![devices::save_section(ID, &*lock(&m))])
                            } else {
                                Err(not_paused("save"))
                            }),
                            Some(Control::Restore(sections, reply)) => reply.send(if paused {
                                restore(&m, &sections).map_err(|source| ControlError::Restore {
                                    actor: ID.into(),
                                    source,
                                })
                            } else {
                                Err(not_paused("restore"))
                            }),
                            None => return,
                        }
                    }
                }
            }
        },
        |_| {},
    );
    Arc::new(UhciHost {
        model,
        wake,
        control,
        attached: Mutex::default(),
    })
}

/// Console input for the HID device on one port: pointer events for a tablet (absolute)
/// or mouse (relative), key events for a keyboard. Events the device has no use for are
/// dropped. Never blocks beyond the model's lock.
pub struct HidSink {
    host: Arc<UhciHost>,
    port: usize,
    /// RFB buttons of the last pointer event, to count wheel presses.
    last_buttons: AtomicU8,
}

impl HidSink {
    /// HID buttons (bit 0 left, 1 right, 2 middle) and wheel notches (positive: up)
    /// from an RFB mask; a wheel "button" counts on its press.
    fn buttons(&self, b: Buttons) -> (u8, i32) {
        let before = self.last_buttons.swap(b.0, Ordering::Relaxed);
        let pressed = b.0 & !before;
        let mut dz = 0;
        if pressed & Buttons::WHEEL_UP != 0 {
            dz += 1;
        }
        if pressed & Buttons::WHEEL_DOWN != 0 {
            dz -= 1;
        }
        let hid = u8::from(b.left()) | (u8::from(b.right()) << 1) | (u8::from(b.middle()) << 2);
        (hid, dz)
    }
}

/// `v` of 0..`size` scaled to the tablet's 0..=0x7fff as QEMU's input layer scales it
/// (`v * 0x7fff / size`, so the last pixel is a little short of 0x7fff).
pub fn scale_abs(v: u32, size: u32) -> u16 {
    let size = size.max(1);
    (u64::from(v.min(size - 1)) * 0x7fff / u64::from(size)) as u16
}

impl InputSink for HidSink {
    fn send(&self, ev: InputEvent) {
        let mut m = lock(&self.host.model);
        let Some(dev) = m.device_mut(self.port) else {
            return;
        };
        match (dev.kind(), ev) {
            (
                HidKind::Tablet,
                InputEvent::PointerAbs {
                    x,
                    y,
                    width,
                    height,
                    buttons,
                },
            ) => {
                let (b, dz) = self.buttons(buttons);
                dev.pointer_abs(scale_abs(x, width), scale_abs(y, height), b, dz);
            }
            (
                HidKind::Mouse,
                InputEvent::PointerRel {
                    dx,
                    dy,
                    dz,
                    buttons,
                },
            ) => {
                // PointerRel's dz is PS/2's (negative = up); HID's wheel is positive up.
                let (b, _) = self.buttons(buttons);
                dev.pointer_rel(dx, dy, -dz, b);
            }
            (HidKind::Keyboard, InputEvent::Key { key, down }) => dev.key(key, down),
            (HidKind::Keyboard, InputEvent::RawKey { number, down }) => {
                if let Some(key) = devices::i8042::KeyCode::from_number(number) {
                    dev.key(key, down);
                }
            }
            _ => {}
        }
    }

    fn absolute(&self) -> bool {
        lock(&self.host.model)
            .device(self.port)
            .is_some_and(|d| d.kind() == HidKind::Tablet)
    }
}

/// Keys to one sink, the pointer to another: how console input is split when USB devices
/// take part (a USB keyboard takes the keys, a USB tablet or mouse the pointer).
pub struct SplitInput {
    pub keys: Arc<dyn InputSink>,
    pub pointer: Arc<dyn InputSink>,
}

impl InputSink for SplitInput {
    fn send(&self, ev: InputEvent) {
        match ev {
            InputEvent::Key { .. } | InputEvent::RawKey { .. } => self.keys.send(ev),
            InputEvent::PointerAbs { .. } | InputEvent::PointerRel { .. } => self.pointer.send(ev),
        }
    }

    fn absolute(&self) -> bool {
        self.pointer.absolute()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::testing::FakeIrq;
    use vm_memory::GuestAddress;

    #[test]
    fn the_tablet_gets_scaled_absolute_coordinates_and_wheel_presses() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let registry = Registry::default();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let host = start_uhci(
            rt.handle(),
            &registry,
            Uhci::new(Arc::new(FakeIrq::default())),
            mem,
        );
        assert_eq!(host.attach(None, HidKind::Tablet, Some("t0")), Ok(1));
        let sink = host.sink(1);
        assert!(sink.absolute());
        let ev = |x, y, b| InputEvent::PointerAbs {
            x,
            y,
            width: 640,
            height: 480,
            buttons: Buttons(b),
        };
        sink.send(ev(639, 240, Buttons::LEFT | Buttons::WHEEL_UP));
        let st = lock(host.model()).device(1).cloned().unwrap();
        let want = {
            let mut d = devices::usb::hid::HidDevice::new(HidKind::Tablet);
            d.pointer_abs(32715, 0x3fff, 1, 1);
            d
        };
        assert_eq!(st, want);
        assert_eq!(scale_abs(0, 640), 0);
        assert_eq!(scale_abs(5000, 640), 32715, "clamped to the screen");
        assert_eq!(scale_abs(3, 0), 0);
        assert_eq!(host.devices()[0].id.as_deref(), Some("t0"));
    }
}
