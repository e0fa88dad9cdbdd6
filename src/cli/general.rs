//! Options about the VM's identity and the process around it: `-name`, `-uuid`, `-rtc`,
//! `-d`, `-incoming`.

use thiserror::Error;

use super::chardev::{parse_port, split_host_port};
use super::options::{Opts, OptsError};
use crate::config::{RtcBase, RtcConfig};

/// Log items troupe maps onto its tracing.
const LOG_ITEMS: &[(&str, &str)] = &[
    (
        "guest_errors",
        "log when the guest OS does something invalid (eg accessing a non-existent register)",
    ),
    ("unimp", "log unimplemented functionality"),
    ("cpu_reset", "show CPU state before CPU resets"),
];

/// QEMU log items that only mean something for its TCG emulator or user mode.
const TCG_LOG_ITEMS: &[&str] = &[
    "out_asm", "in_asm", "op", "op_opt", "op_ind", "int", "exec", "cpu", "fpu", "mmu", "pcall",
    "page", "nochain", "plugin", "strace", "tid",
];

/// Ways these options can be wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GeneralError {
    /// A malformed option string or value.
    #[error(transparent)]
    Opts(#[from] OptsError),
    /// `-uuid` that isn't one.
    #[error("failed to parse UUID string '{0}': expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")]
    Uuid(String),
    /// `-rtc base=` that is neither utc, localtime nor a date.
    #[error(
        "invalid datetime format '{0}': valid formats are '2006-06-17T16:01:21' or '2006-06-17'"
    )]
    RtcDate(String),
    /// `-rtc` values troupe can't honour.
    #[error("{0} is not supported by troupe (its RTC follows the host clock)")]
    RtcUnsupported(String),
    /// `-d` naming an unknown item.
    #[error("unknown log item '{0}' (see -d help)")]
    LogItem(String),
    /// `-d` naming a TCG-only item.
    #[error("log item '{0}' only exists in QEMU's TCG emulator; troupe runs guests with KVM")]
    LogTcg(String),
    /// `-incoming` with a scheme troupe lacks.
    #[error("migration transport '{0}' is not supported by troupe (tcp:, unix:, exec:, fd:, file:, defer)")]
    IncomingScheme(String),
    /// `-overcommit cpu-pm=on`: troupe does not pass CPU power management through.
    #[error("{0}=on is not supported by troupe (only {0}=off)")]
    Overcommit(&'static str),
    /// `-msg guest-name=on`.
    #[error("guest-name=on is not supported by troupe")]
    MsgGuestName,
    /// `-incoming` that isn't a URI.
    #[error("invalid migration URI '{0}' (expected tcp:[HOST]:PORT, unix:PATH, exec:CMD, fd:N, file:PATH or defer)")]
    Incoming(String),
}

/// `-overcommit [mem-lock=on|off][,cpu-pm=on|off]`: whether to lock guest RAM (`None`:
/// not said). troupe never gives the guest the host CPUs' power management, which is what
/// `cpu-pm=off` asks (libvirt writes it); `cpu-pm=on` is refused.
pub fn parse_overcommit(mut opts: Opts) -> Result<Option<bool>, GeneralError> {
    let mem_lock = opts.flag("mem-lock")?;
    if opts.flag("cpu-pm")? == Some(true) {
        return Err(GeneralError::Overcommit("cpu-pm"));
    }
    opts.finish()?;
    Ok(mem_lock)
}

/// `-msg [timestamp=on|off][,guest-name=on|off]`: whether error messages start with an
/// ISO 8601 UTC timestamp (libvirt writes `-msg timestamp=on`). `guest-name=on` is refused.
pub fn parse_msg(mut opts: Opts) -> Result<bool, GeneralError> {
    let timestamp = opts.flag("timestamp")?.unwrap_or(false);
    if opts.flag("guest-name")? == Some(true) {
        return Err(GeneralError::MsgGuestName);
    }
    opts.finish()?;
    Ok(timestamp)
}

/// `-name`: (guest name, process name, debug-threads).
pub type NameParts = (Option<String>, Option<String>, bool);

/// `-name [guest=]NAME[,process=PNAME][,debug-threads=on|off]`.
pub fn parse_name(mut opts: Opts) -> Result<NameParts, GeneralError> {
    let guest = opts.str("guest");
    let process = opts.str("process");
    let debug_threads = opts.flag("debug-threads")?.unwrap_or(false);
    opts.finish()?;
    Ok((guest, process, debug_threads))
}

/// `-uuid`: 8-4-4-4-12 hex digits, returned in lower case.
pub fn parse_uuid(s: &str) -> Result<String, GeneralError> {
    let groups: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    let ok = groups.len() == 5
        && groups
            .iter()
            .zip(lens)
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(GeneralError::Uuid(s.to_string()))
    }
}

