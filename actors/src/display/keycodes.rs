//! Key codes: one table of every key troupe knows, by QEMU "qcode" name (what HMP
//! `sendkey` and QMP `send-key` accept: `a`, `ret`, `down`, `shift`, `ctrl`, `alt`, ...)
//! and by QEMU's key "number", the PC XT (scancode set 1) make code with the 0xE0 prefix
//! folded into bit 7 (`a` = 0x1e, `down` = E0 50 = 0xd0). The VNC server turns keysyms
//! and QEMU Extended Key Events into these; the i8042 host turns them into the bytes the
//! guest reads (set 1 with translation: `a` → 1e / 9e, `down` → e0 50 / e0 d0).

macro_rules! keycodes {
    ($($var:ident = $name:literal, $num:literal;)*) => {
        /// A key, by its QEMU qcode name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum KeyCode {
            $($var,)*
        }

        impl KeyCode {
            /// Every key, in table order.
            pub const ALL: &'static [KeyCode] = &[$(KeyCode::$var,)*];

            /// The QEMU qcode name (`sendkey` spelling).
            pub fn name(self) -> &'static str {
                match self {
                    $(KeyCode::$var => $name,)*
                }
            }

            /// QEMU's key number: the XT make code, 0x80 | code for E0-prefixed keys.
            pub fn number(self) -> u16 {
                match self {
                    $(KeyCode::$var => $num,)*
                }
            }
        }
    };
}

keycodes! {
    Esc = "esc", 0x01;
    Digit1 = "1", 0x02;
    Digit2 = "2", 0x03;
    Digit3 = "3", 0x04;
    Digit4 = "4", 0x05;
    Digit5 = "5", 0x06;
    Digit6 = "6", 0x07;
    Digit7 = "7", 0x08;
    Digit8 = "8", 0x09;
    Digit9 = "9", 0x0a;
    Digit0 = "0", 0x0b;
    Minus = "minus", 0x0c;
    Equal = "equal", 0x0d;
    Backspace = "backspace", 0x0e;
    Tab = "tab", 0x0f;
    Q = "q", 0x10;
    W = "w", 0x11;
    E = "e", 0x12;
    R = "r", 0x13;
    T = "t", 0x14;
    Y = "y", 0x15;
    U = "u", 0x16;
    I = "i", 0x17;
    O = "o", 0x18;
    P = "p", 0x19;
    BracketLeft = "bracket_left", 0x1a;
    BracketRight = "bracket_right", 0x1b;
    Ret = "ret", 0x1c;
    Ctrl = "ctrl", 0x1d;
    A = "a", 0x1e;
    S = "s", 0x1f;
    D = "d", 0x20;
    F = "f", 0x21;
    G = "g", 0x22;
    H = "h", 0x23;
    J = "j", 0x24;
    K = "k", 0x25;
    L = "l", 0x26;
    Semicolon = "semicolon", 0x27;
    Apostrophe = "apostrophe", 0x28;
    GraveAccent = "grave_accent", 0x29;
    Shift = "shift", 0x2a;
    Backslash = "backslash", 0x2b;
    Z = "z", 0x2c;
    X = "x", 0x2d;
    C = "c", 0x2e;
    V = "v", 0x2f;
    B = "b", 0x30;
    N = "n", 0x31;
    M = "m", 0x32;
    Comma = "comma", 0x33;
    Dot = "dot", 0x34;
    Slash = "slash", 0x35;
    ShiftR = "shift_r", 0x36;
    KpMultiply = "kp_multiply", 0x37;
    Alt = "alt", 0x38;
    Spc = "spc", 0x39;
    CapsLock = "caps_lock", 0x3a;
    F1 = "f1", 0x3b;
    F2 = "f2", 0x3c;
    F3 = "f3", 0x3d;
    F4 = "f4", 0x3e;
    F5 = "f5", 0x3f;
    F6 = "f6", 0x40;
    F7 = "f7", 0x41;
    F8 = "f8", 0x42;
    F9 = "f9", 0x43;
    F10 = "f10", 0x44;
    NumLock = "num_lock", 0x45;
    ScrollLock = "scroll_lock", 0x46;
    Kp7 = "kp_7", 0x47;
    Kp8 = "kp_8", 0x48;
    Kp9 = "kp_9", 0x49;
    KpSubtract = "kp_subtract", 0x4a;
    Kp4 = "kp_4", 0x4b;
    Kp5 = "kp_5", 0x4c;
    Kp6 = "kp_6", 0x4d;
    KpAdd = "kp_add", 0x4e;
    Kp1 = "kp_1", 0x4f;
    Kp2 = "kp_2", 0x50;
    Kp3 = "kp_3", 0x51;
    Kp0 = "kp_0", 0x52;
    KpDecimal = "kp_decimal", 0x53;
    Sysrq = "sysrq", 0x54;
    Less = "less", 0x56;
    F11 = "f11", 0x57;
    F12 = "f12", 0x58;
    KpEquals = "kp_equals", 0x59;
    Hiragana = "hiragana", 0x70;
    Ro = "ro", 0x73;
    Henkan = "henkan", 0x79;
    Muhenkan = "muhenkan", 0x7b;
    Yen = "yen", 0x7d;
    KpComma = "kp_comma", 0x7e;
    AudioPrev = "audioprev", 0x90;
    AudioNext = "audionext", 0x99;
    KpEnter = "kp_enter", 0x9c;
    CtrlR = "ctrl_r", 0x9d;
    Mute = "audiomute", 0xa0;
    Calculator = "calculator", 0xa1;
    AudioPlay = "audioplay", 0xa2;
    AudioStop = "audiostop", 0xa4;
    VolumeDown = "volumedown", 0xae;
    VolumeUp = "volumeup", 0xb0;
    AcHome = "ac_home", 0xb2;
    KpDivide = "kp_divide", 0xb5;
    Print = "print", 0xb7;
    AltR = "alt_r", 0xb8;
    Pause = "pause", 0xc6;
    Home = "home", 0xc7;
    Up = "up", 0xc8;
    Pgup = "pgup", 0xc9;
    Left = "left", 0xcb;
    Right = "right", 0xcd;
    End = "end", 0xcf;
    Down = "down", 0xd0;
    Pgdn = "pgdn", 0xd1;
    Insert = "insert", 0xd2;
    Delete = "delete", 0xd3;
    MetaL = "meta_l", 0xdb;
    MetaR = "meta_r", 0xdc;
    Menu = "menu", 0xdd;
    Power = "power", 0xde;
    Sleep = "sleep", 0xdf;
    Wake = "wake", 0xe3;
}

