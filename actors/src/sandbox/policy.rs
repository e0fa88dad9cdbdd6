//! What `-sandbox` asked for: QEMU's switches, with QEMU's meanings, over troupe's per-kind
//! filters. Unlike QEMU, troupe is filtered unless told `-sandbox off`.

/// `elevateprivileges=`: may a thread change its credentials (the set*id calls)?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elevate {
    /// Allowed (QEMU's default).
    Allow,
    /// Forbidden: a call kills the process.
    Deny,
    /// Forbidden, and children cannot gain privileges either (no_new_privs, which troupe
    /// always sets as a filter needs it).
    Children,
}

/// The sandbox as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Filters installed at all (`-sandbox on`, the default; `off` turns them off).
    pub enabled: bool,
    /// `obsolete=deny` (the default): obsolete system calls kill the process.
    pub deny_obsolete: bool,
    pub elevate: Elevate,
    /// `spawn=deny`: no fork, vfork or execve (tap scripts and `exec:` migration are refused
    /// with an error instead).
    pub deny_spawn: bool,
    /// `resourcecontrol=deny`: scheduler priority and affinity calls fail with EPERM.
    pub deny_resource_control: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            enabled: true,
            deny_obsolete: true,
            elevate: Elevate::Allow,
            deny_spawn: false,
            deny_resource_control: false,
        }
    }
}

impl Policy {
    /// No filters at all (`-sandbox off`, and every library user that does not configure
    /// a sandbox).
    pub fn off() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }
}
