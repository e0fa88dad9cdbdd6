//! Internal snapshots of a VM's disks, the way `savevm`/`loadvm`/`delvm`/`info snapshots`
//! use them: one operation per drive, sent to the drive's block actor ([`BlockHandle::snapshot`]),
//! which finishes the requests in flight, writes imago's cached metadata back and closes
//! the image, does the operation ([`super::qcow2_snapshot`]) and reopens the image before
//! serving the guest again. Allowed only while the VM is stopped.
//!
//! The all-disk functions follow QEMU 7.2 (`migration/savevm.c`, `block/snapshot.c`): every
//! writable drive takes part (read-only ones are left out); a writable drive that cannot
//! hold snapshots (raw, `snapshot=on`) refuses the whole operation; the VM state goes to
//! the first drive that can hold it, the other drives get a disk-only snapshot of the same
//! name.

use std::path::Path;

use super::qcow2_snapshot::{NewSnapshot, Qcow2Snapshots, SnapshotError, SnapshotInfo};
use super::BlockHandle;
use crate::runtime::{reply_channel, Reply};

/// One snapshot operation on one drive.
#[derive(Debug, Clone)]
pub enum SnapshotOp {
    List,
    /// Replaces a snapshot of the same name (as `savevm` does).
    Create {
        name: String,
        vm_state: Vec<u8>,
        vm_clock_ns: u64,
    },
    /// Returns the snapshot's VM state.
    Load {
        name: String,
    },
    /// A name the drive does not have is no error (QEMU's `delvm` skips such drives).
    Delete {
        name: String,
    },
    /// Nothing but the close and reopen every operation does: cached metadata written
    /// back, then read afresh (an incoming migration's image, once the source has let go).
    Reopen,
}

/// What an operation gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotDone {
    Listed(Vec<SnapshotInfo>),
    Created(SnapshotInfo),
    Loaded(Vec<u8>),
    Deleted(Option<SnapshotInfo>),
    Reopened,
}

/// A snapshot operation on its way to a block actor.
pub(crate) struct SnapshotJob {
    pub op: SnapshotOp,
    pub reply: Reply<Result<SnapshotDone, SnapshotError>>,
}

/// Why a snapshot operation on the VM's disks failed (QEMU's messages).
#[derive(Debug, thiserror::Error)]
pub enum DiskSnapshotError {
    #[error("Device '{0}' is writable but does not support snapshots")]
    Unsupported(String),
    #[error("no block device can store vmstate for snapshot")]
    NoVmStateDisk,
    #[error("Snapshot '{0}' does not exist in one or more devices")]
    Missing(String),
    #[error("This is a disk-only snapshot. Revert to it offline using qemu-img")]
    DiskOnly(String),
    #[error("Could not create snapshot '{name}' on '{device}'")]
    Create {
        name: String,
        device: String,
        #[source]
        source: SnapshotError,
    },
    #[error("Could not load snapshot '{name}' on '{device}'")]
    Load {
        name: String,
        device: String,
        #[source]
        source: SnapshotError,
    },
    #[error("Could not delete snapshot '{name}' on '{device}'")]
    Delete {
        name: String,
        device: String,
        #[source]
        source: SnapshotError,
    },
    #[error("Could not list the snapshots of '{device}'")]
    List {
        device: String,
        #[source]
        source: SnapshotError,
    },
    #[error("Could not reopen '{device}'")]
    Reopen {
        device: String,
        #[source]
        source: SnapshotError,
    },
    #[error("Device '{0}': its block backend has stopped")]
    Gone(String),
}

