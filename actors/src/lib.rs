//! troupe's actors: how things run and talk.
//!
//! - [`runtime`]: mailboxes, handles, request/reply, supervised spawning, the registry.
//! - [`bus`]: PIO/MMIO address maps that vCPU exits dispatch through.
//! - [`vcpu`]: pinned vCPU threads running `KVM_RUN`, and their saveable state.
//! - [`kvm_state`]: the VM-wide KVM state (PICs, IOAPIC, PIT, kvmclock) as sections.
//! - [`events`]: what devices and vCPUs tell the supervisor.
//! - [`supervisor`]: the VM lifecycle.
//! - [`chardev`]: character backends (stdio, files, sockets, pty).
//! - [`host`]: actors hosting `devices` models (serial, ...).
//! - [`display`]: the console surface, its dirty tracking, screendump, input events.
//! - [`vnc`]: the VNC (RFB) server.

pub mod block;
pub mod bus;
pub mod chardev;
pub mod coalesced;
pub mod display;
pub mod events;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod host;
pub mod irq;
pub mod kvm_state;
pub mod migration;
pub mod monitor;
pub mod net;
pub mod runtime;
pub mod sandbox;
pub mod supervisor;
pub mod vcpu;
pub mod virtio;
pub mod vnc;

pub use vcpu::thread_allowed_cores as allowed_cores;

/// Print a line for the user on stderr. Never panics: stderr may be a closed pipe, and a
/// failed diagnostic must not take an actor (or the VM) down with it. Under `-msg
/// timestamp=on` the line starts with the time (see [`set_message_timestamps`]).
#[macro_export]
macro_rules! report {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        // One write(2) for the whole line: stderr is unbuffered, and a line written in
        // pieces can be split by a line another thread (or the SIGSYS handler) writes.
        let line = format!("{}{}\n", $crate::message_prefix(), format_args!($($arg)*));
        let _ = std::io::stderr().write_all(line.as_bytes());
    }};
}

/// `-msg timestamp=on`: set once at start-up, before any actor runs (QEMU's
/// `message_with_timestamp`).
static MESSAGE_TIMESTAMPS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Start every [`report!`] line with an ISO 8601 UTC timestamp (`-msg timestamp=on`).
pub fn set_message_timestamps(on: bool) {
    MESSAGE_TIMESTAMPS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// What [`report!`] puts before a line: nothing, or QEMU's `2026-12-07T11:14:43.981234Z `.
pub fn message_prefix() -> String {
    if !MESSAGE_TIMESTAMPS.load(std::sync::atomic::Ordering::Relaxed) {
        return String::new();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{} ", iso8601_utc(now.as_secs(), now.subsec_micros()))
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SS.uuuuuuZ` (proleptic Gregorian calendar;
/// days to civil date as in Howard Hinnant's `civil_from_days`).
fn iso8601_utc(secs: u64, micros: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod message_tests {
    #[test]
    fn timestamps_are_iso8601_utc() {
        assert_eq!(super::iso8601_utc(0, 0), "1970-01-01T00:00:00.000000Z");
        // 2026-12-07T11:14:43Z, and a leap day.
        assert_eq!(
            super::iso8601_utc(1_796_642_083, 981_234),
            "2026-12-07T11:14:43.981234Z"
        );
        assert_eq!(
            super::iso8601_utc(951_782_400, 5),
            "2000-02-29T00:00:00.000005Z"
        );
    }
}
