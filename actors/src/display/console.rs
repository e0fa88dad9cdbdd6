//! Consoles, as QEMU has them: the guest's screen (the graphic console) plus text consoles
//! (`vc` chardevs: the monitor, serial ports), one of them active; Ctrl+Alt+1 shows the
//! first, Ctrl+Alt+2 the second, and so on.
//!
//! Data path, out: each console has its own display surface. The [`ConsoleSet`]'s
//! compositor actor follows the active one (a [`crate::display::DisplaySubscriber`]) and
//! copies what changed into the output display, the one the VNC server serves; a switch
//! resubscribes, so the client gets the new console's size (DesktopSize) and every pixel.
//! A text console is an actor ([`spawn_text_console`]) that owns a
//! [`devices::terminal::Terminal`]: bytes its chardev writes are fed to the terminal and the
//! changed rows are drawn into its surface.
//!
//! Data path, in: the VNC server sends [`InputEvent`]s to the [`ConsoleSet`]. Ctrl+Alt+N
//! switches consoles (the N is not passed on); otherwise keys go to the active console:
//! the guest's input devices for the graphic console, or, for a text console, the bytes a
//! terminal would send (US layout), written into its chardev as if typed. Ctrl+Page Up/Down (and Ctrl+Up/Down) scroll a text console's scrollback. A
//! key released goes to the guest only if the guest saw it pressed, so switching never
//! leaves a key stuck there. The monitor's `sendkey` goes through
//! [`ConsoleSet::sendkey_sink`]: Ctrl+Alt+N switches there too, other keys reach the guest.
//!
//! The chardev end of a text console is a [`VcPort`]: one end of an in-memory pipe that
//! `crate::chardev` opens like any other backend (`Backend::Vc`), so serial ports,
//! monitors (the full HMP) and muxes work on a `vc` unchanged.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use devices::terminal::{key_bytes, TermKey, Terminal, CELL_H};
use devices::textgrid::TextGrid;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, watch};

use super::input::{InputEvent, InputSink};
use super::keycodes::KeyCode;
use super::{new_display, DisplayError, DisplayHandle, DisplayWriter, Rect, Surface, TileMap};
use crate::runtime::{spawn_supervised, Placement, Registry, Restart};

/// Lines Ctrl+Page Up/Down scroll a text console by (QEMU's step).
pub const PAGE_SCROLL: isize = 10;

/// Ways a console operation can fail.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The console's surface could not be made.
    #[error("text console {name}: {source}")]
    Display {
        name: String,
        #[source]
        source: DisplayError,
    },
    /// `select` of a console that does not exist.
    #[error("no console {0} (there are {1})")]
    NoSuchConsole(usize, usize),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a text console actor is told.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TextInput {
    /// Bytes typed (for the program behind the chardev).
    Bytes(Vec<u8>),
    /// Scroll the view back (positive) or forward through the scrollback.
    Scroll(isize),
}

/// One console.
#[derive(Clone)]
enum Console {
    Graphic {
        display: DisplayHandle,
    },
    Text {
        name: String,
        display: DisplayHandle,
        keys: mpsc::Sender<TextInput>,
        /// What it shows, as text (for text displays: `-display curses`).
        grid: Arc<Mutex<TextGrid>>,
    },
}

/// The guest's screen as text (the VGA's text mode), for text displays.
pub type TextSource = Arc<dyn Fn() -> TextGrid + Send + Sync>;

impl Console {
    fn display(&self) -> &DisplayHandle {
        match self {
            Console::Graphic { display, .. } | Console::Text { display, .. } => display,
        }
    }
}

/// Which modifier keys are held (left or right).
#[derive(Debug, Default, Clone, Copy)]
struct Mods {
    ctrl: [bool; 2],
    alt: [bool; 2],
    shift: [bool; 2],
}

impl Mods {
    fn ctrl(&self) -> bool {
        self.ctrl[0] || self.ctrl[1]
    }
    fn alt(&self) -> bool {
        self.alt[0] || self.alt[1]
    }
    fn shift(&self) -> bool {
        self.shift[0] || self.shift[1]
    }

