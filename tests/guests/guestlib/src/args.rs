//! Command-line parsing: space-separated `key=value` words.

/// The value of the last `key=value` (or bare `key`, giving "") in `cmdline`.
pub fn lookup<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    let mut found = None;
    for word in cmdline.split_ascii_whitespace() {
        match word.split_once('=') {
            Some((k, v)) if k == key => found = Some(v),
            None if word == key => found = Some(""),
            _ => {}
        }
    }
    found
}

/// Parses decimal, or hex with a `0x` prefix; `_` separators allowed.
pub fn parse_u64(s: &str) -> Option<u64> {
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => (h, 16),
        None => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for c in digits.chars() {
        if c == '_' {
            continue;
        }
        let d = c.to_digit(radix)? as u64;
        v = v.checked_mul(radix as u64)?.checked_add(d)?;
    }
    Some(v)
}
