use super::render::{c6_to_8, Mode};
use super::*;

const MODE3_SEQ: [u8; 5] = [0x03, 0x00, 0x03, 0x00, 0x02];
const MODE3_CRTC: [u8; 25] = [
    0x5f, 0x4f, 0x50, 0x82, 0x55, 0x81, 0xbf, 0x1f, 0x00, 0x4f, 0x0d, 0x0e, 0x00, 0x00, 0x00, 0x00,
    0x9c, 0x8e, 0x8f, 0x28, 0x1f, 0x96, 0xb9, 0xa3, 0xff,
];
const MODE3_GC: [u8; 9] = [0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x0e, 0x00, 0xff];
const MODE3_AC: [u8; 21] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0x3e, 0x3f,
    0x0c, 0x00, 0x0f, 0x08, 0x00,
];

fn set_regs(v: &mut Vga, misc: u8, seq: &[u8], crtc: &[u8], gc: &[u8], ac: &[u8]) {
    v.io_write(0x3c2, misc);
    for (i, b) in seq.iter().enumerate() {
        v.io_write(0x3c4, i as u8);
        v.io_write(0x3c5, *b);
    }
    v.io_write(0x3d4, 0x11);
    v.io_write(0x3d5, 0);
    for (i, b) in crtc.iter().enumerate() {
        v.io_write(0x3d4, i as u8);
        v.io_write(0x3d5, *b);
    }
    for (i, b) in gc.iter().enumerate() {
        v.io_write(0x3ce, i as u8);
        v.io_write(0x3cf, *b);
    }
    v.io_read(0x3da);
    for (i, b) in ac.iter().enumerate() {
        v.io_write(0x3c0, i as u8);
        v.io_write(0x3c0, *b);
    }
    v.io_write(0x3c0, 0x20);
}

fn set_dac(v: &mut Vga, i: u8, rgb: (u8, u8, u8)) {
    v.io_write(0x3c8, i);
    v.io_write(0x3c9, rgb.0);
    v.io_write(0x3c9, rgb.1);
    v.io_write(0x3c9, rgb.2);
}

/// Mode 3 as the VGA BIOS sets it, with a glyph for 'A' (0x41) and one for 0xC4 (a line
/// drawing character) loaded into plane 2 through the planar write path.
fn mode3() -> (Vga, Vec<u8>) {
    let mut v = Vga::new(VRAM_SIZE);
    let mut vram = vec![0u8; VRAM_SIZE];
    set_regs(&mut v, 0x67, &MODE3_SEQ, &MODE3_CRTC, &MODE3_GC, &MODE3_AC);
    set_dac(&mut v, 0x00, (0, 0, 0));
    set_dac(&mut v, 0x07, (0x2a, 0x2a, 0x2a));
    set_dac(&mut v, 0x3f, (0x3f, 0x3f, 0x3f));
    set_dac(&mut v, 0x01, (0, 0, 0x2a));
    // Font load: plane 2 only, sequential addressing, map at A0000.
    for (i, b) in [(2u8, 0x04u8), (4, 0x07)] {
        v.io_write(0x3c4, i);
        v.io_write(0x3c5, b);
    }
    for (i, b) in [(4u8, 0x02u8), (5, 0x00), (6, 0x04)] {
        v.io_write(0x3ce, i);
        v.io_write(0x3cf, b);
    }
    for line in 0..16u64 {
        v.mem_write(0x41 * 32 + line, 0b1100_0011, &mut vram);
        v.mem_write(
            0xc4 * 32 + line,
            if line == 8 { 0xff } else { 0x01 },
            &mut vram,
        );
    }
    set_regs(&mut v, 0x67, &MODE3_SEQ, &MODE3_CRTC, &MODE3_GC, &MODE3_AC);
    (v, vram)
}

#[test]
fn dac_expansion_is_qemus() {
    assert_eq!(c6_to_8(0x3f), 0xff);
    assert_eq!(c6_to_8(0x2a), 0xa8);
    assert_eq!(c6_to_8(0x15), 0x57);
}

