use super::*;
use crate::testing::FakeIrq;
use crate::virtio::net;
use crate::virtio::rng::Rng;
use crate::StateError;
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

/// A virtio-net function (three queues, four vectors) as the driver leaves it running:
/// features negotiated, queue 0 and 1 configured, MSI-X on with vector 0 programmed and
/// vector 1 still masked holding a pending interrupt for queue 0.
fn running_nic() -> (VirtioPci, Arc<Sink>, Arc<FakeIrq>) {
    let (mut d, sink, irq) = nic();
    d.modern_write(0x14, &[status::ACKNOWLEDGE | status::DRIVER]);
    w32(&mut d, 0x08, 0);
    w32(
        &mut d,
        0x0c,
        (net::F_MAC | net::F_STATUS | net::F_CTRL_VQ) as u32,
    );
    w32(&mut d, 0x08, 1);
    w32(&mut d, 0x0c, 1); // VERSION_1
    d.modern_write(
        0x14,
        &[status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK],
    );
    let cap = d.msix_cap;
    d.config_write(cap + 2, &0x8000u16.to_le_bytes());
    d.msix_write(0, &0xfee0_0000u32.to_le_bytes());
    d.msix_write(8, &0x31u32.to_le_bytes());
    d.msix_write(12, &0u32.to_le_bytes());
    d.modern_write(0x10, &0u16.to_le_bytes()); // configuration changes on vector 0
    for (q, vector, base) in [(0u16, 1u16, 0x10_0000u64), (1, 2, 0x20_0000)] {
        d.modern_write(0x16, &q.to_le_bytes());
        d.modern_write(0x18, &128u16.to_le_bytes());
        d.modern_write(0x1a, &vector.to_le_bytes());
        d.modern_write(0x20, &base.to_le_bytes());
        d.modern_write(0x28, &(base + 0x800).to_le_bytes());
        w32(&mut d, 0x30, (base + 0x1000) as u32);
        w32(&mut d, 0x34, 0);
        d.modern_write(0x1c, &1u16.to_le_bytes());
    }
    assert_eq!(d.modern_write(0x14, &[0x0f]), Some(Action::Activate));
    d.signal_queue(0); // vector 1 is masked: pending
    assert!(sink.fired.lock().unwrap().is_empty());
    (d, sink, irq)
}

fn nic() -> (VirtioPci, Arc<Sink>, Arc<FakeIrq>) {
    let sink = Arc::new(Sink::default());
    let irq = Arc::new(FakeIrq::default());
    let filter = Arc::new(Mutex::new(net::RxFilter::new([0x52, 0x54, 0, 1, 2, 3])));
    let model = net::Net::new(filter, 0, 1);
    (
        VirtioPci::new(Box::new(model), 4, irq.clone(), sink.clone()),
        sink,
        irq,
    )
}

/// Everything the driver can read back without side effects, queue by queue.
fn registers(d: &mut VirtioPci) -> Vec<u64> {
    let mut out = Vec::new();
    for q in 0..4u16 {
        d.modern_write(0x16, &q.to_le_bytes());
        for off in (0..0x38).step_by(2) {
            let mut b = [0u8; 2];
            d.modern_read(off, &mut b);
            out.push(u64::from(u16::from_le_bytes(b)));
        }
    }
    for off in (0..PBA_OFFSET + 8).step_by(4) {
        let mut b = [0u8; 4];
        d.msix_read(off, &mut b);
        out.push(u64::from(u32::from_le_bytes(b)));
    }
    let mut cfg = [0u8; 12];
    d.modern_read(DEVICE_CFG, &mut cfg);
    out.extend(cfg.iter().map(|b| u64::from(*b)));
    d.modern_write(0x16, &0u16.to_le_bytes());
    out
}

