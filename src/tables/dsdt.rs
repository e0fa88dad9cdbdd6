//! The DSDT's AML, built with the `acpi_tables` crate's AML encoder: the PCI root bridge
//! with its resources and interrupt routing, the ISA devices behind the PIIX3, ACPI PCI
//! hotplug (`_E01`), ACPI CPU hotplug as QEMU's `pc` has it (`\_SB.PCI0.PRES`,
//! `\_SB.CPUS` with one processor device per possible CPU, `_E02`), and `\_S5` (soft-off
//! with SLP_TYP 0, as QEMU's PIIX4 expects).

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
    /// DIMM slots (`-m ...,slots=N`): with any, the memory hotplug AML (`\_SB.PCI0.MHPD`,
    /// `\_SB.MHPC` with a device `MPxx` per slot, `\_GPE._E03`), as QEMU's `pc` has it.
    pub mem_slots: u32,
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
    let pres = CpuHotplugResources;
    pci0_children.push(&pres);
    let mhpd = MemHotplugResources;
    if cfg.mem_slots != 0 {
        pci0_children.push(&mhpd);
    }
    let pci0 = Device::new("PCI0".into(), pci0_children);

    // Processors: the CPU hotplug container and one device per possible CPU.
    let cpus = CpusAml { cpus: &cfg.cpus };
    let mhpc = MemHotplugAml {
        slots: cfg.mem_slots,
    };
    let mut sb_children: Vec<&dyn Aml> = vec![&pci0, &cpus];
    if cfg.mem_slots != 0 {
        sb_children.push(&mhpc);
    }
    let sb = Scope::new("\\_SB_".into(), sb_children);
    sb.to_aml_bytes(&mut out);

    out.extend(gpe_scope(cfg.hotplug_slots != 0, cfg.mem_slots != 0));

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

/// `\_GPE`: `_E01` (GPE0 bit 1, the PCI hotplug block's, when there is one) runs
/// `\_SB.PCI0.PCNT` under its lock; `_E02` (bit 2, the CPU hotplug block's) runs
/// `\_SB.CPUS.CSCN`.
fn gpe_scope(pci_hotplug: bool, mem_hotplug: bool) -> Vec<u8> {
    use aml::{Acquire, Method, MethodCall, Release};
    let mut out = Vec::new();
    let hid: aml::AmlStr = "ACPI0006";
    let hid_n = name("_HID", &hid);
    let acquire = Acquire::new("\\_SB_.PCI0.BLCK".into(), 0xffff);
    let pcnt = MethodCall::new("\\_SB_.PCI0.PCNT".into(), vec![]);
    let release = Release::new("\\_SB_.PCI0.BLCK".into());
    let e01 = Method::new("_E01".into(), 0, false, vec![&acquire, &pcnt, &release]);
    let cscn = MethodCall::new("\\_SB_.CPUS.CSCN".into(), vec![]);
    let e02 = Method::new("_E02".into(), 0, false, vec![&cscn]);
    let mut children: Vec<&dyn Aml> = vec![&hid_n];
    if pci_hotplug {
        children.push(&e01);
    }
    children.push(&e02);
    // `_E03` (bit 3, the memory hotplug block's) runs `\_SB.MHPC.MSCN`.
    let mscn = MethodCall::new("\\_SB_.MHPC.MSCN".into(), vec![]);
    let e03 = Method::new("_E03".into(), 0, false, vec![&mscn]);
    if mem_hotplug {
        children.push(&e03);
    }
    Scope::new("\\_GPE".into(), children).to_aml_bytes(&mut out);
    out
}

/// `\_SB.PCI0.PRES`, the CPU hotplug block as QEMU's `pc` describes it: its ports
/// (0xAF00, 12 bytes: the modern interface), the lock `CPLK`, the fields `CPEN` (enabled),
/// `CINS` (insert event), `CRMV` (remove event), `CEJ0` (eject), `CEJF`, `CCMD`
/// (command) as bytes and `CSEL` (selector), `CDAT` (command data) as dwords, and `_INI`,
/// whose `CSEL = 0` switches the block from the legacy bitmap to the modern interface.
struct CpuHotplugResources;

