//! A QMP session for tests that also watch events: it answers commands and keeps every
//! event it reads on the way.

use serde_json::{json, Value};

use super::Qmp;

/// A QMP session that keeps the events it reads.
pub struct Session {
    pub qmp: Qmp,
    /// Every event read so far, in order.
    pub events: Vec<Value>,
}

impl Session {
    pub fn open(port: u16) -> Self {
        let mut qmp = Qmp::open(port);
        assert_eq!(
            qmp.ask(r#"{"execute":"qmp_capabilities"}"#),
            json!({"return": {}})
        );
        Self {
            qmp,
            events: Vec::new(),
        }
    }

    pub fn ask(&mut self, cmd: &str, args: Value) -> Value {
        let line = json!({"execute": cmd, "arguments": args}).to_string();
        self.qmp.send(line.as_bytes());
        loop {
            let v: Value = serde_json::from_str(&self.qmp.line()).unwrap();
            if v.get("event").is_some() {
                self.events.push(v);
            } else {
                return v;
            }
        }
    }

    pub fn ok(&mut self, cmd: &str, args: Value) -> Value {
        let r = self.ask(cmd, args.clone());
        assert!(r.get("return").is_some(), "{cmd} {args}: {r}");
        r["return"].clone()
    }

    pub fn error(&mut self, cmd: &str, args: Value) -> String {
        let r = self.ask(cmd, args.clone());
        r["error"]["desc"]
            .as_str()
            .unwrap_or_else(|| panic!("{cmd} {args} should fail: {r}"))
            .to_string()
    }

    pub fn hmp(&mut self, line: &str) -> String {
        self.ok("human-monitor-command", json!({"command-line": line}))
            .as_str()
            .unwrap()
            .to_string()
    }
}
