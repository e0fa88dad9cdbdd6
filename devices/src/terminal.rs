//! A VT100/ANSI terminal: the model behind a text console (`-chardev vc`, `-monitor vc`,
//! `-serial vc`), as QEMU's text consoles are.
//!
//! Data path: bytes written to the console's chardev go to [`Terminal::feed`], which
//! parses control characters and escape sequences (ECMA-48 / VT100: cursor movement,
//! erase, SGR colours, scrolling regions, insert/delete, line wrapping) into a grid of
//! cells; lines that scroll off the top are kept as scrollback, viewed with
//! [`Terminal::scroll_view`] (Ctrl+Page Up/Down). [`Terminal::render`] draws the rows that
//! changed into a 32-bit `0x00RRGGBB` pixel buffer with an 8x16 VGA font (the one the VGA
//! BIOS carries, see [`crate::vga::font_from_rom`]), one cell = 8x16 pixels. Keys go the
//! other way: [`key_bytes`] turns a key press into what a terminal sends.
//!
//! A pure state machine: no threads, no I/O; the text-console actor owns one.

use std::collections::VecDeque;

/// Cell width in pixels.
pub const CELL_W: u32 = 8;
/// Cell height in pixels.
pub const CELL_H: u32 = 16;
/// Lines kept above the screen.
pub const SCROLLBACK: usize = 1000;

/// ANSI colours 0..7 at normal intensity, then 8..15 bright, in the VGA palette.
pub const PALETTE: [u32; 16] = [
    0x000000, 0xaa0000, 0x00aa00, 0xaa5500, 0x0000aa, 0xaa00aa, 0x00aaaa, 0xaaaaaa, 0x555555,
    0xff5555, 0x55ff55, 0xffff55, 0x5555ff, 0xff55ff, 0x55ffff, 0xffffff,
];

const DEFAULT_FG: u8 = 7;
const DEFAULT_BG: u8 = 0;

/// How a cell is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Foreground colour, a [`PALETTE`] index.
    pub fg: u8,
    /// Background colour, a [`PALETTE`] index.
    pub bg: u8,
    /// Bold: the foreground is drawn bright.
    pub bold: bool,
    /// Underline.
    pub underline: bool,
    /// Reverse video.
    pub reverse: bool,
}

impl Default for Attr {
    fn default() -> Self {
        Self {
            fg: DEFAULT_FG,
            bg: DEFAULT_BG,
            bold: false,
            underline: false,
            reverse: false,
        }
    }
}

impl Attr {
    /// The (foreground, background) RGB colours.
    fn colours(&self) -> (u32, u32) {
        let fg = if self.bold && self.fg < 8 {
            self.fg + 8
        } else {
            self.fg
        };
        let (fg, bg) = (
            PALETTE[usize::from(fg & 15)],
            PALETTE[usize::from(self.bg & 15)],
        );
        if self.reverse {
            (bg, fg)
        } else {
            (fg, bg)
        }
    }
}

/// One character cell: a glyph index into the font (code page 437) and its attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    pub ch: u8,
    pub attr: Attr,
}

impl Cell {
    fn blank(attr: Attr) -> Self {
        // Erased cells keep the background colour, as xterm's do.
        Self {
            ch: b' ',
            attr: Attr {
                underline: false,
                ..attr
            },
        }
    }
}

/// Where the parser is in an escape sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Parse {
    Ground,
    /// After ESC.
    Escape,
    /// After ESC `(` or `)` etc.: one more byte (a character set) to ignore.
    Charset,
    /// After ESC `[`: parameters so far, and whether it is a private (`?`) sequence.
    Csi {
        params: Vec<u16>,
        current: Option<u16>,
        private: bool,
    },
    /// After ESC `]`: an OSC string, ignored up to BEL or ST.
    Osc {
        esc: bool,
    },
}