impl Aml for CpuHotplugResources {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        use aml::{
            Field, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, Method, Mutex,
            OpRegion, OpRegionSpace, Path, Store,
        };
        let base = u32::from(devices::cpu_hotplug::CPUHP_BASE);
        let len = u32::from(devices::cpu_hotplug::MODERN_LEN);
        let hid = EISAName::new("PNP0A06");
        let uid: aml::AmlStr = "CPU Hotplug resources";
        let io = IO::new(base as u16, base as u16, 1, len as u8);
        let crs = ResourceTemplate::new(vec![&io]);
        let region = OpRegion::new("PRST".into(), OpRegionSpace::SystemIO, &base, &len);
        let bytes = Field::new(
            "PRST".into(),
            FieldAccessType::Byte,
            FieldLockRule::NoLock,
            FieldUpdateRule::WriteAsZeroes,
            vec![
                FieldEntry::Reserved(32),
                FieldEntry::Named(*b"CPEN", 1),
                FieldEntry::Named(*b"CINS", 1),
                FieldEntry::Named(*b"CRMV", 1),
                FieldEntry::Named(*b"CEJ0", 1),
                FieldEntry::Named(*b"CEJF", 1),
                FieldEntry::Reserved(3),
                FieldEntry::Named(*b"CCMD", 8),
            ],
        );
        let dwords = Field::new(
            "PRST".into(),
            FieldAccessType::DWord,
            FieldLockRule::NoLock,
            FieldUpdateRule::Preserve,
            vec![
                FieldEntry::Named(*b"CSEL", 32),
                FieldEntry::Reserved(32),
                FieldEntry::Named(*b"CDAT", 32),
            ],
        );
        let zero = aml::Zero {};
        let csel = Path::new("CSEL");
        let select0 = Store::new(&csel, &zero);
        let ini = Method::new("_INI".into(), 0, true, vec![&select0]);
        let lock = Mutex::new("CPLK".into(), 0);
        Device::new(
            "PRES".into(),
            vec![
                &name("_HID", &hid),
                &name("_UID", &uid),
                &lock,
                &name("_CRS", &crs),
                &region,
                &bytes,
                &dwords,
                &ini,
            ],
        )
        .to_aml_bytes(sink);
    }
}

/// `\_SB.CPUS` (a processor container, ACPI0010), as QEMU's `pc` generates it: `CTFY(cpu,
/// event)` notifies CPU device `cpu`; `CSTA(cpu)` is its `_STA` (0xF while `CPEN`);
/// `CEJ0(cpu)` ejects it; `CSCN` (run by `\_GPE._E02`) walks every possible CPU and
/// notifies device check (1) for an insert event and eject request (3) for a remove event,
/// clearing each; `COST(cpu, event, status, info)` reports `_OST`. One device `Cxxx`
/// (ACPI0007, `_UID` = the MADT processor UID) per possible CPU with `_STA`, `_MAT` (its
/// MADT local APIC entry), `_EJ0` (all but the boot CPU) and `_OST`.
struct CpusAml<'a> {
    cpus: &'a [(bool, u32)],
}

const PRES: &str = "\\_SB_.PCI0.PRES.";

fn pres(field: &str) -> aml::Path {
    aml::Path::new(&format!("{PRES}{field}"))
}

fn cpu_name(i: usize) -> String {
    format!("C{i:03X}")
}

