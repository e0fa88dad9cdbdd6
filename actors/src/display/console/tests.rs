use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::display::input::RecordingSink;

/// A font whose every printable glyph is a full block, so text is visible as pixels.
fn block_font() -> Arc<Vec<u8>> {
    let mut f = vec![0u8; 256 * 16];
    for ch in 0x21..0x7f {
        f[ch * 16..ch * 16 + 16].fill(0xff);
    }
    Arc::new(f)
}

fn key(set: &ConsoleSet, k: KeyCode, down: bool) {
    set.send(InputEvent::Key { key: k, down });
}

fn chord(set: &ConsoleSet, keys: &[KeyCode]) {
    for k in keys {
        key(set, *k, true);
    }
    for k in keys.iter().rev() {
        key(set, *k, false);
    }
}

/// Wait until the output display satisfies `f`.
async fn until(out: &DisplayHandle, f: impl Fn(&Surface) -> bool) -> Surface {
    for _ in 0..200 {
        let s = out.snapshot();
        if f(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the output display never showed what was expected");
}

struct Fixture {
    set: ConsoleSet,
    out: DisplayHandle,
    guest: RecordingSink,
    guest_writer: DisplayWriter,
    vc: DuplexStream,
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Handle::current();
    let registry = Registry::default();
    let (set, out) = ConsoleSet::start(&rt, &registry).unwrap();
    let (guest_writer, guest_display) = new_display(32, 16).unwrap();
    guest_writer.update(Rect::new(0, 0, 2, 1), &[0x123456, 0xabcdef], 2);
    let guest = RecordingSink::new(false);
    set.set_guest_input(Arc::new(guest.clone()));
    set.add_graphic(guest_display);
    let port = spawn_text_console(&rt, &registry, &set, "monitor", 4, 2, block_font()).unwrap();
    let vc = port.take().unwrap();
    assert!(port.take().is_none(), "a port opens once");
    Fixture {
        set,
        out,
        guest,
        guest_writer,
        vc,
    }
}

#[tokio::test]
async fn ctrl_alt_digits_switch_between_the_guest_screen_and_a_text_console() {
    let mut f = fixture();
    assert_eq!(f.set.names(), ["graphic", "monitor"]);
    let before = until(&f.out, |s| s.width() == 32 && s.pixel(0, 0) == 0x123456).await;

    chord(&f.set, &[KeyCode::Ctrl, KeyCode::Alt, KeyCode::Digit2]);
    assert_eq!(f.set.active(), 1);
    // The output takes the console's size: 4x2 cells of 8x16.
    until(&f.out, |s| (s.width(), s.height()) == (32, 32)).await;
    f.vc.write_all(b"\x1b[31mX").await.unwrap();
    let s = until(&f.out, |s| s.pixel(0, 0) == devices::terminal::PALETTE[1]).await;
    assert_eq!(s.pixel(0, 16), 0, "second row is blank");

    // The guest saw Ctrl and Alt go down and up, never the digit.
    let evs = f.guest.take();
    assert!(evs.contains(&InputEvent::Key {
        key: KeyCode::Ctrl,
        down: false
    }));
    assert!(!evs.iter().any(|e| matches!(
        e,
        InputEvent::Key {
            key: KeyCode::Digit2,
            ..
        }
    )));

    chord(&f.set, &[KeyCode::Ctrl, KeyCode::Alt, KeyCode::Digit1]);
    let after = until(&f.out, |s| s.width() == 32 && s.height() == 16).await;
    assert_eq!(after.pixels(), before.pixels());
    // Back on the guest's screen, its changes show again.
    f.guest_writer.update(Rect::new(5, 5, 1, 1), &[0xff], 1);
    until(&f.out, |s| s.pixel(5, 5) == 0xff).await;
    // A console that does not exist changes nothing.
    chord(&f.set, &[KeyCode::Ctrl, KeyCode::Alt, KeyCode::Digit9]);
    assert_eq!(f.set.active(), 0);
}

#[tokio::test]
async fn keys_on_a_text_console_become_terminal_bytes() {
    let mut f = fixture();
    f.set.select(1).unwrap();
    f.guest.take();
    chord(&f.set, &[KeyCode::I]);
    chord(&f.set, &[KeyCode::Shift, KeyCode::Digit1]);
    chord(&f.set, &[KeyCode::Ctrl, KeyCode::C]);
    chord(&f.set, &[KeyCode::Up]);
    chord(&f.set, &[KeyCode::Ret]);
    let want = b"i!\x03\x1b[A\r";
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(5), f.vc.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, want);
    assert!(f.guest.take().is_empty(), "the guest got none of it");
}

#[tokio::test]
async fn ctrl_page_up_shows_the_scrollback() {
    let mut f = fixture();
    f.set.select(1).unwrap();
    // Four lines on a two-row console: "a" and "b" scroll off.
    f.vc.write_all(b"a\r\nb\r\nc\r\nd").await.unwrap();
    let live = until(&f.out, |s| s.height() == 32 && s.pixel(0, 0) != 0).await;
    chord(&f.set, &[KeyCode::Ctrl, KeyCode::Pgup]);
    // The view moved: the last line ("d", cursor after it) is no longer on screen.
    let back = until(&f.out, |s| s.pixel(8, 16) == 0).await;
    assert_ne!(back.pixels(), live.pixels());
    chord(&f.set, &[KeyCode::Ctrl, KeyCode::Pgdn]);
    let again = until(&f.out, |s| s.pixels() == live.pixels()).await;
    assert_eq!(again.pixels(), live.pixels());
}

#[tokio::test]
async fn a_key_held_while_switching_is_released_to_the_guest() {
    let f = fixture();
    key(&f.set, KeyCode::A, true);
    f.set.select(1).unwrap();
    key(&f.set, KeyCode::A, false);
    assert_eq!(
        f.guest.take(),
        [
            InputEvent::Key {
                key: KeyCode::A,
                down: true
            },
            InputEvent::Key {
                key: KeyCode::A,
                down: false
            }
        ]
    );
    assert!(f.set.select(5).is_err());
}

#[tokio::test]
async fn sendkey_switches_with_ctrl_alt_n_and_types_into_the_guest() {
    let f = fixture();
    let sk = f.set.sendkey_sink();
    f.set.select(1).unwrap();
    // `sendkey a` on a text console still goes to the guest, as QEMU's does.
    sk.send(InputEvent::Key {
        key: KeyCode::A,
        down: true,
    });
    assert_eq!(
        f.guest.take(),
        [InputEvent::Key {
            key: KeyCode::A,
            down: true
        }]
    );
    sk.send(InputEvent::Key {
        key: KeyCode::A,
        down: false,
    });
    f.guest.take();
    for (k, down) in [
        (KeyCode::Ctrl, true),
        (KeyCode::Alt, true),
        (KeyCode::Digit1, true),
        (KeyCode::Digit1, false),
        (KeyCode::Alt, false),
        (KeyCode::Ctrl, false),
    ] {
        sk.send(InputEvent::Key { key: k, down });
    }
    assert_eq!(f.set.active(), 0);
    let digits = f
        .guest
        .take()
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                InputEvent::Key {
                    key: KeyCode::Digit1,
                    ..
                }
            )
        })
        .count();
    assert_eq!(digits, 0, "the switching digit is not typed");
}

