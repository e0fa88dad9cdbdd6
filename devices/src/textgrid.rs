//! A screen of text as a text display shows it: the VGA's text mode, a text console. Cells
//! hold a code page 437 character and 16-colour foreground/background indices in
//! [`crate::terminal::PALETTE`] order (ANSI: 1 is red, 4 is blue; 8–15 bright).

/// One character cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextCell {
    /// Code page 437.
    pub ch: u8,
    pub fg: u8,
    pub bg: u8,
}

impl TextCell {
    pub const BLANK: TextCell = TextCell {
        ch: b' ',
        fg: 7,
        bg: 0,
    };
}

/// A screenful of cells, row by row, and where the cursor is if it is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextGrid {
    pub cols: usize,
    pub rows: usize,
    pub cells: Vec<TextCell>,
    pub cursor: Option<(usize, usize)>,
}

impl TextGrid {
    /// A blank `cols` x `rows` grid.
    pub fn blank(cols: usize, rows: usize) -> Self {
        Self {
            cols,
            rows,
            cells: vec![TextCell::BLANK; cols * rows],
            cursor: None,
        }
    }

    /// `text` centred on the middle row of a blank grid, in colour `fg` (as QEMU's text
    /// displays say "640 x 480 Graphic mode").
    pub fn message(cols: usize, rows: usize, text: &str, fg: u8) -> Self {
        let mut g = Self::blank(cols, rows);
        let y = rows / 2;
        let x0 = cols.saturating_sub(text.len()) / 2;
        for (i, b) in text.bytes().take(cols).enumerate() {
            g.cells[y * cols + x0 + i] = TextCell { ch: b, fg, bg: 0 };
        }
        g
    }

    /// The cell at (column, row).
    pub fn cell(&self, x: usize, y: usize) -> Option<TextCell> {
        (x < self.cols && y < self.rows).then(|| self.cells[y * self.cols + x])
    }

    /// Row `y` as Unicode text, trailing blanks trimmed.
    pub fn row_text(&self, y: usize) -> String {
        let s: String = (0..self.cols)
            .filter_map(|x| self.cell(x, y))
            .map(|c| cp437(c.ch))
            .collect();
        s.trim_end().to_string()
    }
}

/// The Unicode character code page 437 shows for `b` (NUL and 0xFF as blanks).
pub fn cp437(b: u8) -> char {
    static TABLE: std::sync::OnceLock<Vec<char>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| CP437.chars().collect())[usize::from(b)]
}

/// Code page 437 with its graphic characters for the control codes, as the VGA font draws
/// them.
const CP437: &str = concat!(
    " ☺☻♥♦♣♠•◘○◙♂♀♪♫☼",
    "►◄↕‼¶§▬↨↑↓→←∟↔▲▼",
    " !\"#$%&'()*+,-./",
    "0123456789:;<=>?",
    "@ABCDEFGHIJKLMNO",
    "PQRSTUVWXYZ[\\]^_",
    "`abcdefghijklmno",
    "pqrstuvwxyz{|}~⌂",
    "ÇüéâäàåçêëèïîìÄÅ",
    "ÉæÆôöòûùÿÖÜ¢£¥₧ƒ",
    "áíóúñÑªº¿⌐¬½¼¡«»",
    "░▒▓│┤╡╢╖╕╣║╗╝╜╛┐",
    "└┴┬├─┼╞╟╚╔╩╦╠═╬╧",
    "╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀",
    "αßΓπΣσµτΦΘΩδ∞φε∩",
    "≡±≥≤⌠⌡÷≈°∙·√ⁿ²■ ",
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_page_437_has_every_character_in_place() {
        assert_eq!(CP437.chars().count(), 256);
        assert_eq!(cp437(b'A'), 'A');
        assert_eq!(cp437(0x7e), '~');
        assert_eq!(cp437(0xc4), '─');
        assert_eq!(cp437(0xdb), '█');
        assert_eq!(cp437(0xe1), 'ß');
        assert_eq!(cp437(0xfe), '■');
    }

    #[test]
    fn a_message_is_centred_on_the_middle_row() {
        let g = TextGrid::message(60, 3, "640 x 480 Graphic mode", 12);
        assert_eq!(g.row_text(0), "");
        assert_eq!(g.row_text(1).trim_start(), "640 x 480 Graphic mode");
        assert_eq!(g.row_text(1).len() - 22, 19);
        assert_eq!(g.cell(19, 1).map(|c| c.fg), Some(12));
    }
}