impl Aml for CpusAml<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        use aml::{
            Acquire, Add, Arg, BufferData, Else, Equal, If, LessThan, Local, Method, MethodCall,
            Notify, Path, Release, Return, Store, While,
        };
        let zero = aml::Zero {};
        let one = aml::One {};
        let n = self.cpus.len();
        let lock = format!("{PRES}CPLK");
        let acquire = Acquire::new(lock.as_str().into(), 0xffff);
        let release = Release::new(lock.as_str().into());
        let (csel, cpen, cins, crmv, cej0, ccmd, cdat) = (
            pres("CSEL"),
            pres("CPEN"),
            pres("CINS"),
            pres("CRMV"),
            pres("CEJ0"),
            pres("CCMD"),
            pres("CDAT"),
        );

        // CTFY(cpu, event).
        let names: Vec<(usize, Path)> = (0..n).map(|i| (i, Path::new(&cpu_name(i)))).collect();
        let idx: Vec<usize> = (0..n).collect();
        let conds: Vec<Equal> = idx.iter().map(|i| Equal::new(&Arg(0), i)).collect();
        let notifies: Vec<Notify> = names.iter().map(|(_, p)| Notify::new(p, &Arg(1))).collect();
        let ifs: Vec<If> = conds
            .iter()
            .zip(&notifies)
            .map(|(c, no)| If::new(c, vec![no]))
            .collect();
        let ctfy = Method::new(
            "CTFY".into(),
            2,
            false,
            ifs.iter().map(|i| i as &dyn Aml).collect(),
        );

        // CSTA(cpu).
        let sel_arg = Store::new(&csel, &Arg(0));
        let l0_zero = Store::new(&Local(0), &zero);
        let fifteen = 0x0fu8;
        let l0_f = Store::new(&Local(0), &fifteen);
        let enabled = Equal::new(&cpen, &one);
        let if_enabled = If::new(&enabled, vec![&l0_f]);
        let ret_l0 = Return::new(&Local(0));
        let csta = Method::new(
            "CSTA".into(),
            1,
            true,
            vec![&acquire, &sel_arg, &l0_zero, &if_enabled, &release, &ret_l0],
        );

        // CEJ0(cpu).
        let eject = Store::new(&cej0, &one);
        let cej0_m = Method::new(
            "CEJ0".into(),
            1,
            true,
            vec![&acquire, &sel_arg, &eject, &release],
        );

        // CSCN: every possible CPU's events, in order.
        let count = n;
        let sel_l0 = Store::new(&csel, &Local(0));
        let inserting = Equal::new(&cins, &one);
        let check = MethodCall::new("CTFY".into(), vec![&Local(0), &one]);
        let clear_ins = Store::new(&cins, &one);
        let if_ins = If::new(&inserting, vec![&check, &clear_ins]);
        let removing = Equal::new(&crmv, &one);
        let three = 3u8;
        let eject_req = MethodCall::new("CTFY".into(), vec![&Local(0), &three]);
        let clear_rmv = Store::new(&crmv, &one);
        let if_rmv = If::new(&removing, vec![&eject_req, &clear_rmv]);
        let else_rmv = Else::new(vec![&if_rmv]);
        let next = Add::new(&Local(0), &Local(0), &one);
        let more = LessThan::new(&Local(0), &count);
        let walk = While::new(&more, vec![&sel_l0, &if_ins, &else_rmv, &next]);
        let cscn = Method::new(
            "CSCN".into(),
            0,
            true,
            vec![&acquire, &l0_zero, &walk, &release],
        );

        // COST(cpu, event, status, info).
        let cmd1 = Store::new(&ccmd, &one);
        let ev = Store::new(&cdat, &Arg(1));
        let two = 2u8;
        let cmd2 = Store::new(&ccmd, &two);
        let st = Store::new(&cdat, &Arg(2));
        let cost = Method::new(
            "COST".into(),
            4,
            true,
            vec![&acquire, &sel_arg, &cmd1, &ev, &cmd2, &st, &release],
        );

        // The CPU devices.
        let hid: aml::AmlStr = "ACPI0007";
        let uids: Vec<aml::Byte> = (0..n).map(|i| i as u8).collect();
        let mats: Vec<BufferData> = self
            .cpus
            .iter()
            .enumerate()
            .map(|(i, (_, apic))| BufferData::new(vec![0, 8, i as u8, *apic as u8, 1, 0, 0, 0]))
            .collect();
        let sta_calls: Vec<MethodCall> = uids
            .iter()
            .map(|u| MethodCall::new("CSTA".into(), vec![u]))
            .collect();
        let sta_rets: Vec<Return> = sta_calls.iter().map(|c| Return::new(c)).collect();
        let stas: Vec<Method> = sta_rets
            .iter()
            .map(|r| Method::new("_STA".into(), 0, true, vec![r]))
            .collect();
        let ej_calls: Vec<MethodCall> = uids
            .iter()
            .map(|u| MethodCall::new("CEJ0".into(), vec![u]))
            .collect();
        let ejs: Vec<Method> = ej_calls
            .iter()
            .map(|c| Method::new("_EJ0".into(), 1, false, vec![c]))
            .collect();
        let ost_calls: Vec<MethodCall> = uids
            .iter()
            .map(|u| MethodCall::new("COST".into(), vec![u, &Arg(0), &Arg(1), &Arg(2)]))
            .collect();
        let osts: Vec<Method> = ost_calls
            .iter()
            .map(|c| Method::new("_OST".into(), 3, true, vec![c]))
            .collect();
        let hid_n = name("_HID", &hid);
        let uid_ns: Vec<Name> = uids.iter().map(|u| name("_UID", u)).collect();
        let mat_ns: Vec<Name> = mats.iter().map(|m| name("_MAT", m)).collect();
        let cpu_names: Vec<String> = (0..n).map(cpu_name).collect();
        let devs: Vec<Device> = (0..n)
            .map(|i| {
                let mut c: Vec<&dyn Aml> = vec![&hid_n, &uid_ns[i], &stas[i], &mat_ns[i]];
                if i != 0 {
                    c.push(&ejs[i]);
                }
                c.push(&osts[i]);
                Device::new(cpu_names[i].as_str().into(), c)
            })
            .collect();

        let cpus_hid: aml::AmlStr = "ACPI0010";
        let cpus_cid = EISAName::new("PNP0A05");
        let cpus_hid_n = name("_HID", &cpus_hid);
        let cpus_cid_n = name("_CID", &cpus_cid);
        let mut children: Vec<&dyn Aml> = vec![
            &cpus_hid_n,
            &cpus_cid_n,
            &ctfy,
            &csta,
            &cej0_m,
            &cscn,
            &cost,
        ];
        for d in &devs {
            children.push(d);
        }
        Device::new("CPUS".into(), children).to_aml_bytes(sink);
    }
}

