//! The seccomp filters: which system calls each kind of thread may make, and QEMU's
//! `-sandbox` sets layered on top.
//!
//! A thread gets, in this order (each one stacked on what it inherited from the thread that
//! created it; the kernel applies the strictest answer of all):
//! 1. an errno layer: `resourcecontrol=deny` makes the scheduler calls fail with EPERM, and
//!    `spawn=deny` makes `clone3` fail with ENOSYS (its flags cannot be inspected, so glibc
//!    falls back to `clone`, whose flags can);
//! 2. a deny layer: QEMU's default set, and its obsolete, privileged and spawn sets as the
//!    policy says, trap (and so kill the process with a log line);
//! 3. the kind's allow-list: anything not on it traps. Threads that run other programs
//!    (tap scripts, `exec:` migration: the [`Profile::Helper`] kinds) and the thread that
//!    starts the others have no allow-list: a program they start inherits the filter, and
//!    a shell needs more than any list here would hold.
//!
//! The lists were found by running the test suite with `TROUPE_SECCOMP_LOG=1` (violations
//! allowed and logged by the kernel) and reading the audit lines; where in doubt a call is
//! allowed, since a missing one kills the VM.

use std::collections::BTreeMap;

use libc::c_long;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::policy::{Elevate, Policy};
use super::SandboxError;

/// The filter families thread kinds map to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Profile {
    /// `KVM_RUN` and the device models reached from exits.
    Vcpu,
    /// Device workers: virtio queue workers, the e1000 receiver, the display refresher,
    /// the INTx resample thread.
    Worker,
    /// Block engines: reads, writes, flushes, io_uring.
    Block,
    /// NIC backends on their own threads (slirp, socket): sockets of their own.
    Net,
    /// tokio's threads (VNC, monitors, chardevs, tap, migration pumps all run there).
    Runtime,
    /// Threads that may start programs (hot-plug helpers with tap scripts, `exec:`
    /// migration, the main thread with the down scripts at exit) and the thread that
    /// starts the others: the deny layer only.
    Helper,
}

impl Profile {
    /// The profile of a thread actor of `kind`. A kind not named here gets the helper
    /// profile, so a new kind is never broken by a list that does not know it.
    pub fn of(kind: &str) -> Self {
        match kind {
            "vcpu" => Self::Vcpu,
            "virtio-worker" | "e1000-rx" | "display" | "irq" => Self::Worker,
            "block" => Self::Block,
            "nic-backend" => Self::Net,
            "tokio" | "tokio-worker" | "tokio-blocking" => Self::Runtime,
            _ => Self::Helper,
        }
    }
}

/// Credentials `-runas` drops to: the only set*id calls the allow-lists take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn arch() -> TargetArch {
    TargetArch::x86_64
}

fn cond(arg: u8, op: SeccompCmpOp, v: u64) -> SeccompCondition {
    // The arguments are constants below the limit; the conditions cannot be invalid.
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, v).expect("valid seccomp condition")
}

fn rule(conds: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conds).expect("a rule with conditions")
}

fn add(r: &mut Rules, calls: &[c_long]) {
    for &c in calls {
        r.insert(c, vec![]);
    }
}

/// Every thread: memory, signals, futexes, time, its own descriptors, polling.
const BASE: &[c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_close,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_gettimeofday,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_restart_syscall,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_getrandom,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_select,
    libc::SYS_pselect6,
    libc::SYS_eventfd2,
    libc::SYS_prctl,
    libc::SYS_sched_getaffinity,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    // tty modes, FIONBIO, KVM and tap: the descriptors a thread holds decide what it can
    // reach; numbers are not checked.
    libc::SYS_ioctl,
    libc::SYS_membarrier,
    libc::SYS_getcpu,
    libc::SYS_sched_getparam,
    libc::SYS_sched_getscheduler,
    libc::SYS_getrusage,
    libc::SYS_uname,
    libc::SYS_sysinfo,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_openat,
    libc::SYS_readlink,
    libc::SYS_getdents64,
    libc::SYS_getcwd,
    libc::SYS_prlimit64,
];