/// Do `op` on the closed image at `path` (on the block actor's thread).
pub(crate) fn perform(path: &Path, op: SnapshotOp) -> Result<SnapshotDone, SnapshotError> {
    match op {
        SnapshotOp::List => Ok(SnapshotDone::Listed(
            Qcow2Snapshots::open(path, false)?.list(),
        )),
        SnapshotOp::Create {
            name,
            vm_state,
            vm_clock_ns,
        } => {
            let mut s = Qcow2Snapshots::open(path, true)?;
            while s.has(&name) {
                s.delete(&name)?;
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            s.create(&NewSnapshot {
                name: &name,
                vm_state: &vm_state,
                vm_clock_ns,
                icount: None,
                date: (now.as_secs() as u32, now.subsec_nanos()),
            })
            .map(SnapshotDone::Created)
        }
        SnapshotOp::Load { name } => Qcow2Snapshots::open(path, true)?
            .load(&name)
            .map(SnapshotDone::Loaded),
        SnapshotOp::Delete { name } => {
            let mut s = Qcow2Snapshots::open(path, true)?;
            if s.has(&name) {
                s.delete(&name).map(|i| SnapshotDone::Deleted(Some(i)))
            } else {
                Ok(SnapshotDone::Deleted(None))
            }
        }
        SnapshotOp::Reopen => Ok(SnapshotDone::Reopened),
    }
}

/// Send `op` to the block actor of drive `id` and wait for its answer; None if the actor
/// is gone.
pub(crate) async fn ask(
    tx: &crossbeam_channel::Sender<SnapshotJob>,
    doorbell: Option<&vmm_sys_util::eventfd::EventFd>,
    id: &str,
    op: SnapshotOp,
) -> Option<Result<SnapshotDone, SnapshotError>> {
    let (reply, rx) = reply_channel(&format!("blk-{id}"));
    tx.send(SnapshotJob { op, reply }).ok()?;
    if let Some(d) = doorbell {
        let _ = d.write(1);
    }
    rx.recv().await.ok()
}

impl BlockHandle {
    /// Whether the drive can hold internal snapshots (a writable qcow2 image without
    /// `snapshot=on`).
    pub fn can_snapshot(&self) -> bool {
        self.snap.is_some()
    }

    /// Do a snapshot operation on this drive; only while the VM is stopped. `device` names
    /// the drive in errors.
    pub async fn snapshot(&self, op: SnapshotOp) -> Result<SnapshotDone, DiskSnapshotError> {
        let Some(tx) = &self.snap else {
            return Err(DiskSnapshotError::Unsupported(self.id.clone()));
        };
        let (what, name) = match &op {
            SnapshotOp::List => (0, String::new()),
            SnapshotOp::Create { name, .. } => (1, name.clone()),
            SnapshotOp::Load { name } => (2, name.clone()),
            SnapshotOp::Delete { name } => (3, name.clone()),
            SnapshotOp::Reopen => (4, String::new()),
        };
        let r = ask(tx, self.doorbell.as_deref(), &self.id, op)
            .await
            .ok_or_else(|| DiskSnapshotError::Gone(self.id.clone()))?;
        let device = self.id.clone();
        r.map_err(|source| match what {
            0 => DiskSnapshotError::List { device, source },
            1 => DiskSnapshotError::Create {
                name,
                device,
                source,
            },
            2 => DiskSnapshotError::Load {
                name,
                device,
                source,
            },
            4 => DiskSnapshotError::Reopen { device, source },
            _ => DiskSnapshotError::Delete {
                name,
                device,
                source,
            },
        })
    }

    async fn snapshots(&self) -> Result<Vec<SnapshotInfo>, DiskSnapshotError> {
        match self.snapshot(SnapshotOp::List).await? {
            SnapshotDone::Listed(l) => Ok(l),
            other => unreachable!("List answered {other:?}"),
        }
    }
}

/// The drives a VM snapshot covers: (device id, backend) of every drive with a medium.
pub type Disks<'a> = &'a [(String, BlockHandle)];

/// The writable drives, each checked to hold snapshots (QEMU's `bdrv_all_can_snapshot`),
/// and the one that takes the VM state.
fn participants(disks: Disks<'_>) -> Result<(Vec<&BlockHandle>, usize), DiskSnapshotError> {
    let writable: Vec<&BlockHandle> = disks
        .iter()
        .map(|(_, h)| h)
        .filter(|h| !h.info.read_only)
        .collect();
    if let Some(h) = writable.iter().find(|h| !h.can_snapshot()) {
        return Err(DiskSnapshotError::Unsupported(h.id.clone()));
    }
    if writable.is_empty() {
        return Err(DiskSnapshotError::NoVmStateDisk);
    }
    Ok((writable, 0))
}

/// `savevm`'s checks before any work: every writable drive can hold snapshots and one
/// can take the VM state (QEMU's errors otherwise).
pub fn check_snapshot_disks(disks: Disks<'_>) -> Result<(), DiskSnapshotError> {
    participants(disks).map(|_| ())
}

/// The name `savevm` without a tag gives: `vm-YYYYMMDDHHMMSS`, local time.
pub fn default_snapshot_name() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let d: String = local_date(now as u32)
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    format!("vm-{d}")
}

