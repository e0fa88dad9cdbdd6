//! The HMP line editor, behaving like QEMU's `util/readline.c` on the wire: every change
//! redraws the line (cursor back to the start with `ESC[D`, the text, `ESC[K`), Enter
//! echoes `\r\n`. Editing: backspace (DEL or BS), Delete, left/right, Home/End and
//! Ctrl-a/Ctrl-e, Ctrl-k (kill to end), Ctrl-u (kill to start), Ctrl-w (kill word), history
//! with up/down (and Ctrl-p/Ctrl-n), Tab completion. CR, LF, CR LF and CR NUL are each one
//! Enter.

/// Longest line kept (QEMU's READLINE_CMD_BUF_SIZE - 1); further input is ignored.
pub const MAX_LINE: usize = 4095;
const MAX_HISTORY: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Esc {
    #[default]
    None,
    /// After ESC.
    Start,
    /// After `ESC [` or `ESC O`, collecting a numeric parameter.
    Csi(u32),
}

/// What a byte completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Line(String),
}

#[derive(Debug, Default)]
pub struct Readline {
    prompt: String,
    buf: Vec<u8>,
    cursor: usize,
    /// What the terminal shows (for minimal redraws like QEMU's).
    shown: Vec<u8>,
    shown_cursor: usize,
    history: Vec<String>,
    /// Index into `history` while browsing; `history.len()` = the new line.
    hist_pos: usize,
    esc: Esc,
    after_cr: bool,
    /// Echo `*` instead of the text, and keep the line out of history.
    password: bool,
}

impl Readline {
    pub fn new(prompt: &str) -> Self {
        Self {
            prompt: prompt.to_string(),
            ..Default::default()
        }
    }

    pub fn history(&self) -> &[String] {
        &self.history
    }

    /// Start a new line: print `prompt` (QEMU's `readline_show_prompt`).
    pub fn start(&mut self, prompt: &str, password: bool, out: &mut Vec<u8>) {
        self.prompt = prompt.to_string();
        self.password = password;
        self.buf.clear();
        self.cursor = 0;
        self.shown.clear();
        self.shown_cursor = 0;
        self.hist_pos = self.history.len();
        out.extend_from_slice(self.prompt.as_bytes());
    }

    /// Feed one input byte; `complete` lists candidates for the text before the cursor.
    pub fn feed(
        &mut self,
        b: u8,
        complete: &dyn Fn(&str) -> Vec<String>,
        out: &mut Vec<u8>,
    ) -> Option<Event> {
        let after_cr = std::mem::take(&mut self.after_cr);
        match self.esc {
            Esc::Start => {
                self.esc = match b {
                    b'[' | b'O' => Esc::Csi(0),
                    _ => Esc::None,
                };
                return None;
            }
            Esc::Csi(n) => {
                self.esc = Esc::None;
                match b {
                    b'0'..=b'9' => {
                        self.esc =
                            Esc::Csi(n.saturating_mul(10).saturating_add(u32::from(b - b'0')));
                        return None;
                    }
                    b'A' => self.history_move(-1),
                    b'B' => self.history_move(1),
                    b'C' => self.cursor = (self.cursor + 1).min(self.buf.len()),
                    b'D' => self.cursor = self.cursor.saturating_sub(1),
                    b'H' => self.cursor = 0,
                    b'F' => self.cursor = self.buf.len(),
                    b'~' => match n {
                        1 | 7 => self.cursor = 0,
                        4 | 8 => self.cursor = self.buf.len(),
                        3 => self.delete_at_cursor(),
                        _ => {}
                    },
                    _ => {}
                }
                self.update(out);
                return None;
            }
            Esc::None => {}
        }
        match b {
            b'\n' | 0 if after_cr => return None,
            b'\r' | b'\n' => {
                self.after_cr = b == b'\r';
                let line = String::from_utf8_lossy(&self.buf).into_owned();
                out.extend_from_slice(b"\r\n");
                if !self.password && !line.trim().is_empty() && self.history.last() != Some(&line) {
                    {
                        self.history.push(line.clone());
                        if self.history.len() > MAX_HISTORY {
                            self.history.remove(0);
                        }
                    }
                }
                self.buf.clear();
                self.cursor = 0;
                self.shown.clear();
                self.shown_cursor = 0;
                self.hist_pos = self.history.len();
                return Some(Event::Line(line));
            }
            27 => self.esc = Esc::Start,
            1 => self.cursor = 0,
            5 => self.cursor = self.buf.len(),
            2 => self.cursor = self.cursor.saturating_sub(1),
            6 => self.cursor = (self.cursor + 1).min(self.buf.len()),
            4 => self.delete_at_cursor(),
            11 => self.buf.truncate(self.cursor),
            21 => {
                self.buf.drain(..self.cursor);
                self.cursor = 0;
            }
            23 => {
                let mut start = self.cursor;
                while start > 0 && self.buf[start - 1] == b' ' {
                    start -= 1;
                }
                while start > 0 && self.buf[start - 1] != b' ' {
                    start -= 1;
                }
                self.buf.drain(start..self.cursor);
                self.cursor = start;
            }
            16 => self.history_move(-1),
            14 => self.history_move(1),
            127 | 8 if self.cursor > 0 => {
                self.cursor -= 1;
                self.buf.remove(self.cursor);
            }
            127 | 8 => {}
            b'\t' if !self.password => {
                self.complete(complete, out);
                return None;
            }
            b if b >= 32 && self.buf.len() < MAX_LINE => {
                self.buf.insert(self.cursor, b);
                self.cursor += 1;
            }
            _ => {}
        }
        self.update(out);
        None
    }

