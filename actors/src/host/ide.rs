//! The IDE host: the PIIX3 IDE model on its legacy ports and bus-master BAR, wired to one
//! block backend per drive. After every guest access the host takes the model's block
//! requests and submits them; completions run on the backend thread, lock the model,
//! finish the command (moving data, raising IRQ 14/15) and submit whatever comes next.
//!
//! Removable media: the monitor opens and closes a CD-ROM's tray and swaps its backend
//! here ([`IdeHost::change_medium`] and friends), model and backend under the model's lock
//! so no guest command sees one without the other; a request already submitted to the old
//! backend still completes from it, and the old image is closed once its backend drains.
//! Tray movements (the monitor's and the guest's START STOP UNIT) go to the listener set
//! with [`IdeHost::on_tray_moved`] (`DEVICE_TRAY_MOVED`).
//!
//! Control: paused, the controller answers once no block request is outstanding (the
//! vCPUs are paused first, so none starts; those in flight complete and reach the guest),
//! and saves and restores as the `ide` section under its lock.

use std::sync::{Arc, Mutex, OnceLock};

use devices::ide::{cmd_read, cmd_write, ctl_read, ctl_write, Ide, MediaError};

use crate::block::{BlockHandle, BlockJob};
use crate::bus::{lock, BusHandler};
use crate::host::effects::{Hosted, Outlets};
use crate::runtime::{reply_channel, Control, ControlHandle, ModelPart, Reply};

/// Block requests submitted and not yet completed, and the pauses waiting for none.
#[derive(Default)]
struct Drain {
    in_flight: usize,
    waiters: Vec<Reply<()>>,
}

/// Told `(drive, tray open)` each time a tray moves.
pub type TrayListener = Box<dyn Fn(usize, bool) + Send + Sync>;

/// The controller and its drives' backends.
pub struct IdeHost {
    /// The model, and IRQ 14 and 15, driven once the model is unlocked.
    model: Hosted<Ide>,
    /// Locked after the model when both are (media changes); never the other way.
    backends: Mutex<[Option<BlockHandle>; 4]>,
    drain: Mutex<Drain>,
    tray_listener: OnceLock<TrayListener>,
}

impl IdeHost {
    /// `irqs`: the primary and secondary channels' lines (IRQ 14, IRQ 15).
    pub fn new(
        model: Ide,
        irqs: [Arc<dyn devices::IrqLine>; 2],
        backends: [Option<BlockHandle>; 4],
    ) -> Arc<Self> {
        let outlets = Outlets {
            lines: irqs.to_vec(),
            out: None,
        };
        Arc::new(Self {
            model: Hosted::new(model, outlets),
            backends: Mutex::new(backends),
            drain: Mutex::default(),
            tray_listener: OnceLock::new(),
        })
    }

    /// The controller's control mailbox (see the module doc). Call once.
    pub fn control(self: &Arc<Self>) -> ControlHandle {
        let restored = self.clone();
        let inner = ControlHandle::models(
            "ide",
            vec![Box::new(ModelPart::new("ide", self.model.model().clone()))],
            // The lines as the restored model has them.
            move || restored.model.flush(),
        );
        let me = self.clone();
        ControlHandle::new("ide", move |c| match c {
            Control::Pause(reply) => {
                // The inner handle answers at once; this one once drained.
                let (tx, _rx) = reply_channel("ide");
                inner.send(Control::Pause(tx))?;
                let mut d = lock(&me.drain);
                if d.in_flight == 0 {
                    reply.send(());
                } else {
                    d.waiters.push(reply);
                }
                Ok(())
            }
            other => inner.send(other),
        })
    }

    /// The model, for inspection (a call that changes its lines must go through the
    /// host, or be followed by a flush).
    pub fn model(&self) -> &Arc<Mutex<Ide>> {
        self.model.model()
    }

    /// Power-on reset of the controller (its lines fall).
    pub fn reset(self: &Arc<Self>) {
        self.with(Ide::reset);
    }

    /// Drive `n`'s backend now (None: no drive, or no medium in it).
    pub fn backend(&self, n: usize) -> Option<BlockHandle> {
        lock(&self.backends).get(n).cloned().flatten()
    }

    /// Where tray movements go (set once, when the supervisor exists).
    pub fn on_tray_moved(&self, f: TrayListener) {
        let _ = self.tray_listener.set(f);
    }

    /// Drive `n`'s tray: (open, locked by the guest); None if `n` is no CD-ROM.
    pub fn tray(&self, n: usize) -> Option<(bool, bool)> {
        let m = lock(self.model.model());
        m.drive_info(n)
            .filter(|d| d.is_cdrom())
            .map(|d| (d.tray_open(), d.locked()))
    }