#[test]
fn text_mode_renders_720x400_with_the_plane_2_font_and_attributes() {
    let (mut v, mut vram) = mode3();
    assert_eq!(
        v.mode(),
        Mode::Text {
            cols: 80,
            rows: 25,
            cw: 9,
            ch: 16
        }
    );
    // Through the window at B8000 (offset 0x18000), odd/even: char then attribute.
    v.mem_write(0x18000, 0x41, &mut vram);
    v.mem_write(0x18001, 0x1f, &mut vram); // bright white on blue
    v.mem_write(0x18002, 0xc4, &mut vram);
    v.mem_write(0x18003, 0x07, &mut vram);
    // Cursor off for this test.
    v.io_write(0x3d4, 0x0a);
    v.io_write(0x3d5, 0x20);
    let mut out = Vec::new();
    v.render(&vram, &mut out);
    assert_eq!(out.len(), 720 * 400);
    let white = 0xffffff;
    let blue = 0x0000a8;
    let grey = 0xa8a8a8;
    // 'A' row 0: 11000011 in 9 columns; 9th column is background (not line-drawing).
    let row: Vec<u32> = out[0..9].to_vec();
    assert_eq!(
        row,
        [white, white, blue, blue, blue, blue, white, white, blue]
    );
    // 0xC4 line 8 is all ones: the 9th column repeats the 8th (line graphics enabled).
    let y = 8 * 720;
    assert_eq!(&out[y + 9..y + 18], &[grey; 9]);
    // Its other lines have only bit 0 set: the 9th column duplicates it.
    assert_eq!(&out[9 + 7..9 + 9], &[grey, grey]);
    // Reading back through the window gives the same bytes.
    assert_eq!(v.mem_read(0x18000, &vram), 0x41);
    assert_eq!(v.mem_read(0x18001, &vram), 0x1f);
}

#[test]
fn the_cursor_is_drawn_between_its_scanlines() {
    let (mut v, mut vram) = mode3();
    v.mem_write(0x18000 + 2 * 81, b' ', &mut vram);
    v.mem_write(0x18001 + 2 * 81, 0x07, &mut vram);
    for (r, val) in [(0x0au8, 14u8), (0x0b, 15), (0x0e, 0), (0x0f, 81)] {
        v.io_write(0x3d4, r);
        v.io_write(0x3d5, val);
    }
    assert_eq!(v.text_cursor(), Some((1, 1)));
    let mut out = Vec::new();
    v.render(&vram, &mut out);
    let at = |x: usize, y: usize| out[y * 720 + x];
    assert_eq!(at(9, 16 + 13), 0);
    assert_eq!(at(9, 16 + 14), 0xa8a8a8);
    assert_eq!(at(17, 16 + 15), 0xa8a8a8, "cursor spans all 9 columns");
}

#[test]
fn a_text_display_sees_the_characters_colours_and_cursor() {
    let (mut v, mut vram) = mode3();
    // "Hi" at row 1, column 2: yellow on blue, then bright white on red.
    let at = 0x18000 + 2 * (80 + 2);
    for (i, b) in [b'H', 0x1e, b'i', 0x4f].into_iter().enumerate() {
        v.mem_write(at + i as u64, b, &mut vram);
    }
    for (r, val) in [(0x0au8, 14u8), (0x0b, 15), (0x0e, 0), (0x0f, 83)] {
        v.io_write(0x3d4, r);
        v.io_write(0x3d5, val);
    }
    let g = v.text_grid(&vram);
    assert_eq!((g.cols, g.rows), (80, 25));
    assert_eq!(g.row_text(1), "  Hi");
    let c = |x| g.cell(x, 1).unwrap();
    // ANSI order: yellow 11 on blue 4; bright white 15 on red 1.
    assert_eq!((c(2).ch, c(2).fg, c(2).bg), (b'H', 11, 4));
    assert_eq!((c(3).fg, c(3).bg), (15, 1));
    assert_eq!(g.cursor, Some((3, 1)));
}

#[test]
fn mode_13h_is_640x400_with_doubled_pixels() {
    let mut v = Vga::new(VRAM_SIZE);
    let mut vram = vec![0u8; VRAM_SIZE];
    let crtc: [u8; 25] = [
        0x5f, 0x4f, 0x50, 0x82, 0x54, 0x80, 0xbf, 0x1f, 0x00, 0x41, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x9c, 0x8e, 0x8f, 0x28, 0x40, 0x96, 0xb9, 0xa3, 0xff,
    ];
    let ac: Vec<u8> = (0..16).chain([0x41, 0, 0x0f, 0, 0]).collect();
    set_regs(
        &mut v,
        0x63,
        &[0x03, 0x01, 0x0f, 0x00, 0x0e],
        &crtc,
        &[0, 0, 0, 0, 0, 0x40, 0x05, 0x0f, 0xff],
        &ac,
    );
    set_dac(&mut v, 5, (0x3f, 0, 0));
    // Pixel (10, 3) = colour 5 through the window (chain 4, linear).
    v.mem_write(3 * 320 + 10, 5, &mut vram);
    assert_eq!(
        v.mode(),
        Mode::Graphics {
            shift: 2,
            width: 640,
            height: 400
        }
    );
    let mut out = Vec::new();
    v.render(&vram, &mut out);
    for (x, y) in [(20, 6), (21, 6), (20, 7), (21, 7)] {
        assert_eq!(out[y * 640 + x], 0xff0000, "({x},{y})");
    }
    assert_eq!(out[6 * 640 + 22], 0);
    // A text display says what it cannot show, as QEMU's does.
    let g = v.text_grid(&vram);
    assert_eq!((g.cols, g.rows), (60, 3));
    assert_eq!(g.row_text(1).trim_start(), "640 x 400 Graphic mode");
}

