//! Live migration: the supervisor moves a running VM to another troupe process (or to a
//! file) and takes one over.
//!
//! The source runs on an actor thread of its own ([`source`]): `setup` (connect, turn
//! dirty logging on), `active` (pre-copy passes over guest RAM while the guest runs, zero
//! pages as a marker), then `device` (the supervisor pauses every vCPU and actor and
//! hands over their saved state; the last dirty pages and every section follow) and
//! `completed` once the destination answers that it took over (or the stream is closed,
//! for one-way transports). Anything else ends `failed` or `cancelled` with the source
//! resumed as it was. The destination ([`dest`]) reads the stream into guest RAM, checks
//! the machines match, has the supervisor restore every part and resumes.
//!
//! What the monitor sees (parameters, capabilities, progress) is [`Migration`], shared
//! by the supervisor and the stream thread.

pub mod dest;
pub mod source;
pub mod stream;
pub mod transport;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};

/// Memory a device owns outside guest RAM (the VGA's video memory), which travels with the
/// machine like RAM does.
pub trait DeviceRam: Send + Sync {
    /// Its name in the stream (`vga.vram`).
    fn name(&self) -> String;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copy `buf.len()` bytes from `offset`.
    fn read(&self, offset: usize, buf: &mut [u8]);
    /// Store `data` at `offset`.
    fn write(&self, offset: usize, data: &[u8]);
}

/// QEMU's migration states that troupe reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    None,
    Setup,
    Active,
    Device,
    Completed,
    Failed,
    Cancelling,
    Cancelled,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Setup => "setup",
            Self::Active => "active",
            Self::Device => "device",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
        }
    }

    /// A migration in this state is still going.
    pub fn running(self) -> bool {
        matches!(
            self,
            Self::Setup | Self::Active | Self::Device | Self::Cancelling
        )
    }
}

/// Tunables (`migrate_set_parameter`), with QEMU 7.2's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Parameters {
    /// Bytes per second during pre-copy (the switch-over itself is not limited).
    pub max_bandwidth: u64,
    /// The longest pause (ms) the switch-over may take.
    pub downtime_limit: u64,
    pub multifd_channels: u64,
    /// auto-converge: first throttle, then the increment (percent).
    pub cpu_throttle_initial: u64,
    pub cpu_throttle_increment: u64,
    pub max_cpu_throttle: u64,
    pub announce_initial: u64,
    pub announce_max: u64,
    pub announce_rounds: u64,
    pub announce_step: u64,
}

impl Default for Parameters {
    fn default() -> Self {
        Self {
            max_bandwidth: 128 << 20,
            downtime_limit: 300,
            multifd_channels: 2,
            cpu_throttle_initial: 20,
            cpu_throttle_increment: 10,
            max_cpu_throttle: 99,
            announce_initial: 50,
            announce_max: 550,
            announce_rounds: 5,
            announce_step: 100,
        }
    }
}

/// The parameters troupe honours, by QEMU's names.
const PARAM_NAMES: &[&str] = &[
    "announce-initial",
    "announce-max",
    "announce-rounds",
    "announce-step",
    "cpu-throttle-initial",
    "cpu-throttle-increment",
    "max-cpu-throttle",
    "max-bandwidth",
    "downtime-limit",
    "multifd-channels",
];

/// QEMU 7.2's `info migrate_parameters` lines in order: a parameter troupe honours (its
/// value and unit) or one it lacks (fixed at QEMU's default, which it shows).
const HMP_PARAMS: &[(&str, Option<&str>)] = &[
    ("announce-initial", Some(" ms")),
    ("announce-max", Some(" ms")),
    ("announce-rounds", Some("")),
    ("announce-step", Some(" ms")),
    ("compress-level", None),
    ("compress-threads", None),
    ("compress-wait-thread", None),
    ("decompress-threads", None),
    ("throttle-trigger-threshold", None),
    ("cpu-throttle-initial", Some("")),
    ("cpu-throttle-increment", Some("")),
    ("cpu-throttle-tailslow", None),
    ("max-cpu-throttle", Some("")),
    ("tls-creds", None),
    ("tls-hostname", None),
    ("max-bandwidth", Some(" bytes/second")),
    ("downtime-limit", Some(" ms")),
    ("x-checkpoint-delay", None),
    ("block-incremental", None),
    ("multifd-channels", Some("")),
    ("multifd-compression", None),
    ("xbzrle-cache-size", None),
    ("max-postcopy-bandwidth", None),
    ("tls-authz", None),
];

