//! USB on the PC: the PIIX3 UHCI controller (`piix3-usb-uhci`, `-usb`) on its PCI slot
//! with INTx D and BAR4, its frame timer actor, and the HID devices on its root ports.

use std::sync::Arc;

use actors::display::input::InputSink;
use actors::host::usb::{start_uhci, UhciHost};
use actors::supervisor::Node;
use anyhow::{Context, Result};
use devices::memory::GuestMemoryMmap;
use devices::usb::hid::HidKind;
use devices::usb::uhci::{Uhci, INTX_PIN, IO_BAR};

use super::pci::{BarTarget, PciPlatform};
use super::tree;
use crate::config::{DeviceKind, VmConfig};

/// The controller and where console input for its devices goes.
pub struct Usb {
    pub host: Arc<UhciHost>,
    /// The last USB keyboard's sink: it takes the keys (QEMU activates a USB keyboard as
    /// it is created).
    pub keyboard: Option<Arc<dyn InputSink>>,
    /// The last USB tablet's or mouse's sink: it takes the pointer.
    pub pointer: Option<Arc<dyn InputSink>>,
}

/// What the controller is built from.
pub struct UsbParts<'a> {
    pub cfg: &'a VmConfig,
    /// Each `-device`'s tree id and whether the user gave it.
    pub names: &'a [(String, bool)],
    pub pci: &'a Arc<PciPlatform>,
    pub kvm: &'a crate::vm::kvm::KvmVm,
    pub mem: &'a GuestMemoryMmap,
    pub rt: &'a tokio::runtime::Handle,
    pub registry: &'a actors::runtime::Registry,
}

/// The controller the configuration has (None: no USB), its devices plugged in, and its
/// tree nodes: the controller (providing its bus) and a node per device on that bus.
pub fn build(p: UsbParts<'_>) -> Result<Option<(Usb, Vec<Node>)>> {
    let Some((i, d)) = p
        .cfg
        .devices
        .iter()
        .enumerate()
        .find(|(_, d)| d.kind == DeviceKind::Uhci)
    else {
        return Ok(None);
    };
    let slot = d.addr.context("piix3-usb-uhci without a PCI address")?;
    let router = p
        .pci
        .intx_router(p.registry, p.kvm.vm.clone())
        .context("piix3-usb-uhci: INTx routing")?;
    let mut model = Uhci::new(p.pci.intx(&router, slot.0, INTX_PIN));
    if let Some(id) = &d.id {
        model.set_id(id);
    }
    model.set_location(&format!("0000:00:{:02x}.{:x}", slot.0, slot.1));
    let host = start_uhci(p.rt, p.registry, model, p.mem.clone());
    p.pci.add_function(slot, host.function());
    p.pci
        .bind_bar(slot, IO_BAR, "usb-uhci", BarTarget::Io(host.io()));
    let bus = match &d.id {
        Some(id) => format!("{id}.0"),
        None => "usb-bus.0".to_string(),
    };
    let (id, user) = p.names[i].clone();
    let mut node = tree::pci_node(id, "piix3-usb-uhci", slot)
        .prop("addr", format!("{:02x}.{:x}", slot.0, slot.1))
        .providing(&bus, "usb-bus")
        .actor(actors::host::usb::ID)
        .control(host.control());
    if user {
        node = node.user();
    }
    let mut nodes = vec![node];
    let mut keyboard: Option<Arc<dyn InputSink>> = None;
    let mut pointer: Option<Arc<dyn InputSink>> = None;
    for (j, d) in p.cfg.devices.iter().enumerate() {
        let DeviceKind::UsbHid { kind, port } = d.kind else {
            continue;
        };
        let port = host
            .attach(Some(usize::from(port)), kind, d.id.as_deref())
            .with_context(|| kind.driver().to_string())?;
        let sink: Arc<dyn InputSink> = Arc::new(host.sink(port));
        match kind {
            HidKind::Keyboard => keyboard = Some(sink),
            HidKind::Tablet | HidKind::Mouse => pointer = Some(sink),
        }
        let (id, user) = p.names[j].clone();
        let mut n = Node::new(id, kind.driver(), bus.clone()).prop("port", format!("\"{port}\""));
        if user {
            n = n.user();
        }
        nodes.push(n);
    }
    Ok(Some((
        Usb {
            host,
            keyboard,
            pointer,
        },
        nodes,
    )))
}
