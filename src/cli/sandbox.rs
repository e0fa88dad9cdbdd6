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
    // The reentrant lookups: the unit tests (and any thread) may look up users at once.
    let by_name = passwd(|pw, buf, out| {
        // SAFETY: every pointer is to storage we own, sized as passed.
        unsafe { libc::getpwnam_r(cname.as_ptr(), pw, buf.as_mut_ptr(), buf.len(), out) }
    });
    if by_name.is_some() {
        return by_name;
    }
    let uid: u32 = name.parse().ok()?;
    let by_uid = passwd(|pw, buf, out| {
        // SAFETY: as above, by number.
        unsafe { libc::getpwuid_r(uid, pw, buf.as_mut_ptr(), buf.len(), out) }
    });
    Some(by_uid.unwrap_or((uid, uid)))
}

/// Run a `getpw*_r` call; (uid, gid) of the record it found.
fn passwd(
    call: impl Fn(*mut libc::passwd, &mut [libc::c_char], *mut *mut libc::passwd) -> i32,
) -> Option<(u32, u32)> {
    // SAFETY: passwd is plain data, filled by the call.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    if call(&mut pw, &mut buf, &mut out) != 0 || out.is_null() {
        return None;
    }
    Some((pw.pw_uid, pw.pw_gid))
}

fn lookup_group(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: group is plain data, filled by getgrnam_r from our buffer.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is to storage we own, sized as passed.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut gr,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        )
    };
    if rc == 0 && !out.is_null() {
        return Some(gr.gr_gid);
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