/// Parameters troupe lacks: QEMU's default as QMP shows it, and as HMP shows it.
const FIXED_PARAMS: &[(&str, &str, &str)] = &[
    ("compress-level", "1", "1"),
    ("compress-threads", "8", "8"),
    ("compress-wait-thread", "true", "on"),
    ("decompress-threads", "2", "2"),
    ("throttle-trigger-threshold", "50", "50"),
    ("cpu-throttle-tailslow", "false", "off"),
    ("tls-creds", "\"\"", "''"),
    ("tls-hostname", "\"\"", "''"),
    ("x-checkpoint-delay", "20000", "20000 ms"),
    ("block-incremental", "false", "off"),
    ("multifd-compression", "\"none\"", "none"),
    ("multifd-zlib-level", "1", ""),
    ("multifd-zstd-level", "1", ""),
    ("xbzrle-cache-size", "67108864", "67108864 bytes"),
    ("max-postcopy-bandwidth", "0", "0"),
    ("tls-authz", "\"\"", "''"),
];

/// What went wrong setting a parameter or capability (QEMU's wording).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingError {
    #[error("Parameter '{0}' is unexpected")]
    UnknownParameter(String),
    #[error("Parameter '{name}' expects {what}")]
    BadValue { name: String, what: &'static str },
    #[error("Capability '{0}' is unknown")]
    UnknownCapability(String),
    #[error("troupe does not implement migration capability '{0}'")]
    Unsupported(String),
    #[error(
        "troupe does not implement migration parameter '{0}' (only its default value is accepted)"
    )]
    UnsupportedParameter(String),
    #[error("There's a migration process in progress")]
    Busy,
}

impl Parameters {
    fn get(&self, name: &str) -> Option<u64> {
        Some(match name {
            "announce-initial" => self.announce_initial,
            "announce-max" => self.announce_max,
            "announce-rounds" => self.announce_rounds,
            "announce-step" => self.announce_step,
            "cpu-throttle-initial" => self.cpu_throttle_initial,
            "cpu-throttle-increment" => self.cpu_throttle_increment,
            "max-cpu-throttle" => self.max_cpu_throttle,
            "max-bandwidth" => self.max_bandwidth,
            "downtime-limit" => self.downtime_limit,
            "multifd-channels" => self.multifd_channels,
            _ => return None,
        })
    }