/// The terminal: screen, scrollback, cursor, parser state.
#[derive(Debug, Clone)]
pub struct Terminal {
    cols: usize,
    rows: usize,
    screen: Vec<Vec<Cell>>,
    scrollback: VecDeque<Vec<Cell>>,
    /// Lines back from the live screen being shown (0: live).
    view: usize,
    x: usize,
    y: usize,
    /// The cursor is past the last column: the next printable character wraps first.
    wrap_pending: bool,
    attr: Attr,
    saved: (usize, usize, Attr),
    /// Scrolling region, inclusive rows.
    top: usize,
    bottom: usize,
    cursor_visible: bool,
    autowrap: bool,
    parse: Parse,
    /// Visible rows to draw again.
    dirty: Vec<bool>,
    /// Where the cursor was last drawn (to erase it).
    drawn_cursor: Option<(usize, usize)>,
    /// Answers the terminal sends back (device status reports).
    replies: Vec<u8>,
}

impl Terminal {
    /// A blank `cols` x `rows` terminal (each at least 1).
    pub fn new(cols: usize, rows: usize) -> Self {
        let (cols, rows) = (cols.max(1), rows.max(1));
        Self {
            cols,
            rows,
            screen: vec![vec![Cell::blank(Attr::default()); cols]; rows],
            scrollback: VecDeque::new(),
            view: 0,
            x: 0,
            y: 0,
            wrap_pending: false,
            attr: Attr::default(),
            saved: (0, 0, Attr::default()),
            top: 0,
            bottom: rows - 1,
            cursor_visible: true,
            autowrap: true,
            parse: Parse::Ground,
            dirty: vec![true; rows],
            drawn_cursor: None,
            replies: Vec::new(),
        }
    }

    /// Columns and rows.
    pub fn size(&self) -> (usize, usize) {
        (self.cols, self.rows)
    }

    /// Pixel size of the rendered screen.
    pub fn pixel_size(&self) -> (u32, u32) {
        (self.cols as u32 * CELL_W, self.rows as u32 * CELL_H)
    }

    /// The cursor (column, row).
    pub fn cursor(&self) -> (usize, usize) {
        (self.x, self.y)
    }

    /// The cell at (column, row) of the live screen.
    pub fn cell(&self, x: usize, y: usize) -> Option<Cell> {
        self.screen.get(y)?.get(x).copied()
    }

    /// Row `y` of what is shown (scrollback included) as text, trailing blanks trimmed.
    pub fn visible_text(&self, y: usize) -> String {
        let s: String = self
            .visible_row(y)
            .iter()
            .map(|c| char::from(c.ch))
            .collect();
        s.trim_end().to_string()
    }

    /// Lines scrolled off the top so far (at most [`SCROLLBACK`]).
    pub fn scrollback_len(&self) -> usize {
        self.scrollback.len()
    }

    /// How many lines back the view is.
    pub fn view_offset(&self) -> usize {
        self.view
    }