/// Socket traffic on descriptors the thread already holds.
const SOCKET_IO: &[c_long] = &[
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
];

/// Making and accepting connections.
const SOCKET_MAKE: &[c_long] = &[
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_socketpair,
];

/// Files: images, snapshots, dumps, logs.
const FILES: &[c_long] = &[
    libc::SYS_open,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_sync_file_range,
    libc::SYS_fallocate,
    libc::SYS_ftruncate,
    libc::SYS_fadvise64,
    libc::SYS_flock,
    libc::SYS_statfs,
    libc::SYS_fstatfs,
    libc::SYS_copy_file_range,
    libc::SYS_sendfile,
    libc::SYS_io_uring_setup,
    libc::SYS_memfd_create,
];

/// The file system's names: creating, removing, renaming (snapshots, sockets, pid files).
const NAMES: &[c_long] = &[
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_access,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_readlinkat,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_umask,
    libc::SYS_chmod,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_utimensat,
    libc::SYS_inotify_init1,
    libc::SYS_inotify_add_watch,
    libc::SYS_inotify_rm_watch,
];

/// Starting threads (tokio's pool grows and shrinks) and installing their filters.
const THREADS: &[c_long] = &[
    libc::SYS_clone3,
    libc::SYS_seccomp,
    libc::SYS_sched_setaffinity,
    libc::SYS_tgkill,
    libc::SYS_getppid,
    libc::SYS_get_robust_list,
    libc::SYS_mlock,
    libc::SYS_munlock,
    libc::SYS_sched_setscheduler,
    libc::SYS_setpriority,
    libc::SYS_getpriority,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_kill,
];

/// `clone` only for threads (CLONE_THREAD set): a new process comes from the helpers.
fn clone_threads(r: &mut Rules) {
    let t = libc::CLONE_THREAD as u64;
    r.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(0, SeccompCmpOp::MaskedEq(t), t)])],
    );
}

/// `socket` for the families troupe uses: Unix, IPv4, IPv6, netlink (interface queries).
fn socket_families(r: &mut Rules) {
    let fams = [
        libc::AF_UNIX,
        libc::AF_INET,
        libc::AF_INET6,
        libc::AF_NETLINK,
    ];
    r.insert(
        libc::SYS_socket,
        fams.iter()
            .map(|&f| rule(vec![cond(0, SeccompCmpOp::Eq, f as u64)]))
            .collect(),
    );
}

/// The `-runas` drop: exactly these credentials, nothing else. glibc makes every thread
/// change its own credentials (it signals each one), so every list needs these.
fn runas(r: &mut Rules, ids: Option<Ids>) {
    let Some(Ids { uid, gid }) = ids else { return };
    let same = |v: u32| {
        vec![rule(vec![
            cond(0, SeccompCmpOp::Eq, u64::from(v)),
            cond(1, SeccompCmpOp::Eq, u64::from(v)),
            cond(2, SeccompCmpOp::Eq, u64::from(v)),
        ])]
    };
    r.insert(libc::SYS_setresuid, same(uid));
    r.insert(libc::SYS_setresgid, same(gid));
    r.insert(
        libc::SYS_setgroups,
        vec![rule(vec![cond(0, SeccompCmpOp::Le, 1)])],
    );
}

