//! TEST HARNESS ONLY: a synthetic display producer standing in for the VGA model.
//!
//! It paints colour bars, gradients, a checkerboard, a many-coloured noise block (so every
//! VNC encoding and filter gets exercised) and a text area written with a built-in 3x5
//! font: the size, a frame counter, and the last keys received. It is also an
//! [`InputSink`]: every event is echoed on screen and logged to stderr as
//! `troupe: test-display: key <qcode> down|up` / `pointer ...` lines that integration
//! tests read, and F2/F3/F4 switch the size to 1024x768 / 640x480 / 720x400 (a "mode
//! switch" to drive DesktopSize). The binary wires it in only when the environment
//! variable `TROUPE_TEST_DISPLAY` is set (`static` or `animated`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::input::{InputEvent, InputSink};
use super::keycodes::KeyCode;
use super::{DisplayWriter, Rect, Surface};

/// 3x5 glyphs: five rows of three bits, bit 2 = left column.
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_uppercase() {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [3, 4, 4, 4, 3],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [3, 4, 5, 5, 3],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 2],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [2, 5, 5, 5, 2],
        'P' => [6, 5, 6, 4, 4],
        'Q' => [2, 5, 5, 6, 3],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        ' ' => [0; 5],
        '-' => [0, 0, 7, 0, 0],
        '_' => [0, 0, 0, 0, 7],
        ':' => [0, 2, 0, 2, 0],
        '.' => [0, 0, 0, 0, 2],
        ',' => [0, 0, 0, 2, 4],
        '=' => [0, 7, 0, 7, 0],
        '+' => [0, 2, 7, 2, 0],
        '/' => [1, 1, 2, 4, 4],
        '(' => [2, 4, 4, 4, 2],
        ')' => [2, 1, 1, 1, 2],
        '[' => [6, 4, 4, 4, 6],
        ']' => [3, 1, 1, 1, 3],
        '?' => [7, 1, 2, 0, 2],
        '!' => [2, 2, 2, 0, 2],
        '#' => [5, 7, 5, 7, 5],
        '*' => [5, 2, 7, 2, 5],
        '<' => [1, 2, 4, 2, 1],
        '>' => [4, 2, 1, 2, 4],
        '\'' => [2, 2, 0, 0, 0],
        '"' => [5, 5, 0, 0, 0],
        ';' => [0, 2, 0, 2, 4],
        _ => [7; 5],
    }
}

/// Text scale: each font pixel is SCALE x SCALE screen pixels; a cell is 4x6 font pixels.
const SCALE: u32 = 2;
const CELL_W: u32 = 4 * SCALE;
const CELL_H: u32 = 7 * SCALE;
const TEXT_BG: u32 = 0x00_10_20_60;
const TEXT_FG: u32 = 0x00_ff_ff_a0;

/// Draw `text` at (x, y) (clipped).
pub fn draw_text(s: &mut Surface, x: u32, y: u32, text: &str, fg: u32, bg: u32) {
    for (i, c) in text.chars().enumerate() {
        let cx = x + i as u32 * CELL_W;
        if cx >= s.width() {
            break;
        }
        s.fill(Rect::new(cx, y, CELL_W, CELL_H), bg);
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) != 0 {
                    s.fill(
                        Rect::new(
                            cx + col * SCALE,
                            y + SCALE + row as u32 * SCALE,
                            SCALE,
                            SCALE,
                        ),
                        fg,
                    );
                }
            }
        }
    }
}

/// Number of text lines the pattern shows.
const LINES: u32 = 4;

fn text_area(s: &Surface) -> Rect {
    let h = (LINES * CELL_H + 4).min(s.height());
    Rect::new(0, s.height() - h, s.width(), h)
}