#[test]
fn planar_write_modes_and_read_mode_1() {
    let mut v = Vga::new(VRAM_SIZE);
    let mut vram = vec![0u8; VRAM_SIZE];
    v.io_write(0x3ce, 6);
    v.io_write(0x3cf, 0x05); // graphics, A0000 64K
    v.io_write(0x3c4, 2);
    v.io_write(0x3c5, 0x0f);
    v.io_write(0x3ce, 8);
    v.io_write(0x3cf, 0xff); // bit mask: all bits
                             // Write mode 2: colour 0xA into all 8 pixels of address 0.
    v.io_write(0x3ce, 5);
    v.io_write(0x3cf, 0x02);
    v.mem_write(0, 0x0a, &mut vram);
    assert_eq!(&vram[0..4], &[0x00, 0xff, 0x00, 0xff]);
    // Read mode 1: compare against colour 0xA → all bits match.
    v.io_write(0x3ce, 5);
    v.io_write(0x3cf, 0x08);
    v.io_write(0x3ce, 2);
    v.io_write(0x3cf, 0x0a);
    v.io_write(0x3ce, 7);
    v.io_write(0x3cf, 0x0f);
    assert_eq!(v.mem_read(0, &vram), 0xff);
    // Write mode 1 copies the latches loaded by that read to address 1.
    v.io_write(0x3ce, 5);
    v.io_write(0x3cf, 0x01);
    v.mem_write(1, 0, &mut vram);
    assert_eq!(&vram[4..8], &[0x00, 0xff, 0x00, 0xff]);
}

#[test]
fn vbe_1024x768x32_renders_the_linear_framebuffer() {
    let mut v = Vga::new(VRAM_SIZE);
    let mut vram = vec![0x55u8; VRAM_SIZE];
    v.vbe_write(0, 0, &mut vram);
    assert_eq!(v.vbe_read(1), VBE_DISPI_ID5);
    for (i, val) in [(1u16, 1024u16), (2, 768), (3, 32), (4, 0x41)] {
        v.vbe_write(0, i, &mut vram);
        v.vbe_write(1, val, &mut vram);
    }
    assert_eq!(vram[0], 0, "enabling without NOCLEARMEM clears the screen");
    vram[(10 * 1024 + 3) * 4..(10 * 1024 + 3) * 4 + 4].copy_from_slice(&[0x30, 0x20, 0x10, 0xee]);
    assert_eq!(
        v.mode(),
        Mode::Vbe {
            width: 1024,
            height: 768,
            bpp: 32
        }
    );
    let mut out = Vec::new();
    v.render(&vram, &mut out);
    assert_eq!(out[10 * 1024 + 3], 0x102030);
    // The MMIO BAR's DISPI block reads the same registers.
    let mut b = [0u8; 2];
    v.mmio_read(0x502, &mut b);
    assert_eq!(u16::from_le_bytes(b), 1024);
}

#[test]
fn attribute_flip_flop_resets_on_input_status_read() {
    let mut v = Vga::new(VRAM_SIZE);
    v.io_write(0x3c2, 0x01);
    v.io_write(0x3c0, 0x05);
    v.io_read(0x3da);
    v.io_write(0x3c0, 0x03);
    v.io_write(0x3c0, 0x2a);
    assert_eq!(v.s.ar[3], 0x2a);
    v.io_write(0x3c7, 0);
    assert_eq!(v.io_read(0x3c7), 3);
}

#[test]
fn state_round_trips() {
    let (v, _vram) = mode3();
    let w = crate::check_roundtrip(&v, Vga::new(VRAM_SIZE));
    assert_eq!(w.s.ar, v.s.ar);
}
