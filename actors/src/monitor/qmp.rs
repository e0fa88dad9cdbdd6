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
                    if self.depth > MAX_DEPTH && self.overflow.is_none() {
                        self.overflow = Some("JSON nesting depth limit exceeded");
                        self.buf = Vec::new();
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
}

/// Check a message's envelope, QEMU's way. On error, the id (if any) to echo.
pub fn parse_request(bytes: &[u8]) -> Result<Request, (Option<Value>, CmdError)> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| (None, CmdError::Generic(format!("JSON parse error, {e}"))))?;
    let Value::Object(mut m) = v else {
        return Err((
            None,
            CmdError::Generic("QMP input must be a JSON object".into()),
        ));
    };
    let id = m.remove("id");
    let g = |d: String| (id.clone(), CmdError::Generic(d));
    let command = match m.remove("execute").or_else(|| m.remove("exec-oob")) {
        None => return Err(g("QMP input lacks member 'execute'".into())),
        Some(Value::String(s)) => s,
        Some(_) => return Err(g("QMP input member 'execute' must be a string".into())),
    };
    let args = match m.remove("arguments") {
        None => Map::new(),
        Some(Value::Object(a)) => a,
        Some(_) => return Err(g("QMP input member 'arguments' must be an object".into())),
    };
    if let Some(k) = m.keys().next() {
        return Err(g(format!("QMP input member '{k}' is unexpected")));
    }
    Ok(Request { id, command, args })
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
