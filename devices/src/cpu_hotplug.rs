//! ACPI CPU hotplug as QEMU's `pc` machine (PIIX4 PM) presents it at I/O 0xAF00, in its
//! two modes (QEMU's docs/specs/acpi_cpu_hotplug.rst):
//!
//! - **legacy** (at power-on): a 32-byte read-only bitmap, one bit per APIC id, set for
//!   each present CPU. Writing 0 to its first dword switches to the modern interface
//!   (the DSDT's `\_SB.PCI0.PRES._INI` does `CSEL = 0`, which is exactly that write);
//!   the switch survives resets.
//! - **modern**: a 12-byte block. Writes: CPU selector (dword at 0), control flags (byte
//!   at 4: bit 1 clears the insert event, bit 2 the remove event, bit 3 ejects), command
//!   (byte at 5: 0 = select the next CPU with an event, 1/2 = the next data write is the
//!   OST event/status, 3 = data reads the APIC id), command data (dword at 8). Reads:
//!   command data 2 (dword at 0, 0 here), status flags (byte at 4: bit 0 enabled, 1
//!   inserting, 2 removing), command data (dword at 8: the selector for command 0, the
//!   APIC id for 3). A selector past the last possible CPU reads 0 everywhere and makes
//!   writes other than the selector's be ignored.
//!
//! The guest learns about events through GPE0 bit 2 ([`CPUHP_GPE_BIT`]), whose handler
//! (`\_GPE._E02` → `\_SB.CPUS.CSCN`) scans the flags and notifies the CPU devices. The
//! model says when to raise it and what the guest asked (an eject, an `_OST` report); the
//! platform raises the GPE and removes the vCPU.

use serde::{Deserialize, Serialize};

use crate::{Snapshot, StateError};

/// Where the block sits and how many ports it decodes (the legacy bitmap's length; the
/// modern block uses the first [`MODERN_LEN`]).
pub const CPUHP_BASE: u16 = 0xaf00;
pub const CPUHP_LEN: u16 = 0x20;
pub const MODERN_LEN: u16 = 0x0c;
/// The GPE0 status bit the block raises (QEMU's ACPI_CPU_HOTPLUG_STATUS).
pub const CPUHP_GPE_BIT: u8 = 2;

const SELECTOR: u64 = 0;
const FLAGS: u64 = 4;
const COMMAND: u64 = 5;
const DATA: u64 = 8;

const FLAG_ENABLED: u8 = 1 << 0;
const FLAG_INSERT: u8 = 1 << 1;
const FLAG_REMOVE: u8 = 1 << 2;
const FLAG_EJECT: u8 = 1 << 3;

const CMD_NEXT_EVENT: u8 = 0;
const CMD_OST_EVENT: u8 = 1;
const CMD_OST_STATUS: u8 = 2;
const CMD_ARCH_ID: u8 = 3;

/// What a register write asks of the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuHotplugRequest {
    /// The guest ejected the CPU with this selector (possible-CPU index): it is no longer
    /// present; its vCPU must go.
    Eject(u32),
    /// The guest's `_OST` for CPU `cpu`: (event, status), as QEMU's `ACPI_DEVICE_OST`.
    Ost { cpu: u32, event: u32, status: u32 },
}

/// Why the host cannot ask for a CPU to go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuHotplugError {
    /// The guest has not switched to the modern interface, which alone can unplug.
    #[error("the guest uses the legacy CPU hotplug interface, which cannot unplug")]
    Legacy,
    #[error("CPU {0} is not present")]
    NotPresent(u32),
    #[error("CPU {0} is already being unplugged")]
    Pending(u32),
    #[error("CPU {0} is not a possible CPU of this machine")]
    NoSuchCpu(u32),
}

/// One possible CPU as the block shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuSlot {
    pub apic_id: u32,
    pub present: bool,
    pub inserting: bool,
    pub removing: bool,
    pub ost_event: u32,
    pub ost_status: u32,
}

/// Guest-visible state of the block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuHotplugState {
    pub legacy: bool,
    pub selector: u32,
    pub command: u8,
    pub slots: Vec<CpuSlot>,
}

/// The register block (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuHotplug {
    legacy: bool,
    selector: u32,
    command: u8,
    slots: Vec<CpuSlot>,
}

impl CpuHotplug {
    /// `cpus`: (present, APIC id) of every possible CPU, by index (the DSDT's `Cxxx`).
    pub fn new(cpus: &[(bool, u32)]) -> Self {
        Self {
            legacy: true,
            selector: 0,
            command: 0,
            slots: cpus
                .iter()
                .map(|&(present, apic_id)| CpuSlot {
                    apic_id,
                    present,
                    ..CpuSlot::default()
                })
                .collect(),
        }
    }