/// The allow-list of `profile` (None: the profile has none).
fn allow_list(profile: Profile, ids: Option<Ids>) -> Option<Rules> {
    let mut r = Rules::new();
    add(&mut r, BASE);
    match profile {
        Profile::Vcpu => {
            add(&mut r, SOCKET_IO);
            add(&mut r, &[libc::SYS_sched_setaffinity, libc::SYS_tgkill]);
        }
        Profile::Worker => {
            // A NIC's worker reconnects a `-netdev socket,connect=` backend itself; a
            // virtio-blk worker discards and zeroes with fallocate and flushes.
            add(&mut r, FILES);
            add(&mut r, SOCKET_IO);
            add(&mut r, SOCKET_MAKE);
            socket_families(&mut r);
            add(&mut r, &[libc::SYS_tgkill]);
        }
        Profile::Block => {
            add(&mut r, FILES);
            add(&mut r, &[libc::SYS_tgkill]);
        }
        Profile::Net => {
            add(&mut r, SOCKET_IO);
            add(&mut r, SOCKET_MAKE);
            socket_families(&mut r);
            add(&mut r, &[libc::SYS_tgkill, libc::SYS_stat, libc::SYS_open]);
        }
        Profile::Runtime => {
            add(&mut r, SOCKET_IO);
            add(&mut r, SOCKET_MAKE);
            socket_families(&mut r);
            add(&mut r, FILES);
            add(&mut r, NAMES);
            add(&mut r, THREADS);
            clone_threads(&mut r);
        }
        Profile::Helper => return None,
    }
    runas(&mut r, ids);
    Some(r)
}

/// QEMU's default set: never wanted by a VMM.
const DEFAULT_DENY: &[c_long] = &[
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_syslog,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_afs_syscall,
    libc::SYS_getpmsg,
    libc::SYS_putpmsg,
    libc::SYS_security,
    libc::SYS_tuxcall,
    libc::SYS_vserver,
    // troupe adds: kernel modules, tracing other processes, raw port access, the clock.
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_pivot_root,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_chroot,
];

/// QEMU's obsolete set (the x86_64 ones).
const OBSOLETE: &[c_long] = &[
    libc::SYS__sysctl,
    174, // create_module (libc has no constant for these three removed calls)
    177, // get_kernel_syms
    178, // query_module
    libc::SYS_sysfs,
    libc::SYS_uselib,
    libc::SYS_ustat,
];

/// QEMU's privileged set (`elevateprivileges=deny`).
const PRIVILEGED: &[c_long] = &[
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_setpgid,
    libc::SYS_setsid,
    libc::SYS_setreuid,
    libc::SYS_setregid,
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
];

/// QEMU's spawn set (`spawn=deny`); `clone` only without CLONE_THREAD.
const SPAWN: &[c_long] = &[
    libc::SYS_fork,
    libc::SYS_vfork,
    libc::SYS_execve,
    libc::SYS_execveat,
];

/// QEMU's resource-control set (`resourcecontrol=deny`): EPERM.
const RESOURCE: &[c_long] = &[
    libc::SYS_getpriority,
    libc::SYS_setpriority,
    libc::SYS_sched_setparam,
    libc::SYS_sched_getparam,
    libc::SYS_sched_setscheduler,
    libc::SYS_sched_getscheduler,
    libc::SYS_sched_setaffinity,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_get_priority_max,
    libc::SYS_sched_get_priority_min,
];

/// Calls the deny layer traps under `policy`.
fn deny_list(policy: &Policy, ids: Option<Ids>) -> Rules {
    let mut r = Rules::new();
    add(&mut r, DEFAULT_DENY);
    if policy.deny_obsolete {
        add(&mut r, OBSOLETE);
    }
    if policy.elevate != Elevate::Allow {
        add(&mut r, PRIVILEGED);
        // The `-runas` drop stays possible (it only lowers): anything else traps.
        match ids {
            Some(Ids { uid, gid }) => {
                let other = |v: u32| {
                    (0..3)
                        .map(|a| rule(vec![cond(a, SeccompCmpOp::Ne, u64::from(v))]))
                        .collect()
                };
                r.insert(libc::SYS_setresuid, other(uid));
                r.insert(libc::SYS_setresgid, other(gid));
                r.insert(
                    libc::SYS_setgroups,
                    vec![rule(vec![cond(0, SeccompCmpOp::Gt, 1)])],
                );
            }
            None => add(
                &mut r,
                &[
                    libc::SYS_setresuid,
                    libc::SYS_setresgid,
                    libc::SYS_setgroups,
                ],
            ),
        }
    }
    if policy.deny_spawn {
        add(&mut r, SPAWN);
        let t = libc::CLONE_THREAD as u64;
        r.insert(
            libc::SYS_clone,
            vec![rule(vec![cond(0, SeccompCmpOp::MaskedEq(t), 0)])],
        );
    }
    r
}

