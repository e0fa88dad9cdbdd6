//! The DSDT's AML, built with the `acpi_tables` crate's AML encoder: the PCI root bridge
//! with its resources and interrupt routing, the ISA devices behind the PIIX3, one ACPI
//! processor device per possible CPU, and `\_S5` (soft-off with SLP_TYP 0, as QEMU's
//! PIIX4 expects).

use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, Device, EISAName, Interrupt, Name, Package,
    ResourceTemplate, Scope, IO,
};
use acpi_tables::Aml;

fn dword(v: u32) -> u32 {
    v
}

fn byte(v: u8) -> u8 {
    v
}

/// PCI INTx → ISA IRQ, as PIIX3's PIRQ registers are programmed (SeaBIOS's defaults, and
/// what troupe presets for direct boot): PIRQA..D = 10, 10, 11, 11.
pub const PIRQ_IRQS: [u8; 4] = [10, 10, 11, 11];

/// What the DSDT describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsdtConfig {
    /// (present, APIC id) for every possible CPU, in index order.
    pub cpus: Vec<(bool, u32)>,
    /// (I/O base, IRQ) of each serial port present.
    pub serials: Vec<(u16, u8)>,
    /// The 32-bit PCI MMIO window (start, end inclusive).
    pub pci_window32: (u32, u32),
    /// The 64-bit window, if any (start, end inclusive).
    pub pci_window64: Option<(u64, u64)>,
    /// Bitmap of the bus-0 slots that may be hot-(un)plugged (ACPI PCI hotplug at
    /// 0xAE00): each gets a slot device with `_SUN` and `_EJ0`, and GPE0 bit 1's `_E01`
    /// notifies it. 0: no hotplug AML.
    pub hotplug_slots: u32,
}

/// The slots every `pc` has and none may unplug: the host bridge (0) and the PIIX (1).
pub const FIXED_SLOTS: u32 = 0b11;

/// The ISA IRQ that device `dev`'s INTx `pin` (0..3 = A..D) reaches.
pub fn intx_irq(dev: u8, pin: u8) -> u8 {
    PIRQ_IRQS[usize::from((dev + pin) & 3)]
}

fn name(n: &str, v: &dyn Aml) -> Name {
    Name::new(n.into(), v)
}