/// `savevm NAME`'s disk half: replace any snapshot called `name` on every writable drive
/// with a new one, the VM state (`vm_state`, from the migration stream) stored on the
/// first. Call with the VM stopped. On failure, the snapshots already made are deleted.
pub async fn create_snapshot_on_all_disks(
    disks: Disks<'_>,
    name: &str,
    vm_state: Vec<u8>,
    vm_clock_ns: u64,
) -> Result<(), DiskSnapshotError> {
    let (drives, vm_disk) = participants(disks)?;
    let mut vm_state = Some(vm_state);
    for (n, h) in drives.iter().enumerate() {
        let state = if n == vm_disk {
            vm_state.take().unwrap_or_default()
        } else {
            Vec::new()
        };
        let r = h
            .snapshot(SnapshotOp::Create {
                name: name.to_string(),
                vm_state: state,
                vm_clock_ns,
            })
            .await;
        if let Err(e) = r {
            for done in &drives[..n] {
                let _ = done
                    .snapshot(SnapshotOp::Delete {
                        name: name.to_string(),
                    })
                    .await;
            }
            return Err(match e {
                DiskSnapshotError::Create { source, .. } => DiskSnapshotError::Create {
                    name: name.to_string(),
                    device: h.id.clone(),
                    source,
                },
                e => e,
            });
        }
    }
    Ok(())
}

/// `loadvm NAME`'s disk half: make snapshot `name` the disk state of every writable drive
/// and return the VM state (for the migration stream to load). Call with the VM stopped.
/// Nothing is changed unless every drive has the snapshot and it holds a VM state.
pub async fn load_snapshot_from_disks(
    disks: Disks<'_>,
    name: &str,
) -> Result<Vec<u8>, DiskSnapshotError> {
    let (drives, vm_disk) = participants(disks)?;
    for h in &drives {
        if !h.snapshots().await?.iter().any(|s| s.name == name) {
            return Err(DiskSnapshotError::Missing(name.to_string()));
        }
    }
    let on_vm_disk = drives[vm_disk].snapshots().await?;
    if on_vm_disk
        .iter()
        .find(|s| s.name == name)
        .is_some_and(|s| s.vm_state_size == 0)
    {
        return Err(DiskSnapshotError::DiskOnly(name.to_string()));
    }
    let mut state = Vec::new();
    for (n, h) in drives.iter().enumerate() {
        let done = h
            .snapshot(SnapshotOp::Load {
                name: name.to_string(),
            })
            .await?;
        if let (true, SnapshotDone::Loaded(s)) = (n == vm_disk, done) {
            state = s;
        }
    }
    Ok(state)
}

/// `delvm NAME`: delete snapshot `name` from every writable drive that has it.
pub async fn delete_snapshot_on_all_disks(
    disks: Disks<'_>,
    name: &str,
) -> Result<(), DiskSnapshotError> {
    let (drives, _) = participants(disks)?;
    for h in drives {
        h.snapshot(SnapshotOp::Delete {
            name: name.to_string(),
        })
        .await?;
    }
    Ok(())
}

