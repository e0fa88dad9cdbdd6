//! QEMU's command line → one typed, validated [`VmConfig`].
//!
//! Data path: [`parse`] walks the arguments once, looking each option up in the option
//! table and handing its value to the module that owns it (`machine`, `chardev`, `drive`,
//! `netdev`, `device`, `display`, `general`), which returns a typed piece or a typed error.
//! Options QEMU merges (`-m`, `-smp`, `-machine`, `-boot`, `-name`, `-rtc`) are collected
//! first; listings (`help`, `?`, `-version`) end parsing at once with
//! [`Invocation::Print`]. [`State::finish`] then does what needs the whole command line:
//! QEMU's defaults (COM1, `-nographic`'s multiplexed stdio monitor, the e1000 on user
//! networking, the empty IDE CD-ROM, VGA), the creation-order work (IDE indexes, PCI slots,
//! MAC addresses), every cross-reference, and the file checks.
//!
//! Every error is one [`CliError`] whose `Display` is a single line naming the option as
//! written and why it is wrong (`-m 0: memory size must be greater than zero`). The reason
//! is part of that line and deliberately not also a `source()`, so it prints exactly once.

mod chardev;
mod device;
mod display;
mod drive;
mod exposure;
mod general;
mod help;
pub(crate) mod host;
pub mod hotplug;
mod machine;
pub mod netdev;
pub(crate) mod object;
pub(crate) mod options;
pub mod sandbox;
mod state;
mod table;

use thiserror::Error;

pub use chardev::ChardevError;
pub use device::DeviceError;
pub use display::DisplayError;
pub use drive::DriveError;
pub use general::GeneralError;
pub use host::{os_error_text, FileError, Host};
pub use machine::MachineError;
pub use netdev::NetdevError;
pub use object::ObjectError;
pub use options::OptsError;

pub use device::creatable as creatable_devices;
pub use machine::{pc_machine_types, DEFAULT_MACHINE, MAX_CPUS, NONE_MACHINE};

use crate::config::VmConfig;
use state::State;
use table::{OPTIONS, UNSUPPORTED};

/// What the command line asks troupe to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    /// Build and run this VM.
    Run(Box<VmConfig>),
    /// `-version`, `-h`/`--help`, or a `help`/`?` listing: print this to stdout, exit 0.
    Print(String),
}

/// A command line troupe refuses. `Display` is one line: `troupe: {error}` is what the
/// user should see.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CliError {
    /// An option neither troupe nor QEMU has.
    #[error("{0}: invalid option")]
    UnknownOption(String),
    /// A QEMU option troupe can't honour.
    #[error("{0}: not supported by troupe{1}")]
    UnsupportedOption(String, &'static str),
    /// An option given as the last word, without its value.
    #[error("{0}: requires an argument")]
    MissingArgument(String),
    /// An option (`at`, as written with its value) that is wrong for `reason`.
    #[error("{at}: {reason}")]
    Invalid {
        /// The option and its value as written, e.g. `-smp 8,maxcpus=4`.
        at: String,
        /// Why.
        reason: Reason,
    },
}

/// Why an option was refused, by the module that owns the option.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Reason {
    /// Option-string syntax.
    #[error(transparent)]
    Options(#[from] OptsError),
    /// `-m`, `-smp`, `-cpu`, `-machine`, `-accel`, `-boot`, `-vcpu-pin`, boot files.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// `-chardev`, `-serial`, `-monitor`, `-qmp`, `-mon`.
    #[error(transparent)]
    Chardev(#[from] ChardevError),
    /// `-drive`, `-hdX`, `-cdrom`, `-blockdev`.
    #[error(transparent)]
    Drive(#[from] DriveError),
    /// `-netdev`, `-nic`, `-net`.
    #[error(transparent)]
    Netdev(#[from] NetdevError),
    /// `-device`.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// `-vnc`, `-display`, `-vga`, `-k`.
    #[error(transparent)]
    Display(#[from] DisplayError),
    /// `-object`, `-audiodev`.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// `-name`, `-uuid`, `-rtc`, `-d`, `-incoming`, `-msg`.
    #[error(transparent)]
    General(#[from] GeneralError),
    /// `-sandbox`, `-runas`, `-chroot`, `-run-with`.
    #[error(transparent)]
    Sandbox(#[from] sandbox::SandboxOptError),
    /// Combinations of options.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file named on the command line.
    #[error(transparent)]
    File(#[from] FileError),
}

/// Rules that span several options.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// `-nographic` would put the console on stdio, which `-daemonize` closes.
    #[error("cannot be used with -daemonize")]
    NographicDaemonize,
    /// `-display curses` draws in the terminal, which `-daemonize` leaves.
    #[error("curses display cannot be used with -daemonize")]
    CursesDaemonize,
    /// `stdio` for a chardev while the curses display owns the terminal.
    #[error("the terminal is the curses display's: use a vc (the default) or another backend")]
    CursesStdio,
    /// A fifth `-serial`.
    #[error("too many serial ports (troupe has COM1..COM4)")]
    TooManySerials,
    /// `-dump-acpi` naming something that is not a directory.
    #[error("not a directory")]
    NotADirectory,
}

fn invalid(at: &str, reason: impl Into<Reason>) -> CliError {
    CliError::Invalid {
        at: at.to_string(),
        reason: reason.into(),
    }
}

/// Every option troupe takes (name without the dash), and whether it takes a value.
pub fn options() -> impl Iterator<Item = (&'static str, bool)> {
    OPTIONS.iter().map(|(n, _, arg)| (*n, *arg))
}

/// Parse `args` (without argv\[0\]) against the machine we run on.
pub fn parse(args: &[String]) -> Result<Invocation, CliError> {
    parse_with(args, &Host::detect())
}

/// [`parse`] against given host facts (tests, or a caller that already detected them).
pub fn parse_with(args: &[String], host: &Host) -> Result<Invocation, CliError> {
    let mut st = State::default();
    let mut i = 0;
    while i < args.len() {
        let word = &args[i];
        i += 1;
        if !word.starts_with('-') {
            st.image(word);
            continue;
        }
        let name = word.strip_prefix("--").unwrap_or(&word[1..]);
        let Some(&(_, opt, takes_arg)) = OPTIONS.iter().find(|(n, ..)| *n == name) else {
            if let Some((_, hint)) = UNSUPPORTED.iter().find(|(n, _)| *n == name) {
                return Err(CliError::UnsupportedOption(word.clone(), hint));
            }
            return Err(CliError::UnknownOption(word.clone()));
        };
        let arg = if takes_arg {
            let a = args
                .get(i)
                .ok_or_else(|| CliError::MissingArgument(word.clone()))?;
            i += 1;
            Some(a.as_str())
        } else {
            None
        };
        let at = match arg {
            Some(a) => format!("{word} {a}"),
            None => word.clone(),
        };
        if let Some(text) = st.option(opt, &at, arg.unwrap_or_default())? {
            return Ok(Invocation::Print(text));
        }
    }
    st.finish(host).map(|c| Invocation::Run(Box::new(c)))
}

#[cfg(test)]
mod tests;
