//! X11 keysyms (what RFB KeyEvents carry) to key codes, for the `-k` keyboard layouts.
//!
//! A keysym names a character or function; the guest wants the key that produces it on
//! the layout it believes in. Modifiers are sent by the client as their own key events
//! (Shift, AltGr = ISO_Level3_Shift), so each keysym maps to one key regardless of level:
//! on `de`, `@` is the `q` key (pressed with AltGr), `z` is the key US calls `y`.
//! Tables exist for `en-us`, `de` and `fr`; other QEMU layout names fall back to `en-us`
//! with a warning (clients that send QEMU Extended Key Events, like TigerVNC, noVNC and
//! virt-viewer, bypass keysyms entirely, so the layout then does not matter).

use crate::display::keycodes::KeyCode;
use KeyCode as K;

/// Layouts with a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    EnUs,
    De,
    Fr,
}

/// A keysym → key lookup for one layout.
#[derive(Debug, Clone, Copy)]
pub struct Keymap {
    layout: Layout,
}

impl Keymap {
    /// The keymap for a QEMU layout name; `Err` carries the fallback (en-us) and a warning
    /// for names without a table.
    pub fn for_layout(name: &str) -> Result<Keymap, (Keymap, String)> {
        let layout = match name {
            "en-us" | "" => Layout::EnUs,
            "de" => Layout::De,
            "fr" => Layout::Fr,
            other => {
                return Err((
                    Keymap {
                        layout: Layout::EnUs,
                    },
                    format!(
                        "keyboard layout '{other}' has no keysym table in troupe; using en-us \
                         (clients sending QEMU extended key events are unaffected)"
                    ),
                ))
            }
        };
        Ok(Keymap { layout })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The key for a keysym, if any.
    pub fn lookup(&self, keysym: u32) -> Option<KeyCode> {
        if let Some(k) = function_key(keysym) {
            return Some(k);
        }
        match self.layout {
            Layout::EnUs => us(keysym),
            Layout::De => de(keysym),
            Layout::Fr => fr(keysym),
        }
    }
}

fn letter(c: u8) -> Option<KeyCode> {
    Some(match c.to_ascii_lowercase() {
        b'a' => K::A,
        b'b' => K::B,
        b'c' => K::C,
        b'd' => K::D,
        b'e' => K::E,
        b'f' => K::F,
        b'g' => K::G,
        b'h' => K::H,
        b'i' => K::I,
        b'j' => K::J,
        b'k' => K::K,
        b'l' => K::L,
        b'm' => K::M,
        b'n' => K::N,
        b'o' => K::O,
        b'p' => K::P,
        b'q' => K::Q,
        b'r' => K::R,
        b's' => K::S,
        b't' => K::T,
        b'u' => K::U,
        b'v' => K::V,
        b'w' => K::W,
        b'x' => K::X,
        b'y' => K::Y,
        b'z' => K::Z,
        _ => return None,
    })
}

fn digit(c: u8) -> Option<KeyCode> {
    Some(match c {
        b'1' => K::Digit1,
        b'2' => K::Digit2,
        b'3' => K::Digit3,
        b'4' => K::Digit4,
        b'5' => K::Digit5,
        b'6' => K::Digit6,
        b'7' => K::Digit7,
        b'8' => K::Digit8,
        b'9' => K::Digit9,
        b'0' => K::Digit0,
        _ => return None,
    })
}

/// Keys that are the same on every layout.
fn function_key(ks: u32) -> Option<KeyCode> {
    Some(match ks {
        0x20 => K::Spc,
        0xff08 => K::Backspace,
        0xff09 | 0xfe20 => K::Tab,
        0xff0d => K::Ret,
        0xff13 | 0xff6b => K::Pause,
        0xff14 => K::ScrollLock,
        0xff15 => K::Sysrq,
        0xff1b => K::Esc,
        0xff50 => K::Home,
        0xff51 => K::Left,
        0xff52 => K::Up,
        0xff53 => K::Right,
        0xff54 => K::Down,
        0xff55 => K::Pgup,
        0xff56 => K::Pgdn,
        0xff57 => K::End,
        0xff61 => K::Print,
        0xff63 => K::Insert,
        0xff67 => K::Menu,
        0xff7f => K::NumLock,
        0xff8d => K::KpEnter,
        0xff95 => K::Kp7,
        0xff96 => K::Kp4,
        0xff97 => K::Kp8,
        0xff98 => K::Kp6,
        0xff99 => K::Kp2,
        0xff9a => K::Kp9,
        0xff9b => K::Kp3,
        0xff9c => K::Kp1,
        0xff9d => K::Kp5,
        0xff9e => K::Kp0,
        0xff9f => K::KpDecimal,
        0xffaa => K::KpMultiply,
        0xffab => K::KpAdd,
        0xffac => K::KpComma,
        0xffad => K::KpSubtract,
        0xffae => K::KpDecimal,
        0xffaf => K::KpDivide,
        0xffb0 => K::Kp0,
        0xffb1 => K::Kp1,
        0xffb2 => K::Kp2,
        0xffb3 => K::Kp3,
        0xffb4 => K::Kp4,
        0xffb5 => K::Kp5,
        0xffb6 => K::Kp6,
        0xffb7 => K::Kp7,
        0xffb8 => K::Kp8,
        0xffb9 => K::Kp9,
        0xffbd => K::KpEquals,
        0xffbe => K::F1,
        0xffbf => K::F2,
        0xffc0 => K::F3,
        0xffc1 => K::F4,
        0xffc2 => K::F5,
        0xffc3 => K::F6,
        0xffc4 => K::F7,
        0xffc5 => K::F8,
        0xffc6 => K::F9,
        0xffc7 => K::F10,
        0xffc8 => K::F11,
        0xffc9 => K::F12,
        0xffe1 => K::Shift,
        0xffe2 => K::ShiftR,
        0xffe3 => K::Ctrl,
        0xffe4 => K::CtrlR,
        0xffe5 => K::CapsLock,
        0xffe7 | 0xffeb => K::MetaL,
        0xffe8 | 0xffec => K::MetaR,
        0xffe9 => K::Alt,
        0xffea | 0xfe03 | 0xff7e => K::AltR,
        0xffff => K::Delete,
        _ => return None,
    })
}

fn us(ks: u32) -> Option<KeyCode> {
    let c = u8::try_from(ks).ok()?;
    if let Some(k) = letter(c).or_else(|| digit(c)) {
        return Some(k);
    }
    Some(match c {
        b'!' => K::Digit1,
        b'@' => K::Digit2,
        b'#' => K::Digit3,
        b'$' => K::Digit4,
        b'%' => K::Digit5,
        b'^' => K::Digit6,
        b'&' => K::Digit7,
        b'*' => K::Digit8,
        b'(' => K::Digit9,
        b')' => K::Digit0,
        b'-' | b'_' => K::Minus,
        b'=' | b'+' => K::Equal,
        b'[' | b'{' => K::BracketLeft,
        b']' | b'}' => K::BracketRight,
        b';' | b':' => K::Semicolon,
        b'\'' | b'"' => K::Apostrophe,
        b'`' | b'~' => K::GraveAccent,
        b'\\' | b'|' => K::Backslash,
        b',' | b'<' => K::Comma,
        b'.' | b'>' => K::Dot,
        b'/' | b'?' => K::Slash,
        _ => return None,
    })
}

fn de(ks: u32) -> Option<KeyCode> {
    Some(match ks {
        0x79 | 0x59 => K::Z, // y on the key US calls z
        0x7a | 0x5a => K::Y,
        0x21 => K::Digit1,
        0x22 | 0xb2 => K::Digit2,
        0xa7 | 0xb3 => K::Digit3,
        0x24 => K::Digit4,
        0x25 => K::Digit5,
        0x26 => K::Digit6,
        0x2f | 0x7b => K::Digit7,
        0x28 | 0x5b => K::Digit8,
        0x29 | 0x5d => K::Digit9,
        0x3d | 0x7d => K::Digit0,
        0xdf | 0x3f | 0x5c => K::Minus,
        0xb4 | 0xfe51 | 0x60 | 0xfe50 => K::Equal,
        0xfc | 0xdc => K::BracketLeft,
        0x2b | 0x2a | 0x7e | 0xfe53 => K::BracketRight,
        0xf6 | 0xd6 => K::Semicolon,
        0xe4 | 0xc4 => K::Apostrophe,
        0x5e | 0xfe52 | 0xb0 => K::GraveAccent,
        0x23 | 0x27 => K::Backslash,
        0x3c | 0x3e | 0x7c => K::Less,
        0x2c | 0x3b => K::Comma,
        0x2e | 0x3a => K::Dot,
        0x2d | 0x5f => K::Slash,
        0x40 => K::Q,
        0x20ac => K::E,
        0xb5 => K::M,
        _ => {
            let c = u8::try_from(ks).ok()?;
            return letter(c).or_else(|| digit(c));
        }
    })
}

fn fr(ks: u32) -> Option<KeyCode> {
    Some(match ks {
        0x61 | 0x41 => K::Q, // a on the key US calls q
        0x71 | 0x51 => K::A,
        0x7a | 0x5a => K::W,
        0x77 | 0x57 => K::Z,
        0x6d | 0x4d => K::Semicolon,
        0x26 | 0x31 => K::Digit1,
        0xe9 | 0xc9 | 0x32 | 0x7e => K::Digit2,
        0x22 | 0x33 | 0x23 => K::Digit3,
        0x27 | 0x34 | 0x7b => K::Digit4,
        0x28 | 0x35 | 0x5b => K::Digit5,
        0x2d | 0x36 | 0x7c => K::Digit6,
        0xe8 | 0xc8 | 0x37 | 0x60 => K::Digit7,
        0x5f | 0x38 | 0x5c => K::Digit8,
        0xe7 | 0xc7 | 0x39 | 0x5e => K::Digit9,
        0xe0 | 0xc0 | 0x30 | 0x40 => K::Digit0,
        0x29 | 0xb0 | 0x5d => K::Minus,
        0x3d | 0x2b | 0x7d => K::Equal,
        0xfe52 | 0xfe57 => K::BracketLeft,
        0x24 | 0xa3 | 0xa4 => K::BracketRight,
        0xf9 | 0xd9 | 0x25 => K::Apostrophe,
        0x2a | 0xb5 => K::Backslash,
        0xb2 => K::GraveAccent,
        0x3c | 0x3e => K::Less,
        0x2c | 0x3f => K::M,
        0x3b | 0x2e => K::Comma,
        0x3a | 0x2f => K::Dot,
        0x21 | 0xa7 => K::Slash,
        0x20ac => K::E,
        _ => {
            let c = u8::try_from(ks).ok()?;
            return letter(c);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn us_layout() {
        let m = Keymap::for_layout("en-us").unwrap();
        assert_eq!(m.lookup(b'a' as u32), Some(K::A));
        assert_eq!(m.lookup(b'A' as u32), Some(K::A));
        assert_eq!(m.lookup(b'1' as u32), Some(K::Digit1));
        assert_eq!(m.lookup(b'!' as u32), Some(K::Digit1));
        assert_eq!(m.lookup(0xff54), Some(K::Down));
        assert_eq!(m.lookup(0xff0d), Some(K::Ret));
        assert_eq!(m.lookup(0xffe1), Some(K::Shift));
        assert_eq!(m.lookup(0xffe3), Some(K::Ctrl));
        assert_eq!(m.lookup(0xffe9), Some(K::Alt));
        assert_eq!(m.lookup(b'?' as u32), Some(K::Slash));
        assert_eq!(m.lookup(0x12345), None);
        // Every printable ASCII character has a key.
        for c in 0x20u32..0x7f {
            assert!(m.lookup(c).is_some(), "no key for {:?}", c as u8 as char);
        }
    }

    #[test]
    fn german_layout() {
        let m = Keymap::for_layout("de").unwrap();
        assert_eq!(m.lookup(b'z' as u32), Some(K::Y));
        assert_eq!(m.lookup(b'y' as u32), Some(K::Z));
        assert_eq!(m.lookup(0xf6), Some(K::Semicolon)); // ö
        assert_eq!(m.lookup(b'@' as u32), Some(K::Q));
        assert_eq!(m.lookup(b'-' as u32), Some(K::Slash));
        assert_eq!(m.lookup(b'<' as u32), Some(K::Less));
        for c in 0x20u32..0x7f {
            assert!(m.lookup(c).is_some(), "no key for {:?}", c as u8 as char);
        }
    }

    #[test]
    fn french_layout() {
        let m = Keymap::for_layout("fr").unwrap();
        assert_eq!(m.lookup(b'a' as u32), Some(K::Q));
        assert_eq!(m.lookup(b'q' as u32), Some(K::A));
        assert_eq!(m.lookup(b'm' as u32), Some(K::Semicolon));
        assert_eq!(m.lookup(b'1' as u32), Some(K::Digit1));
        assert_eq!(m.lookup(b'&' as u32), Some(K::Digit1));
        assert_eq!(m.lookup(0xe9), Some(K::Digit2)); // é
        for c in 0x20u32..0x7f {
            assert!(m.lookup(c).is_some(), "no key for {:?}", c as u8 as char);
        }
    }

    #[test]
    fn unknown_layout_falls_back_with_a_warning() {
        let (m, w) = Keymap::for_layout("ja").unwrap_err();
        assert_eq!(m.layout(), Layout::EnUs);
        assert!(w.contains("'ja'"));
    }
}