/// `-rtc [base=utc|localtime|DATE][,clock=host][,driftfix=none]`.
pub fn parse_rtc(mut opts: Opts) -> Result<RtcConfig, GeneralError> {
    let base = match opts.str("base").as_deref() {
        None | Some("utc") => RtcBase::Utc,
        Some("localtime") => RtcBase::LocalTime,
        Some(date) => RtcBase::Fixed(
            parse_datetime(date).ok_or_else(|| GeneralError::RtcDate(date.to_string()))?,
        ),
    };
    match opts.str("clock").as_deref() {
        None | Some("host") => {}
        Some(other) => return Err(GeneralError::RtcUnsupported(format!("clock={other}"))),
    }
    match opts.str("driftfix").as_deref() {
        None | Some("none") => {}
        Some(other) => return Err(GeneralError::RtcUnsupported(format!("driftfix={other}"))),
    }
    opts.finish()?;
    Ok(RtcConfig { base })
}

/// `YYYY-MM-DDTHH:MM:SS` or `YYYY-MM-DD`, read as UTC, to seconds since the epoch.
fn parse_datetime(s: &str) -> Option<i64> {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let num = |p: &str, len: usize| -> Option<i64> {
        if p.len() == len && p.chars().all(|c| c.is_ascii_digit()) {
            p.parse().ok()
        } else {
            None
        }
    };
    let mut d = date.split('-');
    let (year, month, day) = (num(d.next()?, 4)?, num(d.next()?, 2)?, num(d.next()?, 2)?);
    if d.next().is_some()
        || !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
    {
        return None;
    }
    let (h, m, sec) = match time {
        None => (0, 0, 0),
        Some(t) => {
            let mut t = t.split(':');
            let v = (num(t.next()?, 2)?, num(t.next()?, 2)?, num(t.next()?, 2)?);
            if t.next().is_some() || v.0 > 23 || v.1 > 59 || v.2 > 59 {
                return None;
            }
            v
        }
    };
    Some(days_from_civil(year, month, day) * 86400 + h * 3600 + m * 60 + sec)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `-d ITEM[,ITEM...]`. `Ok(None)` is `help`.
pub fn parse_log_items(arg: &str) -> Result<Option<Vec<String>>, GeneralError> {
    let mut items = Vec::new();
    for item in arg.split(',') {
        if item == "help" || item == "?" {
            return Ok(None);
        }
        if LOG_ITEMS.iter().any(|(n, _)| *n == item) {
            if !items.iter().any(|i| i == item) {
                items.push(item.to_string());
            }
        } else if TCG_LOG_ITEMS.contains(&item) || item.starts_with("trace:") {
            return Err(GeneralError::LogTcg(item.to_string()));
        } else {
            return Err(GeneralError::LogItem(item.to_string()));
        }
    }
    Ok(Some(items))
}

/// `-d help`.
pub fn log_help() -> String {
    let mut out = String::from("Log items (comma separated):\n");
    for (name, desc) in LOG_ITEMS {
        out.push_str(&format!("{name:<15} {desc}\n"));
    }
    out
}

/// `-incoming tcp:[HOST]:PORT|unix:PATH|exec:CMD|fd:N|file:PATH|defer`.
pub fn parse_incoming(uri: &str) -> Result<String, GeneralError> {
    let bad = || GeneralError::Incoming(uri.to_string());
    if uri == "defer" {
        return Ok(uri.to_string());
    }
    if let Some(addr) = uri.strip_prefix("tcp:") {
        let addr = addr.split(',').next().unwrap_or_default();
        let (_, port) = split_host_port(addr).ok_or_else(bad)?;
        parse_port(port).map_err(|_| bad())?;
        return Ok(uri.to_string());
    }
    if let Some(path) = uri.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(bad());
        }
        return Ok(uri.to_string());
    }
    if let Some(n) = uri.strip_prefix("fd:") {
        return n.parse::<u32>().map(|_| uri.to_string()).map_err(|_| bad());
    }
    for scheme in ["exec:", "file:"] {
        if let Some(rest) = uri.strip_prefix(scheme) {
            if rest.trim().is_empty() {
                return Err(bad());
            }
            return Ok(uri.to_string());
        }
    }
    match uri.split_once(':') {
        Some((scheme, _)) if ["rdma", "vsock", "x-rdma"].contains(&scheme) => {
            Err(GeneralError::IncomingScheme(scheme.to_string()))
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_parts() {
        let n =
            |s: &str| parse_name(Opts::parse(s, Some("guest")).unwrap()).map_err(|e| e.to_string());
        assert_eq!(n("vm1"), Ok((Some("vm1".into()), None, false)));
        assert_eq!(
            n("vm,,1,debug-threads=on,process=troupe-vm"),
            Ok((Some("vm,1".into()), Some("troupe-vm".into()), true))
        );
        assert_eq!(
            n("vm,debug-threads=maybe"),
            Err("parameter 'debug-threads' expects 'on' or 'off', not 'maybe'".into())
        );
        assert!(n("vm,bar=1")
            .unwrap_err()
            .starts_with("parameter 'bar' is not supported"));
    }

    #[test]
    fn uuids() {
        assert_eq!(
            parse_uuid("12345678-9ABC-def0-1234-56789abcdef0"),
            Ok("12345678-9abc-def0-1234-56789abcdef0".into())
        );
        for bad in [
            "foo",
            "",
            "12345678-9abc-def0-1234-56789abcdef",
            "12345678-9abc-def0-1234-56789abcdefg",
            "123456789abcdef0123456789abcdef0",
        ] {
            assert_eq!(
                parse_uuid(bad).unwrap_err().to_string(),
                format!("failed to parse UUID string '{bad}': expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")
            );
        }
    }

    fn rtc(s: &str) -> Result<RtcBase, String> {
        parse_rtc(Opts::parse(s, None).unwrap())
            .map(|r| r.base)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn rtc_bases() {
        assert_eq!(rtc(""), Ok(RtcBase::Utc));
        assert_eq!(rtc("base=utc,clock=host,driftfix=none"), Ok(RtcBase::Utc));
        assert_eq!(rtc("base=localtime"), Ok(RtcBase::LocalTime));
        assert_eq!(
            rtc("base=2006-06-17T16:01:21"),
            Ok(RtcBase::Fixed(1_150_560_081))
        );
        assert_eq!(rtc("base=2006-06-17"), Ok(RtcBase::Fixed(1_150_502_400)));
        assert_eq!(rtc("base=1970-01-01"), Ok(RtcBase::Fixed(0)));
        assert_eq!(rtc("base=2000-02-29"), Ok(RtcBase::Fixed(951_782_400)));
        assert_eq!(rtc("base=1969-12-31T23:59:59"), Ok(RtcBase::Fixed(-1)));
    }

    #[test]
    fn rtc_errors() {
        let bad = |d: &str| {
            Err(format!("invalid datetime format '{d}': valid formats are '2006-06-17T16:01:21' or '2006-06-17'"))
        };
        for d in [
            "foo",
            "2006-13-01",
            "2006-02-29",
            "2006-06-17T24:00:00",
            "2006-6-17",
            "2006-06-17T16:01",
            "2006-06-17T16:01:21Z",
        ] {
            assert_eq!(rtc(&format!("base={d}")), bad(d));
        }
        assert_eq!(
            rtc("clock=vm"),
            Err("clock=vm is not supported by troupe (its RTC follows the host clock)".into())
        );
        assert_eq!(
            rtc("driftfix=slew"),
            Err("driftfix=slew is not supported by troupe (its RTC follows the host clock)".into())
        );
    }

    #[test]
    fn log_items() {
        assert_eq!(
            parse_log_items("guest_errors,unimp,guest_errors"),
            Ok(Some(vec!["guest_errors".into(), "unimp".into()]))
        );
        assert_eq!(parse_log_items("help"), Ok(None));
        assert_eq!(
            parse_log_items("in_asm").unwrap_err().to_string(),
            "log item 'in_asm' only exists in QEMU's TCG emulator; troupe runs guests with KVM"
        );
        assert_eq!(
            parse_log_items("foo").unwrap_err().to_string(),
            "unknown log item 'foo' (see -d help)"
        );
        assert!(log_help().contains("guest_errors"));
    }

    #[test]
    fn incoming_uris() {
        assert_eq!(parse_incoming("tcp:0:4444"), Ok("tcp:0:4444".into()));
        assert_eq!(parse_incoming("tcp::4444"), Ok("tcp::4444".into()));
        assert_eq!(parse_incoming("unix:/tmp/mig"), Ok("unix:/tmp/mig".into()));
        assert_eq!(parse_incoming("defer"), Ok("defer".into()));
        assert_eq!(
            parse_incoming("exec:cat state"),
            Ok("exec:cat state".into())
        );
        assert_eq!(parse_incoming("fd:5"), Ok("fd:5".into()));
        assert_eq!(
            parse_incoming("rdma:1.2.3.4:5").unwrap_err().to_string(),
            "migration transport 'rdma' is not supported by troupe (tcp:, unix:, exec:, fd:, file:, defer)"
        );
        for bad in [
            "tcp:",
            "tcp:host",
            "tcp::99999",
            "foo",
            "unix:",
            "exec: ",
            "fd:x",
        ] {
            assert_eq!(
                parse_incoming(bad).unwrap_err().to_string(),
                format!(
                    "invalid migration URI '{bad}' (expected tcp:[HOST]:PORT, unix:PATH, exec:CMD, fd:N, file:PATH or defer)"
                )
            );
        }
    }
}