    /// Whether the guest still uses the legacy bitmap.
    pub fn legacy(&self) -> bool {
        self.legacy
    }

    pub fn present(&self, cpu: u32) -> bool {
        self.slot(cpu).is_some_and(|s| s.present)
    }

    fn slot(&self, cpu: u32) -> Option<&CpuSlot> {
        self.slots.get(cpu as usize)
    }

    fn slot_mut(&mut self, cpu: u32) -> Option<&mut CpuSlot> {
        self.slots.get_mut(cpu as usize)
    }

    /// A vCPU arrived as possible CPU `cpu`: present, with an insert event (raise the GPE).
    pub fn plugged(&mut self, cpu: u32) {
        if let Some(s) = self.slot_mut(cpu) {
            s.present = true;
            s.inserting = true;
            s.removing = false;
        }
    }

    /// Ask the guest to eject CPU `cpu` (raise the GPE on Ok).
    pub fn unplug_request(&mut self, cpu: u32) -> Result<(), CpuHotplugError> {
        if self.legacy {
            return Err(CpuHotplugError::Legacy);
        }
        let s = self.slot_mut(cpu).ok_or(CpuHotplugError::NoSuchCpu(cpu))?;
        if !s.present {
            return Err(CpuHotplugError::NotPresent(cpu));
        }
        if s.removing {
            return Err(CpuHotplugError::Pending(cpu));
        }
        s.removing = true;
        Ok(())
    }

    /// CPU `cpu` left without the guest's eject (its plug failed half way): not present.
    pub fn removed(&mut self, cpu: u32) {
        if let Some(s) = self.slot_mut(cpu) {
            s.present = false;
            s.inserting = false;
            s.removing = false;
        }
    }

    /// The legacy bitmap's byte `n`: bit b set when the CPU with APIC id 8n+b is present.
    fn bitmap_byte(&self, n: u64) -> u8 {
        self.slots
            .iter()
            .filter(|s| s.present && u64::from(s.apic_id) / 8 == n)
            .fold(0, |b, s| b | (1 << (s.apic_id % 8)))
    }

    fn selected(&self) -> Option<&CpuSlot> {
        self.slot(self.selector)
    }

    /// The modern block's register at `reg` (0, 4, 5 or 8) as a little-endian dword.
    fn modern_reg(&self, reg: u64) -> u32 {
        let Some(s) = self.selected() else {
            return 0;
        };
        match reg {
            FLAGS => {
                let mut f = 0u32;
                if s.present {
                    f |= u32::from(FLAG_ENABLED);
                }
                if s.inserting {
                    f |= u32::from(FLAG_INSERT);
                }
                if s.removing {
                    f |= u32::from(FLAG_REMOVE);
                }
                f
            }
            DATA => match self.command {
                CMD_NEXT_EVENT => self.selector,
                CMD_ARCH_ID => s.apic_id,
                _ => 0,
            },
            // Command data 2: the APIC id's upper half (0), or 0.
            _ => 0,
        }
    }

    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            *d = if self.legacy {
                self.bitmap_byte(at)
            } else if at < u64::from(MODERN_LEN) {
                // Byte 4 is the flags, 5..7 reserved; the dwords at 0 and 8.
                match at {
                    4 => self.modern_reg(FLAGS) as u8,
                    5..=7 => 0,
                    _ => self.modern_reg(at & !3).to_le_bytes()[(at & 3) as usize],
                }
            } else {
                0
            };
        }
    }

    /// A register write; what the guest asked of the platform, if anything.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Option<CpuHotplugRequest> {
        let mut b = [0u8; 8];
        for (i, d) in data.iter().take(8).enumerate() {
            b[i] = *d;
        }
        let v = u64::from_le_bytes(b);
        if self.legacy {
            // The bitmap is read-only; 0 written to its first dword selects the modern
            // interface.
            // The modern interface starts with no events, as QEMU's does (CPUs plugged in
            // legacy mode are just present).
            if offset == SELECTOR && v == 0 {
                self.legacy = false;
                self.selector = 0;
                for s in &mut self.slots {
                    s.inserting = false;
                    s.removing = false;
                }
            }
            return None;
        }
        // A wider write covering several registers acts on each, lowest first.
        let mut out = None;
        let mut at = offset;
        let end = offset + data.len() as u64;
        while at < end {
            let rel = (at - offset) as usize;
            match at {
                SELECTOR => {
                    self.selector = v as u32;
                    at += 4;
                }
                FLAGS => {
                    if let Some(r) = self.write_flags(b[rel]) {
                        out = Some(r);
                    }
                    at += 1;
                }
                COMMAND => {
                    self.write_command(b[rel]);
                    at += 1;
                }
                DATA => {
                    let d = u32::from_le_bytes([
                        b[rel],
                        *b.get(rel + 1).unwrap_or(&0),
                        *b.get(rel + 2).unwrap_or(&0),
                        *b.get(rel + 3).unwrap_or(&0),
                    ]);
                    if let Some(r) = self.write_data(d) {
                        out = Some(r);
                    }
                    at += 4;
                }
                _ => at += 1,
            }
        }
        out
    }

    fn write_flags(&mut self, f: u8) -> Option<CpuHotplugRequest> {
        let cpu = self.selector;
        let s = self.slot_mut(cpu)?;
        if f & FLAG_INSERT != 0 {
            s.inserting = false;
        }
        if f & FLAG_REMOVE != 0 {
            s.removing = false;
        }
        // The boot CPU cannot go; nor can an absent one.
        if f & FLAG_EJECT != 0 && cpu != 0 && s.present {
            s.present = false;
            s.inserting = false;
            s.removing = false;
            return Some(CpuHotplugRequest::Eject(cpu));
        }
        None
    }

    fn write_command(&mut self, c: u8) {
        if self.selected().is_none() || c > CMD_ARCH_ID {
            return;
        }
        self.command = c;
        if c == CMD_NEXT_EVENT {
            // From the selected CPU on, wrapping around: the first with an event.
            let n = self.slots.len() as u32;
            if let Some(i) = (0..n)
                .map(|k| (self.selector + k) % n)
                .find(|&i| self.slots[i as usize].inserting || self.slots[i as usize].removing)
            {
                self.selector = i;
            }
        }
    }

    fn write_data(&mut self, d: u32) -> Option<CpuHotplugRequest> {
        let cpu = self.selector;
        let command = self.command;
        let s = self.slot_mut(cpu)?;
        match command {
            CMD_OST_EVENT => {
                s.ost_event = d;
                None
            }
            CMD_OST_STATUS => {
                s.ost_status = d;
                Some(CpuHotplugRequest::Ost {
                    cpu,
                    event: s.ost_event,
                    status: d,
                })
            }
            _ => None,
        }
    }
}