/// `info snapshots`, as QEMU 7.2's `hmp_info_snapshots` prints it.
pub async fn info_snapshots_text(disks: Disks<'_>) -> String {
    let capable: Vec<&(String, BlockHandle)> = disks
        .iter()
        .filter(|(_, h)| !h.info.read_only && h.can_snapshot())
        .collect();
    if capable.is_empty() {
        return format!("{}\n", DiskSnapshotError::NoVmStateDisk);
    }
    let mut lists = Vec::new();
    for (id, h) in &capable {
        match h.snapshots().await {
            Ok(l) => lists.push((id.as_str(), l)),
            Err(e) => return format!("{}\n", crate::supervisor::error_chain(&e)),
        }
    }
    if lists.iter().all(|(_, l)| l.is_empty()) {
        return "There is no snapshot available.\n".into();
    }
    // The drive that would take the VM state leads.
    let vm_list = lists[0].1.clone();
    // A writable drive that cannot hold snapshots has none of them.
    let all_capable = disks
        .iter()
        .all(|(_, h)| h.info.read_only || h.can_snapshot());
    let mut global = Vec::new();
    for sn in &vm_list {
        let everywhere = all_capable
            && lists
                .iter()
                .all(|(_, l)| l.iter().any(|s| s.name == sn.name));
        if everywhere {
            global.push(sn.clone());
            for (_, l) in lists.iter_mut() {
                l.retain(|s| s.name != sn.name);
            }
        }
    }
    let mut out = String::from("List of snapshots present on all disks:\n");
    if global.is_empty() {
        out.push_str("None\n");
    } else {
        out.push_str(&header_line());
        for mut sn in global {
            // The id is not the same on every drive.
            sn.id = "--".into();
            out.push_str(&snapshot_line(&sn));
        }
    }
    for (id, l) in lists.iter().filter(|(_, l)| !l.is_empty()) {
        out.push_str(&format!(
            "\nList of partial (non-loadable) snapshots on '{id}':\n"
        ));
        out.push_str(&header_line());
        for sn in l {
            out.push_str(&snapshot_line(sn));
        }
    }
    out
}

/// The column titles (QEMU's `bdrv_snapshot_dump(NULL)`).
pub fn header_line() -> String {
    format!(
        "{:<10}{:<17}{:>8}{:>20}{:>13}{:>11}\n",
        "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT"
    )
}

/// One snapshot's row (QEMU's `bdrv_snapshot_dump`): the date in local time.
pub fn snapshot_line(sn: &SnapshotInfo) -> String {
    let secs = sn.vm_clock_ns / 1_000_000_000;
    let clock = format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        (sn.vm_clock_ns / 1_000_000) % 1000
    );
    format!(
        "{:<9} {:<16} {:>8}{:>20}{:>13}{:>11}\n",
        sn.id,
        sn.name,
        size_to_str(sn.vm_state_size),
        local_date(sn.date_sec),
        clock,
        sn.icount.map(|i| i.to_string()).unwrap_or_default()
    )
}

/// `YYYY-MM-DD HH:MM:SS` in the host's time zone.
fn local_date(secs: u32) -> String {
    let t = libc::time_t::from(secs);
    // SAFETY: an all-zero `tm` is a valid value for localtime_r to overwrite.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r is thread-safe.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return secs.to_string();
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// QEMU's `size_to_str`: three significant digits and a binary unit (`765 B`, `1.5 MiB`).
pub fn size_to_str(val: u64) -> String {
    const UNITS: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    // frexp's exponent of val * 1024/1000, less one, over ten: switch units at 1000.
    let scaled = val as f64 / (1000.0 / 1024.0);
    let exp = if scaled < 1.0 {
        0
    } else {
        scaled.log2().floor() as i32 + 1
    };
    let i = (((exp - 1) / 10).max(0) as usize).min(UNITS.len() - 1);
    let v = val as f64 / (1u64 << (i * 10)) as f64;
    format!("{} {}B", format_g3(v), UNITS[i])
}

/// printf's `%0.3g`.
fn format_g3(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let e = format!("{v:.2e}");
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let x: i32 = exp.parse().unwrap_or(0);
    let strip = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if !(-4..3).contains(&x) {
        format!(
            "{}e{}{:02}",
            strip(mant.to_string()),
            if x < 0 { '-' } else { '+' },
            x.abs()
        )
    } else {
        strip(format!("{:.*}", (2 - x) as usize, v))
    }
}

#[cfg(test)]
mod tests;