    /// `query-migrate-parameters`.
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for n in PARAM_NAMES {
            m.insert(n.to_string(), json!(self.get(n)));
        }
        for (n, qmp, _) in FIXED_PARAMS {
            if let Ok(v) = serde_json::from_str(qmp) {
                m.insert(n.to_string(), v);
            }
        }
        Value::Object(m)
    }

    /// Set one parameter from its QMP value (numbers; HMP passes sizes already parsed).
    pub fn set(&mut self, name: &str, v: &Value) -> Result<(), SettingError> {
        let bad = |what| SettingError::BadValue {
            name: name.to_string(),
            what,
        };
        // QEMU names the parameter with underscores in its range errors.
        let range = |what| SettingError::BadValue {
            name: name.replace('-', "_"),
            what,
        };
        let n = v.as_u64().ok_or_else(|| bad("uint64"))?;
        let slot = match name {
            "announce-initial" => &mut self.announce_initial,
            "announce-max" => &mut self.announce_max,
            "announce-rounds" => &mut self.announce_rounds,
            "announce-step" => &mut self.announce_step,
            "cpu-throttle-initial" if (1..=99).contains(&n) => &mut self.cpu_throttle_initial,
            "cpu-throttle-increment" if (1..=99).contains(&n) => &mut self.cpu_throttle_increment,
            "max-cpu-throttle" if (1..=99).contains(&n) => &mut self.max_cpu_throttle,
            "cpu-throttle-initial" | "cpu-throttle-increment" | "max-cpu-throttle" => {
                return Err(range("a value between 1 and 99"))
            }
            "max-bandwidth" => &mut self.max_bandwidth,
            "downtime-limit" if n <= 2_000_000 => &mut self.downtime_limit,
            "downtime-limit" => {
                return Err(range("an integer in the range of 0 to (2000 * 1000) ms"))
            }
            "multifd-channels" if (1..=255).contains(&n) => &mut self.multifd_channels,
            "multifd-channels" => return Err(range("a value between 1 and 255")),
            _ => return Err(SettingError::UnknownParameter(name.to_string())),
        };
        *slot = n;
        Ok(())
    }

    /// Set one parameter from QMP: troupe's own, or one it lacks set to its default.
    pub fn set_any(&mut self, name: &str, v: &Value) -> Result<(), SettingError> {
        if let Some((_, default, _)) = FIXED_PARAMS.iter().find(|(n, ..)| *n == name) {
            let same = serde_json::from_str::<Value>(default).is_ok_and(|d| &d == v);
            return if same {
                Ok(())
            } else {
                Err(SettingError::UnsupportedParameter(name.to_string()))
            };
        }
        self.set(name, v)
    }
}

/// Capabilities (`migrate_set_capability`) troupe has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Send `MIGRATION` and `MIGRATION_PASS` events.
    pub events: bool,
    /// Slow the vCPUs down when pre-copy does not converge.
    pub auto_converge: bool,
    /// Several connections for RAM.
    pub multifd: bool,
}

/// QEMU 7.2's capabilities, in its order.
const ALL_CAPS: &[&str] = &[
    "xbzrle",
    "rdma-pin-all",
    "auto-converge",
    "zero-blocks",
    "compress",
    "events",
    "postcopy-ram",
    "x-colo",
    "release-ram",
    "block",
    "return-path",
    "pause-before-switchover",
    "multifd",
    "dirty-bitmaps",
    "postcopy-blocktime",
    "late-block-activate",
    "x-ignore-shared",
    "validate-uuid",
    "background-snapshot",
    "zero-copy-send",
    "postcopy-preempt",
];

impl Capabilities {
    /// `query-migrate-capabilities`.
    pub fn get(&self, name: &str) -> bool {
        match name {
            "events" => self.events,
            "auto-converge" => self.auto_converge,
            "multifd" => self.multifd,
            _ => false,
        }
    }

    /// `query-migrate-capabilities`: every capability QEMU has, troupe's set or not.
    pub fn to_json(&self) -> Value {
        Value::Array(
            ALL_CAPS
                .iter()
                .map(|c| json!({"capability": c, "state": self.get(c)}))
                .collect(),
        )
    }

    /// Turn a capability on or off; one troupe lacks can only be turned off.
    pub fn set(&mut self, name: &str, on: bool) -> Result<(), SettingError> {
        match name {
            "events" => self.events = on,
            c if ALL_CAPS.contains(&c) => {
                if on {
                    return Err(SettingError::Unsupported(c.to_string()));
                }
            }
            _ => return Err(SettingError::UnknownCapability(name.to_string())),
        }
        Ok(())
    }
}