fn compile(
    rules: Rules,
    mismatch: SeccompAction,
    on_match: SeccompAction,
) -> Result<BpfProgram, SandboxError> {
    let f = SeccompFilter::new(rules, mismatch, on_match, arch())
        .map_err(|e| SandboxError::Compile(e.to_string()))?;
    f.try_into()
        .map_err(|e: seccompiler::BackendError| SandboxError::Compile(e.to_string()))
}

/// The filters a thread of `profile` installs, in order. `log`: allow-list violations are
/// allowed and logged by the kernel instead of trapped (finding missing calls).
pub fn programs(
    profile: Profile,
    policy: &Policy,
    ids: Option<Ids>,
    log: bool,
) -> Result<Vec<BpfProgram>, SandboxError> {
    let mut out = Vec::new();
    if policy.deny_resource_control {
        let mut r = Rules::new();
        add(&mut r, RESOURCE);
        out.push(compile(
            r,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
        )?);
    }
    if policy.deny_spawn {
        let mut r = Rules::new();
        add(&mut r, &[libc::SYS_clone3]);
        out.push(compile(
            r,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
        )?);
    }
    out.push(compile(
        deny_list(policy, ids),
        SeccompAction::Allow,
        SeccompAction::Trap,
    )?);
    if let Some(allow) = allow_list(profile, ids) {
        let miss = if log {
            SeccompAction::Log
        } else {
            SeccompAction::Trap
        };
        out.push(compile(allow, miss, SeccompAction::Allow)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_compiles_under_every_policy() {
        let ids = Some(Ids {
            uid: 65534,
            gid: 65534,
        });
        for p in [
            Profile::Vcpu,
            Profile::Worker,
            Profile::Block,
            Profile::Net,
            Profile::Runtime,
            Profile::Helper,
        ] {
            for pol in [
                Policy::default(),
                Policy {
                    enabled: true,
                    deny_obsolete: true,
                    elevate: Elevate::Children,
                    deny_spawn: true,
                    deny_resource_control: true,
                },
            ] {
                for ids in [None, ids] {
                    let progs = programs(p, &pol, ids, false).unwrap();
                    assert!(!progs.is_empty() && progs.iter().all(|p| !p.is_empty()));
                }
            }
        }
    }

    #[test]
    fn kinds_map_to_their_profiles_and_unknown_kinds_are_not_broken() {
        assert_eq!(Profile::of("vcpu"), Profile::Vcpu);
        assert_eq!(Profile::of("virtio-worker"), Profile::Worker);
        assert_eq!(Profile::of("block"), Profile::Block);
        assert_eq!(Profile::of("nic-backend"), Profile::Net);
        assert_eq!(Profile::of("tokio"), Profile::Runtime);
        assert_eq!(Profile::of("main"), Profile::Helper);
        assert_eq!(Profile::of("hotplug"), Profile::Helper);
        assert_eq!(Profile::of("something-new"), Profile::Helper);
    }

    #[test]
    fn no_allow_list_takes_a_call_the_deny_layer_traps() {
        let pol = Policy {
            enabled: true,
            deny_obsolete: true,
            elevate: Elevate::Deny,
            deny_spawn: true,
            deny_resource_control: false,
        };
        let deny = deny_list(&pol, None);
        for p in [
            Profile::Vcpu,
            Profile::Worker,
            Profile::Block,
            Profile::Net,
            Profile::Runtime,
        ] {
            let allow = allow_list(p, None).unwrap();
            for nr in deny.keys() {
                // clone is allowed for threads and denied for processes: the conditions
                // split it.
                if *nr != libc::SYS_clone {
                    assert!(!allow.contains_key(nr), "{p:?} allows {nr}");
                }
            }
        }
    }
}
