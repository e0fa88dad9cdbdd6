//! ACPI tables for the `pc` machine: RSDP, RSDT, XSDT, FADT, FACS, DSDT, MADT.
//!
//! The tables are built once as fw_cfg files with QEMU's linker/loader commands
//! ([`AcpiTables::fw_cfg_files`]), which is what SeaBIOS installs; direct boot runs the
//! same commands itself ([`AcpiTables::place`]) into the BIOS area, so both paths give the
//! guest identical tables.

use std::path::Path;

use super::dsdt::{self, DsdtConfig};
use super::loader::{self, Command, ALLOC_ZONE_FSEG, ALLOC_ZONE_HIGH};

pub const RSDP_FILE: &str = "etc/acpi/rsdp";
pub const TABLES_FILE: &str = "etc/acpi/tables";
pub const LOADER_FILE: &str = "etc/table-loader";

/// Fixed hardware of the PIIX4 PM block (at the base SeaBIOS programs, 0x600).
pub const PM_BASE: u16 = 0x600;
pub const GPE0_BASE: u16 = 0xafe0;
pub const SCI_IRQ: u16 = 9;
const IOAPIC_ADDR: u32 = 0xfec0_0000;
const LAPIC_ADDR: u32 = 0xfee0_0000;

/// What the tables describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiConfig {
    pub dsdt: DsdtConfig,
    /// With memory hotplug (QEMU's `pc` then makes one NUMA node): the SRAT.
    pub srat: Option<SratConfig>,
}

/// What the SRAT describes: one proximity domain (0) holding every possible CPU and the
/// RAM, and the device-memory region marked hotpluggable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SratConfig {
    /// RAM below and above 4 GiB.
    pub below_4g: u64,
    pub above_4g: u64,
    /// (base, size) of the device-memory region DIMMs are plugged in.
    pub device_memory: (u64, u64),
}

/// SRAT memory affinity flags (ACPI 6.5 §5.2.16.2).
const MEM_AFFINITY_ENABLED: u32 = 1;
const MEM_AFFINITY_HOTPLUGGABLE: u32 = 2;

/// The SRAT (revision 1) as QEMU's `pc` builds it for one NUMA node (hw/i386/acpi-build.c
/// build_srat): a local APIC affinity entry per possible CPU, memory affinity entries for
/// RAM with the 640 KiB–1 MiB hole and the PCI hole cut out, disabled empty entries up to
/// nodes + 2 memory entries, then the device-memory region, enabled and hotpluggable.
fn srat(cpus: &[(bool, u32)], s: &SratConfig) -> Vec<u8> {
    let mut t = header(b"SRAT", 0, 1);
    t.extend_from_slice(&1u32.to_le_bytes()); // reserved, 1 for compatibility
    t.extend_from_slice(&0u64.to_le_bytes());
    for (_, apic) in cpus {
        t.extend_from_slice(&[0, 16, 0, *apic as u8]);
        t.extend_from_slice(&1u32.to_le_bytes()); // enabled
        t.extend_from_slice(&[0; 8]); // SAPIC EID, domain 31:8, clock domain
    }
    let mem = |t: &mut Vec<u8>, base: u64, len: u64, flags: u32| {
        t.extend_from_slice(&[1, 40]);
        t.extend_from_slice(&0u32.to_le_bytes()); // proximity domain
        t.extend_from_slice(&0u16.to_le_bytes());
        t.extend_from_slice(&base.to_le_bytes());
        t.extend_from_slice(&len.to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(&flags.to_le_bytes());
        t.extend_from_slice(&0u64.to_le_bytes());
    };
    const HOLE_640K: (u64, u64) = (0xa_0000, 0x10_0000);
    let mut entries = 0;
    let below = s.below_4g;
    mem(&mut t, 0, below.min(HOLE_640K.0), MEM_AFFINITY_ENABLED);
    entries += 1;
    if below > HOLE_640K.1 {
        mem(
            &mut t,
            HOLE_640K.1,
            below - HOLE_640K.1,
            MEM_AFFINITY_ENABLED,
        );
        entries += 1;
    }
    if s.above_4g > 0 {
        mem(&mut t, 1 << 32, s.above_4g, MEM_AFFINITY_ENABLED);
        entries += 1;
    }
    for _ in entries..3 {
        mem(&mut t, 0, 0, 0);
    }
    mem(
        &mut t,
        s.device_memory.0,
        s.device_memory.1,
        MEM_AFFINITY_ENABLED | MEM_AFFINITY_HOTPLUGGABLE,
    );
    let len = t.len() as u32;
    t[4..8].copy_from_slice(&len.to_le_bytes());
    t
}

/// Built tables plus the commands that link them.
pub struct AcpiTables {
    rsdp: Vec<u8>,
    blob: Vec<u8>,
    commands: Vec<Command>,
    /// (signature, offset, length) of each table in `blob`.
    index: Vec<(String, usize, usize)>,
}

fn header(sig: &[u8; 4], len: usize, rev: u8) -> Vec<u8> {
    let mut h = Vec::with_capacity(36);
    h.extend_from_slice(sig);
    h.extend_from_slice(&(len as u32).to_le_bytes());
    h.push(rev);
    h.push(0); // checksum, fixed by the loader
    h.extend_from_slice(b"TROUPE");
    let mut table_id = *b"TROUPE  ";
    table_id[6..8].copy_from_slice(&sig[..2]);
    h.extend_from_slice(&table_id);
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(b"TRPE");
    h.extend_from_slice(&1u32.to_le_bytes());
    h
}

fn gas_io(addr: u16, bits: u8) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // system I/O
    g[1] = bits;
    g[3] = match bits {
        8 => 1,
        16 => 2,
        _ => 3,
    };
    g[4..12].copy_from_slice(&u64::from(addr).to_le_bytes());
    g
}