impl KeyCode {
    /// Look a key up by qcode name. QEMU's aliases are accepted too (`asterisk` is
    /// `kp_multiply`, `compose` is `menu`).
    pub fn from_name(name: &str) -> Option<KeyCode> {
        match name {
            "asterisk" => return Some(KeyCode::KpMultiply),
            "compose" => return Some(KeyCode::Menu),
            _ => {}
        }
        Self::ALL.iter().copied().find(|k| k.name() == name)
    }

    /// Look a key up by QEMU key number (what an Extended Key Event carries).
    pub fn from_number(n: u16) -> Option<KeyCode> {
        Self::ALL.iter().copied().find(|k| k.number() == n)
    }

    /// The set-1 bytes for pressing (`down`) or releasing the key. Pause has no break
    /// code (it sends E1 1D 45 E1 9D C5 on press only).
    pub fn xt_bytes(self, down: bool) -> Vec<u8> {
        xt_bytes(self.number(), down)
    }
}

/// The set-1 bytes for a raw QEMU key number.
pub fn xt_bytes(number: u16, down: bool) -> Vec<u8> {
    if number == KeyCode::Pause.number() {
        return if down {
            vec![0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5]
        } else {
            Vec::new()
        };
    }
    let code = (number & 0x7f) as u8 | if down { 0 } else { 0x80 };
    if number & 0x80 != 0 {
        vec![0xe0, code]
    } else {
        vec![code]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keys_qemu_tests_with() {
        assert_eq!(KeyCode::A.xt_bytes(true), [0x1e]);
        assert_eq!(KeyCode::A.xt_bytes(false), [0x9e]);
        assert_eq!(KeyCode::Digit1.xt_bytes(true), [0x02]);
        assert_eq!(KeyCode::Digit1.xt_bytes(false), [0x82]);
        assert_eq!(KeyCode::Down.xt_bytes(true), [0xe0, 0x50]);
        assert_eq!(KeyCode::Down.xt_bytes(false), [0xe0, 0xd0]);
        assert_eq!(KeyCode::Ret.xt_bytes(true), [0x1c]);
        assert_eq!(KeyCode::Ret.xt_bytes(false), [0x9c]);
    }

    #[test]
    fn names_and_numbers_are_unique_and_round_trip() {
        let mut names = std::collections::HashSet::new();
        let mut nums = std::collections::HashSet::new();
        for k in KeyCode::ALL {
            assert!(names.insert(k.name()), "duplicate name {}", k.name());
            assert!(
                nums.insert(k.number()),
                "duplicate number {:#x}",
                k.number()
            );
            assert_eq!(KeyCode::from_name(k.name()), Some(*k));
            assert_eq!(KeyCode::from_number(k.number()), Some(*k));
        }
        assert_eq!(KeyCode::from_name("asterisk"), Some(KeyCode::KpMultiply));
        assert_eq!(KeyCode::from_name("nope"), None);
    }
}
