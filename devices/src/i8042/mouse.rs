//! The PS/2 mouse on the 8042's auxiliary port: stream and remote modes, resolution,
//! scaling and sample rate, the IntelliMouse wheel (id 3) and Explorer (id 4) knocks, and
//! 3- or 4-byte movement packets.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::keyboard::{ACK, QUEUE_LEN, RESEND, SELF_TEST_OK};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Pending {
    None,
    SampleRate,
    Resolution,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MouseState {
    queue: Vec<u8>,
    pending: Pending,
    enabled: bool,
    remote: bool,
    wrap: bool,
    scaling_2to1: bool,
    resolution: u8,
    sample_rate: u8,
    id: u8,
    knock: Vec<u8>,
    buttons: u8,
    dx: i32,
    dy: i32,
    dz: i32,
}

/// One PS/2 mouse.
#[derive(Debug, Clone)]
pub struct Mouse {
    queue: VecDeque<u8>,
    pending: Pending,
    enabled: bool,
    remote: bool,
    wrap: bool,
    scaling_2to1: bool,
    resolution: u8,
    sample_rate: u8,
    id: u8,
    /// The last three sample rates set (the wheel-mode knock sequence).
    knock: Vec<u8>,
    buttons: u8,
    /// Movement not yet reported (PS/2 convention: +y is up).
    dx: i32,
    dy: i32,
    dz: i32,
    dropped: u64,
}

impl Default for Mouse {
    fn default() -> Self {
        Self {
            queue: VecDeque::with_capacity(QUEUE_LEN),
            pending: Pending::None,
            enabled: false,
            remote: false,
            wrap: false,
            scaling_2to1: false,
            resolution: 2,
            sample_rate: 100,
            id: 0,
            knock: Vec::new(),
            buttons: 0,
            dx: 0,
            dy: 0,
            dz: 0,
            dropped: 0,
        }
    }
}

impl Mouse {
    pub fn reset(&mut self) {
        *self = Self {
            dropped: self.dropped,
            ..Self::default()
        };
    }