    /// Track `key`; true if it is a modifier.
    fn track(&mut self, key: KeyCode, down: bool) -> bool {
        let slot = match key {
            KeyCode::Ctrl => &mut self.ctrl[0],
            KeyCode::CtrlR => &mut self.ctrl[1],
            KeyCode::Alt => &mut self.alt[0],
            KeyCode::AltR => &mut self.alt[1],
            KeyCode::Shift => &mut self.shift[0],
            KeyCode::ShiftR => &mut self.shift[1],
            _ => return false,
        };
        *slot = down;
        true
    }
}

struct SetShared {
    consoles: RwLock<Vec<Console>>,
    /// The guest's input devices (keys for the graphic console, and for `sendkey`).
    guest: RwLock<Option<Arc<dyn InputSink>>>,
    /// The guest's screen as text, when its display card has a text mode.
    graphic_text: RwLock<Option<TextSource>>,
    /// The active console's index; the compositor follows it.
    active: watch::Sender<usize>,
    mods: Mutex<Mods>,
    /// Keys the guest saw pressed and not yet released.
    guest_pressed: Mutex<HashSet<KeyCode>>,
    /// Ctrl+Alt+N digits that switched consoles: their release goes nowhere.
    swallowed: Mutex<HashSet<KeyCode>>,
}

/// The consoles and which one is shown. Cheap to clone; implements [`InputSink`] for the
/// VNC server and `sendkey`.
#[derive(Clone)]
pub struct ConsoleSet {
    shared: Arc<SetShared>,
}

impl ConsoleSet {
    /// A set with no consoles yet, and the display that shows the active one (hand this to
    /// the VNC server). Starts the compositor actor `console`.
    pub fn start(
        rt: &tokio::runtime::Handle,
        registry: &Registry,
    ) -> Result<(ConsoleSet, DisplayHandle), DisplayError> {
        let (out, out_handle) = new_display(640, 480)?;
        let (active, _) = watch::channel(0);
        let set = ConsoleSet {
            shared: Arc::new(SetShared {
                consoles: RwLock::new(Vec::new()),
                guest: RwLock::new(None),
                graphic_text: RwLock::new(None),
                active,
                mods: Mutex::default(),
                guest_pressed: Mutex::default(),
                swallowed: Mutex::default(),
            }),
        };
        let entry = registry.register("console", "display", Placement::Runtime, || 0);
        let s = set.clone();
        spawn_supervised(
            rt,
            entry,
            Restart::Always,
            move || compositor(s.clone(), out.clone()),
            |_| {},
        );
        Ok((set, out_handle))
    }

    /// Where the guest's keys and pointer go (the i8042/tablet), with or without a screen.
    pub fn set_guest_input(&self, input: Arc<dyn InputSink>) {
        *self.shared.guest.write().unwrap_or_else(|p| p.into_inner()) = Some(input);
    }

    /// How to read the guest's screen as text (the VGA's text mode).
    pub fn set_graphic_text(&self, source: TextSource) {
        *self
            .shared
            .graphic_text
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(source);
    }

    /// The active console as text: a text console's screen, the guest's text mode; `None`
    /// when there is no console or the guest's screen cannot be read as text.
    pub fn active_text(&self) -> Option<TextGrid> {
        match self.active_console()? {
            Console::Text { grid, .. } => Some(lock(&grid).clone()),
            Console::Graphic { .. } => {
                let source = self
                    .shared
                    .graphic_text
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()?;
                Some(source())
            }
        }
    }

    /// Add the guest's screen (the VGA).
    pub fn add_graphic(&self, display: DisplayHandle) {
        self.push(Console::Graphic { display });
    }

    /// The input sink for the monitor's `sendkey`: Ctrl+Alt+N switches consoles as on
    /// VNC; every other key goes to the guest's keyboard whatever console is shown (as
    /// QEMU's `sendkey` does). It tracks its own modifiers, apart from VNC clients'.
    pub fn sendkey_sink(&self) -> Arc<dyn InputSink> {
        Arc::new(SendkeySink {
            set: self.clone(),
            mods: Mutex::default(),
            swallowed: Mutex::default(),
        })
    }