struct Builder {
    blob: Vec<u8>,
    commands: Vec<Command>,
    index: Vec<(String, usize, usize)>,
}

impl Builder {
    /// A pointer at `at` inside the blob to `target` inside the blob.
    fn pointer(&mut self, at: usize, size: u8, target: usize) {
        let v = (target as u64).to_le_bytes();
        self.blob[at..at + usize::from(size)].copy_from_slice(&v[..usize::from(size)]);
        self.commands.push(Command::AddPointer {
            dest: TABLES_FILE.into(),
            src: TABLES_FILE.into(),
            offset: at as u32,
            size,
        });
    }
}

impl Builder {
    fn new() -> Self {
        Self {
            blob: Vec::new(),
            commands: Vec::new(),
            index: Vec::new(),
        }
    }
}

impl AcpiTables {
    pub fn build(cfg: &AcpiConfig) -> Self {
        let mut b = BuilderWithSums {
            inner: Builder::new(),
            sums: Vec::new(),
        };

        // FACS: 64 bytes, no checksum.
        let mut facs = vec![0u8; 64];
        facs[0..4].copy_from_slice(b"FACS");
        facs[4..8].copy_from_slice(&64u32.to_le_bytes());
        facs[32] = 1; // version
        let facs_off = b.add("FACS", facs, false);

        // DSDT.
        let body = dsdt::aml(&cfg.dsdt);
        let mut d = header(b"DSDT", 36 + body.len(), 2);
        d.extend_from_slice(&body);
        let dsdt_off = b.add("DSDT", d, true);

        // FADT (revision 3, 244 bytes).
        let mut f = header(b"FACP", 244, 3);
        f.resize(244, 0);
        f[45] = 0; // preferred PM profile: unspecified
        f[46..48].copy_from_slice(&SCI_IRQ.to_le_bytes());
        let put32 =
            |f: &mut Vec<u8>, o: usize, v: u32| f[o..o + 4].copy_from_slice(&v.to_le_bytes());
        put32(&mut f, 56, u32::from(PM_BASE)); // PM1a_EVT_BLK
        put32(&mut f, 64, u32::from(PM_BASE) + 4); // PM1a_CNT_BLK
        put32(&mut f, 76, u32::from(PM_BASE) + 8); // PM_TMR_BLK
        put32(&mut f, 80, u32::from(GPE0_BASE)); // GPE0_BLK
        f[88] = 4; // PM1_EVT_LEN
        f[89] = 2; // PM1_CNT_LEN
        f[91] = 4; // PM_TMR_LEN
        f[92] = 4; // GPE0_BLK_LEN
        f[96..98].copy_from_slice(&0xfffu16.to_le_bytes()); // no C2
        f[98..100].copy_from_slice(&0xfffu16.to_le_bytes()); // no C3
        f[108] = 0x32; // CENTURY
        f[109..111].copy_from_slice(&3u16.to_le_bytes()); // legacy devices, 8042
                                                          // WBINVD | PROC_C1 | SLP_BUTTON | RTC_S4 | RESET_REG_SUP
        put32(
            &mut f,
            112,
            (1 << 0) | (1 << 2) | (1 << 5) | (1 << 7) | (1 << 10),
        );
        f[116..128].copy_from_slice(&gas_io(0xcf9, 8));
        f[128] = 0x06; // reset value
        f[131] = 0; // minor version
        f[148..160].copy_from_slice(&gas_io(PM_BASE, 32));
        f[172..184].copy_from_slice(&gas_io(PM_BASE + 4, 16));
        f[208..220].copy_from_slice(&gas_io(PM_BASE + 8, 32));
        f[220..232].copy_from_slice(&gas_io(GPE0_BASE, 32));
        let fadt_off = b.add("FACP", f, true);
        b.inner.pointer(fadt_off + 36, 4, facs_off); // FIRMWARE_CTRL
        b.inner.pointer(fadt_off + 40, 4, dsdt_off); // DSDT
        b.inner.pointer(fadt_off + 140, 8, dsdt_off); // X_DSDT

        // MADT.
        let mut m = header(b"APIC", 0, 1);
        m.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
        m.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT
        for (i, (present, apic_id)) in cfg.dsdt.cpus.iter().enumerate() {
            m.extend_from_slice(&[0, 8, i as u8, *apic_id as u8]);
            m.extend_from_slice(&u32::from(*present).to_le_bytes());
        }
        let ioapic_id = cfg.dsdt.cpus.len().min(0xfe) as u8;
        m.extend_from_slice(&[1, 12, ioapic_id, 0]);
        m.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes());
        // Interrupt source overrides: IRQ0 → GSI2; PCI IRQs level, active high.
        let mut iso = |irq: u8, gsi: u32, flags: u16| {
            m.extend_from_slice(&[2, 10, 0, irq]);
            m.extend_from_slice(&gsi.to_le_bytes());
            m.extend_from_slice(&flags.to_le_bytes());
        };
        iso(0, 2, 0);
        for irq in [5u8, 9, 10, 11] {
            iso(irq, u32::from(irq), 0x000d);
        }
        // LINT1 is NMI on every processor.
        m.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
        let mlen = m.len() as u32;
        m[4..8].copy_from_slice(&mlen.to_le_bytes());
        let madt_off = b.add("APIC", m, true);
        let mut tables = vec![fadt_off, madt_off];
        if let Some(sc) = &cfg.srat {
            tables.push(b.add("SRAT", srat(&cfg.dsdt.cpus, sc), true));
        }

