//! QEMU's option-string syntax: `[VALUE,]key=value,key=value,...`.
//!
//! Owns the low-level grammar every structured option shares (QEMU's `QemuOpts`):
//! items separated by `,`, a doubled `,,` standing for a literal comma inside a value, an
//! optional implied key for a first item written without `=` (`-m 1G` is `size=1G`), bare
//! `key` meaning `key=on` and bare `nokey` meaning `key=off` (`server,nowait`), and
//! `help`/`?` asking for a listing. Also the scalar grammars QEMU uses inside values:
//! booleans, unsigned integers (decimal, `0x` hex, leading-`0` octal), sizes with
//! `K/M/G/T/P/E` suffixes, and well-formed ids.
//!
//! [`Opts`] hands values out by key; every key read is remembered, so
//! [`Opts::finish`] can refuse any key nobody asked for — which is how an option troupe
//! cannot honour gets a clear error instead of being silently ignored.

use thiserror::Error;

/// Ways an option string or one of its values can be wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OptsError {
    /// A JSON argument (`-device '{"driver": ...}'`) that is not a JSON object.
    #[error("invalid JSON object: {0}")]
    Json(String),
    /// A JSON member whose value has no option-string form (a list, or `null` where the
    /// key takes none).
    #[error("parameter '{0}': only strings, numbers, booleans and objects are supported")]
    JsonValue(String),
    /// `=value` with no key.
    #[error("empty parameter name before '={0}'")]
    EmptyKey(String),
    /// A key nobody asked for: unknown to QEMU or not supported by troupe.
    #[error("parameter '{key}' is not supported{}", known_list(.known))]
    Unknown {
        /// The key as written.
        key: String,
        /// The keys this option does accept.
        known: Vec<String>,
    },
    /// A required key is absent.
    #[error("parameter '{0}' is missing")]
    Missing(String),
    /// A boolean key with another value.
    #[error("parameter '{key}' expects 'on' or 'off', not '{value}'")]
    NotBool {
        /// The key.
        key: String,
        /// What was written.
        value: String,
    },
    /// A numeric key with a non-number.
    #[error("parameter '{key}' expects a number, not '{value}'")]
    NotNumber {
        /// The key.
        key: String,
        /// What was written.
        value: String,
    },
    /// A number outside what the key allows.
    #[error("parameter '{key}' must be between {min} and {max}, not {value}")]
    OutOfRange {
        /// The key.
        key: String,
        /// The parsed value.
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// A key whose value is not one of a fixed set.
    #[error("parameter '{key}' does not accept value '{value}' (expected {expected})")]
    BadChoice {
        /// The key.
        key: String,
        /// What was written.
        value: String,
        /// The accepted values, for the message.
        expected: String,
    },
    /// An `id=` QEMU would not accept.
    #[error(
        "invalid id '{0}': ids consist of letters, digits, '-', '.' and '_', starting with a letter"
    )]
    BadId(String),
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        String::new()
    } else {
        format!(" (accepted: {})", known.join(", "))
    }
}

/// Why a size (`512M`, `1.5G`) could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SizeError {
    /// Not a number with an optional suffix.
    #[error("invalid size '{0}' (a number with an optional suffix B, K, M, G, T, P or E)")]
    Invalid(String),
    /// Does not fit in 64 bits.
    #[error("size '{0}' is too large")]
    TooLarge(String),
}

/// One `key=value` item.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    key: String,
    value: String,
    used: bool,
    /// A JSON `null` (only [`Opts::null`] reads one).
    null: bool,
}

/// A parsed option string. Values are read by key (the last occurrence wins, as in QEMU);
/// keys that were read are remembered for [`Opts::finish`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opts {
    items: Vec<Item>,
    asked: Vec<String>,
    help: bool,
}

/// True for the values QEMU takes as a request for a listing.
pub fn is_help(value: &str) -> bool {
    value == "help" || value == "?"
}