    /// Take what the terminal answered (status reports) for the program on the other end.
    pub fn take_replies(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.replies)
    }

    /// What is shown (scrollback included) as a text display sees it: bold as the bright
    /// colour, reverse video swapped, the cursor where it is drawn.
    pub fn grid(&self) -> crate::textgrid::TextGrid {
        let mut cells = Vec::with_capacity(self.cols * self.rows);
        for y in 0..self.rows {
            for c in self.visible_row(y) {
                let a = c.attr;
                let fg = if a.bold && a.fg < 8 { a.fg + 8 } else { a.fg };
                let (fg, bg) = if a.reverse { (a.bg, fg) } else { (fg, a.bg) };
                cells.push(crate::textgrid::TextCell {
                    ch: c.ch,
                    fg: fg & 15,
                    bg: bg & 15,
                });
            }
        }
        crate::textgrid::TextGrid {
            cols: self.cols,
            rows: self.rows,
            cells,
            cursor: (self.view == 0 && self.cursor_visible).then_some((self.x, self.y)),
        }
    }

    /// Move the view `lines` back into the scrollback (negative: forward toward the live
    /// screen), clamped.
    pub fn scroll_view(&mut self, lines: isize) {
        let v = (self.view as isize + lines).clamp(0, self.scrollback.len() as isize) as usize;
        if v != self.view {
            self.view = v;
            self.mark_all();
        }
    }

    /// Back to the live screen (new output or a key press does this).
    pub fn reset_view(&mut self) {
        if self.view != 0 {
            self.view = 0;
            self.mark_all();
        }
    }

    fn mark_all(&mut self) {
        self.dirty.iter_mut().for_each(|d| *d = true);
    }

    fn mark(&mut self, y: usize) {
        if let Some(d) = self.dirty.get_mut(y) {
            *d = true;
        }
    }

    fn visible_row(&self, y: usize) -> &[Cell] {
        if self.view == 0 {
            return &self.screen[y];
        }
        // Rows of scrollback then screen; the view ends `view` lines above the live end.
        let first = self.scrollback.len() - self.view;
        let i = first + y;
        if i < self.scrollback.len() {
            &self.scrollback[i]
        } else {
            &self.screen[i - self.scrollback.len()]
        }
    }

    /// Feed bytes the program wrote.
    pub fn feed(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.reset_view();
        }
        for &b in bytes {
            self.byte(b);
        }
    }

    fn byte(&mut self, b: u8) {
        match std::mem::replace(&mut self.parse, Parse::Ground) {
            Parse::Ground => self.ground(b),
            Parse::Escape => self.escape(b),
            Parse::Charset => {}
            Parse::Csi {
                mut params,
                mut current,
                mut private,
            } => match b {
                b'0'..=b'9' => {
                    let d = u16::from(b - b'0');
                    current = Some(current.unwrap_or(0).saturating_mul(10).saturating_add(d));
                    self.parse = Parse::Csi {
                        params,
                        current,
                        private,
                    };
                }
                b';' => {
                    if params.len() < 16 {
                        params.push(current.unwrap_or(0));
                    }
                    self.parse = Parse::Csi {
                        params,
                        current: None,
                        private,
                    };
                }
                b'?' | b'>' | b'=' => {
                    private = true;
                    self.parse = Parse::Csi {
                        params,
                        current,
                        private,
                    };
                }
                // Control characters inside a sequence act at once (VT100).
                0x00..=0x1f if b != 0x1b => {
                    self.ground(b);
                    self.parse = Parse::Csi {
                        params,
                        current,
                        private,
                    };
                }
                0x40..=0x7e => {
                    if let Some(c) = current {
                        params.push(c);
                    }
                    self.csi(b, &params, private);
                }
                0x1b => self.parse = Parse::Escape,
                // Intermediate bytes: keep going; anything else aborts.
                0x20..=0x2f => {
                    self.parse = Parse::Csi {
                        params,
                        current,
                        private,
                    }
                }
                _ => {}
            },
            Parse::Osc { esc } => match b {
                0x07 => {}
                b'\\' if esc => {}
                _ => {
                    self.parse = Parse::Osc { esc: b == 0x1b };
                }
            },
        }
    }

    fn ground(&mut self, b: u8) {
        match b {
            0x07 | 0x00 => {}
            0x08 => {
                self.wrap_pending = false;
                self.x = self.x.saturating_sub(1);
                self.mark(self.y);
            }
            b'\t' => {
                self.wrap_pending = false;
                self.x = ((self.x / 8 + 1) * 8).min(self.cols - 1);
                self.mark(self.y);
            }
            b'\n' | 0x0b | 0x0c => self.line_feed(),
            b'\r' => {
                self.wrap_pending = false;
                self.x = 0;
                self.mark(self.y);
            }
            0x1b => self.parse = Parse::Escape,
            0x0e | 0x0f | 0x01..=0x06 | 0x10..=0x1a | 0x1c..=0x1f => {}
            _ => self.print(b),
        }
    }

    fn print(&mut self, ch: u8) {
        if self.wrap_pending {
            self.wrap_pending = false;
            self.x = 0;
            self.line_feed();
        }
        self.screen[self.y][self.x] = Cell {
            ch,
            attr: self.attr,
        };
        self.mark(self.y);
        if self.x + 1 < self.cols {
            self.x += 1;
        } else if self.autowrap {
            self.wrap_pending = true;
        }
    }

    fn line_feed(&mut self) {
        self.wrap_pending = false;
        self.mark(self.y);
        if self.y == self.bottom {
            self.scroll_up(1);
        } else if self.y + 1 < self.rows {
            self.y += 1;
        }
        self.mark(self.y);
    }

    fn reverse_index(&mut self) {
        self.wrap_pending = false;
        self.mark(self.y);
        if self.y == self.top {
            self.scroll_down(1);
        } else {
            self.y = self.y.saturating_sub(1);
        }
        self.mark(self.y);
    }

    /// Scroll the region up `n` lines; lines leaving the top of the whole screen go to the
    /// scrollback.
    fn scroll_up(&mut self, n: usize) {
        let n = n.min(self.bottom - self.top + 1);
        for _ in 0..n {
            let line = self.screen.remove(self.top);
            if self.top == 0 {
                self.scrollback.push_back(line);
                if self.scrollback.len() > SCROLLBACK {
                    self.scrollback.pop_front();
                }
            }
            self.screen
                .insert(self.bottom, vec![Cell::blank(self.attr); self.cols]);
        }
        self.mark_all();
    }

    fn scroll_down(&mut self, n: usize) {
        let n = n.min(self.bottom - self.top + 1);
        for _ in 0..n {
            self.screen.remove(self.bottom);
            self.screen
                .insert(self.top, vec![Cell::blank(self.attr); self.cols]);
        }
        self.mark_all();
    }

    fn escape(&mut self, b: u8) {
        match b {
            b'[' => {
                self.parse = Parse::Csi {
                    params: Vec::new(),
                    current: None,
                    private: false,
                }
            }
            b']' => self.parse = Parse::Osc { esc: false },
            b'(' | b')' | b'*' | b'+' | b'#' => self.parse = Parse::Charset,
            b'7' => self.saved = (self.x, self.y, self.attr),
            b'8' => self.restore_cursor(),
            b'D' => self.line_feed(),
            b'E' => {
                self.x = 0;
                self.line_feed();
            }
            b'M' => self.reverse_index(),
            b'c' => {
                let (c, r) = (self.cols, self.rows);
                let scrollback = std::mem::take(&mut self.scrollback);
                *self = Terminal::new(c, r);
                self.scrollback = scrollback;
            }
            _ => {}
        }
    }

    fn restore_cursor(&mut self) {
        let (x, y, a) = self.saved;
        self.mark(self.y);
        self.x = x.min(self.cols - 1);
        self.y = y.min(self.rows - 1);
        self.attr = a;
        self.wrap_pending = false;
        self.mark(self.y);
    }

    fn goto(&mut self, x: usize, y: usize) {
        self.mark(self.y);
        self.x = x.min(self.cols - 1);
        self.y = y.min(self.rows - 1);
        self.wrap_pending = false;
        self.mark(self.y);
    }

    fn erase(&mut self, y: usize, from: usize, to: usize) {
        let blank = Cell::blank(self.attr);
        let to = to.min(self.cols);
        for c in &mut self.screen[y][from.min(to)..to] {
            *c = blank;
        }
        self.mark(y);
    }

    fn csi(&mut self, cmd: u8, params: &[u16], private: bool) {
        let p = |i: usize, default: u16| -> usize {
            usize::from(match params.get(i) {
                Some(0) | None => default,
                Some(&v) => v,
            })
        };
        let raw = |i: usize| usize::from(params.get(i).copied().unwrap_or(0));
        if private {
            if matches!(cmd, b'h' | b'l') {
                let on = cmd == b'h';
                for &m in params {
                    match m {
                        25 => {
                            self.cursor_visible = on;
                            self.mark(self.y);
                        }
                        7 => self.autowrap = on,
                        _ => {}
                    }
                }
            }
            return;
        }
        match cmd {
            b'A' => self.goto(self.x, self.y.saturating_sub(p(0, 1))),
            b'B' | b'e' => self.goto(self.x, self.y + p(0, 1)),
            b'C' | b'a' => self.goto(self.x + p(0, 1), self.y),
            b'D' => self.goto(self.x.saturating_sub(p(0, 1)), self.y),
            b'E' => self.goto(0, self.y + p(0, 1)),
            b'F' => self.goto(0, self.y.saturating_sub(p(0, 1))),
            b'G' | b'`' => self.goto(p(0, 1) - 1, self.y),
            b'd' => self.goto(self.x, p(0, 1) - 1),
            b'H' | b'f' => self.goto(p(1, 1) - 1, p(0, 1) - 1),
            b'J' => {
                let (x, y) = (self.x, self.y);
                match raw(0) {
                    0 => {
                        self.erase(y, x, self.cols);
                        for r in y + 1..self.rows {
                            self.erase(r, 0, self.cols);
                        }
                    }
                    1 => {
                        for r in 0..y {
                            self.erase(r, 0, self.cols);
                        }
                        self.erase(y, 0, x + 1);
                    }
                    2 => {
                        for r in 0..self.rows {
                            self.erase(r, 0, self.cols);
                        }
                    }
                    3 => {
                        self.scrollback.clear();
                        self.view = 0;
                        self.mark_all();
                    }
                    _ => {}
                }
            }
            b'K' => {
                let (x, y) = (self.x, self.y);
                match raw(0) {
                    0 => self.erase(y, x, self.cols),
                    1 => self.erase(y, 0, x + 1),
                    2 => self.erase(y, 0, self.cols),
                    _ => {}
                }
            }
            b'X' => {
                let (x, y) = (self.x, self.y);
                self.erase(y, x, x + p(0, 1));
            }
            b'P' => {
                let n = p(0, 1).min(self.cols - self.x);
                let blank = Cell::blank(self.attr);
                let row = &mut self.screen[self.y];
                row.drain(self.x..self.x + n);
                row.extend(std::iter::repeat_n(blank, n));
                self.mark(self.y);
            }
            b'@' => {
                let n = p(0, 1).min(self.cols - self.x);
                let blank = Cell::blank(self.attr);
                let row = &mut self.screen[self.y];
                for _ in 0..n {
                    row.insert(self.x, blank);
                }
                row.truncate(self.cols);
                self.mark(self.y);
            }
            b'L' | b'M' if (self.top..=self.bottom).contains(&self.y) => {
                let saved_top = self.top;
                self.top = self.y;
                if cmd == b'L' {
                    self.scroll_down(p(0, 1));
                } else {
                    // Lines deleted inside the screen are not scrollback.
                    let n = p(0, 1).min(self.bottom - self.top + 1);
                    for _ in 0..n {
                        self.screen.remove(self.top);
                        self.screen
                            .insert(self.bottom, vec![Cell::blank(self.attr); self.cols]);
                    }
                    self.mark_all();
                }
                self.top = saved_top;
                self.x = 0;
            }
            b'S' => self.scroll_up(p(0, 1)),
            b'T' => self.scroll_down(p(0, 1)),
            b'm' => self.sgr(params),
            b'n' => match raw(0) {
                5 => self.replies.extend_from_slice(b"\x1b[0n"),
                6 => self
                    .replies
                    .extend_from_slice(format!("\x1b[{};{}R", self.y + 1, self.x + 1).as_bytes()),
                _ => {}
            },
            b'r' => {
                let top = p(0, 1) - 1;
                let bottom = p(1, self.rows as u16) - 1;
                if top < bottom && bottom < self.rows {
                    self.top = top;
                    self.bottom = bottom;
                    self.goto(0, 0);
                }
            }
            b's' => self.saved = (self.x, self.y, self.attr),
            b'u' => self.restore_cursor(),
            _ => {}
        }
    }

    fn sgr(&mut self, params: &[u16]) {
        if params.is_empty() {
            self.attr = Attr::default();
            return;
        }
        let mut i = 0;
        while i < params.len() {
            let v = params[i];
            match v {
                0 => self.attr = Attr::default(),
                1 => self.attr.bold = true,
                4 => self.attr.underline = true,
                7 => self.attr.reverse = true,
                22 => self.attr.bold = false,
                24 => self.attr.underline = false,
                27 => self.attr.reverse = false,
                30..=37 => self.attr.fg = (v - 30) as u8,
                39 => self.attr.fg = DEFAULT_FG,
                40..=47 => self.attr.bg = (v - 40) as u8,
                49 => self.attr.bg = DEFAULT_BG,
                90..=97 => self.attr.fg = (v - 90) as u8 + 8,
                100..=107 => self.attr.bg = (v - 100) as u8 + 8,
                // 256-colour and RGB forms: skip their arguments.
                38 | 48 => {
                    i += match params.get(i + 1) {
                        Some(5) => 2,
                        Some(2) => 4,
                        _ => 0,
                    };
                }
                _ => {}
            }
            i += 1;
        }
    }

    /// Draw the rows that changed since the last call into `pixels` (a buffer of at least
    /// [`Terminal::pixel_size`], `stride` pixels per row) with `font` (256 glyphs of 16
    /// bytes; missing glyphs draw blank). Returns the visible rows drawn, top first.
    pub fn render(&mut self, font: &[u8], pixels: &mut [u32], stride: usize) -> Vec<usize> {
        let cursor = (self.view == 0 && self.cursor_visible).then_some((self.x, self.y));
        if cursor != self.drawn_cursor {
            if let Some((_, y)) = self.drawn_cursor {
                self.mark(y);
            }
            if let Some((_, y)) = cursor {
                self.mark(y);
            }
            self.drawn_cursor = cursor;
        }
        let mut drawn = Vec::new();
        for y in 0..self.rows {
            if !std::mem::replace(&mut self.dirty[y], false) {
                continue;
            }
            drawn.push(y);
            for x in 0..self.cols {
                let cell = self.visible_row(y)[x];
                let mut attr = cell.attr;
                if cursor == Some((x, y)) {
                    attr.reverse = !attr.reverse;
                }
                let (fg, bg) = attr.colours();
                let glyph = font.get(usize::from(cell.ch) * 16..usize::from(cell.ch) * 16 + 16);
                for line in 0..CELL_H as usize {
                    let mut bits = glyph.map_or(0, |g| g[line]);
                    if attr.underline && line == 14 {
                        bits = 0xff;
                    }
                    let at = (y * CELL_H as usize + line) * stride + x * CELL_W as usize;
                    let Some(out) = pixels.get_mut(at..at + CELL_W as usize) else {
                        continue;
                    };
                    for (i, px) in out.iter_mut().enumerate() {
                        *px = if bits & (0x80 >> i) != 0 { fg } else { bg };
                    }
                }
            }
        }
        drawn
    }
}