/// The AML body of the DSDT (without the table header).
pub fn aml(cfg: &DsdtConfig) -> Vec<u8> {
    let mut out = Vec::new();

    // PCI0 resources.
    let bus = AddressSpace::<u16>::new_bus_number(0, 0xff);
    let cfg_io = IO::new(0xcf8, 0xcf8, 1, 8);
    let io_lo = AddressSpace::<u16>::new_io(0, 0xcf7, None);
    let io_hi = AddressSpace::<u16>::new_io(0xd00, 0xffff, None);
    let vga = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::Cacheable,
        true,
        0xa_0000,
        0xb_ffff,
        None,
    );
    let w32 = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        cfg.pci_window32.0,
        cfg.pci_window32.1,
        None,
    );
    let w64 = cfg.pci_window64.map(|(a, b)| {
        AddressSpace::<u64>::new_memory(AddressSpaceCacheable::Cacheable, true, a, b, None)
    });
    let mut res: Vec<&dyn Aml> = vec![&bus, &cfg_io, &io_lo, &io_hi, &vga, &w32];
    if let Some(w) = &w64 {
        res.push(w);
    }
    let crs = ResourceTemplate::new(res);

    // _PRT: every slot and pin to its ISA IRQ (static GSIs).
    let mut prt_entries: Vec<(u32, u8, u8)> = Vec::new();
    for dev in 0..32u8 {
        for pin in 0..4u8 {
            prt_entries.push(((u32::from(dev) << 16) | 0xffff, pin, intx_irq(dev, pin)));
        }
    }
    let prt_vals: Vec<(aml::DWord, aml::Byte, aml::DWord)> = prt_entries
        .iter()
        .map(|(a, p, irq)| (dword(*a), byte(*p), dword(u32::from(*irq))))
        .collect();
    let zero = aml::Zero {};
    let prt_pkgs: Vec<Package> = prt_vals
        .iter()
        .map(|(a, p, irq)| Package::new(vec![a, p, &zero, irq]))
        .collect();
    let prt = Package::new(prt_pkgs.iter().map(|p| p as &dyn Aml).collect());

    // ISA devices.
    let rtc_io = IO::new(0x70, 0x70, 1, 2);
    let rtc_irq = Interrupt::new(true, true, false, false, 8);
    let rtc_crs = ResourceTemplate::new(vec![&rtc_io, &rtc_irq]);
    let rtc_hid = EISAName::new("PNP0B00");
    let rtc_hid_n = name("_HID", &rtc_hid);
    let rtc_crs_n = name("_CRS", &rtc_crs);
    let rtc = Device::new("RTC_".into(), vec![&rtc_hid_n, &rtc_crs_n]);

    let kbd_io1 = IO::new(0x60, 0x60, 1, 1);
    let kbd_io2 = IO::new(0x64, 0x64, 1, 1);
    let kbd_irq = Interrupt::new(true, true, false, false, 1);
    let kbd_crs = ResourceTemplate::new(vec![&kbd_io1, &kbd_io2, &kbd_irq]);
    let kbd_hid = EISAName::new("PNP0303");
    let kbd_hid_n = name("_HID", &kbd_hid);
    let kbd_crs_n = name("_CRS", &kbd_crs);
    let kbd = Device::new("KBD_".into(), vec![&kbd_hid_n, &kbd_crs_n]);

    let mou_irq = Interrupt::new(true, true, false, false, 12);
    let mou_crs = ResourceTemplate::new(vec![&mou_irq]);
    let mou_hid = EISAName::new("PNP0F13");
    let mou_hid_n = name("_HID", &mou_hid);
    let mou_crs_n = name("_CRS", &mou_crs);
    let mou = Device::new("MOU_".into(), vec![&mou_hid_n, &mou_crs_n]);

    let com_hid = EISAName::new("PNP0501");
    let com_parts: Vec<(IO, Interrupt, aml::Byte)> = cfg
        .serials
        .iter()
        .enumerate()
        .map(|(i, (base, irq))| {
            (
                IO::new(*base, *base, 1, 8),
                Interrupt::new(true, true, false, false, u32::from(*irq)),
                byte(i as u8 + 1),
            )
        })
        .collect();
    let com_crs: Vec<ResourceTemplate> = com_parts
        .iter()
        .map(|(io, irq, _)| ResourceTemplate::new(vec![io, irq]))
        .collect();
    let com_names: Vec<[Name; 3]> = com_parts
        .iter()
        .zip(&com_crs)
        .map(|((_, _, uid), crs)| [name("_HID", &com_hid), name("_UID", uid), name("_CRS", crs)])
        .collect();
    let coms: Vec<Device> = com_names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            Device::new(
                format!("COM{}", i + 1).as_str().into(),
                n.iter().map(|x| x as &dyn Aml).collect(),
            )
        })
        .collect();

    let isa_adr = dword(0x0001_0000);
    let isa_adr_n = name("_ADR", &isa_adr);
    let mut isa_children: Vec<&dyn Aml> = vec![&isa_adr_n, &rtc, &kbd, &mou];
    for c in &coms {
        isa_children.push(c);
    }
    let isa = Device::new("ISA_".into(), isa_children);

    let pci_hid = EISAName::new("PNP0A03");
    let pci_hid_n = name("_HID", &pci_hid);
    let pci_adr_n = name("_ADR", &zero);
    let pci_uid_n = name("_UID", &zero);
    let pci_bbn_n = name("_BBN", &zero);
    let crs_n = name("_CRS", &crs);
    let prt_n = name("_PRT", &prt);
    let hp = PciHotplugAml::new(cfg.hotplug_slots);
    let mut pci0_children: Vec<&dyn Aml> = vec![
        &pci_hid_n, &pci_adr_n, &pci_uid_n, &pci_bbn_n, &crs_n, &prt_n, &isa,
    ];
    if cfg.hotplug_slots != 0 {
        pci0_children.push(&hp);
    }
    let pci0 = Device::new("PCI0".into(), pci0_children);

    // Processors.
    let cpu_hid: aml::AmlStr = "ACPI0007";
    let cpu_vals: Vec<(aml::Byte, aml::Byte)> = cfg
        .cpus
        .iter()
        .enumerate()
        .map(|(i, (present, _))| (byte(i as u8), byte(if *present { 0x0f } else { 0 })))
        .collect();
    let cpu_names: Vec<[Name; 3]> = cpu_vals
        .iter()
        .map(|(uid, sta)| [name("_HID", &cpu_hid), name("_UID", uid), name("_STA", sta)])
        .collect();
    let cpus: Vec<Device> = cpu_names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            Device::new(
                format!("C{i:03X}").as_str().into(),
                n.iter().map(|x| x as &dyn Aml).collect(),
            )
        })
        .collect();

    let mut sb_children: Vec<&dyn Aml> = vec![&pci0];
    for c in &cpus {
        sb_children.push(c);
    }
    let sb = Scope::new("\\_SB_".into(), sb_children);
    sb.to_aml_bytes(&mut out);

    if cfg.hotplug_slots != 0 {
        out.extend(gpe_scope());
    }

    let s5 = Package::new(vec![&zero, &zero, &zero, &zero]);
    name("\\_S5_", &s5).to_aml_bytes(&mut out);
    out
}