/// Progress of the current or last migration, as `query-migrate` reports it.
#[derive(Debug, Clone)]
pub struct Progress {
    pub status: Status,
    pub started: Option<Instant>,
    /// Set once it ended (completed, failed, cancelled).
    pub total_time_ms: Option<u64>,
    pub setup_time_ms: u64,
    /// Measured once the VM was paused for the switch-over.
    pub downtime_ms: Option<u64>,
    pub expected_downtime_ms: u64,
    /// Bytes put on the stream (all of it).
    pub transferred: u64,
    /// Bytes of guest RAM still dirty (to send).
    pub remaining: u64,
    pub total: u64,
    /// Zero pages sent as a marker.
    pub duplicate: u64,
    /// Whole pages sent.
    pub normal: u64,
    /// Pages dirtied per second, over the last pass.
    pub dirty_pages_rate: u64,
    /// Completed passes over the dirty pages (QEMU's dirty-sync-count).
    pub passes: u64,
    /// Megabits per second, over the last pass.
    pub mbps: f64,
    pub pages_per_second: u64,
    pub precopy_bytes: u64,
    pub downtime_bytes: u64,
    pub cpu_throttle: u64,
    pub error: Option<String>,
    /// This side is the destination.
    pub incoming: bool,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            status: Status::None,
            started: None,
            total_time_ms: None,
            setup_time_ms: 0,
            downtime_ms: None,
            expected_downtime_ms: 0,
            transferred: 0,
            remaining: 0,
            total: 0,
            duplicate: 0,
            normal: 0,
            dirty_pages_rate: 0,
            passes: 0,
            mbps: 0.0,
            pages_per_second: 0,
            precopy_bytes: 0,
            downtime_bytes: 0,
            cpu_throttle: 0,
            error: None,
            incoming: false,
        }
    }
}

impl Progress {
    fn elapsed_ms(&self) -> u64 {
        self.total_time_ms.unwrap_or_else(|| {
            self.started
                .map(|t| t.elapsed().as_millis() as u64)
                .unwrap_or(0)
        })
    }

    /// `query-migrate`'s answer.
    pub fn to_json(&self, blocked: bool) -> Value {
        let mut m = serde_json::Map::new();
        if self.status == Status::None {
            m.insert("blocked".into(), json!(blocked));
            return Value::Object(m);
        }
        m.insert("status".into(), json!(self.status.name()));
        m.insert("blocked".into(), json!(blocked));
        if self.status == Status::Setup {
            return Value::Object(m);
        }
        let page = stream::PAGE as u64;
        m.insert(
            "ram".into(),
            json!({
                "transferred": self.transferred,
                "remaining": self.remaining,
                "total": self.total,
                "duplicate": self.duplicate,
                "skipped": 0,
                "normal": self.normal,
                "normal-bytes": self.normal * page,
                "dirty-pages-rate": self.dirty_pages_rate,
                "mbps": self.mbps,
                "dirty-sync-count": self.passes,
                "postcopy-requests": 0,
                "page-size": page,
                "multifd-bytes": 0,
                "pages-per-second": self.pages_per_second,
                "precopy-bytes": self.precopy_bytes,
                "downtime-bytes": self.downtime_bytes,
                "postcopy-bytes": 0,
                "dirty-sync-missed-zero-copy": 0,
            }),
        );
        m.insert("total-time".into(), json!(self.elapsed_ms()));
        m.insert("setup-time".into(), json!(self.setup_time_ms));
        match self.downtime_ms {
            Some(d) if self.status == Status::Completed => {
                m.insert("downtime".into(), json!(d));
            }
            _ => {
                m.insert("expected-downtime".into(), json!(self.expected_downtime_ms));
            }
        }
        if self.cpu_throttle > 0 {
            m.insert("cpu-throttle-percentage".into(), json!(self.cpu_throttle));
        }
        if let Some(e) = &self.error {
            m.insert("error-desc".into(), json!(e));
        }
        Value::Object(m)
    }
}