impl Snapshot for CpuHotplug {
    type State = CpuHotplugState;
    const KIND: &'static str = "acpi-cpuhp";
    const VERSION: u32 = 1;
    fn save(&self) -> CpuHotplugState {
        CpuHotplugState {
            legacy: self.legacy,
            selector: self.selector,
            command: self.command,
            slots: self.slots.clone(),
        }
    }
    fn restore(&mut self, s: CpuHotplugState) -> Result<(), StateError> {
        if s.slots.len() != self.slots.len() {
            return Err(StateError::Invalid {
                kind: Self::KIND,
                reason: format!(
                    "{} possible CPUs saved, this machine has {}",
                    s.slots.len(),
                    self.slots.len()
                ),
            });
        }
        self.legacy = s.legacy;
        self.selector = s.selector;
        self.command = s.command;
        self.slots = s.slots;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// -smp 1,maxcpus=4 with cores=4: APIC ids 0..3.
    fn four() -> CpuHotplug {
        CpuHotplug::new(&[(true, 0), (false, 1), (false, 2), (false, 3)])
    }

    fn modern() -> CpuHotplug {
        let mut h = four();
        assert_eq!(h.write(SELECTOR, &0u32.to_le_bytes()), None);
        assert!(!h.legacy());
        h
    }

    fn r8(h: &mut CpuHotplug, off: u64) -> u8 {
        let mut b = [0u8; 1];
        h.read(off, &mut b);
        b[0]
    }

    fn r32(h: &mut CpuHotplug, off: u64) -> u32 {
        let mut b = [0u8; 4];
        h.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w8(h: &mut CpuHotplug, off: u64, v: u8) -> Option<CpuHotplugRequest> {
        h.write(off, &[v])
    }

    fn w32(h: &mut CpuHotplug, off: u64, v: u32) -> Option<CpuHotplugRequest> {
        h.write(off, &v.to_le_bytes())
    }

    #[test]
    fn the_legacy_bitmap_shows_present_apic_ids_and_a_zero_write_switches_to_modern() {
        let mut h = CpuHotplug::new(&[(true, 0), (true, 1), (false, 9), (false, 33)]);
        assert!(h.legacy());
        assert_eq!(r8(&mut h, 0), 0b11);
        h.plugged(2);
        assert_eq!(r8(&mut h, 1), 1 << 1, "APIC id 9 is byte 1 bit 1");
        h.plugged(3);
        assert_eq!(r32(&mut h, 4), 1 << 1, "APIC id 33: byte 4 bit 1");
        // A non-zero write is ignored; the bitmap cannot be unplugged from.
        w32(&mut h, 0, 5);
        assert!(h.legacy());
        assert_eq!(h.unplug_request(2), Err(CpuHotplugError::Legacy));
        w32(&mut h, 0, 0);
        assert!(!h.legacy());
        // Modern now: the flags of CPU 0 (enabled); CPU 2 plugged in legacy mode is
        // present with no insert event.
        assert_eq!(r8(&mut h, FLAGS), FLAG_ENABLED);
        w32(&mut h, SELECTOR, 2);
        assert_eq!(r8(&mut h, FLAGS), FLAG_ENABLED);
    }

    #[test]
    fn a_plugged_cpu_is_found_by_the_next_event_command_and_its_insert_flag_cleared() {
        let mut h = modern();
        w32(&mut h, SELECTOR, 1);
        assert_eq!(r8(&mut h, FLAGS), 0, "CPU 1 absent");
        h.plugged(2);
        w32(&mut h, SELECTOR, 0);
        w8(&mut h, COMMAND, CMD_NEXT_EVENT);
        assert_eq!(r32(&mut h, DATA), 2, "the selector moved to CPU 2");
        assert_eq!(r8(&mut h, FLAGS), FLAG_ENABLED | FLAG_INSERT);
        w8(&mut h, FLAGS, FLAG_INSERT);
        assert_eq!(r8(&mut h, FLAGS), FLAG_ENABLED);
        // No event left: the selector stays.
        w32(&mut h, SELECTOR, 3);
        w8(&mut h, COMMAND, CMD_NEXT_EVENT);
        assert_eq!(r32(&mut h, DATA), 3);
        w8(&mut h, COMMAND, CMD_ARCH_ID);
        w32(&mut h, SELECTOR, 2);
        assert_eq!(r32(&mut h, DATA), 2, "APIC id");
        assert_eq!(r32(&mut h, 0), 0, "APIC id upper half");
    }

    #[test]
    fn an_unplug_request_shows_as_remove_and_the_eject_reports_the_cpu_once() {
        let mut h = modern();
        assert_eq!(h.unplug_request(1), Err(CpuHotplugError::NotPresent(1)));
        assert_eq!(h.unplug_request(9), Err(CpuHotplugError::NoSuchCpu(9)));
        h.plugged(1);
        h.unplug_request(1).unwrap();
        assert_eq!(h.unplug_request(1), Err(CpuHotplugError::Pending(1)));
        w32(&mut h, SELECTOR, 1);
        assert_eq!(r8(&mut h, FLAGS) & FLAG_REMOVE, FLAG_REMOVE);
        w8(&mut h, FLAGS, FLAG_REMOVE | FLAG_INSERT);
        assert_eq!(r8(&mut h, FLAGS), FLAG_ENABLED);
        assert_eq!(
            w8(&mut h, FLAGS, FLAG_EJECT),
            Some(CpuHotplugRequest::Eject(1))
        );
        assert!(!h.present(1));
        assert_eq!(w8(&mut h, FLAGS, FLAG_EJECT), None, "already gone");
        // The boot CPU stays whatever the guest writes.
        w32(&mut h, SELECTOR, 0);
        assert_eq!(w8(&mut h, FLAGS, FLAG_EJECT), None);
        assert!(h.present(0));
    }

    #[test]
    fn ost_reports_event_and_status_and_a_bad_selector_reads_zero_and_ignores_writes() {
        let mut h = modern();
        w32(&mut h, SELECTOR, 0);
        w8(&mut h, COMMAND, CMD_OST_EVENT);
        assert_eq!(w32(&mut h, DATA, 0x103), None);
        w8(&mut h, COMMAND, CMD_OST_STATUS);
        assert_eq!(
            w32(&mut h, DATA, 0x80),
            Some(CpuHotplugRequest::Ost {
                cpu: 0,
                event: 0x103,
                status: 0x80
            })
        );
        w32(&mut h, SELECTOR, 4);
        assert_eq!(r8(&mut h, FLAGS), 0);
        assert_eq!(r32(&mut h, DATA), 0);
        assert_eq!(w8(&mut h, FLAGS, FLAG_EJECT), None);
        w8(&mut h, COMMAND, CMD_ARCH_ID);
        w32(&mut h, SELECTOR, 0);
        assert_eq!(
            r32(&mut h, DATA),
            0,
            "command 3 was ignored: still OST status"
        );
    }

    #[test]
    fn state_round_trips_and_a_different_cpu_count_is_refused() {
        let mut h = modern();
        h.plugged(3);
        let back = crate::check_roundtrip(&h, four());
        assert_eq!(back, h);
        let mut other = CpuHotplug::new(&[(true, 0)]);
        assert!(other.restore(h.save()).is_err());
    }
}
