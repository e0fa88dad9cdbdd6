//! Carrying out a model's [`Effects`] once its lock is released: the exit path's rule
//! (STYLE.md): lock the device, run the model, take what it asks for, unlock, then drive
//! its interrupt lines and post its output.
//!
//! Two callers of one model (a vCPU and the model's input actor, say) carry out their
//! effects in the order the model made them: a caller takes the outlets' lock before it
//! releases the model's (lock order: model, then outlets; nothing under the outlets' lock
//! takes a model's), so a line's last level is the model's last level.

use std::sync::{Arc, Mutex};

use devices::{ByteSink, Effectful, Effects, IrqLine};

use crate::bus::lock;

/// Where a model's effects go: its lines by index, its output.
pub struct Outlets {
    pub lines: Vec<Arc<dyn IrqLine>>,
    pub out: Option<Box<dyn ByteSink>>,
}

impl Outlets {
    fn apply(&mut self, fx: Effects) {
        let lines: Vec<&dyn IrqLine> = self.lines.iter().map(|l| l.as_ref()).collect();
        match self.out.as_mut() {
            Some(out) => fx.apply(&lines, Some(out.as_mut())),
            None => fx.apply(&lines, None),
        }
    }
}

/// A model behind its lock with the outlets its effects go to.
pub struct Hosted<M> {
    model: Arc<Mutex<M>>,
    outlets: Mutex<Outlets>,
}

impl<M: Effectful> Hosted<M> {
    pub fn new(model: M, outlets: Outlets) -> Self {
        Self {
            model: Arc::new(Mutex::new(model)),
            outlets: Mutex::new(outlets),
        }
    }

    /// Run `f` on the model, then carry out what it asked for with the model unlocked.
    pub fn run<R>(&self, f: impl FnOnce(&mut M) -> R) -> R {
        let mut m = lock(&self.model);
        let r = f(&mut m);
        let fx = m.take_effects();
        if fx.is_empty() {
            return r;
        }
        let mut o = lock(&self.outlets);
        drop(m);
        o.apply(fx);
        r
    }

    /// Carry out effects left by a call made through [`Self::model`] (a restore).
    pub fn flush(&self) {
        self.run(|_| ());
    }

    /// The model itself, for callers that save and restore it (their effects wait for
    /// [`Self::flush`]).
    pub fn model(&self) -> &Arc<Mutex<M>> {
        &self.model
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::serial::Serial;
    use devices::testing::{FakeIrq, FakeSink};
    use devices::BusDevice;

    #[test]
    fn effects_are_carried_out_after_the_model_is_unlocked() {
        /// A line that checks, when driven, that the model is not locked.
        struct Probe(Arc<Mutex<Option<Arc<Mutex<Serial>>>>>, FakeIrq);
        impl IrqLine for Probe {
            fn set_level(&self, high: bool) {
                if let Some(m) = lock(&self.0).as_ref() {
                    assert!(m.try_lock().is_ok(), "line driven under the model's lock");
                }
                self.1.set_level(high);
            }
        }
        let slot = Arc::new(Mutex::new(None));
        let probe = Arc::new(Probe(slot.clone(), FakeIrq::default()));
        let sink = FakeSink::default();
        let h = Hosted::new(
            Serial::new(),
            Outlets {
                lines: vec![probe.clone()],
                out: Some(Box::new(sink.clone())),
            },
        );
        *lock(&slot) = Some(h.model().clone());
        h.run(|s| s.write(1, &[0x02])); // IER: THRE interrupt
        assert!(probe.1.is_high());
        h.run(|s| s.write(0, b"x"));
        assert_eq!(sink.contents(), b"x");
        let mut iir = [0];
        h.run(|s| s.read(2, &mut iir));
        assert!(!probe.1.is_high(), "reading IIR cleared THRE");
    }
}
