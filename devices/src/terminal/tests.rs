use super::*;

fn term(cols: usize, rows: usize, input: &[u8]) -> Terminal {
    let mut t = Terminal::new(cols, rows);
    t.feed(input);
    t
}

fn text(t: &Terminal) -> Vec<String> {
    (0..t.size().1).map(|y| t.visible_text(y)).collect()
}

#[test]
fn printing_moves_the_cursor_and_crlf_starts_a_new_line() {
    let t = term(10, 3, b"ab\r\ncd");
    assert_eq!(text(&t), ["ab", "cd", ""]);
    assert_eq!(t.cursor(), (2, 1));
    // A bare LF keeps the column (VT100).
    let t = term(10, 3, b"ab\ncd");
    assert_eq!(text(&t), ["ab", "  cd", ""]);
}

#[test]
fn long_lines_wrap_only_when_the_next_character_comes() {
    let mut t = term(4, 3, b"abcd");
    assert_eq!(t.cursor(), (3, 0));
    assert_eq!(text(&t), ["abcd", "", ""]);
    t.feed(b"e");
    assert_eq!(text(&t), ["abcd", "e", ""]);
    // CR after a full line does not produce an empty line.
    let t = term(4, 3, b"abcd\r\nx");
    assert_eq!(text(&t), ["abcd", "x", ""]);
}

#[test]
fn output_past_the_bottom_scrolls_into_the_scrollback() {
    let mut t = term(5, 2, b"1\r\n2\r\n3\r\n4");
    assert_eq!(text(&t), ["3", "4"]);
    assert_eq!(t.scrollback_len(), 2);
    t.scroll_view(1);
    assert_eq!(text(&t), ["2", "3"]);
    t.scroll_view(10);
    assert_eq!(t.view_offset(), 2);
    assert_eq!(text(&t), ["1", "2"]);
    t.scroll_view(-1);
    assert_eq!(text(&t), ["2", "3"]);
    // New output returns to the live screen.
    t.feed(b"5");
    assert_eq!(t.view_offset(), 0);
    assert_eq!(text(&t), ["3", "45"]);
}

#[test]
fn cursor_movement_sequences() {
    let mut t = term(10, 5, b"\x1b[3;4HX");
    assert_eq!(t.cell(3, 2).unwrap().ch, b'X');
    t.feed(b"\x1b[2AY");
    assert_eq!(t.cell(4, 0).unwrap().ch, b'Y');
    t.feed(b"\x1b[10D\x1b[BZ");
    assert_eq!(t.cell(0, 1).unwrap().ch, b'Z');
    t.feed(b"\x1b[3CW");
    assert_eq!(t.cell(4, 1).unwrap().ch, b'W');
    t.feed(b"\x1b[HQ");
    assert_eq!(t.cell(0, 0).unwrap().ch, b'Q');
    // Moves clamp at the edges.
    t.feed(b"\x1b[99;99H");
    assert_eq!(t.cursor(), (9, 4));
    t.feed(b"\x1b[7G\x1b[2d");
    assert_eq!(t.cursor(), (6, 1));
    t.feed(b"\x1b7\x1b[5;1H\x1b8");
    assert_eq!(t.cursor(), (6, 1));
}

#[test]
fn erase_in_line_and_display() {
    let mut t = term(6, 3, b"abcdef\r\nghijkl\r\nmnopqr");
    t.feed(b"\x1b[2;3H\x1b[K");
    assert_eq!(text(&t), ["abcdef", "gh", "mnopqr"]);
    t.feed(b"\x1b[1K");
    assert_eq!(text(&t), ["abcdef", "", "mnopqr"]);
    t.feed(b"\x1b[1;4H\x1b[J");
    assert_eq!(text(&t), ["abc", "", ""]);
    t.feed(b"\x1b[2J");
    assert_eq!(text(&t), ["", "", ""]);
}

#[test]
fn hmp_line_redraw_leaves_the_edited_line() {
    // What QEMU's readline sends to echo "in" then "inf": redraw with ESC[K and ESC[D.
    let t = term(20, 2, b"(qemu) i\x1b[K\x1b[Din\x1b[K\x1b[D\x1b[Dinf\x1b[K");
    assert_eq!(text(&t), ["(qemu) inf", ""]);
    assert_eq!(t.cursor(), (10, 0));
}

#[test]
fn sgr_colours_and_reset() {
    let mut t = term(10, 1, b"\x1b[31;44ma\x1b[1mb\x1b[0mc\x1b[7md\x1b[92me");
    let a = t.cell(0, 0).unwrap().attr;
    assert_eq!((a.fg, a.bg, a.bold), (1, 4, false));
    assert!(t.cell(1, 0).unwrap().attr.bold);
    assert_eq!(t.cell(2, 0).unwrap().attr, Attr::default());
    assert!(t.cell(3, 0).unwrap().attr.reverse);
    assert_eq!(t.cell(4, 0).unwrap().attr.fg, 10);
    // 256-colour arguments are skipped, not read as other attributes.
    t.feed(b"\x1b[0;38;5;1mf");
    assert_eq!(t.cell(5, 0).unwrap().attr, Attr::default());
}