impl Opts {
    /// A JSON object argument, as QEMU takes for `-device`, `-blockdev`, `-object`: each
    /// member becomes a key (a nested object's members `outer.inner`, as the dotted
    /// option-string keys), booleans `on`/`off`, numbers their decimal text.
    pub fn from_json(s: &str) -> Result<Opts, OptsError> {
        fn flatten(
            prefix: &str,
            m: &serde_json::Map<String, serde_json::Value>,
            out: &mut Opts,
        ) -> Result<(), OptsError> {
            use serde_json::Value;
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    Value::String(t) => out.push(&key, t.clone()),
                    Value::Bool(b) => out.push(&key, if *b { "on" } else { "off" }.to_string()),
                    Value::Number(n) => out.push(&key, n.to_string()),
                    Value::Object(inner) => flatten(&key, inner, out)?,
                    Value::Null => out.items.push(Item {
                        key,
                        value: String::new(),
                        used: false,
                        null: true,
                    }),
                    Value::Array(_) => return Err(OptsError::JsonValue(key)),
                }
            }
            Ok(())
        }
        let v: serde_json::Value =
            serde_json::from_str(s).map_err(|e| OptsError::Json(e.to_string()))?;
        let serde_json::Value::Object(m) = v else {
            return Err(OptsError::Json("not an object".into()));
        };
        let mut opts = Opts::default();
        flatten("", &m, &mut opts)?;
        Ok(opts)
    }

    /// Parse `s`. `implied` names the key of a first item written without `=`
    /// (`-netdev user,...` → `type=user`). Without one, such an item is a flag.
    pub fn parse(s: &str, implied: Option<&str>) -> Result<Opts, OptsError> {
        let mut opts = Opts::default();
        let bytes = s.as_bytes();
        let mut pos = 0;
        let mut first = true;
        while pos < bytes.len() {
            // Length of the name: up to the first '=' or ','. Both are ASCII, so every cut
            // below is on a char boundary.
            let name_len = s[pos..].find(['=', ',']).unwrap_or(s.len() - pos);
            let has_eq = bytes.get(pos + name_len) == Some(&b'=');
            if !has_eq {
                if let (true, Some(key)) = (first, implied) {
                    let (value, next) = read_value(s, pos);
                    if is_help(&value) {
                        opts.help = true;
                    }
                    opts.push(key, value);
                    pos = next;
                } else {
                    let name = &s[pos..pos + name_len];
                    pos += name_len;
                    if is_help(name) {
                        opts.help = true;
                    } else if let Some(rest) = name.strip_prefix("no").filter(|r| !r.is_empty()) {
                        opts.push(rest, "off".to_string());
                    } else if !name.is_empty() {
                        opts.push(name, "on".to_string());
                    }
                }
            } else {
                let key = &s[pos..pos + name_len];
                let (value, next) = read_value(s, pos + name_len + 1);
                if key.is_empty() {
                    return Err(OptsError::EmptyKey(value));
                }
                if is_help(&value) {
                    opts.help = true;
                }
                opts.push(key, value);
                pos = next;
            }
            // Skip the separating comma.
            if bytes.get(pos) == Some(&b',') {
                pos += 1;
            }
            first = false;
        }
        Ok(opts)
    }

    fn push(&mut self, key: &str, value: String) {
        self.items.push(Item {
            key: key.to_string(),
            value,
            used: false,
            null: false,
        });
    }

    /// Whether the last value given for `key` is a JSON `null` (`"backing": null`); such a
    /// value is refused by every other reader.
    pub fn null(&mut self, key: &str) -> bool {
        self.ask(key);
        let mut found = false;
        for item in self.items.iter_mut().filter(|i| i.key == key) {
            item.used = item.null;
            found = item.null;
        }
        found
    }

    /// Put `key=value` before every item: a value written later for `key` wins (how a
    /// `-global` default reaches a `-device`).
    pub fn prepend(&mut self, key: &str, value: &str) {
        self.items.insert(
            0,
            Item {
                key: key.to_string(),
                value: value.to_string(),
                used: false,
                null: false,
            },
        );
    }

    /// Append `other`'s items after ours: later values win, as when QEMU merges repeated
    /// `-smp`/`-machine`/`-boot` options.
    pub fn merge(&mut self, other: Opts) {
        self.items.extend(other.items);
        self.help |= other.help;
    }

    /// Whether `help` or `?` appeared anywhere (as a flag or as a value).
    pub fn help_requested(&self) -> bool {
        self.help
    }

    /// The value of `key` without marking it read.
    pub fn peek(&self, key: &str) -> Option<&str> {
        self.items
            .iter()
            .rev()
            .find(|i| i.key == key)
            .map(|i| i.value.as_str())
    }

    fn ask(&mut self, key: &str) {
        if !self.asked.iter().any(|k| k == key) {
            self.asked.push(key.to_string());
        }
    }

    /// The last value given for `key`.
    pub fn str(&mut self, key: &str) -> Option<String> {
        self.ask(key);
        let mut found = None;
        for item in self.items.iter_mut().filter(|i| i.key == key && !i.null) {
            item.used = true;
            found = Some(item.value.clone());
        }
        found
    }

    /// Every value given for a repeatable `key`, in order.
    pub fn all(&mut self, key: &str) -> Vec<String> {
        self.ask(key);
        self.items
            .iter_mut()
            .filter(|i| i.key == key && !i.null)
            .map(|i| {
                i.used = true;
                i.value.clone()
            })
            .collect()
    }

    /// `key`, which must be present.
    pub fn required(&mut self, key: &str) -> Result<String, OptsError> {
        self.str(key)
            .ok_or_else(|| OptsError::Missing(key.to_string()))
    }

    /// A boolean `key` (`on|off|yes|no|true|false|y|n`).
    pub fn flag(&mut self, key: &str) -> Result<Option<bool>, OptsError> {
        match self.str(key) {
            None => Ok(None),
            Some(v) => parse_bool(&v).map(Some).ok_or_else(|| OptsError::NotBool {
                key: key.to_string(),
                value: v,
            }),
        }
    }

    /// An unsigned integer `key` in `min..=max`.
    pub fn uint(&mut self, key: &str, min: u64, max: u64) -> Result<Option<u64>, OptsError> {
        match self.str(key) {
            None => Ok(None),
            Some(v) => {
                let n = parse_uint(&v).ok_or_else(|| OptsError::NotNumber {
                    key: key.to_string(),
                    value: v.clone(),
                })?;
                if n < min || n > max {
                    return Err(OptsError::OutOfRange {
                        key: key.to_string(),
                        value: n,
                        min,
                        max,
                    });
                }
                Ok(Some(n))
            }
        }
    }

    /// `key` mapped through a fixed table of (spelling, value).
    pub fn choice<T: Copy>(
        &mut self,
        key: &str,
        table: &[(&str, T)],
    ) -> Result<Option<T>, OptsError> {
        match self.str(key) {
            None => Ok(None),
            Some(v) => table
                .iter()
                .find(|(name, _)| *name == v)
                .map(|(_, t)| Some(*t))
                .ok_or_else(|| OptsError::BadChoice {
                    key: key.to_string(),
                    value: v,
                    expected: table.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
                }),
        }
    }

    /// An `id=` (checked for QEMU's identifier rules).
    pub fn id(&mut self, key: &str) -> Result<Option<String>, OptsError> {
        match self.str(key) {
            None => Ok(None),
            Some(id) => {
                check_id(&id)?;
                Ok(Some(id))
            }
        }
    }

    /// Refuse every key that no reader asked for.
    pub fn finish(self) -> Result<(), OptsError> {
        match self.items.into_iter().find(|i| !i.used) {
            None => Ok(()),
            Some(item) if item.null => Err(OptsError::JsonValue(item.key)),
            Some(item) => Err(OptsError::Unknown {
                key: item.key,
                known: self.asked,
            }),
        }
    }
}