    fn delete_at_cursor(&mut self) {
        if self.cursor < self.buf.len() {
            self.buf.remove(self.cursor);
        }
    }

    fn history_move(&mut self, d: i32) {
        if self.password {
            return;
        }
        let n = self.history.len();
        let pos = if d < 0 {
            if self.hist_pos == 0 {
                return;
            }
            self.hist_pos - 1
        } else {
            if self.hist_pos >= n {
                return;
            }
            self.hist_pos + 1
        };
        self.hist_pos = pos;
        self.buf = if pos < n {
            self.history[pos].as_bytes().to_vec()
        } else {
            Vec::new()
        };
        self.cursor = self.buf.len();
    }

    fn complete(&mut self, complete: &dyn Fn(&str) -> Vec<String>, out: &mut Vec<u8>) {
        let before = String::from_utf8_lossy(&self.buf[..self.cursor]).into_owned();
        let cands = complete(&before);
        if cands.is_empty() {
            return;
        }
        let word_start = before.rfind(' ').map_or(0, |i| i + 1);
        let typed = &before[word_start..];
        // The longest common prefix of all candidates.
        let mut common = cands[0].clone();
        for c in &cands[1..] {
            let n = common
                .bytes()
                .zip(c.bytes())
                .take_while(|(a, b)| a == b)
                .count();
            common.truncate(n);
        }
        if common.len() > typed.len() || cands.len() == 1 {
            let mut add = common.as_bytes()[typed.len().min(common.len())..].to_vec();
            if cands.len() == 1 {
                add.push(b' ');
            }
            for (i, b) in add.into_iter().enumerate() {
                if self.buf.len() < MAX_LINE {
                    self.buf.insert(self.cursor + i, b);
                }
            }
            self.cursor = (self.cursor
                + common.len().saturating_sub(typed.len())
                + usize::from(cands.len() == 1))
            .min(self.buf.len());
            self.update(out);
            return;
        }
        // Several candidates and nothing more in common: list them in columns, then
        // show the prompt and the line again.
        let width = cands.iter().map(String::len).max().unwrap_or(0) + 2;
        let per_line = (80 / width).max(1);
        out.extend_from_slice(b"\r\n");
        for (i, c) in cands.iter().enumerate() {
            out.extend_from_slice(format!("{c:<width$}").as_bytes());
            if (i + 1) % per_line == 0 || i + 1 == cands.len() {
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(self.prompt.as_bytes());
        self.shown.clear();
        self.shown_cursor = 0;
        self.update(out);
    }

    /// Bring the terminal in line with the buffer, as QEMU's `readline_update` does.
    fn update(&mut self, out: &mut Vec<u8>) {
        if self.buf != self.shown
            && self.shown_cursor == self.shown.len()
            && self.buf.starts_with(&self.shown)
        {
            // Typing at the end: print only what is new (the terminal ends up the same as
            // with a full redraw, without quadratic output on long lines).
            let new = &self.buf[self.shown.len()..];
            if self.password {
                out.extend(std::iter::repeat_n(b'*', new.len()));
            } else {
                out.extend_from_slice(new);
            }
            out.extend_from_slice(b"\x1b[K");
            self.shown = self.buf.clone();
            self.shown_cursor = self.buf.len();
        } else if self.buf != self.shown {
            for _ in 0..self.shown_cursor {
                out.extend_from_slice(b"\x1b[D");
            }
            if self.password {
                out.extend(std::iter::repeat_n(b'*', self.buf.len()));
            } else {
                out.extend_from_slice(&self.buf);
            }
            out.extend_from_slice(b"\x1b[K");
            self.shown = self.buf.clone();
            self.shown_cursor = self.buf.len();
        }
        if self.cursor != self.shown_cursor {
            let (seq, n): (&[u8], usize) = if self.cursor > self.shown_cursor {
                (b"\x1b[C", self.cursor - self.shown_cursor)
            } else {
                (b"\x1b[D", self.shown_cursor - self.cursor)
            };
            for _ in 0..n {
                out.extend_from_slice(seq);
            }
            self.shown_cursor = self.cursor;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> Vec<String> {
        Vec::new()
    }

    fn feed_all(
        rl: &mut Readline,
        bytes: &[u8],
        c: &dyn Fn(&str) -> Vec<String>,
    ) -> (Vec<String>, Vec<u8>) {
        let mut out = Vec::new();
        let mut lines = Vec::new();
        for &b in bytes {
            if let Some(Event::Line(l)) = rl.feed(b, c, &mut out) {
                lines.push(l);
            }
        }
        (lines, out)
    }

    #[test]
    fn cr_lf_and_cr_nul_are_one_enter() {
        let mut rl = Readline::new("(qemu) ");
        let (lines, _) = feed_all(&mut rl, b"a\r\nb\r\0c\rd\n\n", &none);
        assert_eq!(lines, vec!["a", "b", "c", "d", ""]);
    }

    #[test]
    fn editing_keys() {
        let mut rl = Readline::new("");
        // left twice, insert X; Home, Ctrl-k; then retype.
        let (lines, _) = feed_all(&mut rl, b"abc\x1b[D\x1b[DX\r", &none);
        assert_eq!(lines, vec!["aXbc"]);
        let (lines, _) = feed_all(&mut rl, b"hello\x01\x0bok\r", &none);
        assert_eq!(lines, vec!["ok"]);
        let (lines, _) = feed_all(&mut rl, b"abc\x7f\x08z\r", &none);
        assert_eq!(lines, vec!["az"]);
        let (lines, _) = feed_all(&mut rl, b"one two\x17x\r", &none);
        assert_eq!(lines, vec!["one x"]);
        let (lines, _) = feed_all(&mut rl, b"abc\x02\x02\x15\x05!\r", &none);
        assert_eq!(lines, vec!["bc!"]);
    }

    #[test]
    fn history_up_down() {
        let mut rl = Readline::new("");
        feed_all(&mut rl, b"first\rsecond\r", &none);
        let (lines, _) = feed_all(&mut rl, b"\x1b[A\x1b[A\r", &none);
        assert_eq!(lines, vec!["first"]);
        // History is now first, second, first: up, up, down lands on the last "first".
        let (lines, _) = feed_all(&mut rl, b"\x1b[A\x1b[A\x1b[B\r", &none);
        assert_eq!(lines, vec!["first"]);
        let (lines, _) = feed_all(&mut rl, b"\x1b[A\x1b[A\r", &none);
        assert_eq!(lines, vec!["second"]);
    }

    #[test]
    fn echo_is_a_qemu_style_redraw() {
        let mut rl = Readline::new("");
        let (_, out) = feed_all(&mut rl, b"ab", &none);
        assert_eq!(out, b"a\x1b[Kb\x1b[K");
        let (_, out) = feed_all(&mut rl, b"\x1b[DX", &none);
        assert_eq!(out, b"\x1b[D\x1b[DaXb\x1b[K\x1b[D");
    }

    #[test]
    fn tab_completes_single_and_lists_several() {
        let c = |s: &str| -> Vec<String> {
            ["info", "sendkey", "system_reset", "system_powerdown"]
                .iter()
                .filter(|n| n.starts_with(s))
                .map(|s| s.to_string())
                .collect()
        };
        let mut rl = Readline::new("(qemu) ");
        let (lines, _) = feed_all(&mut rl, b"inf\t\r", &c);
        assert_eq!(lines, vec!["info "]);
        let (_, out) = feed_all(&mut rl, b"sy\t", &c);
        let text = String::from_utf8_lossy(&out);
        // Common prefix "system_" is completed first...
        assert!(text.ends_with("stem_\x1b[K"), "{text:?}");
        // ...then a second Tab lists both and redraws the prompt.
        let (_, out) = feed_all(&mut rl, b"\t", &c);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("system_powerdown") && text.contains("system_reset"));
        assert!(text.contains("(qemu) system_"));
    }

    #[test]
    fn overlong_lines_are_cut() {
        let mut rl = Readline::new("");
        let mut big = vec![b'a'; MAX_LINE + 100];
        big.push(b'\r');
        let (lines, _) = feed_all(&mut rl, &big, &none);
        assert_eq!(lines[0].len(), MAX_LINE);
    }
}
