//! `-display curses`: the active console, as text, in the terminal troupe was started in
//! (QEMU's curses display). The guest's VGA text mode and the text consoles (the monitor,
//! serial ports on `vc`) are drawn with ANSI escape sequences; a graphics mode shows
//! "W x H Graphic mode", as QEMU's does. Alt+1, Alt+2 ... (the terminal sends Esc then
//! the digit) switch consoles; every other key goes to the active console as a key press,
//! so the guest's keyboard sees it as typed.
//!
//! One thread actor (`curses`, kind `display`) polls standard input and, every
//! [`FRAME`], redraws the cells that changed since its last frame. The terminal is put in
//! raw mode and on the alternate screen at start and given back as it was when the
//! process exits.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Duration;

use devices::textgrid::{cp437, TextCell, TextGrid};

use super::console::ConsoleSet;
use super::input::{InputEvent, InputSink};
use super::keycodes::KeyCode;
use super::keymap::Keymap;
use crate::runtime::{spawn_thread, Registry, Restart, ThreadSpec};

/// How often the screen is compared with what was drawn.
const FRAME: Duration = Duration::from_millis(30);

/// Ways starting the curses display can fail.
#[derive(Debug, thiserror::Error)]
pub enum CursesError {
    #[error("-display curses: standard output is not a terminal")]
    NotATerminal,
    #[error("-display curses: cannot put the terminal in raw mode: {0}")]
    RawMode(std::io::Error),
    #[error("-display curses: cannot start its thread: {0}")]
    Thread(std::io::Error),
}

/// The terminal's settings before troupe changed them, put back at exit.
static SAVED: OnceLock<libc::termios> = OnceLock::new();

extern "C" fn restore_terminal() {
    if let Some(t) = SAVED.get() {
        // SAFETY: tcsetattr reads a valid termios for fd 0.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, t);
        }
    }
    // Default colours, cursor shown, back from the alternate screen.
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(b"\x1b[0m\x1b[?25h\x1b[?1049l");
    let _ = out.flush();
}

fn is_tty(fd: i32) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// Take over the terminal and start the `curses` actor showing `consoles`.
pub fn start(registry: &Registry, consoles: ConsoleSet) -> Result<(), CursesError> {
    if !is_tty(1) {
        return Err(CursesError::NotATerminal);
    }
    let input = is_tty(0);
    if input {
        // SAFETY: termios is plain data; tcgetattr fills it for fd 0.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr fills the termios we own.
        if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
            return Err(CursesError::RawMode(std::io::Error::last_os_error()));
        }
        let _ = SAVED.set(t);
        let mut raw = t;
        // SAFETY: cfmakeraw edits the struct; tcsetattr applies it to fd 0.
        unsafe {
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(0, libc::TCSANOW, &raw) != 0 {
                return Err(CursesError::RawMode(std::io::Error::last_os_error()));
            }
        }
    }
    // SAFETY: registers a function with no captured state.
    unsafe {
        libc::atexit(restore_terminal);
    }
    write_out(b"\x1b[?1049h\x1b[0m\x1b[2J");
    let keymap = Keymap::for_layout("en-us").unwrap_or_else(|(k, _)| k);
    spawn_thread(
        registry,
        ThreadSpec::new("curses", "display", Restart::Always),
        move || run(&consoles, input, keymap),
    )
    .map_err(CursesError::Thread)?;
    Ok(())
}

fn write_out(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.flush();
}

/// The terminal's size (columns, rows); 80x24 when it does not say.
fn term_size() -> (usize, usize) {
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize we own.
    let ok = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 && ws.ws_row > 0 {
        (usize::from(ws.ws_col), usize::from(ws.ws_row))
    } else {
        (80, 24)
    }
}