/// Read a value starting at `pos` up to the next single `,`; `,,` is a literal comma.
/// Returns the value and the position of the terminating comma (or the end).
fn read_value(s: &str, mut pos: usize) -> (String, usize) {
    let mut out = String::new();
    loop {
        match s[pos..].find(',') {
            None => {
                out.push_str(&s[pos..]);
                return (out, s.len());
            }
            Some(i) => {
                out.push_str(&s[pos..pos + i]);
                pos += i;
                if s.as_bytes().get(pos + 1) == Some(&b',') {
                    out.push(',');
                    pos += 2;
                } else {
                    return (out, pos);
                }
            }
        }
    }
}

/// Split at single commas, turning `,,` into `,` (for `-cpu`, whose items are not all
/// `key=value`).
pub fn split_escaped(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let (item, next) = read_value(s, pos);
        out.push(item);
        if next >= s.len() {
            return out;
        }
        pos = next + 1;
    }
}

/// QEMU's boolean spellings.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "on" | "yes" | "true" | "y" => Some(true),
        "off" | "no" | "false" | "n" => Some(false),
        _ => None,
    }
}

/// An unsigned integer the way QEMU reads one (`strtoull` base 0): decimal, `0x` hex,
/// or octal with a leading `0`. No sign, no spaces, no trailing garbage.
pub fn parse_uint(s: &str) -> Option<u64> {
    let (digits, radix) = if let Some(hex) = s.strip_prefix("0x").or(s.strip_prefix("0X")) {
        (hex, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// A size like QEMU's `qemu_strtosz`: decimal digits with an optional fraction and an
/// optional case-insensitive suffix `B K M G T P E` (powers of 1024). A number without a
/// suffix is multiplied by `default_unit`.
pub fn parse_size(s: &str, default_unit: u64) -> Result<u64, SizeError> {
    let invalid = || SizeError::Invalid(s.to_string());
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    let unit: u64 = match suffix.to_ascii_uppercase().as_str() {
        "" => default_unit,
        "B" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        "P" => 1 << 50,
        "E" => 1 << 60,
        _ => return Err(invalid()),
    };
    let (int_part, frac_part) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int_part.is_empty() || frac_part.contains('.') {
        return Err(invalid());
    }
    let int: u128 = int_part
        .parse::<u128>()
        .map_err(|_| SizeError::TooLarge(s.to_string()))?;
    let mut total = int
        .checked_mul(u128::from(unit))
        .ok_or_else(|| SizeError::TooLarge(s.to_string()))?;
    // The fraction, truncated to whole bytes like QEMU. 18 digits are below a byte even
    // for E (2^60), and keep num * unit within u128.
    if !frac_part.chars().all(|c| c.is_ascii_digit()) {
        return Err(invalid());
    }
    let frac: String = frac_part.chars().take(18).collect();
    if !frac.is_empty() {
        let num: u128 = frac.parse().map_err(|_| invalid())?;
        let den = 10u128.pow(frac.len() as u32);
        total = total
            .checked_add(num * u128::from(unit) / den)
            .ok_or_else(|| SizeError::TooLarge(s.to_string()))?;
    }
    u64::try_from(total).map_err(|_| SizeError::TooLarge(s.to_string()))
}

/// QEMU's `id_wellformed`: a letter, then letters, digits, `-`, `.`, `_`.
pub fn check_id(id: &str) -> Result<(), OptsError> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if ok {
        Ok(())
    } else {
        Err(OptsError::BadId(id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(s: &str, implied: Option<&str>) -> Vec<(String, String)> {
        Opts::parse(s, implied)
            .unwrap()
            .items
            .into_iter()
            .map(|i| (i.key, i.value))
            .collect()
    }

    fn p(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn key_value_items_are_split_at_commas() {
        assert_eq!(
            pairs("id=n0,hostfwd=tcp::2222-:22", None),
            vec![p("id", "n0"), p("hostfwd", "tcp::2222-:22")]
        );
    }

    #[test]
    fn implied_key_takes_a_first_item_without_equals() {
        assert_eq!(
            pairs("user,id=n0", Some("type")),
            vec![p("type", "user"), p("id", "n0")]
        );
        // With '=' the first item is an ordinary key.
        assert_eq!(pairs("size=1G", Some("size")), vec![p("size", "1G")]);
        // Only the first item is implied.
        assert_eq!(
            pairs("a,b", Some("type")),
            vec![p("type", "a"), p("b", "on")]
        );
    }

    #[test]
    fn doubled_comma_is_a_literal_comma() {
        assert_eq!(
            pairs("file=a,,b.img,if=none", None),
            vec![p("file", "a,b.img"), p("if", "none")]
        );
        assert_eq!(pairs("a,,b", Some("file")), vec![p("file", "a,b")]);
        assert_eq!(pairs("x=,,,,", None), vec![p("x", ",,")]);
        // `a=1,,b=2` is one value, as in QEMU.
        assert_eq!(pairs("a=1,,b=2", None), vec![p("a", "1,b=2")]);
    }

    #[test]
    fn bare_keys_are_flags_and_no_prefix_negates() {
        assert_eq!(
            pairs("server,nowait,nodelay", None),
            vec![p("server", "on"), p("wait", "off"), p("delay", "off")]
        );
    }

    #[test]
    fn trailing_and_empty_items_are_harmless() {
        assert_eq!(pairs("id=a,", None), vec![p("id", "a")]);
        assert_eq!(pairs("", Some("type")), vec![]);
        assert_eq!(pairs("id=", None), vec![p("id", "")]);
    }

    #[test]
    fn empty_key_is_an_error() {
        assert_eq!(
            Opts::parse("=x", None).unwrap_err().to_string(),
            "empty parameter name before '=x'"
        );
    }

    #[test]
    fn help_is_recognised_as_flag_or_value() {
        assert!(Opts::parse("help", Some("driver"))
            .unwrap()
            .help_requested());
        assert!(Opts::parse("e1000,help", Some("driver"))
            .unwrap()
            .help_requested());
        assert!(Opts::parse("e1000,?", Some("driver"))
            .unwrap()
            .help_requested());
        assert!(Opts::parse("nic,model=help", Some("type"))
            .unwrap()
            .help_requested());
        assert!(!Opts::parse("e1000", Some("driver"))
            .unwrap()
            .help_requested());
    }

    #[test]
    fn last_value_wins_and_all_returns_every_value() {
        let mut o = Opts::parse("a=1,h=x,a=2,h=y", None).unwrap();
        assert_eq!(o.str("a").as_deref(), Some("2"));
        assert_eq!(o.all("h"), vec!["x", "y"]);
        o.finish().unwrap();
    }

    #[test]
    fn finish_refuses_unread_keys_and_lists_the_accepted_ones() {
        let mut o = Opts::parse("id=a,bogus=1", None).unwrap();
        o.str("id");
        o.str("mac");
        assert_eq!(
            o.finish().unwrap_err().to_string(),
            "parameter 'bogus' is not supported (accepted: id, mac)"
        );
    }

    #[test]
    fn typed_getters_report_the_key_and_value() {
        let mut o = Opts::parse("a=maybe,b=x,c=300,d=blue", None).unwrap();
        assert_eq!(
            o.flag("a").unwrap_err().to_string(),
            "parameter 'a' expects 'on' or 'off', not 'maybe'"
        );
        assert_eq!(
            o.uint("b", 0, 10).unwrap_err().to_string(),
            "parameter 'b' expects a number, not 'x'"
        );
        assert_eq!(
            o.uint("c", 1, 255).unwrap_err().to_string(),
            "parameter 'c' must be between 1 and 255, not 300"
        );
        assert_eq!(
            o.choice("d", &[("red", 1), ("green", 2)])
                .unwrap_err()
                .to_string(),
            "parameter 'd' does not accept value 'blue' (expected red, green)"
        );
        assert_eq!(
            o.required("e").unwrap_err().to_string(),
            "parameter 'e' is missing"
        );
    }

    #[test]
    fn booleans_accept_qemu_spellings() {
        for t in ["on", "yes", "true", "y"] {
            assert_eq!(parse_bool(t), Some(true));
        }
        for f in ["off", "no", "false", "n"] {
            assert_eq!(parse_bool(f), Some(false));
        }
        assert_eq!(parse_bool("1"), None);
        assert_eq!(parse_bool("ON"), None);
    }

    #[test]
    fn integers_follow_strtoull_base_zero() {
        assert_eq!(parse_uint("42"), Some(42));
        assert_eq!(parse_uint("0"), Some(0));
        assert_eq!(parse_uint("0xf4"), Some(0xf4));
        assert_eq!(parse_uint("0X1F"), Some(0x1f));
        assert_eq!(parse_uint("010"), Some(8));
        assert_eq!(parse_uint("09"), None);
        assert_eq!(parse_uint("-1"), None);
        assert_eq!(parse_uint("+1"), None);
        assert_eq!(parse_uint(""), None);
        assert_eq!(parse_uint("0x"), None);
        assert_eq!(parse_uint("12a"), None);
        assert_eq!(parse_uint("99999999999999999999999"), None);
    }

    #[test]
    fn sizes_take_suffixes_fractions_and_a_default_unit() {
        const M: u64 = 1 << 20;
        assert_eq!(parse_size("512", M), Ok(512 * M));
        assert_eq!(parse_size("512M", M), Ok(512 * M));
        assert_eq!(parse_size("2G", M), Ok(2048 * M));
        assert_eq!(parse_size("2g", M), Ok(2048 * M));
        assert_eq!(parse_size("1.5G", M), Ok(1536 * M));
        assert_eq!(parse_size("0.5", M), Ok(M / 2));
        assert_eq!(
            parse_size("1.99999999999999999999999999999999E", M),
            Ok((2u64 << 60) - 2)
        );
        assert_eq!(parse_size("15.999999999999999999E", M), Ok(u64::MAX - 1));
        assert_eq!(parse_size("16E", M), Err(SizeError::TooLarge("16E".into())));
        assert_eq!(parse_size("4096B", M), Ok(4096));
        assert_eq!(parse_size("1K", M), Ok(1024));
        assert_eq!(parse_size("1T", M), Ok(1 << 40));
        assert_eq!(parse_size("0", M), Ok(0));
        assert_eq!(parse_size("abc", M), Err(SizeError::Invalid("abc".into())));
        assert_eq!(parse_size("1X", M), Err(SizeError::Invalid("1X".into())));
        assert_eq!(parse_size("", M), Err(SizeError::Invalid("".into())));
        assert_eq!(parse_size(".5G", M), Err(SizeError::Invalid(".5G".into())));
        assert_eq!(
            parse_size("1.2.3G", M),
            Err(SizeError::Invalid("1.2.3G".into()))
        );
        assert_eq!(parse_size("-1", M), Err(SizeError::Invalid("-1".into())));
        assert_eq!(
            parse_size("99999999999E", M),
            Err(SizeError::TooLarge("99999999999E".into()))
        );
        assert_eq!(
            parse_size("999999999999999999999999999999999999999999", M),
            Err(SizeError::TooLarge(
                "999999999999999999999999999999999999999999".into()
            ))
        );
    }

    #[test]
    fn ids_follow_qemu_rules() {
        assert!(check_id("net0").is_ok());
        assert!(check_id("a-b.c_d").is_ok());
        for bad in ["", "0abc", "-x", "a b", "a,b", "__org", "#net0", "é"] {
            assert_eq!(check_id(bad), Err(OptsError::BadId(bad.to_string())));
        }
    }

    #[test]
    fn split_escaped_keeps_doubled_commas() {
        assert_eq!(
            split_escaped("qemu64,+aes,-x2apic"),
            vec!["qemu64", "+aes", "-x2apic"]
        );
        assert_eq!(split_escaped("a,,b,c"), vec!["a,b", "c"]);
        assert_eq!(split_escaped(""), vec![""]);
        assert_eq!(split_escaped("a,"), vec!["a", ""]);
    }

    #[test]
    fn non_ascii_input_never_panics() {
        for s in ["é=ü,,ö", "ü", "a=é,nü", ",,,é", "=é", "é,"] {
            let _ = Opts::parse(s, Some("x"));
            let _ = Opts::parse(s, None);
            let _ = split_escaped(s);
            let _ = parse_size(s, 1);
            let _ = parse_uint(s);
        }
    }
}
