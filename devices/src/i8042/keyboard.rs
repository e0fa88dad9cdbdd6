//! The PS/2 keyboard behind the 8042: its command set and output queue. It speaks scancode
//! set 2 by default (the controller may translate to set 1 on the way out).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::keymap::{set1_bytes, set2_bytes, KeyCode};

/// PS/2 devices buffer 16 bytes (QEMU's `PS2_QUEUE_SIZE`); beyond that input is dropped.
pub const QUEUE_LEN: usize = 16;

pub const ACK: u8 = 0xfa;
pub const RESEND: u8 = 0xfe;
pub const SELF_TEST_OK: u8 = 0xaa;
pub const ECHO: u8 = 0xee;

/// A command byte that takes an argument, waiting for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Pending {
    None,
    Leds,
    ScancodeSet,
    Typematic,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyboardState {
    queue: Vec<u8>,
    pending: Pending,
    scan_enabled: bool,
    scancode_set: u8,
    leds: u8,
    typematic: u8,
    last: u8,
}

/// One PS/2 keyboard.
#[derive(Debug, Clone)]
pub struct Keyboard {
    queue: VecDeque<u8>,
    pending: Pending,
    scan_enabled: bool,
    scancode_set: u8,
    leds: u8,
    typematic: u8,
    /// Last byte sent (for RESEND).
    last: u8,
    dropped: u64,
}

impl Default for Keyboard {
    fn default() -> Self {
        Self {
            queue: VecDeque::with_capacity(QUEUE_LEN),
            pending: Pending::None,
            scan_enabled: true,
            scancode_set: 2,
            leds: 0,
            typematic: 0x2b,
            last: 0,
            dropped: 0,
        }
    }
}

impl Keyboard {
    pub fn reset(&mut self) {
        *self = Self {
            dropped: self.dropped,
            ..Self::default()
        };
    }

    /// LED state: bit 0 Scroll Lock, bit 1 Num Lock, bit 2 Caps Lock.
    pub fn leds(&self) -> u8 {
        self.leds
    }

    pub fn scancode_set(&self) -> u8 {
        self.scancode_set
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn has_data(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Bytes the queue can still take.
    pub fn space(&self) -> usize {
        QUEUE_LEN.saturating_sub(self.queue.len())
    }

    pub fn pop(&mut self) -> Option<u8> {
        let b = self.queue.pop_front()?;
        self.last = b;
        Some(b)
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.queue.len() + bytes.len() > QUEUE_LEN {
            self.dropped += bytes.len() as u64;
            return;
        }
        self.queue.extend(bytes);
    }

    /// Reply bytes always go in, even into a full queue (the host cannot resend).
    fn reply(&mut self, bytes: &[u8]) {
        self.queue.extend(bytes);
        while self.queue.len() > QUEUE_LEN {
            self.queue.pop_front();
        }
    }

    /// A key event from the user. `translated`: the controller will translate set 2 to
    /// set 1 on the way out (so the keyboard keeps producing set 2).
    pub fn key(&mut self, key: KeyCode, down: bool) {
        if !self.scan_enabled {
            return;
        }
        let bytes = match self.scancode_set {
            1 => set1_bytes(key, down),
            _ => set2_bytes(key, down),
        };
        self.push(&bytes);
    }

    /// A byte written by the host (through the controller's data port). `translating`: the
    /// controller's translation is on (QEMU then answers identify with 0x41, not 0x83).
    pub fn write(&mut self, b: u8, translating: bool) {
        match self.pending {
            Pending::Leds => {
                self.pending = Pending::None;
                self.leds = b & 0x07;
                self.reply(&[ACK]);
                return;
            }
            Pending::ScancodeSet => {
                self.pending = Pending::None;
                match b {
                    0 => {
                        let set = if translating {
                            // What a translated set looks like through the 8042.
                            [0x43, 0x41, 0x3f][usize::from(self.scancode_set.clamp(1, 3) - 1)]
                        } else {
                            self.scancode_set
                        };
                        self.reply(&[ACK, set]);
                    }
                    1..=3 => {
                        self.scancode_set = b;
                        self.reply(&[ACK]);
                    }
                    _ => self.reply(&[RESEND]),
                }
                return;
            }
            Pending::Typematic => {
                self.pending = Pending::None;
                self.typematic = b & 0x7f;
                self.reply(&[ACK]);
                return;
            }
            Pending::None => {}
        }
        match b {
            0xed => {
                self.pending = Pending::Leds;
                self.reply(&[ACK]);
            }
            0xee => self.reply(&[ECHO]),
            0xf0 => {
                self.pending = Pending::ScancodeSet;
                self.reply(&[ACK]);
            }
            0xf2 => self.reply(&[ACK, 0xab, if translating { 0x41 } else { 0x83 }]),
            0xf3 => {
                self.pending = Pending::Typematic;
                self.reply(&[ACK]);
            }
            0xf4 => {
                self.scan_enabled = true;
                self.reply(&[ACK]);
            }
            0xf5 => {
                self.queue.clear();
                self.scan_enabled = false;
                self.scancode_set = 2;
                self.typematic = 0x2b;
                self.reply(&[ACK]);
            }
            0xf6 => {
                self.scancode_set = 2;
                self.typematic = 0x2b;
                self.leds = 0;
                self.reply(&[ACK]);
            }
            0xfe => {
                let last = self.last;
                self.reply(&[last]);
            }
            0xff => {
                self.reset();
                self.reply(&[ACK, SELF_TEST_OK]);
            }
            _ => self.reply(&[RESEND]),
        }
    }

    pub fn save(&self) -> KeyboardState {
        KeyboardState {
            queue: self.queue.iter().copied().collect(),
            pending: self.pending,
            scan_enabled: self.scan_enabled,
            scancode_set: self.scancode_set,
            leds: self.leds,
            typematic: self.typematic,
            last: self.last,
        }
    }

    pub fn restore(&mut self, s: KeyboardState) {
        self.queue = s.queue.into_iter().take(QUEUE_LEN).collect();
        self.pending = s.pending;
        self.scan_enabled = s.scan_enabled;
        self.scancode_set = s.scancode_set.clamp(1, 3);
        self.leds = s.leds;
        self.typematic = s.typematic;
        self.last = s.last;
    }
}