/// The actor's loop: input when there is some, a frame every [`FRAME`].
fn run(consoles: &ConsoleSet, mut input: bool, keymap: Keymap) {
    let mut screen = Screen::default();
    let mut buf = [0u8; 256];
    loop {
        if input {
            let mut pfd = libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, FRAME.as_millis() as i32) };
            if n > 0 {
                // SAFETY: reads into a buffer we own.
                let got = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
                if got > 0 {
                    for a in parse_keys(&buf[..got as usize], &keymap) {
                        act(consoles, a);
                    }
                } else if got == 0 {
                    input = false;
                }
            }
        } else {
            std::thread::sleep(FRAME);
        }
        let out = screen.frame(consoles.active_text(), consoles.active(), term_size());
        if !out.is_empty() {
            write_out(&out);
        }
    }
}

/// What a key read from the terminal does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Alt+N: show console N-1.
    Switch(usize),
    /// Press and release `key` with these modifiers held.
    Key {
        key: KeyCode,
        shift: bool,
        ctrl: bool,
        alt: bool,
    },
}

fn plain(key: KeyCode) -> Action {
    Action::Key {
        key,
        shift: false,
        ctrl: false,
        alt: false,
    }
}

fn act(consoles: &ConsoleSet, a: Action) {
    match a {
        Action::Switch(n) => {
            if let Err(e) = consoles.select(n) {
                tracing::debug!("curses: Alt+{}: {e}", n + 1);
            }
        }
        Action::Key {
            key,
            shift,
            ctrl,
            alt,
        } => {
            let mods: Vec<KeyCode> = [
                (shift, KeyCode::Shift),
                (ctrl, KeyCode::Ctrl),
                (alt, KeyCode::Alt),
            ]
            .into_iter()
            .filter_map(|(on, k)| on.then_some(k))
            .collect();
            let ev = |key, down| InputEvent::Key { key, down };
            for m in &mods {
                consoles.send(ev(*m, true));
            }
            consoles.send(ev(key, true));
            consoles.send(ev(key, false));
            for m in mods.iter().rev() {
                consoles.send(ev(*m, false));
            }
        }
    }
}

/// Characters typed with Shift on a US keyboard.
fn shifted(c: u8) -> bool {
    c.is_ascii_uppercase() || b"~!@#$%^&*()_+{}|:\"<>?".contains(&c)
}

/// The key of an ASCII character (or control code) as a terminal sends it.
fn ascii_key(c: u8, keymap: &Keymap) -> Option<Action> {
    let key = |key, shift, ctrl| Action::Key {
        key,
        shift,
        ctrl,
        alt: false,
    };
    match c {
        b'\r' | b'\n' => Some(plain(KeyCode::Ret)),
        b'\t' => Some(plain(KeyCode::Tab)),
        0x08 | 0x7f => Some(plain(KeyCode::Backspace)),
        0x1b => Some(plain(KeyCode::Esc)),
        0x01..=0x1a => Some(key(keymap.lookup(u32::from(c - 1 + b'a'))?, false, true)),
        0x20..=0x7e => Some(key(keymap.lookup(u32::from(c))?, shifted(c), false)),
        _ => None,
    }
}

/// A CSI (`Esc [ ... final`) or SS3 (`Esc O final`) key sequence.
fn sequence_key(params: &[u8], fin: u8) -> Option<KeyCode> {
    use KeyCode as K;
    Some(match fin {
        b'A' => K::Up,
        b'B' => K::Down,
        b'C' => K::Right,
        b'D' => K::Left,
        b'H' => K::Home,
        b'F' => K::End,
        b'P' => K::F1,
        b'Q' => K::F2,
        b'R' => K::F3,
        b'S' => K::F4,
        b'~' => {
            let n: u32 = std::str::from_utf8(params)
                .ok()?
                .split(';')
                .next()?
                .parse()
                .ok()?;
            match n {
                1 | 7 => K::Home,
                2 => K::Insert,
                3 => K::Delete,
                4 | 8 => K::End,
                5 => K::Pgup,
                6 => K::Pgdn,
                11 => K::F1,
                12 => K::F2,
                13 => K::F3,
                14 => K::F4,
                15 => K::F5,
                17 => K::F6,
                18 => K::F7,
                19 => K::F8,
                20 => K::F9,
                21 => K::F10,
                23 => K::F11,
                24 => K::F12,
                _ => return None,
            }
        }
        _ => return None,
    })
}