/// What the supervisor and the stream thread share about migration.
#[derive(Debug, Default)]
pub struct Migration {
    pub params: Mutex<Parameters>,
    pub caps: Mutex<Capabilities>,
    pub progress: Mutex<Progress>,
    /// Set by `migrate_cancel`; the stream thread checks it between frames.
    pub cancel: AtomicBool,
    /// Cuts the outgoing transport so a blocked write returns at once.
    pub cutter: Mutex<Option<transport::Cutter>>,
    /// Where a destination waits for its source (`tcp:127.0.0.1:4444`).
    pub listening: Mutex<Option<String>>,
}

pub type SharedMigration = Arc<Migration>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Migration {
    pub fn progress(&self) -> Progress {
        lock(&self.progress).clone()
    }
    pub fn params(&self) -> Parameters {
        lock(&self.params).clone()
    }
    pub fn caps(&self) -> Capabilities {
        lock(&self.caps).clone()
    }
    pub fn with_progress<R>(&self, f: impl FnOnce(&mut Progress) -> R) -> R {
        f(&mut lock(&self.progress))
    }
    pub fn set_param(&self, name: &str, v: &Value) -> Result<(), SettingError> {
        lock(&self.params).set_any(name, v)
    }
    pub fn set_cap(&self, name: &str, on: bool) -> Result<(), SettingError> {
        if self.progress().status.running() {
            return Err(SettingError::Busy);
        }
        lock(&self.caps).set(name, on)
    }
    /// Ask a running migration to stop.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
        if let Some(c) = lock(&self.cutter).as_ref() {
            c.cut();
        }
    }
    pub fn listening(&self) -> Option<String> {
        lock(&self.listening).clone()
    }
    pub fn set_listening(&self, at: Option<String>) {
        *lock(&self.listening) = at;
    }
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}

/// `info migrate` text (QEMU 7.2's layout). `listening`: where a destination waits.
pub fn hmp_info(p: &Progress, listening: Option<&str>) -> String {
    let mut out = String::from(
        "globals:\nstore-global-state: on\nonly-migratable: off\nsend-configuration: on\nsend-section-footer: on\ndecompress-error-check: on\nclear-bitmap-shift: 18\n",
    );
    let socket = |out: &mut String| {
        if let Some(a) = listening {
            out.push_str(&format!("socket address: [\n\t{a}\n]\n"));
        }
    };
    match p.status {
        Status::None => {
            socket(&mut out);
            return out;
        }
        Status::Failed => {
            out.push_str(&format!(
                "Migration status: failed ({})\ntotal time: 0 ms\n",
                p.error.as_deref().unwrap_or("unknown error")
            ));
            return out;
        }
        Status::Cancelled => {
            out.push_str("Migration status: cancelled\ntotal time: 0 ms\n");
            return out;
        }
        _ => {}
    }
    if p.incoming {
        out.push_str(&format!(
            "Migration status: {}\ntotal time: 0 ms\n",
            p.status.name()
        ));
        if p.status != Status::Completed {
            socket(&mut out);
        }
        return out;
    }
    out.push_str(&format!("Migration status: {}\n", p.status.name()));
    out.push_str(&format!("total time: {} ms\n", p.elapsed_ms()));
    match p.downtime_ms {
        Some(d) if p.status == Status::Completed => out.push_str(&format!("downtime: {d} ms\n")),
        _ => out.push_str(&format!(
            "expected downtime: {} ms\n",
            p.expected_downtime_ms
        )),
    }
    out.push_str(&format!("setup: {} ms\n", p.setup_time_ms));
    if p.status == Status::Setup {
        return out;
    }
    let kb = |b: u64| b >> 10;
    let page = stream::PAGE as u64;
    out.push_str(&format!(
        "transferred ram: {} kbytes\nthroughput: {:.2} mbps\nremaining ram: {} kbytes\ntotal ram: {} kbytes\nduplicate: {} pages\nskipped: 0 pages\nnormal: {} pages\nnormal bytes: {} kbytes\ndirty sync count: {}\npage size: {} kbytes\nmultifd bytes: 0 kbytes\npages-per-second: {}\n",
        kb(p.transferred),
        p.mbps,
        kb(p.remaining),
        kb(p.total),
        p.duplicate,
        p.normal,
        kb(p.normal * page),
        p.passes,
        page >> 10,
        p.pages_per_second,
    ));
    if p.status != Status::Completed && p.dirty_pages_rate > 0 {
        out.push_str(&format!("dirty pages rate: {} pages\n", p.dirty_pages_rate));
    }
    if p.cpu_throttle > 0 {
        out.push_str(&format!("cpu throttle percentage: {}\n", p.cpu_throttle));
    }
    out.push_str(&format!("precopy ram: {} kbytes\n", kb(p.precopy_bytes)));
    if p.status == Status::Completed {
        out.push_str(&format!("downtime ram: {} kbytes\n", kb(p.downtime_bytes)));
    }
    out
}

