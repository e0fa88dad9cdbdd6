use super::*;
use crate::testing::FakeIrq;
use crate::virtio::rng::Rng;
use std::sync::Mutex;

#[derive(Default)]
struct Sink {
    fired: Mutex<Vec<u16>>,
    routes: Mutex<Vec<(u16, u64, u32)>>,
}

impl MsixSink for Sink {
    fn route(&self, vector: u16, address: u64, data: u32) {
        self.routes.lock().unwrap().push((vector, address, data));
    }
    fn fire(&self, vector: u16) {
        self.fired.lock().unwrap().push(vector);
    }
}

fn dev() -> (VirtioPci, Arc<Sink>, Arc<FakeIrq>) {
    let sink = Arc::new(Sink::default());
    let irq = Arc::new(FakeIrq::default());
    (
        VirtioPci::new(Box::new(Rng), 2, irq.clone(), sink.clone()),
        sink,
        irq,
    )
}

fn w32(d: &mut VirtioPci, off: u64, v: u32) -> Option<Action> {
    d.modern_write(off, &v.to_le_bytes())
}

#[test]
fn features_the_device_does_not_offer_keep_features_ok_clear() {
    let (mut d, _, _) = dev();
    w32(&mut d, 0x08, 1);
    w32(&mut d, 0x0c, 1 | (1 << 5)); // VERSION_1 plus an unknown bit 37
    d.modern_write(
        0x14,
        &[status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK],
    );
    assert_eq!(d.status() & status::FEATURES_OK, 0);
    w32(&mut d, 0x0c, 1);
    d.modern_write(
        0x14,
        &[status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK],
    );
    assert_ne!(d.status() & status::FEATURES_OK, 0);
    let a = d.modern_write(0x14, &[0x0f]);
    assert_eq!(a, Some(Action::Activate));
    assert_eq!(d.modern_write(0x14, &[0]), Some(Action::Reset));
    assert_eq!(d.status(), 0);
    assert_eq!(
        d.modern_write(NOTIFY_CFG + 4 * 3, &[3, 0]),
        Some(Action::Notify(3))
    );
}

#[test]
fn queue_addresses_and_legacy_pfn_layout() {
    let (mut d, _, _) = dev();
    d.modern_write(0x16, &0u16.to_le_bytes());
    d.modern_write(0x18, &100u16.to_le_bytes()); // not a power of two: ignored
    d.modern_write(0x18, &64u16.to_le_bytes());
    w32(&mut d, 0x20, 0x1000);
    w32(&mut d, 0x24, 0x1);
    d.modern_write(0x28, &0x2000u64.to_le_bytes());
    let q = d.queues()[0];
    assert_eq!((q.size, q.desc, q.avail), (64, 0x1_0000_1000, 0x2000));
    // Legacy: PFN 0x10 with 256 entries: avail after 4 KiB of descriptors, used aligned.
    d.legacy_write(0x0e, &0u16.to_le_bytes());
    d.legacy_write(0x08, &0x10u32.to_le_bytes());
    let q = d.queues()[0];
    assert_eq!(
        (q.desc, q.avail, q.used, q.ready),
        (0x10000, 0x11000, 0x12000, true)
    );
}

#[test]
fn masked_vectors_are_pending_until_unmasked_and_intx_without_msix() {
    let (mut d, sink, irq) = dev();
    // No MSI-X: INTx and the ISR.
    d.signal_queue(0);
    assert!(irq.is_high());
    let mut isr = [0u8];
    d.modern_read(ISR_CFG, &mut isr);
    assert_eq!((isr[0], irq.is_high()), (1, false));
    // Enable MSI-X; queue 0 on vector 1, which is masked at power-on.
    let cap = d.msix_cap;
    d.config_write(cap + 2, &0x8000u16.to_le_bytes());
    d.modern_write(0x16, &0u16.to_le_bytes());
    d.modern_write(0x1a, &1u16.to_le_bytes());
    d.signal_queue(0);
    assert!(sink.fired.lock().unwrap().is_empty());
    let mut pba = [0u8; 8];
    d.msix_read(PBA_OFFSET, &mut pba);
    assert_eq!(pba[0], 0b10);
    // Program and unmask vector 1: the pending message goes out.
    d.msix_write(16, &0xfee0_0000u32.to_le_bytes());
    d.msix_write(16 + 8, &0x41u32.to_le_bytes());
    assert!(sink.fired.lock().unwrap().is_empty());
    d.msix_write(16 + 12, &0u32.to_le_bytes());
    assert_eq!(*sink.fired.lock().unwrap(), [1]);
    assert!(sink
        .routes
        .lock()
        .unwrap()
        .contains(&(1, 0xfee0_0000, 0x41)));
    // A vector past the table reads back as NO_VECTOR.
    d.modern_write(0x1a, &7u16.to_le_bytes());
    let mut v = [0u8; 2];
    d.modern_read(0x1a, &mut v);
    assert_eq!(u16::from_le_bytes(v), NO_VECTOR);
}