#[test]
fn a_restored_transport_resumes_with_its_queues_features_and_vectors() {
    let (mut d, sink, _) = running_nic();
    let (fresh, sink2, irq2) = nic();
    let mut back = crate::check_roundtrip(&d, fresh);
    // The host's routes were replayed for the restored table.
    assert!(sink2
        .routes
        .lock()
        .unwrap()
        .contains(&(0, 0xfee0_0000, 0x31)));
    assert!(!irq2.is_high(), "MSI-X is on: INTx stays low");
    assert_eq!(registers(&mut back), registers(&mut d));
    assert_eq!(back.queues(), d.queues());
    assert_eq!(back.status(), 0x0f);
    assert_eq!(back.driver_features(), d.driver_features());
    // The guest's next actions have the same effect on both: unmasking vector 1 delivers
    // the interrupt held pending, and a configuration change goes out on vector 0.
    for (dev, s) in [(&mut d, &sink), (&mut back, &sink2)] {
        s.fired.lock().unwrap().clear();
        dev.msix_write(16 + 12, &0u32.to_le_bytes());
        dev.signal_config();
        assert_eq!(*s.fired.lock().unwrap(), [1, 0]);
    }
    assert_eq!(registers(&mut back), registers(&mut d));
}

#[test]
fn an_isr_raised_before_save_holds_intx_after_restore() {
    let (mut d, _, _) = dev();
    d.signal_queue(0);
    let (fresh, _, irq2) = dev();
    let mut back = crate::check_roundtrip(&d, fresh);
    assert!(irq2.is_high());
    let mut isr = [0u8];
    back.modern_read(ISR_CFG, &mut isr);
    assert_eq!((isr[0], irq2.is_high()), (1, false));
}

#[test]
fn hand_edited_virtio_pci_sections_are_refused_naming_the_field() {
    let (d, _, _) = running_nic();
    let section = crate::save_section("net0", &d);
    let (mut target, _, _) = nic();
    let untouched = target.save();
    let refused = |target: &mut VirtioPci, edit: &dyn Fn(&mut crate::Section)| {
        let mut s = section.clone();
        edit(&mut s);
        crate::restore_section(target, &s).unwrap_err()
    };

    let e = refused(&mut target, &|s| s.kind = "virtio-mmio".into());
    assert!(matches!(e, StateError::Kind { .. }), "{e}");
    assert!(e.to_string().contains("'net0' holds virtio-mmio"), "{e}");
    let e = refused(&mut target, &|s| s.version = 2);
    assert!(matches!(e, StateError::Version { found: 2, .. }), "{e}");
    let e = refused(&mut target, &|s| s.state["queues"][0]["size"] = 300.into());
    assert!(
        e.to_string()
            .contains("queues[0].size 300 is not a power of two up to 256"),
        "{e}"
    );
    let e = refused(&mut target, &|s| {
        s.state["queues"][1]["msix_vector"] = 9.into()
    });
    assert!(e.to_string().contains("queues[1].msix_vector 9"), "{e}");
    let e = refused(&mut target, &|s| {
        s.state["msix_table"].as_array_mut().unwrap().pop();
    });
    assert!(e.to_string().contains("msix_table has 3 entries"), "{e}");
    let e = refused(&mut target, &|s| {
        s.state["queues"].as_array_mut().unwrap().truncate(2)
    });
    assert!(e.to_string().contains("queues has 2 entries"), "{e}");
    let e = refused(&mut target, &|s| {
        s.state["driver_features"] = (1u64 << 40).into()
    });
    assert!(
        e.to_string().contains("driver_features 0x10000000000"),
        "{e}"
    );
    let e = refused(&mut target, &|s| {
        s.state["device"]["kind"] = "virtio-blk".into()
    });
    assert!(
        e.to_string()
            .contains("holds virtio-blk state, not virtio-net"),
        "{e}"
    );
    let e = refused(&mut target, &|s| s.state["config"]["regs"][0] = 0x86.into());
    assert!(e.to_string().contains("config: read-only byte 0x00"), "{e}");
    // Nothing of a refused section was applied.
    assert_eq!(target.save(), untouched);
}