    fn push(&self, c: Console) {
        self.shared
            .consoles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(c);
        // Wake the compositor: the first console added is the one to show.
        self.shared.active.send_modify(|_| {});
    }

    fn consoles(&self) -> Vec<Console> {
        self.shared
            .consoles
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many consoles there are.
    pub fn len(&self) -> usize {
        self.consoles().len()
    }

    /// True before any console was added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The active console's index (0 = Ctrl+Alt+1).
    pub fn active(&self) -> usize {
        *self.shared.active.borrow()
    }

    /// The consoles' names, in order (`graphic` for the guest's screen).
    pub fn names(&self) -> Vec<String> {
        self.consoles()
            .iter()
            .map(|c| match c {
                Console::Graphic { .. } => "graphic".to_string(),
                Console::Text { name, .. } => name.clone(),
            })
            .collect()
    }

    /// Show console `index` (as Ctrl+Alt+`index+1` does).
    pub fn select(&self, index: usize) -> Result<(), ConsoleError> {
        let n = self.len();
        if index >= n {
            return Err(ConsoleError::NoSuchConsole(index, n));
        }
        self.shared.active.send_if_modified(|a| {
            let changed = *a != index;
            *a = index;
            changed
        });
        Ok(())
    }

    fn active_console(&self) -> Option<Console> {
        self.consoles().get(self.active()).cloned()
    }

    /// The guest's input devices.
    fn guest_input(&self) -> Option<Arc<dyn InputSink>> {
        self.shared
            .guest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn key(&self, key: KeyCode, down: bool) {
        let mods = {
            let mut m = lock(&self.shared.mods);
            m.track(key, down);
            *m
        };
        if !down {
            if lock(&self.shared.swallowed).remove(&key) {
                return;
            }
            if lock(&self.shared.guest_pressed).remove(&key) {
                if let Some(g) = self.guest_input() {
                    g.send(InputEvent::Key { key, down: false });
                }
            }
            return;
        }
        if mods.ctrl() && mods.alt() {
            if let Some(n) = digit(key).filter(|n| *n >= 1) {
                lock(&self.shared.swallowed).insert(key);
                if let Err(e) = self.select(n - 1) {
                    tracing::debug!("Ctrl+Alt+{n}: {e}");
                }
                return;
            }
        }
        match self.active_console() {
            Some(Console::Text { keys, .. }) => {
                if let Some(msg) = text_key(key, mods) {
                    // A full mailbox drops the key, as a keyboard buffer overflows.
                    let _ = keys.try_send(msg);
                }
            }
            // The guest's screen, or no console at all: the guest's keyboard.
            Some(Console::Graphic { .. }) | None => {
                if let Some(g) = self.guest_input() {
                    lock(&self.shared.guest_pressed).insert(key);
                    g.send(InputEvent::Key { key, down: true });
                }
            }
        }
    }
}

/// See [`ConsoleSet::sendkey_sink`].
struct SendkeySink {
    set: ConsoleSet,
    mods: Mutex<Mods>,
    swallowed: Mutex<HashSet<KeyCode>>,
}

impl InputSink for SendkeySink {
    fn send(&self, ev: InputEvent) {
        if let InputEvent::Key { key, down } = ev {
            let mods = {
                let mut m = lock(&self.mods);
                m.track(key, down);
                *m
            };
            if !down && lock(&self.swallowed).remove(&key) {
                return;
            }
            if down && mods.ctrl() && mods.alt() {
                if let Some(n) = digit(key).filter(|n| *n >= 1) {
                    lock(&self.swallowed).insert(key);
                    if let Err(e) = self.set.select(n - 1) {
                        tracing::debug!("sendkey ctrl-alt-{n}: {e}");
                    }
                    return;
                }
            }
        }
        if let Some(g) = self.set.guest_input() {
            g.send(ev);
        }
    }

    fn absolute(&self) -> bool {
        self.set.guest_input().is_some_and(|g| g.absolute())
    }
}

impl InputSink for ConsoleSet {
    fn key_typing(&self, key: Option<KeyCode>, down: bool, ch: Option<char>) {
        // On a text console a character is typed as itself (Ctrl+key still makes its
        // control code, and Ctrl+Alt+N still switches, through the key).
        if let (Some(c), Some(Console::Text { keys, .. })) = (ch, self.active_console()) {
            if !lock(&self.shared.mods).ctrl() {
                if down {
                    let mut utf8 = [0u8; 4];
                    let _ = keys.try_send(TextInput::Bytes(
                        c.encode_utf8(&mut utf8).as_bytes().to_vec(),
                    ));
                }
                return;
            }
        }
        if let Some(key) = key {
            self.key(key, down);
        }
    }

    fn send(&self, ev: InputEvent) {
        match ev {
            InputEvent::Key { key, down } => self.key(key, down),
            other => {
                // Raw keys and the pointer mean something only on the guest's screen.
                if !matches!(self.active_console(), Some(Console::Text { .. })) {
                    if let Some(g) = self.guest_input() {
                        g.send(other);
                    }
                }
            }
        }
    }

    fn absolute(&self) -> bool {
        self.guest_input().is_some_and(|g| g.absolute())
    }
}

/// 1..9 and 0 for the digit keys.
fn digit(key: KeyCode) -> Option<usize> {
    const DIGITS: [KeyCode; 10] = [
        KeyCode::Digit0,
        KeyCode::Digit1,
        KeyCode::Digit2,
        KeyCode::Digit3,
        KeyCode::Digit4,
        KeyCode::Digit5,
        KeyCode::Digit6,
        KeyCode::Digit7,
        KeyCode::Digit8,
        KeyCode::Digit9,
    ];
    DIGITS.iter().position(|k| *k == key)
}

/// The character a key gives on a US keyboard, unshifted and shifted.
fn us_char(key: KeyCode) -> Option<(u8, u8)> {
    use KeyCode as K;
    const LETTERS: [KeyCode; 26] = [
        K::A,
        K::B,
        K::C,
        K::D,
        K::E,
        K::F,
        K::G,
        K::H,
        K::I,
        K::J,
        K::K,
        K::L,
        K::M,
        K::N,
        K::O,
        K::P,
        K::Q,
        K::R,
        K::S,
        K::T,
        K::U,
        K::V,
        K::W,
        K::X,
        K::Y,
        K::Z,
    ];
    if let Some(i) = LETTERS.iter().position(|k| *k == key) {
        let c = b'a' + i as u8;
        return Some((c, c.to_ascii_uppercase()));
    }
    if let Some(d) = digit(key) {
        return Some((b'0' + d as u8, b")!@#$%^&*("[d]));
    }
    Some(match key {
        K::Spc => (b' ', b' '),
        K::Minus => (b'-', b'_'),
        K::Equal => (b'=', b'+'),
        K::BracketLeft => (b'[', b'{'),
        K::BracketRight => (b']', b'}'),
        K::Backslash | K::Less => (b'\\', b'|'),
        K::Semicolon => (b';', b':'),
        K::Apostrophe => (b'\'', b'"'),
        K::GraveAccent => (b'`', b'~'),
        K::Comma => (b',', b'<'),
        K::Dot => (b'.', b'>'),
        K::Slash => (b'/', b'?'),
        K::KpMultiply => (b'*', b'*'),
        K::KpSubtract => (b'-', b'-'),
        K::KpAdd => (b'+', b'+'),
        K::KpDivide => (b'/', b'/'),
        K::KpDecimal => (b'.', b'.'),
        K::Kp0 => (b'0', b'0'),
        K::Kp1 => (b'1', b'1'),
        K::Kp2 => (b'2', b'2'),
        K::Kp3 => (b'3', b'3'),
        K::Kp4 => (b'4', b'4'),
        K::Kp5 => (b'5', b'5'),
        K::Kp6 => (b'6', b'6'),
        K::Kp7 => (b'7', b'7'),
        K::Kp8 => (b'8', b'8'),
        K::Kp9 => (b'9', b'9'),
        _ => return None,
    })
}

/// What a key press means to a text console (None: nothing, e.g. a bare modifier).
fn text_key(key: KeyCode, mods: Mods) -> Option<TextInput> {
    use KeyCode as K;
    let scroll = match key {
        K::Pgup if mods.ctrl() => Some(PAGE_SCROLL),
        K::Pgdn if mods.ctrl() => Some(-PAGE_SCROLL),
        K::Up if mods.ctrl() => Some(1),
        K::Down if mods.ctrl() => Some(-1),
        _ => None,
    };
    if let Some(n) = scroll {
        return Some(TextInput::Scroll(n));
    }
    let tk = match key {
        K::Ret | K::KpEnter => TermKey::Enter,
        K::Backspace => TermKey::Backspace,
        K::Tab => TermKey::Tab,
        K::Esc => TermKey::Escape,
        K::Up => TermKey::Up,
        K::Down => TermKey::Down,
        K::Left => TermKey::Left,
        K::Right => TermKey::Right,
        K::Home => TermKey::Home,
        K::End => TermKey::End,
        K::Insert => TermKey::Insert,
        K::Delete => TermKey::Delete,
        K::Pgup => TermKey::PageUp,
        K::Pgdn => TermKey::PageDown,
        other => {
            let (plain, shifted) = us_char(other)?;
            TermKey::Char(if mods.shift() { shifted } else { plain })
        }
    };
    Some(TextInput::Bytes(key_bytes(tk, mods.ctrl())))
}

/// The compositor: copy the active console into the output display.
async fn compositor(set: ConsoleSet, out: DisplayWriter) {
    let mut active = set.shared.active.subscribe();
    loop {
        let index = *active.borrow_and_update();
        let Some(console) = set.consoles().get(index).cloned() else {
            if active.changed().await.is_err() {
                return;
            }
            continue;
        };
        let mut sub = console.display().subscribe();
        let mut shadow = Arc::new(Surface::new(1, 1));
        let mut changed = TileMap::new(1, 1);
        loop {
            let report = sub.sync(&mut shadow, &mut changed);
            let (w, h) = (shadow.width(), shadow.height());
            if report.resized {
                if let Err(e) = out.resize(w, h) {
                    tracing::warn!("console {index}: {e}");
                }
                out.update(Rect::new(0, 0, w, h), shadow.pixels(), w as usize);
            } else {
                for r in changed.take_rects(Rect::new(0, 0, w, h)) {
                    out.update(r, &shadow.extract(r), r.w as usize);
                }
            }
            changed.clear();
            if let Some(c) = report.cursor {
                out.set_cursor(c.map(|c| (*c).clone()));
            }
            if let Some(l) = report.leds {
                out.set_leds(l);
            }
            tokio::select! {
                _ = sub.changed() => {}
                r = active.changed() => {
                    if r.is_err() {
                        return;
                    }
                    break;
                }
            }
        }
    }
}

/// The chardev end of a text console: bytes written to it are shown, keys typed on the
/// console are read from it. Opened once (by `crate::chardev::spawn_chardev`).
#[derive(Clone)]
pub struct VcPort {
    stream: Arc<Mutex<Option<DuplexStream>>>,
    /// The console's name, for messages.
    pub name: String,
}

impl VcPort {
    /// The stream, the first time.
    pub fn take(&self) -> Option<DuplexStream> {
        lock(&self.stream).take()
    }
}

impl std::fmt::Debug for VcPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VcPort({})", self.name)
    }
}

