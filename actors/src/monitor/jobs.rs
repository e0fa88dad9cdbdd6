//! QMP's background jobs for VM snapshots (`snapshot-save`, `snapshot-load`,
//! `snapshot-delete`), as QEMU 7.2 runs them: the command answers `{}` at once, the job
//! goes `created` → `running` → `waiting` → `pending` → `concluded` (or `aborting` →
//! `concluded` with its error), each step a `JOB_STATUS_CHANGE` event; `query-jobs`
//! lists jobs until `job-dismiss` removes a concluded one (these jobs are dismissed by
//! hand, as QEMU's are).

use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};

use super::commands::{CmdError, CmdResult};
use super::MonitorContext;
use crate::supervisor::VmNotification;

/// One job.
#[derive(Debug, Clone)]
pub struct Job {
    id: String,
    kind: &'static str,
    status: &'static str,
    error: Option<String>,
}

/// The jobs of the VM, shared by every monitor session.
pub type SharedJobs = Arc<Mutex<Vec<Job>>>;

fn lock(jobs: &SharedJobs) -> std::sync::MutexGuard<'_, Vec<Job>> {
    jobs.lock().unwrap_or_else(|e| e.into_inner())
}

/// Move job `id` to `status` and say so.
fn set(ctx: &MonitorContext, id: &str, status: &'static str, error: Option<String>) {
    if let Some(j) = lock(&ctx.jobs).iter_mut().find(|j| j.id == id) {
        j.status = status;
        if error.is_some() {
            j.error = error;
        }
    }
    ctx.supervisor.publish_now(VmNotification::Other {
        event: "JOB_STATUS_CHANGE".into(),
        data: json!({"id": id, "status": status}).to_string(),
    });
}

fn str_arg<'a>(args: &'a Map<String, Value>, k: &str) -> &'a str {
    args.get(k).and_then(Value::as_str).unwrap_or_default()
}

/// The QMP commands handled here; None for any other.
pub async fn qmp(ctx: &MonitorContext, name: &str, args: &Map<String, Value>) -> Option<CmdResult> {
    Some(match name {
        "snapshot-save" | "snapshot-load" | "snapshot-delete" => start(ctx, name, args).await,
        "query-jobs" => Ok(Value::Array(
            lock(&ctx.jobs)
                .iter()
                .map(|j| {
                    let mut v = json!({
                        "id": j.id,
                        "type": j.kind,
                        "status": j.status,
                        "current-progress": 1,
                        "total-progress": 1,
                    });
                    if let Some(e) = &j.error {
                        v["error"] = json!(e);
                    }
                    v
                })
                .collect(),
        )),
        "job-dismiss" => {
            let id = str_arg(args, "id");
            let mut jobs = lock(&ctx.jobs);
            match jobs.iter().position(|j| j.id == id) {
                None => Err(CmdError::generic("Job not found")),
                Some(i) if jobs[i].status != "concluded" => Err(CmdError::Generic(format!(
                    "Job '{id}' in state '{}' cannot accept command verb 'dismiss'",
                    jobs[i].status
                ))),
                Some(i) => {
                    jobs.remove(i);
                    drop(jobs);
                    set(ctx, id, "null", None);
                    Ok(json!({}))
                }
            }
        }
        _ => return None,
    })
}

/// The drives a job names (`devices`, and `vmstate` first for a save): by drive id or by
/// the node name `query-block` shows.
async fn named_disks(
    ctx: &MonitorContext,
    devices: &[String],
    vmstate: Option<&str>,
) -> Result<Vec<(String, crate::block::BlockHandle)>, String> {
    let all = ctx.drives.snapshot_disks().await;
    let blocks = ctx.drives.query_block().await.unwrap_or_default();
    let drive_of = |name: &str| -> Option<String> {
        if all.iter().any(|(id, _)| id == name) {
            return Some(name.to_string());
        }
        blocks.as_array()?.iter().find_map(|b| {
            (b["inserted"]["node-name"] == name)
                .then(|| b["device"].as_str().map(str::to_string))?
        })
    };
    let mut picked = Vec::new();
    for name in vmstate
        .into_iter()
        .chain(devices.iter().map(String::as_str))
    {
        let id = drive_of(name).ok_or_else(|| format!("No block device node '{name}'"))?;
        if !picked.iter().any(|(p, _): &(String, _)| *p == id) {
            if let Some(d) = all.iter().find(|(d, _)| *d == id) {
                picked.push(d.clone());
            }
        }
    }
    if let Some(v) = vmstate {
        if !devices.iter().any(|d| d == v) {
            return Err(format!(
                "vmstate block device '{v}' does not exist in the device list"
            ));
        }
    }
    Ok(picked)
}

async fn start(ctx: &MonitorContext, name: &str, args: &Map<String, Value>) -> CmdResult {
    let id = str_arg(args, "job-id").to_string();
    let tag = str_arg(args, "tag").to_string();
    let devices: Vec<String> = match args.get("devices") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                CmdError::generic(
                    "Invalid parameter type for 'devices', expected: array of strings",
                )
            })?,
        _ => {
            return Err(CmdError::generic(
                "Invalid parameter type for 'devices', expected: array",
            ))
        }
    };
    let vmstate = args
        .get("vmstate")
        .and_then(Value::as_str)
        .map(str::to_string);
    let kind: &'static str = match name {
        "snapshot-save" => "snapshot-save",
        "snapshot-load" => "snapshot-load",
        _ => "snapshot-delete",
    };
    {
        let mut jobs = lock(&ctx.jobs);
        if jobs.iter().any(|j| j.id == id) {
            return Err(CmdError::Generic(format!("Job ID '{id}' already in use")));
        }
        jobs.push(Job {
            id: id.clone(),
            kind,
            status: "created",
            error: None,
        });
    }
    set(ctx, &id, "created", None);
    let c = ctx.clone();
    let task = async move {
        set(&c, &id, "running", None);
        let res = async {
            let disks = named_disks(&c, &devices, vmstate.as_deref()).await?;
            match kind {
                "snapshot-save" => super::migrate::save_vm(&c, &disks, &tag).await,
                "snapshot-load" => super::migrate::load_vm(&c, &disks, &tag).await,
                _ => crate::block::snapshot::delete_snapshot_on_all_disks(&disks, &tag)
                    .await
                    .map_err(|e| crate::supervisor::error_chain(&e)),
            }
        }
        .await;
        match res {
            Ok(()) => {
                set(&c, &id, "waiting", None);
                set(&c, &id, "pending", None);
                set(&c, &id, "concluded", None);
            }
            Err(e) => {
                set(&c, &id, "aborting", Some(e));
                set(&c, &id, "concluded", None);
            }
        }
    };
    crate::runtime::spawn_task(
        &tokio::runtime::Handle::current(),
        &ctx.registry,
        &format!("job-{}", str_arg(args, "job-id")),
        "job",
        None,
        task,
    );
    Ok(json!({}))
}