#[test]
fn insert_delete_characters_and_lines() {
    let mut t = term(6, 3, b"abcdef\x1b[1;2H\x1b[2P");
    assert_eq!(text(&t), ["adef", "", ""]);
    t.feed(b"\x1b[1@");
    assert_eq!(text(&t), ["a def", "", ""]);
    t.feed(b"\x1b[2;1H2\x1b[3;1H3\x1b[2;1H\x1b[L");
    assert_eq!(text(&t), ["a def", "", "2"]);
    t.feed(b"\x1b[M");
    assert_eq!(text(&t), ["a def", "2", ""]);
    // Deleted lines are not scrollback.
    assert_eq!(t.scrollback_len(), 0);
}

#[test]
fn scroll_region_keeps_lines_outside_it() {
    let mut t = term(4, 4, b"top\r\n\x1b[2;3r");
    t.feed(b"\x1b[2;1Ha\r\nb\r\nc\r\nd");
    let mut last = String::from("x");
    t.feed(b"\x1b[4;1H");
    t.feed(b"end");
    for y in 0..4 {
        last = t.visible_text(y);
        if y == 0 {
            assert_eq!(last, "top");
        }
    }
    assert_eq!(last, "end");
    assert_eq!(t.visible_text(1), "c");
    assert_eq!(t.visible_text(2), "d");
    assert_eq!(t.scrollback_len(), 0);
}

#[test]
fn status_report_answers_the_cursor_position() {
    let mut t = term(10, 5, b"\x1b[3;7H\x1b[6n");
    assert_eq!(t.take_replies(), b"\x1b[3;7R");
    assert!(t.take_replies().is_empty());
}

#[test]
fn malformed_sequences_do_not_panic() {
    let mut t = Terminal::new(3, 2);
    t.feed(b"\x1b[99999999999;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0H");
    t.feed(b"\x1b[0r\x1b[5;1r\x1b[2;1r\x1b[99M\x1b[99L\x1b[99P\x1b[99@\x1b[99X\x1b[99S\x1b[99T");
    t.feed(b"\x1b]0;title\x07ok\x1b(B\x1bZ\x1b[?25l\x1b[?7l");
    t.feed(&(0u8..=255).collect::<Vec<u8>>());
    assert_eq!(t.size(), (3, 2));
}

#[test]
fn render_draws_glyphs_in_colour_and_the_cursor_reversed() {
    // A font whose glyph 'A' has its top row full and 'B' nothing.
    let mut font = vec![0u8; 256 * 16];
    font[usize::from(b'A') * 16] = 0xff;
    let mut t = term(2, 1, b"\x1b[31mA");
    let (w, h) = t.pixel_size();
    assert_eq!((w, h), (16, 16));
    let mut px = vec![0u32; (w * h) as usize];
    assert_eq!(t.render(&font, &mut px, w as usize), vec![0]);
    assert_eq!(px[0], PALETTE[1]);
    assert_eq!(px[w as usize], PALETTE[0]);
    // The cursor sits on the second cell: reverse video of default grey on black.
    assert_eq!(px[8], PALETTE[7]);
    // Nothing changed: nothing drawn.
    assert!(t.render(&font, &mut px, w as usize).is_empty());
    t.feed(b"\x1b[?25l");
    assert_eq!(t.render(&font, &mut px, w as usize), vec![0]);
    assert_eq!(px[8], PALETTE[0]);
}

#[test]
fn keys_become_terminal_bytes() {
    assert_eq!(key_bytes(TermKey::Char(b'a'), false), b"a");
    assert_eq!(key_bytes(TermKey::Char(b'c'), true), [3]);
    assert_eq!(key_bytes(TermKey::Enter, false), b"\r");
    assert_eq!(key_bytes(TermKey::Backspace, false), [0x7f]);
    assert_eq!(key_bytes(TermKey::Up, false), b"\x1b[A");
    assert_eq!(key_bytes(TermKey::Delete, false), b"\x1b[3~");
}

#[test]
fn a_text_display_sees_colours_bold_as_bright_and_reverse_swapped() {
    let t = term(20, 3, b"a\x1b[1;31mb\x1b[0;7;32;44mc\x1b[0m\r\nxy");
    let g = t.grid();
    assert_eq!((g.cols, g.rows), (20, 3));
    assert_eq!(g.row_text(0), "abc");
    assert_eq!(g.row_text(1), "xy");
    let c = |x| g.cell(x, 0).unwrap();
    assert_eq!((c(0).fg, c(0).bg), (7, 0));
    assert_eq!((c(1).fg, c(1).bg), (9, 0), "bold red is bright red");
    assert_eq!((c(2).fg, c(2).bg), (4, 2), "reverse: blue on green");
    assert_eq!(g.cursor, Some((2, 1)));
}