impl PartialEq for VcPort {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.stream, &other.stream)
    }
}

impl Eq for VcPort {}

/// Start text console `name` (`cols` x `rows` cells drawn with `font`, 256 glyphs of 16
/// bytes), add it to `set` after the consoles already there, and return its chardev end.
pub fn spawn_text_console(
    rt: &tokio::runtime::Handle,
    registry: &Registry,
    set: &ConsoleSet,
    name: &str,
    cols: usize,
    rows: usize,
    font: Arc<Vec<u8>>,
) -> Result<VcPort, ConsoleError> {
    let term = Terminal::new(cols, rows);
    let (w, h) = term.pixel_size();
    let (writer, display) = new_display(w, h).map_err(|source| ConsoleError::Display {
        name: name.to_string(),
        source,
    })?;
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (keys, keys_rx) = mpsc::channel(256);
    let grid = Arc::new(Mutex::new(term.grid()));
    let state = Arc::new(tokio::sync::Mutex::new(Some(TextConsole {
        grid: grid.clone(),
        term,
        writer,
        font,
        stream: ours,
        keys: keys_rx,
    })));
    let entry = registry.register(
        &format!("{name}.console"),
        "console",
        Placement::Runtime,
        || 0,
    );
    spawn_supervised(
        rt,
        entry,
        Restart::Always,
        move || {
            let state = state.clone();
            async move {
                // A restart after a panic has nothing to resume: the console stays as it
                // was drawn last.
                let taken = state.lock().await.take();
                if let Some(c) = taken {
                    c.run().await;
                }
            }
        },
        |_| {},
    );
    set.push(Console::Text {
        name: name.to_string(),
        display,
        keys,
        grid,
    });
    Ok(VcPort {
        stream: Arc::new(Mutex::new(Some(theirs))),
        name: name.to_string(),
    })
}

