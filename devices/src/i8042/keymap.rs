//! Keys as QEMU names them (its "qcodes", what `sendkey` and QMP `send-key` take) and their
//! PC scancodes in sets 1 and 2, plus the i8042's set-2 → set-1 translation table.

use serde::{Deserialize, Serialize};

macro_rules! keys {
    ($( $variant:ident = $name:literal, $set1:expr, $set2:expr; )*) => {
        /// A key, named after QEMU's qcode.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[allow(non_camel_case_types)]
        pub enum KeyCode {
            $( $variant, )*
        }

        /// (key, qcode name, set-1 make code, set-2 make code). Codes above 0xff carry an
        /// 0xE0 prefix in the high byte.
        const TABLE: &[(KeyCode, &str, u16, u16)] = &[
            $( (KeyCode::$variant, $name, $set1, $set2), )*
        ];

        impl KeyCode {
            /// Every key, in table order.
            pub const ALL: &'static [KeyCode] = &[$(KeyCode::$variant,)*];
        }
    };
}

keys! {
    A = "a", 0x1e, 0x1c; B = "b", 0x30, 0x32; C = "c", 0x2e, 0x21; D = "d", 0x20, 0x23;
    E = "e", 0x12, 0x24; F = "f", 0x21, 0x2b; G = "g", 0x22, 0x34; H = "h", 0x23, 0x33;
    I = "i", 0x17, 0x43; J = "j", 0x24, 0x3b; K = "k", 0x25, 0x42; L = "l", 0x26, 0x4b;
    M = "m", 0x32, 0x3a; N = "n", 0x31, 0x31; O = "o", 0x18, 0x44; P = "p", 0x19, 0x4d;
    Q = "q", 0x10, 0x15; R = "r", 0x13, 0x2d; S = "s", 0x1f, 0x1b; T = "t", 0x14, 0x2c;
    U = "u", 0x16, 0x3c; V = "v", 0x2f, 0x2a; W = "w", 0x11, 0x1d; X = "x", 0x2d, 0x22;
    Y = "y", 0x15, 0x35; Z = "z", 0x2c, 0x1a;
    Digit1 = "1", 0x02, 0x16; Digit2 = "2", 0x03, 0x1e; Digit3 = "3", 0x04, 0x26;
    Digit4 = "4", 0x05, 0x25; Digit5 = "5", 0x06, 0x2e; Digit6 = "6", 0x07, 0x36;
    Digit7 = "7", 0x08, 0x3d; Digit8 = "8", 0x09, 0x3e; Digit9 = "9", 0x0a, 0x46;
    Digit0 = "0", 0x0b, 0x45;
    Esc = "esc", 0x01, 0x76; Minus = "minus", 0x0c, 0x4e; Equal = "equal", 0x0d, 0x55;
    Backspace = "backspace", 0x0e, 0x66; Tab = "tab", 0x0f, 0x0d;
    BracketLeft = "bracket_left", 0x1a, 0x54; BracketRight = "bracket_right", 0x1b, 0x5b;
    Ret = "ret", 0x1c, 0x5a; Ctrl = "ctrl", 0x1d, 0x14; Semicolon = "semicolon", 0x27, 0x4c;
    Apostrophe = "apostrophe", 0x28, 0x52; GraveAccent = "grave_accent", 0x29, 0x0e;
    Shift = "shift", 0x2a, 0x12; Backslash = "backslash", 0x2b, 0x5d;
    Comma = "comma", 0x33, 0x41; Dot = "dot", 0x34, 0x49; Slash = "slash", 0x35, 0x4a;
    ShiftR = "shift_r", 0x36, 0x59; KpMultiply = "kp_multiply", 0x37, 0x7c;
    Alt = "alt", 0x38, 0x11; Spc = "spc", 0x39, 0x29; CapsLock = "caps_lock", 0x3a, 0x58;
    F1 = "f1", 0x3b, 0x05; F2 = "f2", 0x3c, 0x06; F3 = "f3", 0x3d, 0x04; F4 = "f4", 0x3e, 0x0c;
    F5 = "f5", 0x3f, 0x03; F6 = "f6", 0x40, 0x0b; F7 = "f7", 0x41, 0x83; F8 = "f8", 0x42, 0x0a;
    F9 = "f9", 0x43, 0x01; F10 = "f10", 0x44, 0x09; F11 = "f11", 0x57, 0x78;
    F12 = "f12", 0x58, 0x07;
    NumLock = "num_lock", 0x45, 0x77; ScrollLock = "scroll_lock", 0x46, 0x7e;
    Kp7 = "kp_7", 0x47, 0x6c; Kp8 = "kp_8", 0x48, 0x75; Kp9 = "kp_9", 0x49, 0x7d;
    KpSubtract = "kp_subtract", 0x4a, 0x7b; Kp4 = "kp_4", 0x4b, 0x6b; Kp5 = "kp_5", 0x4c, 0x73;
    Kp6 = "kp_6", 0x4d, 0x74; KpAdd = "kp_add", 0x4e, 0x79; Kp1 = "kp_1", 0x4f, 0x69;
    Kp2 = "kp_2", 0x50, 0x72; Kp3 = "kp_3", 0x51, 0x7a; Kp0 = "kp_0", 0x52, 0x70;
    KpDecimal = "kp_decimal", 0x53, 0x71; Less = "less", 0x56, 0x61;
    Sysrq = "sysrq", 0x54, 0x84; KpEquals = "kp_equals", 0x59, 0x0f;
    Hiragana = "hiragana", 0x70, 0x13; Ro = "ro", 0x73, 0x51; Henkan = "henkan", 0x79, 0x64;
    Muhenkan = "muhenkan", 0x7b, 0x67; Yen = "yen", 0x7d, 0x6a; KpComma = "kp_comma", 0x7e, 0x6d;
    AudioPrev = "audioprev", 0xe010, 0xe015; AudioNext = "audionext", 0xe019, 0xe04d;
    Mute = "audiomute", 0xe020, 0xe023; Calculator = "calculator", 0xe021, 0xe02b;
    AudioPlay = "audioplay", 0xe022, 0xe034; AudioStop = "audiostop", 0xe024, 0xe03b;
    VolumeDown = "volumedown", 0xe02e, 0xe021; VolumeUp = "volumeup", 0xe030, 0xe032;
    AcHome = "ac_home", 0xe032, 0xe03a; Power = "power", 0xe05e, 0xe037;
    Sleep = "sleep", 0xe05f, 0xe03f; Wake = "wake", 0xe063, 0xe05e;
    KpEnter = "kp_enter", 0xe01c, 0xe05a; CtrlR = "ctrl_r", 0xe01d, 0xe014;
    KpDivide = "kp_divide", 0xe035, 0xe04a; AltR = "alt_r", 0xe038, 0xe011;
    Home = "home", 0xe047, 0xe06c; Up = "up", 0xe048, 0xe075; Pgup = "pgup", 0xe049, 0xe07d;
    Left = "left", 0xe04b, 0xe06b; Right = "right", 0xe04d, 0xe074; End = "end", 0xe04f, 0xe069;
    Down = "down", 0xe050, 0xe072; Pgdn = "pgdn", 0xe051, 0xe07a;
    Insert = "insert", 0xe052, 0xe070; Delete = "delete", 0xe053, 0xe071;
    MetaL = "meta_l", 0xe05b, 0xe01f; MetaR = "meta_r", 0xe05c, 0xe027;
    Menu = "menu", 0xe05d, 0xe02f;
    Print = "print", 0xe037, 0xe07c; Pause = "pause", 0xe11d, 0xe114;
}