/// A key as a terminal knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TermKey {
    /// A character (already shifted: `A`, `!`).
    Char(u8),
    Enter,
    Backspace,
    Tab,
    Escape,
    Up,
    Down,
    Left,
    Right,
    Home,
    End,
    Insert,
    Delete,
    PageUp,
    PageDown,
}

/// What a VT100-style terminal sends for `key` with Ctrl held or not. Ctrl+letter gives
/// the control character; Enter sends CR; Backspace DEL.
pub fn key_bytes(key: TermKey, ctrl: bool) -> Vec<u8> {
    match key {
        TermKey::Char(c) if ctrl => match c {
            b'a'..=b'z' => vec![c - b'a' + 1],
            b'A'..=b'Z' => vec![c - b'A' + 1],
            b'@' | b' ' | b'2' => vec![0],
            b'[' => vec![0x1b],
            b'\\' => vec![0x1c],
            b']' => vec![0x1d],
            b'^' | b'6' => vec![0x1e],
            b'_' | b'-' => vec![0x1f],
            other => vec![other],
        },
        TermKey::Char(c) => vec![c],
        TermKey::Enter => vec![b'\r'],
        TermKey::Backspace => vec![0x7f],
        TermKey::Tab => vec![b'\t'],
        TermKey::Escape => vec![0x1b],
        TermKey::Up => b"\x1b[A".to_vec(),
        TermKey::Down => b"\x1b[B".to_vec(),
        TermKey::Right => b"\x1b[C".to_vec(),
        TermKey::Left => b"\x1b[D".to_vec(),
        TermKey::Home => b"\x1b[1~".to_vec(),
        TermKey::Insert => b"\x1b[2~".to_vec(),
        TermKey::Delete => b"\x1b[3~".to_vec(),
        TermKey::End => b"\x1b[4~".to_vec(),
        TermKey::PageUp => b"\x1b[5~".to_vec(),
        TermKey::PageDown => b"\x1b[6~".to_vec(),
    }
}

#[cfg(test)]
mod tests;