    pub fn has_data(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Bytes the queue can still take.
    pub fn space(&self) -> usize {
        QUEUE_LEN.saturating_sub(self.queue.len())
    }

    pub fn pop(&mut self) -> Option<u8> {
        self.queue.pop_front()
    }

    pub fn id(&self) -> u8 {
        self.id
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn reply(&mut self, bytes: &[u8]) {
        self.queue.extend(bytes);
        while self.queue.len() > QUEUE_LEN {
            self.queue.pop_front();
        }
    }

    fn packet_len(&self) -> usize {
        if self.id == 3 || self.id == 4 {
            4
        } else {
            3
        }
    }

    /// Build one packet from the accumulated movement (clamping to what fits).
    fn packet(&mut self) -> Vec<u8> {
        let clamp = |v: i32| v.clamp(-256, 255);
        let dx = clamp(self.dx);
        let dy = clamp(self.dy);
        let dz = self.dz.clamp(-8, 7);
        self.dx -= dx;
        self.dy -= dy;
        self.dz -= dz;
        let mut b0 = 0x08 | (self.buttons & 0x07);
        if dx < 0 {
            b0 |= 0x10;
        }
        if dy < 0 {
            b0 |= 0x20;
        }
        let mut p = vec![b0, dx as u8, dy as u8];
        if self.packet_len() == 4 {
            let mut b3 = (dz as u8) & 0x0f;
            if self.id == 4 {
                b3 |= (self.buttons & 0x18) << 1;
            }
            p.push(b3);
        }
        p
    }

    /// Movement from the user: `dy` in screen convention (positive = down), `dz` positive =
    /// wheel down, `buttons` bit 0 left, 1 right, 2 middle, 3 side, 4 extra.
    pub fn event(&mut self, dx: i32, dy: i32, dz: i32, buttons: u8) {
        self.dx = self.dx.saturating_add(dx);
        self.dy = self.dy.saturating_sub(dy);
        self.dz = self.dz.saturating_add(dz);
        let changed = self.buttons != buttons;
        self.buttons = buttons;
        if !self.enabled || self.remote {
            return;
        }
        // Send packets while movement remains (at least one if buttons changed).
        let mut first = true;
        while first || self.dx != 0 || self.dy != 0 || self.dz != 0 {
            if !first && !changed && self.dx == 0 && self.dy == 0 && self.dz == 0 {
                break;
            }
            if self.queue.len() + self.packet_len() > QUEUE_LEN {
                self.dropped += 1;
                self.dx = 0;
                self.dy = 0;
                self.dz = 0;
                break;
            }
            let p = self.packet();
            self.queue.extend(p);
            first = false;
        }
    }

    /// A byte the host sent to the mouse (controller command 0xD4).
    pub fn write(&mut self, b: u8) {
        if self.wrap && b != 0xec && b != 0xff {
            self.reply(&[b]);
            return;
        }
        match self.pending {
            Pending::SampleRate => {
                self.pending = Pending::None;
                self.sample_rate = b;
                self.knock.push(b);
                if self.knock.len() > 3 {
                    self.knock.remove(0);
                }
                match self.knock.as_slice() {
                    [200, 100, 80] if self.id == 0 => self.id = 3,
                    [200, 200, 80] if self.id == 3 => self.id = 4,
                    _ => {}
                }
                self.reply(&[ACK]);
                return;
            }
            Pending::Resolution => {
                self.pending = Pending::None;
                self.resolution = b & 3;
                self.reply(&[ACK]);
                return;
            }
            Pending::None => {}
        }
        match b {
            0xe6 => {
                self.scaling_2to1 = false;
                self.reply(&[ACK]);
            }
            0xe7 => {
                self.scaling_2to1 = true;
                self.reply(&[ACK]);
            }
            0xe8 => {
                self.pending = Pending::Resolution;
                self.reply(&[ACK]);
            }
            0xe9 => {
                let status = (u8::from(self.remote) << 6)
                    | (u8::from(self.enabled) << 5)
                    | (u8::from(self.scaling_2to1) << 4)
                    | (self.buttons & 0x07);
                self.reply(&[ACK, status, self.resolution, self.sample_rate]);
            }
            0xea => {
                self.remote = false;
                self.reply(&[ACK]);
            }
            0xeb => {
                let p = self.packet();
                self.reply(&[ACK]);
                self.reply(&p);
            }
            0xec => {
                self.wrap = false;
                self.reply(&[ACK]);
            }
            0xee => {
                self.wrap = true;
                self.reply(&[ACK]);
            }
            0xf0 => {
                self.remote = true;
                self.reply(&[ACK]);
            }
            0xf2 => {
                let id = self.id;
                self.reply(&[ACK, id]);
            }
            0xf3 => {
                self.pending = Pending::SampleRate;
                self.reply(&[ACK]);
            }
            0xf4 => {
                self.enabled = true;
                self.reply(&[ACK]);
            }
            0xf5 => {
                self.enabled = false;
                self.reply(&[ACK]);
            }
            0xf6 => {
                let id = self.id;
                self.reset();
                self.id = id;
                self.reply(&[ACK]);
            }
            0xff => {
                self.reset();
                self.reply(&[ACK, SELF_TEST_OK, 0x00]);
            }
            _ => self.reply(&[RESEND]),
        }
    }

    pub fn save(&self) -> MouseState {
        MouseState {
            queue: self.queue.iter().copied().collect(),
            pending: self.pending,
            enabled: self.enabled,
            remote: self.remote,
            wrap: self.wrap,
            scaling_2to1: self.scaling_2to1,
            resolution: self.resolution,
            sample_rate: self.sample_rate,
            id: self.id,
            knock: self.knock.clone(),
            buttons: self.buttons,
            dx: self.dx,
            dy: self.dy,
            dz: self.dz,
        }
    }

    pub fn restore(&mut self, s: MouseState) {
        self.queue = s.queue.into_iter().take(QUEUE_LEN).collect();
        self.pending = s.pending;
        self.enabled = s.enabled;
        self.remote = s.remote;
        self.wrap = s.wrap;
        self.scaling_2to1 = s.scaling_2to1;
        self.resolution = s.resolution & 3;
        self.sample_rate = s.sample_rate;
        self.id = s.id;
        self.knock = s.knock.into_iter().take(3).collect();
        self.buttons = s.buttons;
        self.dx = s.dx;
        self.dy = s.dy;
        self.dz = s.dz;
    }
}