/// `\_SB.PCI0.MHPD`, the memory hotplug block's resources as QEMU's `pc` describes them:
/// its ports (0x0A00, 24 bytes) and the region `HPMR` the DIMM methods use.
struct MemHotplugResources;

impl Aml for MemHotplugResources {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        use aml::{OpRegion, OpRegionSpace};
        let base = u32::from(devices::mem_hotplug::MEMHP_BASE);
        let len = u32::from(devices::mem_hotplug::MEMHP_LEN);
        let hid: aml::AmlStr = "PNP0A06";
        let uid: aml::AmlStr = "Memory hotplug resources";
        let io = IO::new(base as u16, base as u16, 0, len as u8);
        let crs = ResourceTemplate::new(vec![&io]);
        let region = OpRegion::new("HPMR".into(), OpRegionSpace::SystemIO, &base, &len);
        Device::new(
            "MHPD".into(),
            vec![
                &name("_HID", &hid),
                &name("_UID", &uid),
                &name("_CRS", &crs),
                &region,
            ],
        )
        .to_aml_bytes(sink);
    }
}

/// `\_SB.MHPC`, the DIMM slots as QEMU's `pc` generates them (hw/acpi/memory_hotplug.c):
/// the fields of `\_SB.PCI0.MHPD.HPMR` (`MRBL`/`MRBH` address, `MRLL`/`MRLH` size, `MPX`
/// proximity; `MES`/`MINS`/`MRMV`/`MEJ` flags; `MSEL` selector, `MOEV`/`MOSC` `_OST`),
/// the lock `MLCK` and the methods every slot device calls: `MSCN` (run by `\_GPE._E03`:
/// device check for an insert event, eject request for a remove event, clearing each),
/// `MRST` (`_STA`: 0xF while enabled), `MCRS` (`_CRS`: the DIMM's range, a QWordMemory or,
/// below 4 GiB, a DWordMemory), `MPXM`, `MOST`, `MEJ0`; then one device `MPxx` (PNP0C80)
/// per slot and `MTFY(slot, event)`.
struct MemHotplugAml {
    slots: u32,
}

