//! The 8042 keyboard controller at ports 0x60 (data) and 0x64 (status/command), with a
//! PS/2 keyboard and mouse behind it — complete enough for SeaBIOS, GRUB, syslinux and
//! Linux. The host feeds typed input with [`I8042::key_event`] and [`I8042::mouse_event`]
//! (what VNC, `sendkey` and the monitor's mouse commands use).
//!
//! Map the device at 0x60 with length 5: offset 0 is the data port, offset 4 status/command
//! (0x61–0x63 belong to others and read as 0xff here).
//!
//! Translation: with the command byte's XLATE bit set (what BIOSes do) the controller turns
//! the keyboard's set-2 bytes into set 1 as it moves them to the output buffer.

pub mod keyboard;
pub mod keymap;
pub mod mouse;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{BusDevice, IrqLine, SharedEvents, Snapshot, StateError, SystemEvent};
use keyboard::{Keyboard, KeyboardState};
pub use keymap::KeyCode;
use mouse::{Mouse, MouseState};

// Status register.
const STAT_OBF: u8 = 0x01;
const STAT_SYS: u8 = 0x04;
const STAT_CMD: u8 = 0x08;
const STAT_UNLOCKED: u8 = 0x10;
const STAT_AUX_OBF: u8 = 0x20;

// Command byte.
const CB_KBD_INT: u8 = 0x01;
const CB_AUX_INT: u8 = 0x02;
const CB_SYS: u8 = 0x04;
const CB_KBD_DISABLE: u8 = 0x10;
const CB_AUX_DISABLE: u8 = 0x20;
const CB_XLATE: u8 = 0x40;

// Output port.
const OUT_RESET: u8 = 0x01;
const OUT_A20: u8 = 0x02;

/// A controller command waiting for its data byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Pending {
    None,
    CommandByte,
    OutputPort,
    KbdOutput,
    AuxOutput,
    AuxDevice,
}

/// Where the byte in the output buffer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Source {
    Kbd,
    Aux,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    command_byte: u8,
    pending: Pending,
    output: Option<(u8, Source)>,
    out_port: u8,
    last_was_command: bool,
    xlate_break: bool,
    keyboard: KeyboardState,
    mouse: MouseState,
}

/// The controller and its two devices.
pub struct I8042 {
    command_byte: u8,
    pending: Pending,
    output: Option<(u8, Source)>,
    out_port: u8,
    last_was_command: bool,
    /// Translation saw 0xF0: OR 0x80 into the next byte.
    xlate_break: bool,
    keyboard: Keyboard,
    mouse: Mouse,
    kbd_irq: Arc<dyn IrqLine>,
    aux_irq: Arc<dyn IrqLine>,
    kbd_high: bool,
    aux_high: bool,
    events: SharedEvents,
}

impl I8042 {
    pub fn new(kbd_irq: Arc<dyn IrqLine>, aux_irq: Arc<dyn IrqLine>, events: SharedEvents) -> Self {
        let mut c = Self {
            command_byte: 0,
            pending: Pending::None,
            output: None,
            out_port: 0,
            last_was_command: false,
            xlate_break: false,
            keyboard: Keyboard::default(),
            mouse: Mouse::default(),
            kbd_irq,
            aux_irq,
            kbd_high: false,
            aux_high: false,
            events,
        };
        c.reset();
        c
    }

    /// Power-on state (QEMU `kbd_reset`: interrupts enabled, no translation until the
    /// firmware or OS asks for it).
    pub fn reset(&mut self) {
        self.command_byte = CB_KBD_INT | CB_AUX_INT;
        self.pending = Pending::None;
        self.output = None;
        self.out_port = OUT_RESET | OUT_A20 | 0x0c;
        self.last_was_command = true;
        self.xlate_break = false;
        self.keyboard.reset();
        self.mouse.reset();
        self.update_irq();
    }

    /// Keyboard LEDs as last set by the guest (bit 0 scroll, 1 num, 2 caps).
    pub fn leds(&self) -> u8 {
        self.keyboard.leds()
    }

    /// A20 as gated by the output port.
    pub fn a20(&self) -> bool {
        self.out_port & OUT_A20 != 0
    }

    /// Input events dropped because a device queue was full (keyboard, mouse).
    pub fn dropped(&self) -> (u64, u64) {
        (self.keyboard.dropped(), self.mouse.dropped())
    }

    /// Whether a key event (at most 8 bytes, Pause) fits the keyboard's queue now; the
    /// host holds events back until it does instead of losing them.
    pub fn key_fits(&self) -> bool {
        self.keyboard.space() >= 8
    }

    /// Whether a mouse packet fits the mouse's queue now.
    pub fn mouse_fits(&self) -> bool {
        self.mouse.space() >= 4
    }