/// A text console actor's state.
struct TextConsole {
    term: Terminal,
    /// The screen as text, for text displays.
    grid: Arc<Mutex<TextGrid>>,
    writer: DisplayWriter,
    font: Arc<Vec<u8>>,
    /// Our end of the pipe to the chardev: read = output to show, write = typed input.
    stream: DuplexStream,
    keys: mpsc::Receiver<TextInput>,
}

impl TextConsole {
    async fn run(mut self) {
        let mut buf = vec![0u8; 4096];
        // Typed bytes (and status replies) not yet taken by the chardev: bounded, so a
        // program that never reads its input costs dropped keys, never a stalled screen.
        let mut pending: Vec<u8> = Vec::new();
        draw(&mut self.term, &self.writer, &self.font, &self.grid);
        let mut open = true;
        let (mut rd, mut wr) = tokio::io::split(self.stream);
        loop {
            tokio::select! {
                r = rd.read(&mut buf), if open => match r {
                    Ok(0) | Err(_) => open = false,
                    Ok(n) => {
                        self.term.feed(&buf[..n]);
                        queue(&mut pending, &self.term.take_replies());
                        draw(&mut self.term, &self.writer, &self.font, &self.grid);
                    }
                },
                w = wr.write(&pending), if open && !pending.is_empty() => match w {
                    Ok(0) | Err(_) => open = false,
                    Ok(n) => {
                        pending.drain(..n);
                    }
                },
                msg = self.keys.recv() => match msg {
                    None => return,
                    Some(TextInput::Bytes(b)) => {
                        self.term.reset_view();
                        draw(&mut self.term, &self.writer, &self.font, &self.grid);
                        queue(&mut pending, &b);
                    }
                    Some(TextInput::Scroll(n)) => {
                        self.term.scroll_view(n);
                        draw(&mut self.term, &self.writer, &self.font, &self.grid);
                    }
                },
            }
        }
    }
}

/// Most typed bytes a text console holds for a chardev that is not reading.
const PENDING_INPUT: usize = 4096;

fn queue(pending: &mut Vec<u8>, bytes: &[u8]) {
    if pending.len() + bytes.len() <= PENDING_INPUT {
        pending.extend_from_slice(bytes);
    } else {
        tracing::debug!("text console input dropped: {} bytes", bytes.len());
    }
}

/// Draw the terminal's changed rows into its surface, and note its text in `grid`.
fn draw(term: &mut Terminal, writer: &DisplayWriter, font: &[u8], grid: &Mutex<TextGrid>) {
    writer.draw(|surface, damage| {
        let stride = surface.width() as usize;
        let width = surface.width();
        for row in term.render(font, surface.pixels_mut(), stride) {
            damage.add(Rect::new(0, row as u32 * CELL_H, width, CELL_H));
        }
    });
    *lock(grid) = term.grid();
}

#[cfg(test)]
mod tests;