/// Turn what the terminal sent into actions. Esc then a digit is Alt+digit (a console
/// switch); Esc then another character is that key with Alt; an Esc alone (the read ends
/// there) is the Esc key.
fn parse_keys(bytes: &[u8], keymap: &Keymap) -> Vec<Action> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        i += 1;
        if c != 0x1b {
            out.extend(ascii_key(c, keymap));
            continue;
        }
        match bytes.get(i) {
            None => out.push(plain(KeyCode::Esc)),
            Some(&d @ b'1'..=b'9') => {
                i += 1;
                out.push(Action::Switch(usize::from(d - b'1')));
            }
            Some(b'[') | Some(b'O') => {
                // Parameters, then a final byte in 0x40..=0x7e.
                let start = i + 1;
                let mut j = start;
                while j < bytes.len() && !(0x40..=0x7e).contains(&bytes[j]) {
                    j += 1;
                }
                if j < bytes.len() {
                    out.extend(sequence_key(&bytes[start..j], bytes[j]).map(plain));
                    i = j + 1;
                } else {
                    i = bytes.len();
                }
            }
            Some(&d) => {
                i += 1;
                if let Some(Action::Key {
                    key, shift, ctrl, ..
                }) = ascii_key(d, keymap)
                {
                    out.push(Action::Key {
                        key,
                        shift,
                        ctrl,
                        alt: true,
                    });
                }
            }
        }
    }
    out
}

/// What the terminal shows, to draw only what changed.
#[derive(Default)]
struct Screen {
    last: Option<TextGrid>,
    active: usize,
    size: (usize, usize),
    cursor: Option<(usize, usize)>,
}

/// SGR for a 16-colour pair (ANSI order, 8–15 bright).
fn sgr(out: &mut Vec<u8>, c: TextCell) {
    let fg = if c.fg < 8 { 30 + c.fg } else { 90 + c.fg - 8 };
    let bg = if c.bg < 8 { 40 + c.bg } else { 100 + c.bg - 8 };
    let _ = write!(out, "\x1b[0;{fg};{bg}m");
}