    /// A key pressed or released by the user.
    pub fn key_event(&mut self, key: KeyCode, down: bool) {
        self.keyboard.key(key, down);
        self.refill();
    }

    /// Mouse movement (screen convention: +dy is down) and button state.
    pub fn mouse_event(&mut self, dx: i32, dy: i32, dz: i32, buttons: u8) {
        self.mouse.event(dx, dy, dz, buttons);
        self.refill();
    }

    fn translating(&self) -> bool {
        self.command_byte & CB_XLATE != 0
    }

    /// Move the next device byte into the empty output buffer.
    fn refill(&mut self) {
        while self.output.is_none() {
            if self.command_byte & CB_KBD_DISABLE == 0 && self.keyboard.has_data() {
                let Some(b) = self.keyboard.pop() else { break };
                if self.translating() && self.keyboard.scancode_set() == 2 {
                    if b == 0xf0 {
                        self.xlate_break = true;
                        continue;
                    }
                    let t = keymap::translate_set2(b);
                    let t = if self.xlate_break && b != 0xe0 && b != 0xe1 {
                        self.xlate_break = false;
                        t | 0x80
                    } else {
                        t
                    };
                    self.output = Some((t, Source::Kbd));
                } else {
                    self.output = Some((b, Source::Kbd));
                }
            } else if self.command_byte & CB_AUX_DISABLE == 0 && self.mouse.has_data() {
                let Some(b) = self.mouse.pop() else { break };
                self.output = Some((b, Source::Aux));
            } else {
                break;
            }
        }
        self.update_irq();
    }

    /// Put a controller-generated byte (command reply) in the output buffer.
    fn controller_reply(&mut self, b: u8) {
        self.output = Some((b, Source::Kbd));
        self.update_irq();
    }

    fn update_irq(&mut self) {
        let (kbd, aux) = match self.output {
            Some((_, Source::Kbd)) => (self.command_byte & CB_KBD_INT != 0, false),
            Some((_, Source::Aux)) => (false, self.command_byte & CB_AUX_INT != 0),
            None => (false, false),
        };
        if kbd != self.kbd_high {
            self.kbd_high = kbd;
            self.kbd_irq.set_level(kbd);
        }
        if aux != self.aux_high {
            self.aux_high = aux;
            self.aux_irq.set_level(aux);
        }
    }

    fn status(&self) -> u8 {
        let mut s = STAT_UNLOCKED;
        if self.command_byte & CB_SYS != 0 {
            s |= STAT_SYS;
        }
        if self.last_was_command {
            s |= STAT_CMD;
        }
        match self.output {
            Some((_, Source::Kbd)) => s |= STAT_OBF,
            Some((_, Source::Aux)) => s |= STAT_OBF | STAT_AUX_OBF,
            None => {}
        }
        s
    }

    fn read_data(&mut self) -> u8 {
        match self.output.take() {
            Some((b, _)) => {
                self.refill();
                b
            }
            // Reading an empty buffer returns the last byte again on real hardware; QEMU
            // returns the previous value too. Keep it simple: 0.
            None => 0,
        }
    }

    fn write_data(&mut self, v: u8) {
        self.last_was_command = false;
        match std::mem::replace(&mut self.pending, Pending::None) {
            Pending::CommandByte => {
                self.command_byte = v;
                self.refill();
            }
            Pending::OutputPort => self.write_output_port(v),
            Pending::KbdOutput => self.controller_reply(v),
            Pending::AuxOutput => {
                self.output = Some((v, Source::Aux));
                self.update_irq();
            }
            Pending::AuxDevice => {
                self.mouse.write(v);
                self.refill();
            }
            Pending::None => {
                // A byte for the keyboard; it also re-enables the keyboard interface.
                self.command_byte &= !CB_KBD_DISABLE;
                let xlate = self.translating();
                self.keyboard.write(v, xlate);
                self.refill();
            }
        }
    }

    fn write_output_port(&mut self, v: u8) {
        self.out_port = v;
        if v & OUT_RESET == 0 {
            self.events.post(SystemEvent::ResetRequested);
        }
    }