impl KeyCode {
    /// Look a key up by QEMU's name (`sendkey ctrl-alt-delete` splits into these). A few
    /// aliases QEMU's HMP accepts are understood too.
    pub fn from_qcode_name(name: &str) -> Option<Self> {
        let name = match name {
            "return" | "enter" => "ret",
            "space" => "spc",
            "escape" => "esc",
            "control" | "ctrl_l" => "ctrl",
            "shift_l" => "shift",
            "alt_l" => "alt",
            "altgr" => "alt_r",
            "del" => "delete",
            "ins" => "insert",
            "pageup" | "page_up" => "pgup",
            "pagedown" | "page_down" => "pgdn",
            "backquote" => "grave_accent",
            "period" => "dot",
            "meta" => "meta_l",
            other => other,
        };
        TABLE.iter().find(|e| e.1 == name).map(|e| e.0)
    }

    /// QEMU's name for the key.
    pub fn qcode_name(self) -> &'static str {
        TABLE.iter().find(|e| e.0 == self).map_or("?", |e| e.1)
    }

    /// The key whose set-1 make code is `code` (0xE0-prefixed codes as 0xE0xx, or with bit
    /// 7 set as QEMU's extended key event and VNC's QEMU extension send them: 0x80 | code
    /// for extended keys).
    pub fn from_set1_scancode(code: u16) -> Option<Self> {
        let norm = if code & 0xff00 == 0 && code & 0x80 != 0 {
            0xe000 | (code & 0x7f)
        } else {
            code
        };
        TABLE.iter().find(|e| e.2 == norm).map(|e| e.0)
    }

    pub fn set1(self) -> u16 {
        TABLE.iter().find(|e| e.0 == self).map_or(0, |e| e.2)
    }

    pub fn set2(self) -> u16 {
        TABLE.iter().find(|e| e.0 == self).map_or(0, |e| e.3)
    }

    /// Every key.
    pub fn all() -> impl Iterator<Item = KeyCode> {
        TABLE.iter().map(|e| e.0)
    }

    /// The QEMU qcode name (alias of [`KeyCode::qcode_name`]).
    pub fn name(self) -> &'static str {
        self.qcode_name()
    }

    /// Look a key up by name, with QEMU's aliases (`asterisk`, `compose`, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "asterisk" => Some(KeyCode::KpMultiply),
            "compose" => Some(KeyCode::Menu),
            n => Self::from_qcode_name(n),
        }
    }

    /// QEMU's key number: the set-1 make code with an 0xE0 prefix folded into bit 7
    /// (`a` = 0x1e, `down` = 0xd0) — what VNC's QEMU Extended Key Event carries.
    pub fn number(self) -> u16 {
        if self == KeyCode::Pause {
            // QEMU's number for Pause (its set-1 sequence starts with E1, not E0).
            return 0xc6;
        }
        let c = self.set1();
        if c > 0xff {
            0x80 | (c & 0x7f)
        } else {
            c
        }
    }

    /// The key with QEMU key number `n`.
    pub fn from_number(n: u16) -> Option<Self> {
        TABLE.iter().map(|e| e.0).find(|k| k.number() == n)
    }

    /// Set-1 bytes for pressing or releasing this key.
    pub fn xt_bytes(self, down: bool) -> Vec<u8> {
        set1_bytes(self, down)
    }
}