        // RSDT and XSDT.
        let mut r = header(b"RSDT", 36 + 4 * tables.len(), 1);
        r.resize(36 + 4 * tables.len(), 0);
        let rsdt_off = b.add("RSDT", r, true);
        for (i, t) in tables.iter().enumerate() {
            b.inner.pointer(rsdt_off + 36 + 4 * i, 4, *t);
        }
        let mut x = header(b"XSDT", 36 + 8 * tables.len(), 1);
        x.resize(36 + 8 * tables.len(), 0);
        let xsdt_off = b.add("XSDT", x, true);
        for (i, t) in tables.iter().enumerate() {
            b.inner.pointer(xsdt_off + 36 + 8 * i, 8, *t);
        }

        // RSDP (ACPI 2.0, 36 bytes) in the F segment.
        let mut rsdp = Vec::with_capacity(36);
        rsdp.extend_from_slice(b"RSD PTR ");
        rsdp.push(0);
        rsdp.extend_from_slice(b"TROUPE");
        rsdp.push(2);
        rsdp.extend_from_slice(&(rsdt_off as u32).to_le_bytes());
        rsdp.extend_from_slice(&36u32.to_le_bytes());
        rsdp.extend_from_slice(&(xsdt_off as u64).to_le_bytes());
        rsdp.extend_from_slice(&[0, 0, 0, 0]);