    fn write_command(&mut self, cmd: u8) {
        self.last_was_command = true;
        self.pending = Pending::None;
        match cmd {
            0x20 => self.controller_reply(self.command_byte),
            // 0x21..0x3f read controller RAM: we have none beyond the command byte.
            0x21..=0x3f => self.controller_reply(0),
            0x60 => self.pending = Pending::CommandByte,
            0x61..=0x7f => {}
            0xa7 => self.command_byte |= CB_AUX_DISABLE,
            0xa8 => {
                self.command_byte &= !CB_AUX_DISABLE;
                self.refill();
            }
            0xa9 | 0xab => self.controller_reply(0x00),
            0xaa => {
                self.command_byte |= CB_SYS;
                self.controller_reply(0x55);
            }
            0xad => self.command_byte |= CB_KBD_DISABLE,
            0xae => {
                self.command_byte &= !CB_KBD_DISABLE;
                self.refill();
            }
            0xc0 => self.controller_reply(0x00),
            0xd0 => {
                let mut p = self.out_port;
                if matches!(self.output, Some((_, Source::Kbd))) {
                    p |= 0x10;
                }
                if matches!(self.output, Some((_, Source::Aux))) {
                    p |= 0x20;
                }
                self.controller_reply(p);
            }
            0xd1 => self.pending = Pending::OutputPort,
            0xd2 => self.pending = Pending::KbdOutput,
            0xd3 => self.pending = Pending::AuxOutput,
            0xd4 => self.pending = Pending::AuxDevice,
            0xdd => self.out_port &= !OUT_A20,
            0xdf => self.out_port |= OUT_A20,
            0xe0 => self.controller_reply(0x00),
            // Pulse output port lines low for 6 µs: bit 0 is the CPU reset line.
            0xf0..=0xff => {
                if cmd & 0x01 == 0 {
                    self.events.post(SystemEvent::ResetRequested);
                }
            }
            other => {
                tracing::debug!(target: "unimp", "i8042: unknown controller command {other:#x}")
            }
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            0 => self.read_data(),
            4 => self.status(),
            _ => 0xff,
        };
        data.fill(0);
        data[0] = v;
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 => self.write_data(data[0]),
            4 => self.write_command(data[0]),
            _ => {}
        }
    }
}

impl Snapshot for I8042 {
    type State = I8042State;
    const KIND: &'static str = "i8042";
    const VERSION: u32 = 1;

    fn save(&self) -> I8042State {
        I8042State {
            command_byte: self.command_byte,
            pending: self.pending,
            output: self.output,
            out_port: self.out_port,
            last_was_command: self.last_was_command,
            xlate_break: self.xlate_break,
            keyboard: self.keyboard.save(),
            mouse: self.mouse.save(),
        }
    }

    fn restore(&mut self, s: I8042State) -> Result<(), StateError> {
        self.command_byte = s.command_byte;
        self.pending = s.pending;
        self.output = s.output;
        self.out_port = s.out_port;
        self.last_was_command = s.last_was_command;
        self.xlate_break = s.xlate_break;
        self.keyboard.restore(s.keyboard);
        self.mouse.restore(s.mouse);
        self.update_irq();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeEvents, FakeIrq};

    struct Rig {
        c: I8042,
        kbd: Arc<FakeIrq>,
        aux: Arc<FakeIrq>,
        ev: Arc<FakeEvents>,
    }

    fn rig() -> Rig {
        let kbd = Arc::new(FakeIrq::default());
        let aux = Arc::new(FakeIrq::default());
        let ev = Arc::new(FakeEvents::default());
        Rig {
            c: I8042::new(kbd.clone(), aux.clone(), ev.clone()),
            kbd,
            aux,
            ev,
        }
    }

    impl Rig {
        fn cmd(&mut self, v: u8) {
            self.c.write(4, &[v]);
        }
        fn data(&mut self, v: u8) {
            self.c.write(0, &[v]);
        }
        fn status(&mut self) -> u8 {
            let mut b = [0];
            self.c.read(4, &mut b);
            b[0]
        }
        /// Everything waiting in the output buffer, as a polling guest reads it.
        fn drain(&mut self) -> Vec<u8> {
            let mut v = Vec::new();
            while self.status() & STAT_OBF != 0 {
                let mut b = [0];
                self.c.read(0, &mut b);
                v.push(b[0]);
            }
            v
        }
        /// What SeaBIOS does at boot: self-test, command byte with translation, reset.
        fn bios_init(&mut self) {
            self.cmd(0xaa);
            assert_eq!(self.drain(), [0x55]);
            self.cmd(0x60);
            self.data(CB_XLATE | CB_SYS | CB_KBD_INT | CB_AUX_DISABLE);
            self.data(0xff);
            assert_eq!(self.drain(), [0xfa, 0xaa]);
            self.data(0xed);
            self.data(0x02);
            assert_eq!(self.drain(), [0xfa, 0xfa]);
        }
    }

    #[test]
    fn translated_keys_read_as_set_1() {
        let mut r = rig();
        r.bios_init();
        assert_eq!(r.c.leds(), 0x02);
        let press = |r: &mut Rig, k| {
            r.c.key_event(k, true);
            r.c.key_event(k, false);
            r.drain()
        };
        assert_eq!(press(&mut r, KeyCode::A), [0x1e, 0x9e]);
        assert_eq!(press(&mut r, KeyCode::Down), [0xe0, 0x50, 0xe0, 0xd0]);
        assert_eq!(press(&mut r, KeyCode::Ret), [0x1c, 0x9c]);
        assert_eq!(press(&mut r, KeyCode::Digit1), [0x02, 0x82]);
        assert_eq!(press(&mut r, KeyCode::F7), [0x41, 0xc1]);
        r.c.key_event(KeyCode::Pause, true);
        assert_eq!(r.drain(), [0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5]);
    }