/// `info migrate_parameters` text.
pub fn hmp_parameters(p: &Parameters) -> String {
    let mut out = String::new();
    for (n, unit) in HMP_PARAMS {
        match unit {
            Some(unit) => out.push_str(&format!("{n}: {}{unit}\n", p.get(n).unwrap_or(0))),
            None => {
                let v = FIXED_PARAMS
                    .iter()
                    .find(|(f, ..)| f == n)
                    .map(|(_, _, h)| *h)
                    .unwrap_or_default();
                out.push_str(&format!("{n}: {v}\n"));
            }
        }
    }
    out
}

/// `info migrate_capabilities` text.
pub fn hmp_capabilities(c: &Capabilities) -> String {
    c.to_json()
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "{}: {}\n",
                e["capability"].as_str().unwrap_or_default(),
                if e["state"] == true { "on" } else { "off" }
            )
        })
        .collect()
}

/// A page of all zero bytes (fast: the compiler compares wide words).
pub(crate) fn is_zero(page: &[u8]) -> bool {
    let (head, body, tail) = {
        // SAFETY: any bit pattern is a valid u128; align_to keeps the bytes' bounds.
        unsafe { page.align_to::<u128>() }
    };
    head.iter().all(|b| *b == 0) && tail.iter().all(|b| *b == 0) && body.iter().all(|w| *w == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_and_capabilities_refuse_what_qemu_refuses() {
        let mut p = Parameters::default();
        p.set("max-bandwidth", &json!(1_000_000)).unwrap();
        assert_eq!(p.max_bandwidth, 1_000_000);
        assert_eq!(
            p.set("downtime-limit", &json!(3_000_000))
                .unwrap_err()
                .to_string(),
            "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms"
        );
        assert!(p.set("nosuch", &json!(1)).is_err());
        assert_eq!(p.to_json()["max-bandwidth"], 1_000_000);
        let mut c = Capabilities::default();
        c.set("events", true).unwrap();
        assert!(c.set("xbzrle", true).is_err());
        c.set("xbzrle", false).unwrap();
        assert!(c.set("nosuch", true).is_err());
        assert!(hmp_capabilities(&c).contains("\nevents: on\n"));
        assert!(hmp_capabilities(&c).starts_with("xbzrle: off\n"));
        let mut p = Parameters::default();
        p.set_any("tls-creds", &json!("")).unwrap();
        assert!(p.set_any("tls-creds", &json!("x")).is_err());
        let text = hmp_parameters(&p);
        assert!(text.contains("\nmax-bandwidth: 134217728 bytes/second\ndowntime-limit: 300 ms\n"));
        assert!(text.ends_with("tls-authz: ''\n"));
    }

    #[test]
    fn zero_pages_are_told_apart() {
        let mut page = vec![0u8; 4096];
        assert!(is_zero(&page));
        page[4095] = 1;
        assert!(!is_zero(&page));
        page[4095] = 0;
        page[1] = 1;
        assert!(!is_zero(&page[1..]));
    }
}
