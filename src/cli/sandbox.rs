//! `-sandbox`, `-runas`, `-chroot` and `-run-with`: how much the process may do once the VM
//! is built. The filters themselves live in `actors::sandbox`; the drop in `process.rs`.

use std::path::PathBuf;

use actors::sandbox::{Elevate, Policy};
use thiserror::Error;

use super::options::{Opts, OptsError};

/// Ways these options can be wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SandboxOptError {
    #[error(transparent)]
    Opts(#[from] OptsError),
    /// `-sandbox` with neither on nor off first.
    #[error("'{0}' is not on or off")]
    OnOff(String),
    /// `-runas`/`-run-with user=` naming no user of this host.
    #[error("user \"{0}\" not found")]
    NoUser(String),
    /// `-runas USER:GROUP` naming no group of this host.
    #[error("group \"{0}\" not found")]
    NoGroup(String),
    /// An empty directory for `-chroot`.
    #[error("chroot needs a directory")]
    EmptyChroot,
}

const ALLOW_DENY: &[(&str, bool)] = &[("allow", false), ("deny", true)];

/// `-sandbox on|off[,obsolete=allow|deny][,elevateprivileges=allow|deny|children]
/// [,spawn=allow|deny][,resourcecontrol=allow|deny]`, QEMU's keys and meanings.
pub fn parse_sandbox(arg: &str) -> Result<Policy, SandboxOptError> {
    let mut o = Opts::parse(arg, Some("enable"))?;
    let enabled = match o.required("enable")?.as_str() {
        "on" => true,
        "off" => false,
        other => return Err(SandboxOptError::OnOff(other.to_string())),
    };
    let deny_obsolete = o.choice("obsolete", ALLOW_DENY)?.unwrap_or(true);
    let elevate = o
        .choice(
            "elevateprivileges",
            &[
                ("allow", Elevate::Allow),
                ("deny", Elevate::Deny),
                ("children", Elevate::Children),
            ],
        )?
        .unwrap_or(Elevate::Allow);
    let deny_spawn = o.choice("spawn", ALLOW_DENY)?.unwrap_or(false);
    let deny_resource_control = o.choice("resourcecontrol", ALLOW_DENY)?.unwrap_or(false);
    o.finish()?;
    Ok(Policy {
        enabled,
        deny_obsolete,
        elevate,
        deny_spawn,
        deny_resource_control,
    })
}

/// Who `-runas` becomes: the user's uid and, unless a group is named, its primary group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// As written (`nobody`, `nobody:nogroup`).
    pub spec: String,
    pub user: String,
    pub uid: u32,
    pub gid: u32,
}

/// `-runas USER[:GROUP]` (a name or a number each), looked up in this host's databases.
pub fn parse_runas(arg: &str) -> Result<RunAs, SandboxOptError> {
    let (user, group) = match arg.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (arg, None),
    };
    let (uid, primary) =
        lookup_user(user).ok_or_else(|| SandboxOptError::NoUser(user.to_string()))?;
    let gid = match group {
        None => primary,
        Some(g) => lookup_group(g).ok_or_else(|| SandboxOptError::NoGroup(g.to_string()))?,
    };
    Ok(RunAs {
        spec: arg.to_string(),
        user: user.to_string(),
        uid,
        gid,
    })
}

/// `-chroot DIR`.
pub fn parse_chroot(arg: &str) -> Result<PathBuf, SandboxOptError> {
    if arg.is_empty() {
        return Err(SandboxOptError::EmptyChroot);
    }
    Ok(PathBuf::from(arg))
}

/// `-run-with [chroot=DIR][,user=USER]` (QEMU 9's spelling of `-chroot` and `-runas`).
pub fn parse_run_with(arg: &str) -> Result<(Option<PathBuf>, Option<RunAs>), SandboxOptError> {
    let mut o = Opts::parse(arg, None)?;
    let chroot = o.str("chroot").map(|d| parse_chroot(&d)).transpose()?;
    let user = o.str("user").map(|u| parse_runas(&u)).transpose()?;
    o.finish()?;
    Ok((chroot, user))
}

/// (uid, primary gid) of `name` (or of a numeric uid, whose group is itself if unknown).
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam takes a NUL-terminated name and returns static storage or null; we
    // copy the two numbers out at once (the CLI runs before any other thread).
    let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
    if !pw.is_null() {
        // SAFETY: pw is a valid passwd record.
        return Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) });
    }
    let uid: u32 = name.parse().ok()?;
    // SAFETY: as above, by number.
    let pw = unsafe { libc::getpwuid(uid) };
    if pw.is_null() {
        Some((uid, uid))
    } else {
        // SAFETY: pw is a valid passwd record.
        Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
    }
}

fn lookup_group(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam takes a NUL-terminated name and returns static storage or null.
    let gr = unsafe { libc::getgrnam(cname.as_ptr()) };
    if !gr.is_null() {
        // SAFETY: gr is a valid group record.
        return Some(unsafe { (*gr).gr_gid });
    }
    name.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libvirts_sandbox_line_is_taken_with_qemus_meanings() {
        let p = parse_sandbox(
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        )
        .unwrap();
        assert_eq!(
            p,
            Policy {
                enabled: true,
                deny_obsolete: true,
                elevate: Elevate::Deny,
                deny_spawn: true,
                deny_resource_control: true,
            }
        );
        assert_eq!(parse_sandbox("on").unwrap(), Policy::default());
        assert!(!parse_sandbox("off").unwrap().enabled);
        let p = parse_sandbox("on,obsolete=allow,elevateprivileges=children").unwrap();
        assert!(!p.deny_obsolete && p.elevate == Elevate::Children);
    }

    #[test]
    fn a_wrong_sandbox_value_is_named() {
        assert_eq!(
            parse_sandbox("maybe").unwrap_err().to_string(),
            "'maybe' is not on or off"
        );
        assert!(parse_sandbox("on,spawn=sometimes")
            .unwrap_err()
            .to_string()
            .contains("sometimes"));
        assert!(parse_sandbox("on,colour=blue").is_err());
    }

    #[test]
    fn runas_finds_users_and_groups_by_name_or_number() {
        let r = parse_runas("root").unwrap();
        assert_eq!((r.uid, r.gid), (0, 0));
        let r = parse_runas("0:0").unwrap();
        assert_eq!((r.uid, r.gid), (0, 0));
        assert_eq!(
            parse_runas("no-such-user-here").unwrap_err().to_string(),
            "user \"no-such-user-here\" not found"
        );
        assert_eq!(
            parse_runas("root:no-such-group-here")
                .unwrap_err()
                .to_string(),
            "group \"no-such-group-here\" not found"
        );
    }

    #[test]
    fn run_with_takes_chroot_and_user() {
        let (c, u) = parse_run_with("chroot=/tmp,user=root").unwrap();
        assert_eq!(c, Some(PathBuf::from("/tmp")));
        assert_eq!(u.unwrap().uid, 0);
        assert!(parse_run_with("async-teardown=on").is_err());
    }
}