/// The ACPI PCI hotplug objects inside `\_SB.PCI0`, as QEMU's `pc` generates them: the
/// register block (PCIU/PCID at 0xAE00, B0EJ at 0xAE08, BNUM at 0xAE10), the lock `BLCK`,
/// `BSEL` (this bus's number for BNUM), `PCEJ(bus, slot)` (eject: write the slot's bit to
/// B0EJ), a device `Sxx` (xx = devfn in hex) per hotpluggable slot with `_ADR`, `_SUN` and
/// `_EJ0`, `DVNT(bitmap, event)` notifying the slots in the bitmap, and `PCNT` (device
/// check for PCIU, eject request for PCID), which `\_GPE._E01` calls.
struct PciHotplugAml {
    slots: u32,
}

impl PciHotplugAml {
    fn new(slots: u32) -> Self {
        Self { slots }
    }

    fn slot_name(slot: u8) -> String {
        format!("S{:02X}_", u32::from(slot) << 3)
    }
}

impl Aml for PciHotplugAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        use aml::{
            Acquire, And, Arg, Field, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule,
            If, Method, MethodCall, Mutex, Notify, OpRegion, OpRegionSpace, Path, Release, Return,
            ShiftLeft, Store,
        };
        let zero = aml::Zero {};
        let one = aml::One {};
        let dword_acc = |region: &str, entries: Vec<FieldEntry>| {
            Field::new(
                region.into(),
                FieldAccessType::DWord,
                FieldLockRule::NoLock,
                FieldUpdateRule::WriteAsZeroes,
                entries,
            )
        };
        let (base, ej, sel) = (0xae00u32, 0xae08u32, 0xae10u32);
        let (len8, len4) = (8u32, 4u32);
        OpRegion::new("PCST".into(), OpRegionSpace::SystemIO, &base, &len8).to_aml_bytes(sink);
        dword_acc(
            "PCST",
            vec![
                FieldEntry::Named(*b"PCIU", 32),
                FieldEntry::Named(*b"PCID", 32),
            ],
        )
        .to_aml_bytes(sink);
        OpRegion::new("SEJ_".into(), OpRegionSpace::SystemIO, &ej, &len4).to_aml_bytes(sink);
        dword_acc("SEJ_", vec![FieldEntry::Named(*b"B0EJ", 32)]).to_aml_bytes(sink);
        OpRegion::new("BNMR".into(), OpRegionSpace::SystemIO, &sel, &len8).to_aml_bytes(sink);
        dword_acc(
            "BNMR",
            vec![
                FieldEntry::Named(*b"BNUM", 32),
                FieldEntry::Named(*b"PIDX", 32),
            ],
        )
        .to_aml_bytes(sink);
        Mutex::new("BLCK".into(), 0).to_aml_bytes(sink);
        name("BSEL", &zero).to_aml_bytes(sink);

        // PCEJ(bus, slot): select the bus, eject the slot.
        let b0ej = Path::new("B0EJ");
        let bnum = Path::new("BNUM");
        let acquire = Acquire::new("BLCK".into(), 0xffff);
        let release = Release::new("BLCK".into());
        let sel_bus = Store::new(&bnum, &Arg(0));
        let eject = ShiftLeft::new(&b0ej, &one, &Arg(1));
        let ret = Return::new(&zero);
        Method::new(
            "PCEJ".into(),
            2,
            false,
            vec![&acquire, &sel_bus, &eject, &release, &ret],
        )
        .to_aml_bytes(sink);

        let slots: Vec<u8> = (0..32u8).filter(|s| self.slots & (1 << s) != 0).collect();
        let bsel = Path::new("BSEL");
        let sun = Path::new("_SUN");
        let ej0_call = MethodCall::new("PCEJ".into(), vec![&bsel, &sun]);
        for &slot in &slots {
            let adr = u32::from(slot) << 16;
            let sun_v = u32::from(slot);
            let adr_n = name("_ADR", &adr);
            let sun_n = name("_SUN", &sun_v);
            let ej0 = Method::new("_EJ0".into(), 1, false, vec![&ej0_call]);
            Device::new(
                Self::slot_name(slot).as_str().into(),
                vec![&adr_n, &sun_n, &ej0],
            )
            .to_aml_bytes(sink);
        }

        // DVNT(bitmap, event): notify each slot whose bit is set.
        let paths: Vec<(u32, Path)> = slots
            .iter()
            .map(|&s| (1u32 << s, Path::new(&Self::slot_name(s))))
            .collect();
        let tests: Vec<(And, Notify)> = paths
            .iter()
            .map(|(bit, p)| (And::new(&zero, &Arg(0), bit), Notify::new(p, &Arg(1))))
            .collect();
        let ifs: Vec<If> = tests
            .iter()
            .map(|(cond, notify)| If::new(cond, vec![notify]))
            .collect();
        Method::new(
            "DVNT".into(),
            2,
            false,
            ifs.iter().map(|i| i as &dyn Aml).collect(),
        )
        .to_aml_bytes(sink);

        // PCNT: what arrived (device check, 1) and what must go (eject request, 3).
        let pciu = Path::new("PCIU");
        let pcid = Path::new("PCID");
        let three = 3u8;
        let select = Store::new(&bnum, &bsel);
        let up = MethodCall::new("DVNT".into(), vec![&pciu, &one]);
        let down = MethodCall::new("DVNT".into(), vec![&pcid, &three]);
        Method::new("PCNT".into(), 0, false, vec![&select, &up, &down]).to_aml_bytes(sink);
    }
}

/// `\_GPE` with `_E01`: GPE0 bit 1 (the PCI hotplug block's) runs `\_SB.PCI0.PCNT` under
/// its lock.
fn gpe_scope() -> Vec<u8> {
    use aml::{Acquire, Method, MethodCall, Release};
    let mut out = Vec::new();
    let hid: aml::AmlStr = "ACPI0006";
    let hid_n = name("_HID", &hid);
    let acquire = Acquire::new("\\_SB_.PCI0.BLCK".into(), 0xffff);
    let pcnt = MethodCall::new("\\_SB_.PCI0.PCNT".into(), vec![]);
    let release = Release::new("\\_SB_.PCI0.BLCK".into());
    let e01 = Method::new("_E01".into(), 0, false, vec![&acquire, &pcnt, &release]);
    Scope::new("\\_GPE".into(), vec![&hid_n, &e01]).to_aml_bytes(&mut out);
    out
}