        let mut commands = vec![
            Command::Allocate {
                file: RSDP_FILE.into(),
                align: 16,
                zone: ALLOC_ZONE_FSEG,
            },
            Command::Allocate {
                file: TABLES_FILE.into(),
                align: 64,
                zone: ALLOC_ZONE_HIGH,
            },
        ];
        commands.append(&mut b.inner.commands);
        for (off, len) in b.sums {
            commands.push(Command::AddChecksum {
                file: TABLES_FILE.into(),
                offset: (off + 9) as u32,
                start: off as u32,
                length: len as u32,
            });
        }
        commands.push(Command::AddPointer {
            dest: RSDP_FILE.into(),
            src: TABLES_FILE.into(),
            offset: 16,
            size: 4,
        });
        commands.push(Command::AddPointer {
            dest: RSDP_FILE.into(),
            src: TABLES_FILE.into(),
            offset: 24,
            size: 8,
        });
        commands.push(Command::AddChecksum {
            file: RSDP_FILE.into(),
            offset: 8,
            start: 0,
            length: 20,
        });
        commands.push(Command::AddChecksum {
            file: RSDP_FILE.into(),
            offset: 32,
            start: 0,
            length: 36,
        });
        Self {
            rsdp,
            blob: b.inner.blob,
            commands,
            index: b.inner.index,
        }
    }

    /// The fw_cfg files SeaBIOS reads: RSDP, tables, loader commands.
    pub fn fw_cfg_files(&self) -> Vec<(String, Vec<u8>)> {
        vec![
            (RSDP_FILE.into(), self.rsdp.clone()),
            (TABLES_FILE.into(), self.blob.clone()),
            (LOADER_FILE.into(), loader::encode_all(&self.commands)),
        ]
    }

    /// Run the loader as a firmware would: RSDP at `rsdp_addr`, tables from `tables_addr`.
    /// Returns the RSDP address and the (address, bytes) to write.
    pub fn place(&self, rsdp_addr: u64, tables_addr: u64) -> (u64, Vec<(u64, Vec<u8>)>) {
        let files = vec![
            (RSDP_FILE.to_string(), self.rsdp.clone()),
            (TABLES_FILE.to_string(), self.blob.clone()),
        ];
        let placed = loader::execute(&self.commands, &files, tables_addr, rsdp_addr)
            .expect("troupe's own loader commands are consistent");
        let rsdp = placed
            .iter()
            .find(|p| p.0 == RSDP_FILE)
            .map_or(rsdp_addr, |p| p.1);
        (rsdp, placed.into_iter().map(|(_, a, d)| (a, d)).collect())
    }

    /// Write each table (linked at the direct-boot addresses) as `<sig>.dat` into `dir`,
    /// for `iasl -d` (troupe's `-dump-acpi DIR`).
    pub fn dump(&self, dir: &Path, rsdp_addr: u64, tables_addr: u64) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let (_, placed) = self.place(rsdp_addr, tables_addr);
        for (addr, data) in &placed {
            if *addr == rsdp_addr {
                std::fs::write(dir.join("rsdp.dat"), data)?;
                continue;
            }
            for (sig, off, len) in &self.index {
                let name = format!("{}.dat", sig.to_lowercase());
                std::fs::write(dir.join(name), &data[*off..off + len])?;
            }
        }
        Ok(())
    }
}

/// The builder plus the tables that need a checksum (added after every pointer is patched).
struct BuilderWithSums {
    inner: Builder,
    sums: Vec<(usize, usize)>,
}

impl BuilderWithSums {
    fn add(&mut self, sig: &str, bytes: Vec<u8>, checksum: bool) -> usize {
        let len = bytes.len();
        let off = self.inner.add_raw(sig, bytes);
        if checksum {
            self.sums.push((off, len));
        }
        off
    }
}

