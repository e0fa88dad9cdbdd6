//! Key codes for the console: one table of every key troupe knows lives with the i8042
//! model (`devices::i8042::KeyCode`, by QEMU "qcode" name and QEMU key number, the set-1
//! make code with the 0xE0 prefix folded into bit 7: `a` = 0x1e, `down` = 0xd0). The VNC
//! server turns keysyms and QEMU Extended Key Events into these; the i8042 host turns them
//! into the bytes the guest reads (set 1 with translation: `a` → 1e / 9e, `down` → e0 50 /
//! e0 d0).

pub use devices::i8042::KeyCode;

/// The set-1 bytes for a raw QEMU key number (keys outside the table pass through).
pub fn xt_bytes(number: u16, down: bool) -> Vec<u8> {
    if let Some(k) = KeyCode::from_number(number) {
        return k.xt_bytes(down);
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
