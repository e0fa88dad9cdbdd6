//! QMP: JSON framing by structure (clients such as `qemu.qmp` send no newline), the
//! capabilities negotiation, dispatch through [`super::commands`], replies and events in
//! QEMU's wire format (`{"return": ..., "id": ...}\r\n`, `", "` and `": "` separators).

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::commands::{self, CmdError};

/// Largest message accepted; a bigger one is answered with an error and skipped.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Deepest nesting accepted (QEMU's limit).
pub const MAX_DEPTH: usize = 1024;

/// What the framer found in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete top-level JSON text (object or array), still unparsed.
    Message(Vec<u8>),
    /// Input that cannot be JSON, or a message over the limits: answer with this error.
    Error(String),
}

/// Incremental splitter of a byte stream into top-level JSON values.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    depth: usize,
    in_string: bool,
    escape: bool,
    /// The current message went over a limit: track structure, keep nothing.
    overflow: Option<&'static str>,
    /// Inside a run of stray bytes at top level.
    junk: bool,
}

impl Framer {
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<Frame>) {
        for &b in input {
            if self.depth == 0 {
                match b {
                    b'{' | b'[' => {
                        if self.junk {
                            self.junk = false;
                            out.push(junk_error());
                        }
                        self.depth = 1;
                        self.buf.clear();
                        self.buf.push(b);
                        self.overflow = None;
                    }
                    b' ' | b'\t' | b'\r' | b'\n' => {
                        if std::mem::take(&mut self.junk) {
                            out.push(junk_error());
                        }
                    }
                    _ => self.junk = true,
                }
                continue;
            }
            if self.overflow.is_none() {
                if self.buf.len() >= MAX_MESSAGE {
                    self.overflow = Some("JSON message size limit exceeded (1 MiB)");
                    self.buf = Vec::new();
                } else {
                    self.buf.push(b);
                }
            }
            if self.in_string {
                if self.escape {
                    self.escape = false;
                } else if b == b'\\' {
                    self.escape = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => {
                    self.depth += 1;
                    if self.depth > MAX_DEPTH {
                        // As QEMU: answered at once, and what follows is a new message
                        // (an unterminated run of brackets is never waited out).
                        out.push(Frame::Error("JSON nesting depth limit exceeded".into()));
                        self.depth = 0;
                        self.buf = Vec::new();
                        self.overflow = None;
                    }
                }
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        match self.overflow.take() {
                            Some(e) => out.push(Frame::Error(e.into())),
                            None => out.push(Frame::Message(std::mem::take(&mut self.buf))),
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Call at end of input: a pending run of junk is reported.
    pub fn finish(&mut self, out: &mut Vec<Frame>) {
        if std::mem::take(&mut self.junk) {
            out.push(junk_error());
        }
    }
}

fn junk_error() -> Frame {
    Frame::Error("JSON parse error, invalid keyword".into())
}

/// Serialize like QEMU: `{"a": 1, "b": [2, 3]}`, or indented with `pretty`.
pub fn to_wire(v: &Value, pretty: bool) -> String {
    let mut out = Vec::new();
    if pretty {
        let mut ser = serde_json::Serializer::with_formatter(
            &mut out,
            serde_json::ser::PrettyFormatter::with_indent(b"    "),
        );
        let _ = v.serialize(&mut ser);
    } else {
        let mut ser = serde_json::Serializer::with_formatter(&mut out, QemuFormatter);
        let _ = v.serialize(&mut ser);
    }
    let mut s = String::from_utf8(out).unwrap_or_default();
    s.push_str("\r\n");
    s
}

struct QemuFormatter;

impl serde_json::ser::Formatter for QemuFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// The greeting sent on connect.
pub fn greeting() -> Value {
    json!({"QMP": {"version": commands::version(), "capabilities": ["oob"]}})
}

/// An error reply (QEMU puts `id` first in errors).
pub fn error_reply(id: Option<&Value>, e: &CmdError) -> Value {
    let mut m = Map::new();
    if let Some(id) = id {
        m.insert("id".into(), id.clone());
    }
    m.insert(
        "error".into(),
        json!({"class": e.class(), "desc": e.desc()}),
    );
    Value::Object(m)
}

pub fn return_reply(id: Option<&Value>, v: Value) -> Value {
    let mut m = Map::new();
    m.insert("return".into(), v);
    if let Some(id) = id {
        m.insert("id".into(), id.clone());
    }
    Value::Object(m)
}

/// A validated request.
#[derive(Debug)]
pub struct Request {
    pub id: Option<Value>,
    pub command: String,
    pub args: Map<String, Value>,
    /// Sent as `exec-oob` rather than `execute`.
    pub oob: bool,
}

/// The text of a duplicate-key error from [`Strict`] (QEMU's words).
const DUPLICATE_KEY: &str = "duplicate key";

/// A JSON value parsed as QEMU's parser does: an object with a key twice is an error
/// (serde_json's `Value` would keep the last one).
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut v = Vec::new();
        while let Some(Strict(e)) = seq.next_element()? {
            v.push(e);
        }
        Ok(Value::Array(v))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if m.contains_key(&k) {
                return Err(serde::de::Error::custom(DUPLICATE_KEY));
            }
            let Strict(v) = map.next_value()?;
            m.insert(k, v);
        }
        Ok(Value::Object(m))
    }
}

/// The first `\uXXXX` escape in a string of `bytes` that is half of a surrogate pair
/// without its other half, as written.
fn lone_surrogate(bytes: &[u8]) -> Option<String> {
    let hex = |at: usize| {
        let h = bytes.get(at..at + 4)?;
        u16::from_str_radix(std::str::from_utf8(h).ok()?, 16)
            .ok()
            .map(|v| (v, String::from_utf8_lossy(h).into_owned()))
    };
    let escape_at = |at: usize| bytes.get(at..at + 2) == Some(&b"\\u"[..]);
    let (mut i, mut in_string) = (0, false);
    while i < bytes.len() {
        match bytes[i] {
            b'"' => in_string = !in_string,
            b'\\' if in_string && bytes.get(i + 1) == Some(&b'u') => {
                let (v, text) = hex(i + 2)?;
                match v {
                    0xd800..=0xdbff => {
                        let low = escape_at(i + 6)
                            .then(|| hex(i + 8))
                            .flatten()
                            .filter(|(l, _)| (0xdc00..=0xdfff).contains(l));
                        if low.is_none() {
                            return Some(format!("\\u{text}"));
                        }
                        i += 12;
                        continue;
                    }
                    0xdc00..=0xdfff => return Some(format!("\\u{text}")),
                    _ => {
                        i += 6;
                        continue;
                    }
                }
            }
            // Any other escape: skip the escaped byte (it may be a quote).
            b'\\' if in_string => i += 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// Check a message's envelope, QEMU's way. On error, the id (if any) to echo.
pub fn parse_request(bytes: &[u8]) -> Result<Request, (Option<Value>, CmdError)> {
    let parse_error = |d: String| (None, CmdError::Generic(format!("JSON parse error, {d}")));
    if let Some(s) = lone_surrogate(bytes) {
        return Err(parse_error(format!("{s} is not a valid Unicode character")));
    }
    let v: Value = match serde_json::from_slice::<Strict>(bytes) {
        Ok(Strict(v)) => v,
        Err(e) if e.is_data() && e.to_string().starts_with(DUPLICATE_KEY) => {
            return Err(parse_error(DUPLICATE_KEY.into()))
        }
        Err(e) => return Err(parse_error(e.to_string())),
    };
    let Value::Object(mut m) = v else {
        return Err((
            None,
            CmdError::Generic("QMP input must be a JSON object".into()),
        ));
    };
    let id = m.remove("id");
    let g = |d: String| (id.clone(), CmdError::Generic(d));
    let (command, oob) = match (m.remove("execute"), m.remove("exec-oob")) {
        (Some(_), Some(_)) => {
            return Err(g(
                "QMP input member 'execute' clashes with 'exec-oob'".into()
            ))
        }
        (None, None) => return Err(g("QMP input lacks member 'execute'".into())),
        (Some(Value::String(s)), None) => (s, false),
        (None, Some(Value::String(s))) => (s, true),
        (Some(_), None) => return Err(g("QMP input member 'execute' must be a string".into())),
        (None, Some(_)) => return Err(g("QMP input member 'exec-oob' must be a string".into())),
    };
    let args = match m.remove("arguments") {
        None => Map::new(),
        Some(Value::Object(a)) => a,
        Some(_) => return Err(g("QMP input member 'arguments' must be an object".into())),
    };
    if let Some(k) = m.keys().next() {
        return Err(g(format!("QMP input member '{k}' is unexpected")));
    }
    Ok(Request {
        id,
        command,
        args,
        oob,
    })
}

/// The event envelope.
pub fn event(name: &str, data: Option<Value>, when: std::time::SystemTime) -> Value {
    let d = when
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut m = Map::new();
    m.insert(
        "timestamp".into(),
        json!({"seconds": d.as_secs(), "microseconds": d.subsec_micros()}),
    );
    m.insert("event".into(), json!(name));
    if let Some(data) = data {
        m.insert("data".into(), data);
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(chunks: &[&[u8]]) -> Vec<Frame> {
        let mut f = Framer::default();
        let mut out = Vec::new();
        for c in chunks {
            f.feed(c, &mut out);
        }
        f.finish(&mut out);
        out
    }

    #[test]
    fn frames_without_newlines_and_across_reads() {
        let out = frames(&[
            b"{\"execute\":\"a\"}{\"exe",
            b"cute\":\"b\", \"x\": \"}{\"}",
        ]);
        assert_eq!(
            out,
            vec![
                Frame::Message(b"{\"execute\":\"a\"}".to_vec()),
                Frame::Message(b"{\"execute\":\"b\", \"x\": \"}{\"}".to_vec()),
            ]
        );
    }

    #[test]
    fn junk_and_limits_are_errors() {
        let out = frames(&[b"\x00\x01garbage \n{\"a\": 1}"]);
        assert!(matches!(out[0], Frame::Error(_)));
        assert!(matches!(out[1], Frame::Message(_)));
        let mut big = b"{\"execute\": \"x\", \"arguments\": {\"s\": \"".to_vec();
        big.extend(std::iter::repeat_n(b'A', MAX_MESSAGE + 10));
        big.extend_from_slice(b"\"}}{\"execute\": \"y\"}");
        let out = frames(&[&big]);
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0], Frame::Error(e) if e.contains("size limit")));
        assert_eq!(out[1], Frame::Message(b"{\"execute\": \"y\"}".to_vec()));
        let deep = vec![b'['; MAX_DEPTH + 5];
        let mut deep = deep.clone();
        deep.extend(vec![b']'; MAX_DEPTH + 5]);
        assert!(matches!(&frames(&[&deep])[0], Frame::Error(e) if e.contains("depth")));
    }

    #[test]
    fn envelopes_are_checked() {
        let e = |s: &str| {
            parse_request(s.as_bytes())
                .unwrap_err()
                .1
                .desc()
                .to_string()
        };
        assert_eq!(e("[1]"), "QMP input must be a JSON object");
        assert_eq!(e("{\"id\": 1}"), "QMP input lacks member 'execute'");
        assert_eq!(
            e("{\"execute\": 1}"),
            "QMP input member 'execute' must be a string"
        );
        assert_eq!(
            e("{\"execute\": \"x\", \"arguments\": []}"),
            "QMP input member 'arguments' must be an object"
        );
        assert!(e("{\"execute\": }").starts_with("JSON parse error"));
        let r = parse_request(br#"{"execute": "stop", "id": "a1"}"#).unwrap();
        assert_eq!((r.command.as_str(), r.id), ("stop", Some(json!("a1"))));
    }

    #[test]
    fn duplicate_keys_and_lone_surrogates_are_refused_as_qemu_does() {
        let e = |s: &str| {
            parse_request(s.as_bytes())
                .unwrap_err()
                .1
                .desc()
                .to_string()
        };
        assert_eq!(
            e(r#"{"execute": "stop", "execute": "cont"}"#),
            "JSON parse error, duplicate key"
        );
        assert_eq!(
            e(r#"{"execute": "x", "arguments": {"a": [{"b": 1, "b": 2}]}}"#),
            "JSON parse error, duplicate key"
        );
        assert_eq!(
            e(r#"{"execute": "x", "id": "\uDBFF"}"#),
            "JSON parse error, \\uDBFF is not a valid Unicode character"
        );
        assert_eq!(
            e(r#"{"execute": "x", "id": "\ud800\n"}"#),
            "JSON parse error, \\ud800 is not a valid Unicode character"
        );
        // An escaped backslash before `u` is no escape.
        let r = parse_request(br#"{"execute": "x", "id": "\\ud800"}"#).unwrap();
        assert_eq!(r.id, Some(json!("\\ud800")));
        let r =
            parse_request(br#"{"execute": "x", "id": "\ud83d\ude00", "arguments": {"n": -1.5}}"#)
                .unwrap();
        assert_eq!(r.id, Some(json!("\u{1f600}")));
        assert_eq!(r.args["n"], json!(-1.5));
        assert!(!r.oob);
        assert!(parse_request(br#"{"exec-oob": "x"}"#).unwrap().oob);
    }

    #[test]
    fn depth_errors_come_as_the_limit_is_crossed() {
        let mut f = Framer::default();
        let mut out = Vec::new();
        f.feed(&vec![b'['; MAX_DEPTH], &mut out);
        assert!(out.is_empty());
        f.feed(b"[", &mut out);
        assert_eq!(
            out,
            vec![Frame::Error("JSON nesting depth limit exceeded".into())]
        );
        // What follows is a new message.
        f.feed(br#"{"execute": "x"}"#, &mut out);
        assert_eq!(out[1], Frame::Message(br#"{"execute": "x"}"#.to_vec()));
    }

    #[test]
    fn wire_format_is_qemus() {
        assert_eq!(
            to_wire(
                &return_reply(
                    Some(&json!("x")),
                    json!({"status": "running", "running": true})
                ),
                false
            ),
            "{\"return\": {\"status\": \"running\", \"running\": true}, \"id\": \"x\"}\r\n"
        );
        assert_eq!(
            to_wire(&greeting(), false),
            format!(
                "{{\"QMP\": {{\"version\": {{\"qemu\": {{\"micro\": 22, \"minor\": 2, \"major\": 7}}, \"package\": \"{}\"}}, \"capabilities\": [\"oob\"]}}}}\r\n",
                super::super::PACKAGE
            )
        );
    }
}