#[tokio::test]
async fn a_program_that_never_reads_its_input_does_not_stall_the_screen() {
    let mut f = fixture();
    f.set.select(1).unwrap();
    // Far more typing than any buffer holds (the pipe holds 64 KiB), and nobody reads it.
    for _ in 0..400 {
        for _ in 0..200 {
            chord(&f.set, &[KeyCode::A]);
        }
        // Let the console take them (its mailbox holds 256 keys).
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    f.vc.write_all(b"\x1b[32mZ").await.unwrap();
    until(&f.out, |s| {
        s.height() == 32 && s.pixel(0, 0) == devices::terminal::PALETTE[2]
    })
    .await;
}

#[tokio::test]
async fn a_text_console_types_the_character_of_the_clients_keysym_whatever_the_layout() {
    let mut f = fixture();
    chord(&f.set, &[KeyCode::Ctrl, KeyCode::Alt, KeyCode::Digit2]);
    // `-k de`: the keysym `z` is the key US calls Y, `@` is AltGr+Q. The console types
    // the characters; Ctrl+C is still the key's control code.
    f.set.key_typing(Some(KeyCode::Y), true, Some('z'));
    f.set.key_typing(Some(KeyCode::Y), false, Some('z'));
    f.set.key_typing(Some(KeyCode::AltR), true, None);
    f.set.key_typing(Some(KeyCode::Q), true, Some('@'));
    f.set.key_typing(Some(KeyCode::Q), false, Some('@'));
    f.set.key_typing(Some(KeyCode::AltR), false, None);
    f.set.key_typing(None, true, Some('é'));
    f.set.key_typing(Some(KeyCode::Ctrl), true, None);
    f.set.key_typing(Some(KeyCode::C), true, Some('c'));
    f.set.key_typing(Some(KeyCode::C), false, Some('c'));
    f.set.key_typing(Some(KeyCode::Ctrl), false, None);
    let want = "z@é\x03".as_bytes();
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(5), f.vc.read_exact(&mut got))
        .await
        .expect("the console's input")
        .unwrap();
    assert_eq!(got, want);
    // On the guest's screen the same events are keys, not characters.
    chord(&f.set, &[KeyCode::Ctrl, KeyCode::Alt, KeyCode::Digit1]);
    f.guest.take();
    f.set.key_typing(Some(KeyCode::Y), true, Some('z'));
    assert_eq!(
        f.guest.take(),
        [InputEvent::Key {
            key: KeyCode::Y,
            down: true
        }]
    );
}