impl Screen {
    /// The bytes that bring the terminal (`size` = columns, rows) from the last frame to
    /// `grid` (nothing when nothing changed). The whole screen is drawn again after a
    /// console switch, a resize, or a change of the grid's size.
    fn frame(&mut self, grid: Option<TextGrid>, active: usize, size: (usize, usize)) -> Vec<u8> {
        let grid = grid.unwrap_or_else(|| TextGrid::blank(size.0, size.1));
        let mut out = Vec::new();
        let full = match &self.last {
            None => true,
            Some(l) => {
                l.cols != grid.cols
                    || l.rows != grid.rows
                    || self.active != active
                    || self.size != size
            }
        };
        if full {
            out.extend_from_slice(b"\x1b[0m\x1b[2J");
            self.last = None;
            self.cursor = None;
        }
        let (cols, rows) = (grid.cols.min(size.0), grid.rows.min(size.1));
        let mut pen: Option<TextCell> = None;
        let mut at: Option<(usize, usize)> = None;
        let mut drew = false;
        for y in 0..rows {
            for x in 0..cols {
                let c = grid.cells[y * grid.cols + x];
                if self.last.as_ref().and_then(|l| l.cell(x, y)) == Some(c) {
                    continue;
                }
                if !drew {
                    out.extend_from_slice(b"\x1b[?25l");
                    drew = true;
                }
                if at != Some((x, y)) {
                    let _ = write!(out, "\x1b[{};{}H", y + 1, x + 1);
                }
                if pen.is_none_or(|p| (p.fg, p.bg) != (c.fg, c.bg)) {
                    sgr(&mut out, c);
                    pen = Some(c);
                }
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(cp437(c.ch).encode_utf8(&mut utf8).as_bytes());
                // At the last column the terminal holds the cursor there: move explicitly.
                at = (x + 1 < size.0).then_some((x + 1, y));
            }
        }
        let cursor = grid.cursor.filter(|&(x, y)| x < cols && y < rows);
        // Drawing hid the cursor; show it again where the console has it.
        match cursor {
            Some((x, y)) if drew || full || cursor != self.cursor => {
                let _ = write!(out, "\x1b[{};{}H\x1b[?25h", y + 1, x + 1);
            }
            None if !drew && (full || self.cursor.is_some()) => {
                out.extend_from_slice(b"\x1b[?25l");
            }
            _ => {}
        }
        self.cursor = cursor;
        self.active = active;
        self.size = size;
        self.last = Some(grid);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::terminal::Terminal;

    fn grid(rows: &[&str]) -> TextGrid {
        let cols = rows.iter().map(|r| r.len()).max().unwrap_or(1);
        let mut g = TextGrid::blank(cols, rows.len());
        for (y, r) in rows.iter().enumerate() {
            for (x, b) in r.bytes().enumerate() {
                g.cells[y * cols + x].ch = b;
            }
        }
        g
    }

    /// What a terminal shows after `frames`, row by row.
    fn shown(term: &mut Terminal, bytes: &[u8]) -> Vec<String> {
        term.feed(bytes);
        let (_, rows) = term.size();
        (0..rows).map(|y| term.visible_text(y)).collect()
    }

    #[test]
    fn frames_draw_the_grid_and_then_only_what_changed() {
        let mut s = Screen::default();
        let mut t = Terminal::new(40, 5);
        let first = s.frame(Some(grid(&["hello", "", "world"])), 0, (40, 5));
        assert_eq!(shown(&mut t, &first)[..3], ["hello", "", "world"]);
        assert!(s
            .frame(Some(grid(&["hello", "", "world"])), 0, (40, 5))
            .is_empty());
        let second = s.frame(Some(grid(&["help!", "", "world"])), 0, (40, 5));
        let text = String::from_utf8_lossy(&second);
        assert!(!text.contains("hel") && !text.contains("world"), "{text:?}");
        assert_eq!(shown(&mut t, &second)[..3], ["help!", "", "world"]);
    }

    #[test]
    fn colours_code_page_437_and_the_cursor_reach_the_terminal() {
        let mut g = grid(&["ab"]);
        g.cells[0] = TextCell {
            ch: 0xc4,
            fg: 11,
            bg: 4,
        };
        g.cursor = Some((1, 0));
        let out = Screen::default().frame(Some(g), 0, (80, 24));
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\x1b[0;93;44m─"), "{text:?}");
        assert!(text.ends_with("\x1b[1;2H\x1b[?25h"), "{text:?}");
    }

    #[test]
    fn a_switch_or_a_smaller_terminal_redraws_clipped() {
        let mut s = Screen::default();
        let mut t = Terminal::new(4, 2);
        s.frame(Some(grid(&["abcdef", "ghijkl", "mnopqr"])), 0, (4, 2));
        let again = s.frame(Some(grid(&["abcdef", "ghijkl", "mnopqr"])), 1, (4, 2));
        assert!(again.starts_with(b"\x1b[0m\x1b[2J"));
        assert_eq!(shown(&mut t, &again), ["abcd", "ghij"]);
    }

    #[test]
    fn keys_from_the_terminal() {
        let k = Keymap::for_layout("en-us").unwrap();
        let key = |key, shift, ctrl, alt| Action::Key {
            key,
            shift,
            ctrl,
            alt,
        };
        assert_eq!(
            parse_keys(b"aA\r\x03", &k),
            [
                key(KeyCode::A, false, false, false),
                key(KeyCode::A, true, false, false),
                plain(KeyCode::Ret),
                key(KeyCode::C, false, true, false),
            ]
        );
        assert_eq!(
            parse_keys(b"\x1b2\x1b[A\x1b[5~\x1bOP\x1bx\x1b", &k),
            [
                Action::Switch(1),
                plain(KeyCode::Up),
                plain(KeyCode::Pgup),
                plain(KeyCode::F1),
                key(KeyCode::X, false, false, true),
                plain(KeyCode::Esc),
            ]
        );
        assert_eq!(
            parse_keys(b"?", &k),
            [key(KeyCode::Slash, true, false, false)]
        );
    }
}