    #[test]
    fn untranslated_keyboard_speaks_set_2() {
        let mut r = rig();
        r.c.key_event(KeyCode::A, true);
        r.c.key_event(KeyCode::A, false);
        assert_eq!(r.drain(), [0x1c, 0xf0, 0x1c]);
    }

    #[test]
    fn keyboard_interrupt_follows_the_output_buffer() {
        let mut r = rig();
        r.c.key_event(KeyCode::Q, true);
        assert!(r.kbd.is_high());
        r.drain();
        assert!(!r.kbd.is_high());
        r.cmd(0x60);
        r.data(0); // interrupts off
        r.c.key_event(KeyCode::Q, false);
        assert!(!r.kbd.is_high());
        assert_eq!(r.drain(), [0xf0, 0x15]);
    }

    #[test]
    fn reset_through_the_controller() {
        let mut r = rig();
        r.cmd(0xfe);
        assert_eq!(r.ev.taken(), vec![SystemEvent::ResetRequested]);
        r.cmd(0xd1);
        r.data(0x02); // output port with reset line low
        assert_eq!(r.ev.taken(), vec![SystemEvent::ResetRequested]);
        r.cmd(0xd1);
        r.data(0x01);
        assert!(!r.c.a20());
        assert!(r.ev.taken().is_empty());
    }

    #[test]
    fn identify_and_scancode_set_queries() {
        let mut r = rig();
        r.data(0xf2);
        assert_eq!(r.drain(), [0xfa, 0xab, 0x83]);
        r.data(0xf0);
        r.data(0x00);
        assert_eq!(r.drain(), [0xfa, 0xfa, 0x02]);
        r.data(0x77);
        assert_eq!(r.drain(), [0xfe]);
        r.data(0xee);
        assert_eq!(r.drain(), [0xee]);
    }

    #[test]
    fn mouse_packets_through_the_aux_port() {
        let mut r = rig();
        r.cmd(0xa8);
        r.cmd(0xd4);
        r.data(0xff);
        assert_eq!(r.drain(), [0xfa, 0xaa, 0x00]);
        r.cmd(0xd4);
        r.data(0xf4);
        assert_eq!(r.drain(), [0xfa]);
        r.c.mouse_event(5, 3, 0, 1);
        assert!(r.aux.is_high());
        assert_ne!(r.status() & STAT_AUX_OBF, 0);
        // +x right, screen +y down becomes PS/2 -y: sign bit and 0xfd.
        assert_eq!(r.drain(), [0x08 | 0x20 | 0x01, 5, 0xfd]);
        assert!(!r.aux.is_high());
        // IntelliMouse knock: 200, 100, 80 → id 3 and 4-byte packets.
        for rate in [200, 100, 80] {
            r.cmd(0xd4);
            r.data(0xf3);
            r.cmd(0xd4);
            r.data(rate);
        }
        r.drain();
        r.cmd(0xd4);
        r.data(0xf2);
        assert_eq!(r.drain(), [0xfa, 0x03]);
        r.c.mouse_event(0, 0, 1, 0);
        assert_eq!(r.drain(), [0x08, 0, 0, 0x01]);
    }

    #[test]
    fn full_queue_drops_and_counts() {
        let mut r = rig();
        for _ in 0..40 {
            r.c.key_event(KeyCode::A, true);
        }
        assert!(r.c.dropped().0 > 0);
        assert!(r.drain().len() <= 17);
    }

    #[test]
    fn random_port_traffic_never_panics() {
        let mut r = rig();
        let mut x: u32 = 12345;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let v = (x >> 8) as u8;
            match x % 5 {
                0 => r.cmd(v),
                1 => r.data(v),
                2 => {
                    r.drain();
                }
                3 => r.c.key_event(
                    KeyCode::all().nth(v as usize % 100).unwrap_or(KeyCode::A),
                    x & 1 == 0,
                ),
                _ => r.c.mouse_event(v as i32 - 128, 3, 0, v & 7),
            }
        }
    }

    #[test]
    fn state_round_trips() {
        let mut r = rig();
        r.bios_init();
        r.c.key_event(KeyCode::B, true);
        let mut t = rig();
        let fresh = std::mem::replace(&mut t.c, rig().c);
        t.c = crate::check_roundtrip(&r.c, fresh);
        assert_eq!(t.drain(), [0x30]);
    }
}