/// Bytes a keyboard in scancode set 2 sends for a key press or release.
pub fn set2_bytes(key: KeyCode, down: bool) -> Vec<u8> {
    match key {
        // Pause has no break code; its make sequence includes its own "release".
        KeyCode::Pause => {
            if down {
                vec![0xe1, 0x14, 0x77, 0xe1, 0xf0, 0x14, 0xf0, 0x77]
            } else {
                vec![]
            }
        }
        KeyCode::Print => {
            if down {
                vec![0xe0, 0x12, 0xe0, 0x7c]
            } else {
                vec![0xe0, 0xf0, 0x7c, 0xe0, 0xf0, 0x12]
            }
        }
        k => {
            let c = k.set2();
            let mut v = Vec::with_capacity(3);
            if c > 0xff {
                v.push(0xe0);
            }
            if !down {
                v.push(0xf0);
            }
            v.push(c as u8);
            v
        }
    }
}

/// Bytes a keyboard in scancode set 1 sends (no controller translation involved).
pub fn set1_bytes(key: KeyCode, down: bool) -> Vec<u8> {
    match key {
        KeyCode::Pause => {
            if down {
                vec![0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5]
            } else {
                vec![]
            }
        }
        KeyCode::Print => {
            if down {
                vec![0xe0, 0x2a, 0xe0, 0x37]
            } else {
                vec![0xe0, 0xb7, 0xe0, 0xaa]
            }
        }
        k => {
            let c = k.set1();
            let mut v = Vec::with_capacity(2);
            if c > 0xff {
                v.push(0xe0);
            }
            v.push(c as u8 | if down { 0 } else { 0x80 });
            v
        }
    }
}

/// The 8042's set-2 → set-1 translation of one byte (0xE0/0xE1 pass through; 0xF0 is
/// handled by the controller, which ORs 0x80 into the next translated byte).
pub fn translate_set2(b: u8) -> u8 {
    if b == 0xe0 || b == 0xe1 {
        return b;
    }
    // Codes only extended keys use (the 8042's fixed table has them too).
    match b {
        0x37 => return 0x5e,
        0x3f => return 0x5f,
        0x5e => return 0x63,
        _ => {}
    }
    TABLE
        .iter()
        .find(|e| e.3 & 0xff == u16::from(b) && e.0 != KeyCode::Pause)
        .map_or(b, |e| (e.2 & 0xff) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translated(set2: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut brk = false;
        for &b in set2 {
            if b == 0xf0 {
                brk = true;
                continue;
            }
            out.push(translate_set2(b) | if brk { 0x80 } else { 0 });
            brk = false;
        }
        out
    }

    #[test]
    fn translation_of_set2_matches_set1_for_every_key() {
        for k in KeyCode::all() {
            for down in [true, false] {
                assert_eq!(
                    translated(&set2_bytes(k, down)),
                    set1_bytes(k, down),
                    "{} {}",
                    k.qcode_name(),
                    if down { "down" } else { "up" }
                );
            }
        }
    }

    #[test]
    fn names_and_known_codes() {
        assert_eq!(KeyCode::from_qcode_name("a"), Some(KeyCode::A));
        assert_eq!(KeyCode::from_qcode_name("ctrl"), Some(KeyCode::Ctrl));
        assert_eq!(KeyCode::from_qcode_name("delete"), Some(KeyCode::Delete));
        assert_eq!(KeyCode::from_qcode_name("nope"), None);
        assert_eq!(set1_bytes(KeyCode::A, true), [0x1e]);
        assert_eq!(set1_bytes(KeyCode::Down, false), [0xe0, 0xd0]);
        assert_eq!(KeyCode::from_set1_scancode(0xd0), Some(KeyCode::Down));
        assert_eq!(KeyCode::from_set1_scancode(0x1c), Some(KeyCode::Ret));
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = KeyCode::all().map(|k| k.qcode_name()).collect();
        names.sort();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n);
    }
}