/// Paint the static part of the pattern over the whole surface.
pub fn draw_background(s: &mut Surface) {
    let (w, h) = (s.width(), s.height());
    let band = (h / 5).max(1);
    const BARS: [u32; 8] = [
        0xffffff, 0xffff00, 0x00ffff, 0x00ff00, 0xff00ff, 0xff0000, 0x0000ff, 0x000000,
    ];
    for (i, c) in BARS.iter().enumerate() {
        let x0 = w * i as u32 / 8;
        let x1 = w * (i as u32 + 1) / 8;
        s.fill(Rect::new(x0, 0, x1 - x0, band), *c);
    }
    // Gradients: red, green, blue, grey ramps.
    let gh = (band / 4).max(1);
    for y in band..(band + 4 * gh).min(h) {
        let which = (y - band) / gh;
        let row = s.row_mut(y);
        for (x, p) in row.iter_mut().enumerate() {
            let v = (x as u32 * 255 / (w - 1).max(1)) & 0xff;
            *p = match which {
                0 => v << 16,
                1 => v << 8,
                2 => v,
                _ => v * 0x010101,
            };
        }
    }
    // Checkerboard (left half) and noise (right half).
    for y in (band + 4 * gh).min(h)..(3 * band + 4 * gh).min(h) {
        let row = s.row_mut(y);
        for (x, p) in row.iter_mut().enumerate() {
            let x = x as u32;
            *p = if x < w / 2 {
                if ((x / 8) + (y / 8)).is_multiple_of(2) {
                    0xffffff
                } else {
                    0x202020
                }
            } else {
                let mut v = x.wrapping_mul(0x9e37_79b9) ^ y.wrapping_mul(0x85eb_ca6b);
                v ^= v >> 15;
                v = v.wrapping_mul(0x2c1b_3c6d);
                v ^= v >> 12;
                v & 0xffffff
            };
        }
    }
    for y in (3 * band + 4 * gh).min(h)..h {
        s.row_mut(y).fill(0x00_30_30_30);
    }
}

/// The synthetic producer's state.
pub struct TestPattern {
    writer: DisplayWriter,
    frame: u64,
    keys: VecDeque<String>,
    pointer: String,
}

impl TestPattern {
    pub fn new(writer: DisplayWriter) -> Self {
        Self {
            writer,
            frame: 0,
            keys: VecDeque::new(),
            pointer: String::new(),
        }
    }

    /// Paint everything.
    pub fn redraw(&mut self) {
        let lines = self.lines();
        self.writer.draw(|s, d| {
            draw_background(s);
            draw_lines(s, &lines);
            d.all();
        });
    }

    fn lines(&self) -> Vec<String> {
        let (w, h) = self.writer.size();
        let keys: Vec<&str> = self.keys.iter().map(String::as_str).collect();
        vec![
            format!("TROUPE TEST DISPLAY {w}X{h}"),
            format!("FRAME {}", self.frame),
            format!("KEYS {}", keys.join(" ")),
            format!("POINTER {}", self.pointer),
        ]
    }

    fn redraw_text(&mut self) {
        let lines = self.lines();
        self.writer.draw(|s, d| {
            d.add(draw_lines(s, &lines));
        });
    }

    /// Advance the frame counter (animated mode).
    pub fn tick(&mut self) {
        self.frame += 1;
        self.redraw_text();
    }

    /// Show and log one input event; F2/F3/F4 switch modes.
    pub fn input(&mut self, ev: InputEvent) {
        match ev {
            InputEvent::Key { key, down } => {
                crate::report!(
                    "troupe: test-display: key {} {}",
                    key.name(),
                    if down { "down" } else { "up" }
                );
                if down {
                    let size = match key {
                        KeyCode::F2 => Some((1024, 768)),
                        KeyCode::F3 => Some((640, 480)),
                        KeyCode::F4 => Some((720, 400)),
                        _ => None,
                    };
                    if let Some((w, h)) = size {
                        if self.writer.resize(w, h).is_ok() {
                            self.redraw();
                        }
                    }
                    self.keys.push_back(key.name().to_string());
                    while self.keys.len() > 8 {
                        self.keys.pop_front();
                    }
                }
            }
            InputEvent::RawKey { number, down } => {
                crate::report!(
                    "troupe: test-display: rawkey {number:#x} {}",
                    if down { "down" } else { "up" }
                );
            }
            InputEvent::PointerAbs { x, y, buttons, .. } => {
                crate::report!(
                    "troupe: test-display: pointer abs {x} {y} buttons {}",
                    buttons.0
                );
                self.pointer = format!("{x} {y} {}", buttons.0);
            }
            InputEvent::PointerRel {
                dx,
                dy,
                dz,
                buttons,
            } => {
                crate::report!(
                    "troupe: test-display: pointer rel {dx} {dy} {dz} buttons {}",
                    buttons.0
                );
                self.pointer = format!("REL {dx} {dy} {}", buttons.0);
            }
        }
        self.redraw_text();
    }
}