impl Aml for MemHotplugAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        use aml::{
            Acquire, Add, Arg, CreateDWordField, Else, Equal, Field, FieldAccessType, FieldEntry,
            FieldLockRule, FieldUpdateRule, If, LessThan, Local, Method, MethodCall, Mutex, Notify,
            Path, Release, Return, Store, Subtract, ToInteger, While,
        };
        let n = self.slots;
        let zero = aml::Zero {};
        let one = aml::One {};
        let region: &str = "\\_SB_.PCI0.MHPD.HPMR";
        let dwords1 = Field::new(
            region.into(),
            FieldAccessType::DWord,
            FieldLockRule::NoLock,
            FieldUpdateRule::Preserve,
            vec![
                FieldEntry::Named(*b"MRBL", 32),
                FieldEntry::Named(*b"MRBH", 32),
                FieldEntry::Named(*b"MRLL", 32),
                FieldEntry::Named(*b"MRLH", 32),
                FieldEntry::Named(*b"MPX_", 32),
            ],
        );
        let flags = Field::new(
            region.into(),
            FieldAccessType::Byte,
            FieldLockRule::NoLock,
            FieldUpdateRule::WriteAsZeroes,
            vec![
                FieldEntry::Reserved(0x14 * 8),
                FieldEntry::Named(*b"MES_", 1),
                FieldEntry::Named(*b"MINS", 1),
                FieldEntry::Named(*b"MRMV", 1),
                FieldEntry::Named(*b"MEJ_", 1),
            ],
        );
        let dwords2 = Field::new(
            region.into(),
            FieldAccessType::DWord,
            FieldLockRule::NoLock,
            FieldUpdateRule::Preserve,
            vec![
                FieldEntry::Named(*b"MSEL", 32),
                FieldEntry::Named(*b"MOEV", 32),
                FieldEntry::Named(*b"MOSC", 32),
            ],
        );
        let (mdnr, msel, mins, mrmv, mes, mej) = (
            Path::new("MDNR"),
            Path::new("MSEL"),
            Path::new("MINS"),
            Path::new("MRMV"),
            Path::new("MES_"),
            Path::new("MEJ_"),
        );
        let acquire = Acquire::new("MLCK".into(), 0xffff);
        let release = Release::new("MLCK".into());
        let lock = Mutex::new("MLCK".into(), 0);

        // _STA: present only with slots.
        let no_slots = Equal::new(&mdnr, &zero);
        let ret0 = Return::new(&zero);
        let if_none = If::new(&no_slots, vec![&ret0]);
        let eleven = 0x0bu8;
        let ret_b = Return::new(&eleven);
        let sta = Method::new("_STA".into(), 0, false, vec![&if_none, &ret_b]);

        // MSCN.
        let l0_zero = Store::new(&Local(0), &zero);
        let sel_l0 = Store::new(&msel, &Local(0));
        let inserting = Equal::new(&mins, &one);
        let check = MethodCall::new("MTFY".into(), vec![&Local(0), &one]);
        let clear_ins = Store::new(&mins, &one);
        let if_ins = If::new(&inserting, vec![&check, &clear_ins]);
        let removing = Equal::new(&mrmv, &one);
        let three = 3u8;
        let eject_req = MethodCall::new("MTFY".into(), vec![&Local(0), &three]);
        let clear_rmv = Store::new(&mrmv, &one);
        let if_rmv = If::new(&removing, vec![&eject_req, &clear_rmv]);
        let else_rmv = Else::new(vec![&if_rmv]);
        let next = Add::new(&Local(0), &Local(0), &one);
        let more = LessThan::new(&Local(0), &mdnr);
        let walk = While::new(&more, vec![&sel_l0, &if_ins, &else_rmv, &next]);
        let ret1 = Return::new(&one);
        let mscn = Method::new(
            "MSCN".into(),
            0,
            false,
            vec![&if_none, &l0_zero, &acquire, &walk, &release, &ret1],
        );

        // MRST(slot).
        let arg_int = ToInteger::new(&msel, &Arg(0));
        let fifteen = 0x0fu8;
        let l0_f = Store::new(&Local(0), &fifteen);
        let enabled = Equal::new(&mes, &one);
        let if_enabled = If::new(&enabled, vec![&l0_f]);
        let ret_l0 = Return::new(&Local(0));
        let mrst = Method::new(
            "MRST".into(),
            1,
            false,
            vec![&l0_zero, &acquire, &arg_int, &if_enabled, &release, &ret_l0],
        );

        // MCRS(slot): QWordMemory at byte 0 of MR64: _MIN at 0x0E, _MAX 0x16, _LEN 0x26
        // (each 8 bytes, set as two dwords); DWordMemory in MR32: _MIN 0x0A, _MAX 0x0E,
        // _LEN 0x16.
        let q = AddressSpace::<u64>::new_memory(
            AddressSpaceCacheable::Cacheable,
            true,
            0,
            0xffff_ffff_ffff_fffe,
            None,
        );
        let mr64_t = ResourceTemplate::new(vec![&q]);
        let mr64_n = name("MR64", &mr64_t);
        let (mr64, minl, minh, lenl, lenh, maxl, maxh) = (
            Path::new("MR64"),
            Path::new("MINL"),
            Path::new("MINH"),
            Path::new("LENL"),
            Path::new("LENH"),
            Path::new("MAXL"),
            Path::new("MAXH"),
        );
        let (o_minl, o_minh, o_lenl, o_lenh, o_maxl, o_maxh) =
            (0x0eu8, 0x12u8, 0x26u8, 0x2au8, 0x16u8, 0x1au8);
        let c_minl = CreateDWordField::new(&minl, &mr64, &o_minl);
        let c_minh = CreateDWordField::new(&minh, &mr64, &o_minh);
        let c_lenl = CreateDWordField::new(&lenl, &mr64, &o_lenl);
        let c_lenh = CreateDWordField::new(&lenh, &mr64, &o_lenh);
        let c_maxl = CreateDWordField::new(&maxl, &mr64, &o_maxl);
        let c_maxh = CreateDWordField::new(&maxh, &mr64, &o_maxh);
        let (mrbh, mrbl, mrlh, mrll) = (
            Path::new("MRBH"),
            Path::new("MRBL"),
            Path::new("MRLH"),
            Path::new("MRLL"),
        );
        let s_minh = Store::new(&minh, &mrbh);
        let s_minl = Store::new(&minl, &mrbl);
        let s_lenh = Store::new(&lenh, &mrlh);
        let s_lenl = Store::new(&lenl, &mrll);
        let s_maxl = Add::new(&maxl, &minl, &lenl);
        let s_maxh = Add::new(&maxh, &minh, &lenh);
        let carry = LessThan::new(&maxl, &minl);
        let inc_h = Add::new(&maxh, &maxh, &one);
        let if_carry = If::new(&carry, vec![&inc_h]);
        let borrow = LessThan::new(&maxl, &one);
        let dec_h = Subtract::new(&maxh, &maxh, &one);
        let if_borrow = If::new(&borrow, vec![&dec_h]);
        let dec_l = Subtract::new(&maxl, &maxl, &one);
        let d = AddressSpace::<u32>::new_memory(
            AddressSpaceCacheable::Cacheable,
            true,
            0,
            0xffff_fffe,
            None,
        );
        let mr32_t = ResourceTemplate::new(vec![&d]);
        let mr32_n = name("MR32", &mr32_t);
        let (mr32, min, max, len) = (
            Path::new("MR32"),
            Path::new("MIN_"),
            Path::new("MAX_"),
            Path::new("LEN_"),
        );
        let (o_min, o_max, o_len) = (0x0au8, 0x0eu8, 0x16u8);
        let c_min = CreateDWordField::new(&min, &mr32, &o_min);
        let c_max = CreateDWordField::new(&max, &mr32, &o_max);
        let c_len = CreateDWordField::new(&len, &mr32, &o_len);
        let s_min = Store::new(&min, &minl);
        let s_max = Store::new(&max, &maxl);
        let s_len = Store::new(&len, &lenl);
        let ret32 = Return::new(&mr32);
        let below_4g = Equal::new(&maxh, &zero);
        let if_32 = If::new(
            &below_4g,
            vec![
                &mr32_n, &c_min, &c_max, &c_len, &s_min, &s_max, &s_len, &release, &ret32,
            ],
        );
        let ret64 = Return::new(&mr64);
        let mcrs = Method::new(
            "MCRS".into(),
            1,
            true,
            vec![
                &acquire, &arg_int, &mr64_n, &c_minl, &c_minh, &c_lenl, &c_lenh, &c_maxl, &c_maxh,
                &s_minh, &s_minl, &s_lenh, &s_lenl, &s_maxl, &s_maxh, &if_carry, &if_borrow,
                &dec_l, &if_32, &release, &ret64,
            ],
        );

        // MPXM(slot), MOST(slot, event, status, info), MEJ0(slot, arg).
        let mpx = Path::new("MPX_");
        let l0_pxm = Store::new(&Local(0), &mpx);
        let mpxm = Method::new(
            "MPXM".into(),
            1,
            false,
            vec![&acquire, &arg_int, &l0_pxm, &release, &ret_l0],
        );
        let (moev, mosc) = (Path::new("MOEV"), Path::new("MOSC"));
        let ev = Store::new(&moev, &Arg(1));
        let st = Store::new(&mosc, &Arg(2));
        let most = Method::new(
            "MOST".into(),
            4,
            false,
            vec![&acquire, &arg_int, &ev, &st, &release],
        );
        let eject = Store::new(&mej, &one);
        let mej0 = Method::new(
            "MEJ0".into(),
            2,
            false,
            vec![&acquire, &arg_int, &eject, &release],
        );

        // The slot devices.
        let names: Vec<String> = (0..n).map(|i| format!("MP{i:02X}")).collect();
        let uids: Vec<String> = (0..n).map(|i| format!("0x{i:02X}")).collect();
        let uid_ns: Vec<Name> = uids.iter().map(|u| name("_UID", u)).collect();
        let hid = EISAName::new("PNP0C80");
        let hid_n = name("_HID", &hid);
        let uid = Path::new("_UID");
        let crs_call = MethodCall::new("MCRS".into(), vec![&uid]);
        let crs_ret = Return::new(&crs_call);
        let crs = Method::new("_CRS".into(), 0, false, vec![&crs_ret]);
        let sta_call = MethodCall::new("MRST".into(), vec![&uid]);
        let sta_ret = Return::new(&sta_call);
        let dev_sta = Method::new("_STA".into(), 0, false, vec![&sta_ret]);
        let pxm_call = MethodCall::new("MPXM".into(), vec![&uid]);
        let pxm_ret = Return::new(&pxm_call);
        let pxm = Method::new("_PXM".into(), 0, false, vec![&pxm_ret]);
        let ost_call = MethodCall::new("MOST".into(), vec![&uid, &Arg(0), &Arg(1), &Arg(2)]);
        let ost = Method::new("_OST".into(), 3, false, vec![&ost_call]);
        let ej_call = MethodCall::new("MEJ0".into(), vec![&uid, &Arg(0)]);
        let ej0 = Method::new("_EJ0".into(), 1, false, vec![&ej_call]);
        let devs: Vec<Device> = (0..n as usize)
            .map(|i| {
                Device::new(
                    names[i].as_str().into(),
                    vec![&uid_ns[i], &hid_n, &crs, &dev_sta, &pxm, &ost, &ej0],
                )
            })
            .collect();

        // MTFY(slot, event).
        let idx: Vec<u32> = (0..n).collect();
        let conds: Vec<Equal> = idx.iter().map(|i| Equal::new(&Arg(0), i)).collect();
        let paths: Vec<Path> = names.iter().map(|s| Path::new(s)).collect();
        let notifies: Vec<Notify> = paths.iter().map(|p| Notify::new(p, &Arg(1))).collect();
        let ifs: Vec<If> = conds
            .iter()
            .zip(&notifies)
            .map(|(c, no)| If::new(c, vec![no]))
            .collect();
        let mtfy = Method::new(
            "MTFY".into(),
            2,
            false,
            ifs.iter().map(|i| i as &dyn Aml).collect(),
        );

        let c_hid: aml::AmlStr = "PNP0A06";
        let c_uid: aml::AmlStr = "DIMM devices";
        let count = n;
        let (hid_c, uid_c, mdnr_n) = (
            name("_HID", &c_hid),
            name("_UID", &c_uid),
            name("MDNR", &count),
        );
        let mut children: Vec<&dyn Aml> = vec![
            &hid_c, &uid_c, &mdnr_n, &dwords1, &flags, &dwords2, &sta, &lock, &mscn, &mrst, &mcrs,
            &mpxm, &most, &mej0,
        ];
        for d in &devs {
            children.push(d);
        }
        children.push(&mtfy);
        Device::new("MHPC".into(), children).to_aml_bytes(sink);
    }
}