impl Builder {
    fn add_raw(&mut self, sig: &str, bytes: Vec<u8>) -> usize {
        while !self.blob.len().is_multiple_of(64) {
            self.blob.push(0);
        }
        let off = self.blob.len();
        let len = bytes.len();
        self.blob.extend_from_slice(&bytes);
        self.index.push((sig.to_string(), off, len));
        off
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::dsdt::DsdtConfig;

    fn cfg(cpus: u32, maxcpus: u32, ids: impl Fn(u32) -> u32) -> AcpiConfig {
        AcpiConfig {
            dsdt: DsdtConfig {
                cpus: (0..maxcpus).map(|i| (i < cpus, ids(i))).collect(),
                serials: vec![(0x3f8, 4), (0x2f8, 3)],
                pci_window32: (0x8000_0000, 0xfebf_ffff),
                pci_window64: None,
                hotplug_slots: !(crate::tables::dsdt::FIXED_SLOTS | 1 << 2),
                mem_slots: 0,
            },
            srat: None,
        }
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// Walk RSDP → XSDT → tables in placed memory, checking every checksum and pointer.
    fn walk(placed: &[(u64, Vec<u8>)], rsdp: u64) -> Vec<(String, Vec<u8>)> {
        let read = |addr: u64, len: usize| -> Vec<u8> {
            for (a, d) in placed {
                if addr >= *a && addr + len as u64 <= *a + d.len() as u64 {
                    let o = (addr - a) as usize;
                    return d[o..o + len].to_vec();
                }
            }
            panic!("{addr:#x}+{len} is not in any placed file");
        };
        let r = read(rsdp, 36);
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(sum(&r[..20]), 0, "RSDP checksum");
        assert_eq!(sum(&r), 0, "RSDP extended checksum");
        let xsdt_addr = u64::from_le_bytes(r[24..32].try_into().unwrap());
        let table = |addr: u64| {
            let h = read(addr, 8);
            let len = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
            let t = read(addr, len);
            assert_eq!(sum(&t), 0, "{} checksum", String::from_utf8_lossy(&t[..4]));
            t
        };
        let xsdt = table(xsdt_addr);
        let mut out = vec![("XSDT".to_string(), xsdt.clone())];
        for e in xsdt[36..].chunks(8) {
            let t = table(u64::from_le_bytes(e.try_into().unwrap()));
            if &t[..4] == b"FACP" {
                let dsdt = u64::from_le_bytes(t[140..148].try_into().unwrap());
                assert_eq!(
                    u64::from(u32::from_le_bytes(t[40..44].try_into().unwrap())),
                    dsdt
                );
                out.push(("DSDT".into(), table(dsdt)));
                let facs = u64::from(u32::from_le_bytes(t[36..40].try_into().unwrap()));
                assert_eq!(&read(facs, 4), b"FACS");
            }
            out.push((String::from_utf8_lossy(&t[..4]).into_owned(), t));
        }
        out
    }

    #[test]
    fn loader_commands_link_a_valid_table_tree() {
        let t = AcpiTables::build(&cfg(2, 2, |i| i));
        let files = t.fw_cfg_files();
        let cmds: Vec<Command> = files[2]
            .1
            .chunks(128)
            .map(|c| Command::decode(c.try_into().unwrap()).unwrap())
            .collect();
        let placed = loader::execute(&cmds, &files[..2], 0x7fe_0000, 0xf_5000).unwrap();
        let rsdp = placed.iter().find(|p| p.0 == RSDP_FILE).unwrap().1;
        assert_eq!(rsdp % 16, 0);
        let mem: Vec<(u64, Vec<u8>)> = placed.into_iter().map(|(_, a, d)| (a, d)).collect();
        let tables: Vec<String> = walk(&mem, rsdp).into_iter().map(|t| t.0).collect();
        assert_eq!(tables, ["XSDT", "DSDT", "FACP", "APIC"]);
    }

    #[test]
    fn madt_lists_every_possible_cpu_with_topology_apic_ids() {
        // -smp 2,maxcpus=4 with two bits of core id (cores=3): ids 0 1 2 4.
        let ids = [0u32, 1, 2, 4];
        let t = AcpiTables::build(&cfg(2, 4, |i| ids[i as usize]));
        let (rsdp, placed) = t.place(0xe_0000, 0xe_0040);
        let madt = walk(&placed, rsdp)
            .into_iter()
            .find(|t| t.0 == "APIC")
            .unwrap()
            .1;
        let mut lapics = Vec::new();
        let mut o = 44;
        while o < madt.len() {
            if madt[o] == 0 {
                let flags = u32::from_le_bytes(madt[o + 4..o + 8].try_into().unwrap());
                lapics.push((madt[o + 3], flags));
            }
            o += usize::from(madt[o + 1]);
        }
        assert_eq!(lapics, [(0, 1), (1, 1), (2, 0), (4, 0)]);
    }

    fn tool(name: &str) -> std::path::PathBuf {
        let p = std::path::PathBuf::from("/usr/bin").join(name);
        assert!(
            p.exists(),
            "{name} is missing: install the Debian package acpica-tools"
        );
        p
    }

    /// Run acpica tool `name` with `args` in `dir`: whether it succeeded, and what it said.
    fn run_tool(dir: &std::path::Path, name: &str, args: &[&str]) -> (bool, String) {
        let out = std::process::Command::new(tool(name))
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    /// `iasl -d FILES` in `dir`, checked to report no error; the DSDT's source.
    fn decompile(dir: &std::path::Path, files: &[&str]) -> String {
        let args: Vec<&str> = std::iter::once("-d").chain(files.iter().copied()).collect();
        let (ok, text) = run_tool(dir, "iasl", &args);
        assert!(ok && !text.contains("Error"), "{text}");
        std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap()
    }

    /// `acpiexec -b SCRIPT dsdt.dat` in `dir`, checked to have run `evaluations` methods
    /// with no exception, error or missing name; its output.
    fn acpiexec(dir: &std::path::Path, script: &str, evaluations: usize) -> String {
        let (_, text) = run_tool(dir, "acpiexec", &["-b", script, "dsdt.dat"]);
        assert!(
            !text.contains("Exception") && !text.contains("Error") && !text.contains("not found"),
            "{text}"
        );
        assert_eq!(text.matches("Evaluating \\").count(), evaluations, "{text}");
        text
    }

    #[test]
    fn iasl_decompiles_every_table_and_acpiexec_runs_the_dsdt() {
        let dir = std::env::temp_dir().join(format!("troupe-acpi-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let t = AcpiTables::build(&cfg(4, 4, |i| i));
        t.dump(&dir, 0xe_0000, 0xe_0040).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".dat") && n != "rsdp.dat")
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["apic.dat", "dsdt.dat", "facp.dat", "facs.dat", "rsdt.dat", "xsdt.dat"]
        );
        let out = std::process::Command::new(tool("iasl"))
            .arg("-d")
            .args(&names)
            .current_dir(&dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(!text.contains("Error"), "{text}");
        let dsl = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap();
        assert!(dsl.contains("PNP0A03") && dsl.contains("_PRT") && dsl.contains("PNP0501"));
        let out = std::process::Command::new(tool("acpiexec"))
            .args([
                "-b",
                "evaluate \\_S5; evaluate \\_SB.PCI0._PRT; evaluate \\_SB.PCI0._CRS",
            ])
            .arg("dsdt.dat")
            .current_dir(&dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            !text.contains("Exception") && !text.contains("Error"),
            "{text}"
        );
        assert!(text.contains("[Package] Contains 4 Elements"), "{text}");
        assert!(text.contains("[Package] Contains 128 Elements"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// acpiexec runs the PCI hotplug AML against its simulated I/O space: a slot's `_EJ0`
    /// (through PCEJ's writes to BNUM and B0EJ), the GPE handler `_E01` (PCNT reading PCIU
    /// and PCID and notifying through DVNT), and `_STA` where the DSDT has it (the CPUs).
    #[test]
    fn acpiexec_runs_the_pci_hotplug_aml() {
        let dir = std::env::temp_dir().join(format!("troupe-acpi-hp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let t = AcpiTables::build(&cfg(2, 2, |i| i));
        t.dump(&dir, 0xe_0000, 0xe_0040).unwrap();
        let dsl = decompile(&dir, &["dsdt.dat"]);
        // Slot 3 (devfn 0x18) is hotpluggable, the VGA's slot 2 is not.
        for needle in [
            "Device (S18)",
            "Name (_SUN, 0x03)",
            "Method (_EJ0, 1",
            "PCEJ (BSEL, _SUN)",
            "Method (_E01, 0",
            "\\_SB.PCI0.PCNT ()",
            "SystemIO, 0xAE00",
            "Notify (S18, Arg1)",
        ] {
            assert!(dsl.contains(needle), "{needle} missing:\n{dsl}");
        }
        assert!(!dsl.contains("Device (S10)"), "{dsl}");
        let text = acpiexec(
            &dir,
            "evaluate \\_SB.PCI0.S18._EJ0 1; evaluate \\_SB.PCI0.SF8._SUN; \
                 evaluate \\_GPE._E01; evaluate \\_SB.CPUS.C001._STA; evaluate \\_SB.PCI0.PCEJ 0 5",
            5,
        );
        assert!(
            text.contains("[Integer] = 000000000000001F"),
            "_SUN of slot 31:\n{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The CPU hotplug AML as QEMU's `pc` has it (`\_SB.PCI0.PRES` with its fields and
    /// `_INI`, `\_SB.CPUS` with CTFY/CSTA/CEJ0/CSCN/COST and a device per possible CPU,
    /// `\_GPE._E02`), decompiled by iasl and run by acpiexec against its simulated ports:
    /// `_INI`, `_STA`, `_MAT`, `_EJ0`, `_OST` and the GPE handler.
    #[test]
    fn acpiexec_runs_the_cpu_hotplug_aml() {
        let dir = std::env::temp_dir().join(format!("troupe-acpi-cpuhp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // -smp 1,maxcpus=4 with sockets=2,cores=2: APIC ids 0 1 2 3.
        let t = AcpiTables::build(&cfg(1, 4, |i| i));
        t.dump(&dir, 0xe_0000, 0xe_0040).unwrap();
        let dsl = decompile(&dir, &["dsdt.dat"]);
        for needle in [
            "Device (PRES)",
            "OperationRegion (PRST, SystemIO, 0xAF00, 0x0C)",
            "CSEL = Zero",
            "Device (CPUS)",
            "Name (_HID, \"ACPI0010\" /* Processor Container Device */)",
            "Method (CSCN, 0, Serialized)",
            "Method (COST, 4, Serialized)",
            "Device (C003)",
            "Notify (C003, Arg1)",
            "Return (CSTA (0x03))",
            "CEJ0 (0x02)",
            "COST (One, Arg0, Arg1, Arg2)",
            "Method (_E02, 0",
            "\\_SB.CPUS.CSCN ()",
        ] {
            assert!(dsl.contains(needle), "{needle} missing:\n{dsl}");
        }
        // The boot CPU has no _EJ0; the others do.
        let c000 = &dsl[dsl.find("Device (C000)").unwrap()..dsl.find("Device (C001)").unwrap()];
        assert!(!c000.contains("_EJ0"), "{c000}");
        let text = acpiexec(
            &dir,
            "evaluate \\_SB.PCI0.PRES._INI; evaluate \\_SB.CPUS.C000._STA; \
                 evaluate \\_SB.CPUS.C003._MAT; evaluate \\_SB.CPUS.C002._EJ0 1; \
                 evaluate \\_SB.CPUS.C001._OST 0x103 0x80 0; evaluate \\_GPE._E02",
            6,
        );
        // _MAT of CPU 3: a local APIC entry, UID 3, APIC id 3, enabled.
        assert!(
            text.contains("00 08 03 03 01 00 00 00"),
            "_MAT of C003:\n{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The SRAT for `-m 1G,slots=2,maxmem=4G` and one CPU, byte for byte as QEMU 7.2
    /// builds it (its body after the header, read from QEMU's fw_cfg `etc/acpi/tables`).
    #[test]
    fn srat_matches_qemu_for_a_memory_hotplug_machine() {
        let sc = SratConfig {
            below_4g: 1 << 30,
            above_4g: 0,
            device_memory: (1 << 32, 5 << 30),
        };
        let t = srat(&[(true, 0)], &sc);
        let qemu = "010000000000000000000000001000000100000000000000000000000128000000000000\
                    000000000000000000000a00000000000000000001000000000000000000000001280000\
                    0000000000001000000000000000f03f0000000000000000010000000000000000000000\
                    012800000000000000000000000000000000000000000000000000000000000000000000\
                    000000000128000000000000000000000100000000000040010000000000000003000000\
                    0000000000000000";
        let body: String = t[36..].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(body, qemu);
        assert_eq!(&t[0..4], b"SRAT");
        assert_eq!(u32::from_le_bytes(t[4..8].try_into().unwrap()), 224);
    }

    /// The memory hotplug AML as QEMU's `pc` has it (`\_SB.PCI0.MHPD` with the region at
    /// 0x0A00, `\_SB.MHPC` with its fields, MSCN/MRST/MCRS/MPXM/MOST/MEJ0, a device per
    /// slot, MTFY, `\_GPE._E03`), decompiled by iasl and run by acpiexec against its
    /// simulated ports: each slot's `_STA`, `_CRS`, `_PXM`, `_OST`, `_EJ0` and the GPE handler.
    #[test]
    fn acpiexec_runs_the_memory_hotplug_aml() {
        let dir = std::env::temp_dir().join(format!("troupe-acpi-memhp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut c = cfg(1, 1, |i| i);
        c.dsdt.mem_slots = 2;
        c.srat = Some(SratConfig {
            below_4g: 1 << 30,
            above_4g: 0,
            device_memory: (1 << 32, 5 << 30),
        });
        let t = AcpiTables::build(&c);
        t.dump(&dir, 0xe_0000, 0xe_0040).unwrap();
        let dsl = decompile(&dir, &["dsdt.dat", "srat.dat"]);
        for needle in [
            "Device (MHPD)",
            "Name (_UID, \"Memory hotplug resources\")",
            "OperationRegion (HPMR, SystemIO, 0x0A00, 0x18)",
            "Device (MHPC)",
            "Name (MDNR, 0x02)",
            "Field (\\_SB.PCI0.MHPD.HPMR, DWordAcc, NoLock, Preserve)",
            "Field (\\_SB.PCI0.MHPD.HPMR, ByteAcc, NoLock, WriteAsZeros)",
            "Offset (0x14)",
            "Method (MSCN, 0, NotSerialized)",
            "Method (MCRS, 1, Serialized)",
            "MAXH -= One",
            "Method (MEJ0, 2, NotSerialized)",
            "Device (MP01)",
            "Name (_UID, \"0x01\")",
            "Name (_HID, EisaId (\"PNP0C80\")",
            "Return (MCRS (_UID))",
            "MOST (_UID, Arg0, Arg1, Arg2)",
            "Notify (MP01, Arg1)",
            "Method (_E03, 0",
            "\\_SB.MHPC.MSCN ()",
        ] {
            assert!(dsl.contains(needle), "{needle} missing:\n{dsl}");
        }
        let srat = std::fs::read_to_string(dir.join("srat.dsl")).unwrap();
        assert!(srat.contains("Hot Pluggable : 1"), "{srat}");
        let text = acpiexec(
            &dir,
            "evaluate \\_SB.MHPC._STA; evaluate \\_SB.MHPC.MP00._STA; \
                 evaluate \\_SB.MHPC.MP01._CRS; evaluate \\_SB.MHPC.MP00._PXM; \
                 evaluate \\_SB.MHPC.MP01._OST 1 0 0; evaluate \\_SB.MHPC.MP00._EJ0 1; \
                 evaluate \\_GPE._E03",
            7,
        );
        assert!(
            text.contains("[Integer] = 000000000000000B"),
            "MHPC._STA:\n{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