/// The picture a fresh test pattern of `width` x `height` shows after `frame` ticks with
/// `keys` typed (for tests comparing what a client saw).
pub fn expected(width: u32, height: u32, frame: u64, keys: &[&str], pointer: &str) -> Surface {
    let mut s = Surface::new(width, height);
    draw_background(&mut s);
    let lines = vec![
        format!("TROUPE TEST DISPLAY {width}X{height}"),
        format!("FRAME {frame}"),
        format!("KEYS {}", keys.join(" ")),
        format!("POINTER {pointer}"),
    ];
    draw_lines(&mut s, &lines);
    s
}

fn draw_lines(s: &mut Surface, lines: &[String]) -> Rect {
    let area = text_area(s);
    s.fill(area, TEXT_BG);
    for (i, l) in lines.iter().enumerate() {
        draw_text(s, 4, area.y + 2 + i as u32 * CELL_H, l, TEXT_FG, TEXT_BG);
    }
    area
}

/// The input side of the running test pattern.
struct PatternSink {
    tx: mpsc::Sender<InputEvent>,
}

impl InputSink for PatternSink {
    fn send(&self, ev: InputEvent) {
        if self.tx.try_send(ev).is_err() {
            tracing::warn!("test display: input queue full, event dropped");
        }
    }
}

/// Run the test pattern on `rt`: redraw now, then tick every 100 ms when `animated`.
/// Returns the input sink that echoes events.
pub fn spawn(
    rt: &tokio::runtime::Handle,
    registry: &crate::runtime::Registry,
    writer: DisplayWriter,
    animated: bool,
) -> Arc<dyn InputSink> {
    let (tx, mut rx) = mpsc::channel(1024);
    let mut tp = TestPattern::new(writer);
    tp.redraw();
    let task = async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => tp.input(ev),
                    None => return,
                },
                _ = tick.tick(), if animated => tp.tick(),
            }
        }
    };
    crate::runtime::spawn_task(rt, registry, "testpattern", "display", None, task);
    Arc::new(PatternSink { tx })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_has_many_colours_and_text() {
        let (w, h) = super::super::new_display(720, 400).unwrap();
        let mut tp = TestPattern::new(w);
        tp.redraw();
        let s = h.snapshot();
        let colours: std::collections::HashSet<u32> = s.pixels().iter().copied().collect();
        assert!(colours.len() > 1000, "only {} colours", colours.len());
        assert!(colours.contains(&TEXT_FG));
        assert_eq!(s.pixel(0, 0), 0xffffff);
    }

    #[test]
    fn expected_matches_a_fresh_pattern() {
        let (w, h) = super::super::new_display(640, 480).unwrap();
        TestPattern::new(w).redraw();
        assert_eq!(h.snapshot(), expected(640, 480, 0, &[], ""));
    }

    #[test]
    fn function_keys_switch_modes() {
        let (w, h) = super::super::new_display(720, 400).unwrap();
        let mut tp = TestPattern::new(w);
        tp.input(InputEvent::Key {
            key: KeyCode::F2,
            down: true,
        });
        assert_eq!(h.size(), (1024, 768));
    }
}
