//! virtio-balloon (virtio 1.2 §5.5): the host asks for `num_pages` 4 KiB pages; the driver
//! gives them (inflate queue 0, a list of little-endian u32 page frame numbers) or takes
//! them back (deflate queue 1) and says how many it holds in `actual`. With
//! `VIRTIO_BALLOON_F_STATS_VQ` the driver reports its memory statistics on queue 2.
//!
//! The configuration (`num_pages`, `actual`) lives in a [`BalloonShared`] the monitor also
//! holds: it writes the target and reads `actual`; a driver's change of `actual` is told to
//! whoever listens (the `BALLOON_CHANGE` event). What becomes of inflated pages (the host
//! drops them) is the queue worker's business.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::VirtioDeviceModel;
use crate::{Snapshot, StateError};

/// The driver reports statistics on queue 2 (virtio 1.2 §5.5.3).
pub const F_STATS_VQ: u64 = 1 << 1;
/// The driver may deflate when the guest runs out of memory.
pub const F_DEFLATE_ON_OOM: u64 = 1 << 2;
/// Balloon pages are 4 KiB whatever the guest's page size (§5.5.6).
pub const PAGE_SHIFT: u32 = 12;

/// Called with the driver's new `actual` (pages) when it changes.
pub type ActualListener = Box<dyn Fn(u32) + Send + Sync>;

/// The balloon's configuration, shared by the device model and the monitor.
#[derive(Default)]
pub struct BalloonShared {
    /// Pages the host wants in the balloon.
    num_pages: AtomicU32,
    /// Pages the driver says it holds.
    actual: AtomicU32,
    listener: Mutex<Option<ActualListener>>,
}

impl BalloonShared {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }
    pub fn num_pages(&self) -> u32 {
        self.num_pages.load(Ordering::SeqCst)
    }
    /// Set the target (the caller then signals a configuration change).
    pub fn set_num_pages(&self, pages: u32) {
        self.num_pages.store(pages, Ordering::SeqCst);
    }
    pub fn actual(&self) -> u32 {
        self.actual.load(Ordering::SeqCst)
    }
    /// Who hears of the driver's changes of `actual`.
    pub fn set_listener(&self, l: ActualListener) {
        if let Ok(mut g) = self.listener.lock() {
            *g = Some(l);
        }
    }
    fn set_actual(&self, pages: u32) {
        if self.actual.swap(pages, Ordering::SeqCst) != pages {
            if let Ok(g) = self.listener.lock() {
                if let Some(l) = g.as_ref() {
                    l(pages);
                }
            }
        }
    }
}

/// The device model: features and the configuration space.
pub struct Balloon {
    shared: Arc<BalloonShared>,
    deflate_on_oom: bool,
}

impl Balloon {
    /// `deflate_on_oom`: offer `VIRTIO_BALLOON_F_DEFLATE_ON_OOM` (QEMU's `deflate-on-oom=`).
    pub fn new(shared: Arc<BalloonShared>, deflate_on_oom: bool) -> Self {
        Self {
            shared,
            deflate_on_oom,
        }
    }
}

/// The guest-visible configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BalloonState {
    pub num_pages: u32,
    pub actual: u32,
    pub deflate_on_oom: bool,
}

impl Snapshot for Balloon {
    type State = BalloonState;
    const KIND: &'static str = "virtio-balloon";
    const VERSION: u32 = 1;
    fn save(&self) -> BalloonState {
        BalloonState {
            num_pages: self.shared.num_pages(),
            actual: self.shared.actual(),
            deflate_on_oom: self.deflate_on_oom,
        }
    }
    fn restore(&mut self, s: BalloonState) -> Result<(), StateError> {
        if s.deflate_on_oom != self.deflate_on_oom {
            return Err(StateError::invalid(
                Self::KIND,
                format!(
                    "saved with deflate-on-oom={}, this device has {}",
                    s.deflate_on_oom, self.deflate_on_oom
                ),
            ));
        }
        self.shared.set_num_pages(s.num_pages);
        self.shared.actual.store(s.actual, Ordering::SeqCst);
        Ok(())
    }
}

impl VirtioDeviceModel for Balloon {
    fn device_type(&self) -> u16 {
        super::device_type::BALLOON
    }
    fn features(&self) -> u64 {
        F_STATS_VQ
            | if self.deflate_on_oom {
                F_DEFLATE_ON_OOM
            } else {
                0
            }
    }
    fn queue_sizes(&self) -> Vec<u16> {
        // inflate, deflate, statistics (QEMU's sizes).
        vec![128, 128, 128]
    }
    fn config_len(&self) -> usize {
        8
    }
    fn config_read(&self, offset: usize, data: &mut [u8]) {
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&self.shared.num_pages().to_le_bytes());
        bytes[4..].copy_from_slice(&self.shared.actual().to_le_bytes());
        super::read_bytes(&bytes, offset, data);
    }
    /// Only `actual` (bytes 4..8) is the driver's to write.
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        let mut bytes = self.shared.actual().to_le_bytes();
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = (offset + i).checked_sub(4).and_then(|o| bytes.get_mut(o)) {
                *slot = *b;
            }
        }
        self.shared.set_actual(u32::from_le_bytes(bytes));
    }
    fn pci_class(&self) -> (u8, u8) {
        (0xff, 0x00)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn the_driver_reads_the_target_and_writes_actual_which_is_heard_once_per_change() {
        let shared = BalloonShared::new();
        let heard = Arc::new(AtomicU64::new(0));
        let h = heard.clone();
        shared.set_listener(Box::new(move |p| {
            h.fetch_add(1 + (u64::from(p) << 32), Ordering::SeqCst);
        }));
        let mut b = Balloon::new(shared.clone(), false);
        assert_eq!(b.features(), F_STATS_VQ);
        shared.set_num_pages(0x1234);
        let mut d = [0u8; 4];
        b.config_read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x1234);
        // num_pages is read-only; actual takes byte-wise writes.
        b.config_write(0, &[9, 9, 9, 9]);
        assert_eq!(shared.num_pages(), 0x1234);
        b.config_write(4, &0x1000u32.to_le_bytes());
        b.config_write(4, &0x1000u32.to_le_bytes());
        assert_eq!(shared.actual(), 0x1000);
        assert_eq!(heard.load(Ordering::SeqCst), 1 + (0x1000 << 32));
        b.config_write(5, &[0x20]);
        assert_eq!(shared.actual(), 0x2000);
        b.config_read(4, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x2000);
        assert!(Balloon::new(BalloonShared::new(), true).features() & F_DEFLATE_ON_OOM != 0);
    }

    #[test]
    fn state_round_trips_and_refuses_another_deflate_on_oom() {
        let shared = BalloonShared::new();
        shared.set_num_pages(7);
        let b = Balloon::new(shared.clone(), false);
        let fresh = Balloon::new(BalloonShared::new(), false);
        crate::check_roundtrip(&b, fresh);
        let mut other = Balloon::new(BalloonShared::new(), true);
        assert!(other.restore(b.save()).is_err());
    }
}