    /// Open drive `n`'s tray (see [`Ide::open_tray`] for `force` and a locked tray).
    pub fn open_tray(self: &Arc<Self>, n: usize, force: bool) -> Result<(), MediaError> {
        self.with(|m| m.open_tray(n, force))
    }

    pub fn close_tray(self: &Arc<Self>, n: usize) -> Result<(), MediaError> {
        self.with(|m| m.close_tray(n))
    }

    /// Take the medium out of drive `n` (its tray open); its backend is closed once the
    /// requests already submitted to it finish.
    pub fn remove_medium(self: &Arc<Self>, n: usize) -> Result<(), MediaError> {
        let old = self.with(|m| {
            m.remove_medium(n)?;
            Ok(lock(&self.backends)[n].take())
        })?;
        drop(old);
        Ok(())
    }

    /// Put `medium` into drive `n` (its tray open and empty).
    pub fn insert_medium(
        self: &Arc<Self>,
        n: usize,
        medium: BlockHandle,
    ) -> Result<(), MediaError> {
        self.with(|m| {
            m.insert_medium(n, medium.info)?;
            lock(&self.backends)[n] = Some(medium);
            Ok(())
        })
    }

    /// `change`: open the tray (`force` as for [`IdeHost::open_tray`]), swap the medium
    /// for `medium` (None: leave it empty), close the tray. On error nothing moved but
    /// what [`Ide::open_tray`] says (a locked tray gets its eject request).
    pub fn change_medium(
        self: &Arc<Self>,
        n: usize,
        medium: Option<BlockHandle>,
        force: bool,
    ) -> Result<(), MediaError> {
        let old = self.with(|m| {
            m.change_medium(n, medium.as_ref().map(|b| b.info), force)?;
            Ok(std::mem::replace(&mut lock(&self.backends)[n], medium))
        })?;
        drop(old);
        Ok(())
    }

    /// Submit what the model asked for (call after releasing the model's lock).
    fn pump(self: &Arc<Self>, requests: Vec<(usize, devices::block::BlockRequest)>) {
        for (n, request) in requests {
            let Some(b) = self.backend(n) else {
                // No backend (empty drive): fail the request right away.
                let more = self.model.run(|m| {
                    m.complete(
                        n,
                        devices::block::BlockCompletion {
                            id: request.id,
                            result: Err(devices::block::BlockError::NoMedium),
                        },
                    );
                    m.take_requests()
                });
                self.pump(more);
                continue;
            };
            let me = self.clone();
            lock(&self.drain).in_flight += 1;
            b.submit(BlockJob {
                request,
                done: Box::new(move |c| {
                    let more = me.model.run(|m| {
                        m.complete(n, c);
                        m.take_requests()
                    });
                    me.pump(more);
                    let mut d = lock(&me.drain);
                    d.in_flight -= 1;
                    if d.in_flight == 0 {
                        for w in d.waiters.drain(..) {
                            w.send(());
                        }
                    }
                }),
            });
        }
    }

    fn with<R>(self: &Arc<Self>, f: impl FnOnce(&mut Ide) -> R) -> R {
        let (r, reqs, moves) = self.model.run(|m| {
            let r = f(m);
            (r, m.take_requests(), m.take_tray_moves())
        });
        self.pump(reqs);
        if let Some(tell) = self.tray_listener.get() {
            for (n, open) in moves {
                tell(n, open);
            }
        }
        r
    }
}

/// A channel's command block (0x1F0/0x170, length 8).
pub struct IdeCommandPort(pub Arc<IdeHost>, pub usize);

impl BusHandler for IdeCommandPort {
    fn read(&self, _b: u64, offset: u64, data: &mut [u8]) {
        self.0.with(|m| cmd_read(m, self.1, offset, data));
    }
    fn write(&self, _b: u64, offset: u64, data: &[u8]) {
        self.0.with(|m| cmd_write(m, self.1, offset, data));
    }
}

/// A channel's control block (0x3F6/0x376, length 1).
pub struct IdeControlPort(pub Arc<IdeHost>, pub usize);

impl BusHandler for IdeControlPort {
    fn read(&self, _b: u64, _offset: u64, data: &mut [u8]) {
        self.0.with(|m| ctl_read(m, self.1, data));
    }
    fn write(&self, _b: u64, _offset: u64, data: &[u8]) {
        self.0.with(|m| ctl_write(m, self.1, data));
    }
}

/// The bus-master block (PCI BAR4, 16 bytes).
pub struct IdeBusMasterPort(pub Arc<IdeHost>);

impl BusHandler for IdeBusMasterPort {
    fn read(&self, _b: u64, offset: u64, data: &mut [u8]) {
        self.0.with(|m| m.bm_read(offset, data));
    }
    fn write(&self, _b: u64, offset: u64, data: &[u8]) {
        self.0.with(|m| m.bm_write(offset, data));
    }
}
