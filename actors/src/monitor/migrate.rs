//! The migration commands, QMP and HMP, over the supervisor's migration state.

use serde_json::{json, Map, Value};

use super::commands::CmdError;
use super::MonitorContext;
use crate::migration::{self, SharedMigration, Status};

async fn shared(ctx: &MonitorContext) -> Result<SharedMigration, CmdError> {
    ctx.supervisor
        .migration()
        .await
        .map_err(|e| CmdError::generic(e.to_string()))
}

/// A QMP migration command, or None when `name` is not one.
pub async fn qmp(
    ctx: &MonitorContext,
    name: &str,
    args: &Map<String, Value>,
) -> Option<Result<Value, CmdError>> {
    let flag = |k: &str| args.get(k).and_then(Value::as_bool).unwrap_or(false);
    Some(match name {
        "query-migrate" => shared(ctx).await.map(|m| {
            let p = m.progress();
            let mut v = p.to_json(false);
            // QEMU shows `blocked` only where a blocker exists; troupe has none.
            if let Some(o) = v.as_object_mut() {
                o.remove("blocked");
            }
            v
        }),
        "query-migrate-parameters" => shared(ctx).await.map(|m| m.params().to_json()),
        "query-migrate-capabilities" => shared(ctx).await.map(|m| m.caps().to_json()),
        "migrate-set-parameters" => match shared(ctx).await {
            Ok(m) => args
                .iter()
                .try_for_each(|(k, v)| m.set_param(k, v))
                .map(|_| json!({}))
                .map_err(|e| CmdError::generic(e.to_string())),
            Err(e) => Err(e),
        },
        "migrate-set-capabilities" => match shared(ctx).await {
            Ok(m) => {
                let list = args
                    .get("capabilities")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                list.iter()
                    .try_for_each(|c| {
                        let cap = c["capability"].as_str().unwrap_or_default();
                        let on = c["state"].as_bool().unwrap_or(false);
                        m.set_cap(cap, on).map_err(|e| match e {
                            migration::SettingError::UnknownCapability(c) => CmdError::generic(
                                format!("Parameter 'capability' does not accept value '{c}'"),
                            ),
                            e => CmdError::generic(e.to_string()),
                        })
                    })
                    .map(|_| json!({}))
            }
            Err(e) => Err(e),
        },
        "migrate" => {
            if flag("blk") || flag("inc") {
                Err(CmdError::generic(
                    "troupe does not copy disks during migration (blk/inc): use shared storage",
                ))
            } else if flag("resume") {
                Err(CmdError::generic(
                    "troupe has no postcopy migration to resume",
                ))
            } else {
                let uri = args.get("uri").and_then(Value::as_str).unwrap_or_default();
                // `fd:NAME`: the descriptor `getfd` named goes with the request (the
                // migration owns it from now on, as QEMU's).
                let fd = match uri.strip_prefix("fd:") {
                    Some(name) => match ctx.fds.take(name) {
                        Ok(fd) => Some(fd),
                        Err(e) => return Some(Err(e)),
                    },
                    None => None,
                };
                ctx.supervisor
                    .migrate(uri, fd)
                    .await
                    .map(|_| json!({}))
                    .map_err(CmdError::generic)
            }
        }
        "migrate_cancel" => shared(ctx).await.map(|m| {
            if m.progress().status.running() {
                m.cancel();
                m.with_progress(|p| {
                    if p.status.running() {
                        p.status = Status::Cancelling;
                    }
                });
            }
            json!({})
        }),
        "migrate-incoming" => {
            let uri = args.get("uri").and_then(Value::as_str).unwrap_or_default();
            ctx.supervisor
                .migrate_incoming(uri)
                .await
                .map(|_| json!({}))
                .map_err(CmdError::generic)
        }
        _ => return None,
    })
}

fn err(e: CmdError) -> String {
    format!("Error: {}\n", e.desc())
}

/// A size for `max-bandwidth` as HMP reads it: bytes, or a k/M/G/T suffix; a bare number
/// means MiB (QEMU's default unit there).
fn parse_bandwidth(s: &str) -> Option<u64> {
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        None => (s, 1u64 << 20),
        Some((i, _)) => {
            let mult = match &s[i..] {
                "b" | "B" => 1,
                "k" | "K" => 1 << 10,
                "m" | "M" => 1 << 20,
                "g" | "G" => 1 << 30,
                "t" | "T" => 1 << 40,
                _ => return None,
            };
            (&s[..i], mult)
        }
    };
    let v: f64 = num.parse().ok()?;
    (v >= 0.0 && v.is_finite()).then_some((v * mult as f64) as u64)
}

/// An HMP migration command, or None when `cmd` is not one.
pub async fn hmp(ctx: &MonitorContext, cmd: &str, rest: &[&str]) -> Option<String> {
    Some(match cmd {
        "migrate" => {
            let detach = rest.contains(&"-d");
            let uri = rest
                .iter()
                .rev()
                .find(|a| !a.starts_with('-'))
                .copied()
                .unwrap_or_default();
            let mut args = Map::new();
            args.insert("uri".into(), json!(uri));
            args.insert("blk".into(), json!(rest.contains(&"-b")));
            args.insert("inc".into(), json!(rest.contains(&"-i")));
            args.insert("resume".into(), json!(rest.contains(&"-r")));
            if let Err(e) = qmp(ctx, "migrate", &args).await? {
                return Some(err(e));
            }
            if detach {
                return Some(String::new());
            }
            // Without -d the monitor waits for the end; a failure is reported.
            let Ok(m) = shared(ctx).await else {
                return Some(String::new());
            };
            loop {
                let p = m.progress();
                if !p.status.running() {
                    break match (p.status, p.error) {
                        (Status::Failed, Some(e)) => format!("{e}\n"),
                        _ => String::new(),
                    };
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        "migrate_cancel" => match qmp(ctx, "migrate_cancel", &Map::new()).await? {
            Ok(_) => String::new(),
            Err(e) => err(e),
        },
        "migrate_incoming" => {
            let mut args = Map::new();
            args.insert(
                "uri".into(),
                json!(rest.first().copied().unwrap_or_default()),
            );
            match qmp(ctx, "migrate-incoming", &args).await? {
                Ok(_) => String::new(),
                Err(e) => err(e),
            }
        }
        "migrate_set_parameter" => {
            let (Some(name), Some(value)) = (rest.first(), rest.get(1)) else {
                return Some(
                    "migrate_set_parameter: string expected\nTry \"help migrate_set_parameter\" for more information\n"
                        .into(),
                );
            };
            let v = match *name {
                "max-bandwidth" => match parse_bandwidth(value) {
                    Some(b) => json!(b),
                    None => return Some(format!("Error: Invalid size {value}\n")),
                },
                "tls-creds" | "tls-hostname" | "tls-authz" => {
                    json!(value.trim_matches('"'))
                }
                _ => match value.parse::<u64>() {
                    Ok(n) => json!(n),
                    Err(_) => {
                        return Some(format!(
                            "Error: Parameter '{name}' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.\n"
                        ))
                    }
                },
            };
            let Ok(m) = shared(ctx).await else {
                return Some(String::new());
            };
            match m.set_param(name, &v) {
                Ok(()) => String::new(),
                Err(migration::SettingError::UnknownParameter(n)) => {
                    format!("Error: invalid parameter value: {n}\n")
                }
                Err(e) => format!("Error: {e}\n"),
            }
        }
        "migrate_set_capability" => {
            let on = match rest.get(1) {
                Some(&"on") => true,
                Some(&"off") => false,
                _ => {
                    return Some(
                        "Expected 'on' or 'off'\nTry \"help migrate_set_capability\" for more information\n"
                            .into(),
                    )
                }
            };
            let Ok(m) = shared(ctx).await else {
                return Some(String::new());
            };
            match m.set_cap(rest[0], on) {
                Ok(()) => String::new(),
                Err(migration::SettingError::UnknownCapability(n)) => {
                    format!("Error: invalid parameter value: {n}\n")
                }
                Err(e) => format!("Error: {e}\n"),
            }
        }
        _ => return None,
    })
}

/// `info migrate`, `info migrate_parameters`, `info migrate_capabilities`.
pub async fn info(ctx: &MonitorContext, sub: &str) -> Option<String> {
    let m = match shared(ctx).await {
        Ok(m) => m,
        Err(e) => return Some(err(e)),
    };
    Some(match sub {
        "migrate" => migration::hmp_info(&m.progress(), m.listening().as_deref()),
        "migrate_parameters" => migration::hmp_parameters(&m.params()),
        "migrate_capabilities" => migration::hmp_capabilities(&m.caps()),
        _ => return None,
    })
}

/// Stop the VM if it runs; returns whether it ran (to resume it after).
async fn stop_for(ctx: &MonitorContext) -> Result<bool, String> {
    let ran = ctx.supervisor.status().await.map_err(|e| e.to_string())?
        == crate::supervisor::RunState::Running;
    if ran {
        ctx.supervisor.stop().await.map_err(|e| e.to_string())??;
    }
    Ok(ran)
}

async fn resume(ctx: &MonitorContext, ran: bool) {
    if ran {
        let _ = ctx.supervisor.cont().await;
    }
}

/// HMP `savevm [TAG]`: the VM's whole state into the first qcow2 drive's snapshot, every
/// drive snapshotted with it; a running VM pauses meanwhile.
pub async fn savevm(ctx: &MonitorContext, tag: Option<&str>) -> String {
    let disks = ctx.drives.snapshot_disks().await;
    let name = tag
        .map(str::to_string)
        .unwrap_or_else(crate::block::snapshot::default_snapshot_name);
    hmp_result(save_vm(ctx, &disks, &name).await)
}

/// HMP `loadvm TAG`: every drive back to the snapshot, the machine to its saved state.
pub async fn loadvm(ctx: &MonitorContext, tag: &str) -> String {
    let disks = ctx.drives.snapshot_disks().await;
    hmp_result(load_vm(ctx, &disks, tag).await)
}

fn hmp_result(r: Result<(), String>) -> String {
    match r {
        Ok(()) => String::new(),
        Err(e) => format!("Error: {e}\n"),
    }
}

/// Save the VM as snapshot `name` on `disks` (the VM state on the first that can hold it);
/// a running VM pauses meanwhile. Err is QEMU's message.
pub async fn save_vm(
    ctx: &MonitorContext,
    disks: crate::block::snapshot::Disks<'_>,
    name: &str,
) -> Result<(), String> {
    use crate::block::snapshot as snap;
    snap::check_snapshot_disks(disks).map_err(|e| crate::supervisor::error_chain(&e))?;
    let ran = stop_for(ctx).await?;
    let res = match ctx.supervisor.vm_state().await {
        Ok((state, clock)) => snap::create_snapshot_on_all_disks(disks, name, state, clock)
            .await
            .map_err(|e| crate::supervisor::error_chain(&e)),
        Err(e) => Err(e),
    };
    resume(ctx, ran).await;
    res
}

/// Take `disks` and the machine back to snapshot `tag`. A snapshot that cannot be read
/// changes nothing; a machine state that does not load leaves the VM stopped (the disks
/// are back at the snapshot already).
pub async fn load_vm(
    ctx: &MonitorContext,
    disks: crate::block::snapshot::Disks<'_>,
    tag: &str,
) -> Result<(), String> {
    use crate::block::snapshot as snap;
    snap::check_snapshot_disks(disks).map_err(|e| crate::supervisor::error_chain(&e))?;
    let ran = stop_for(ctx).await?;
    let state = match snap::load_snapshot_from_disks(disks, tag).await {
        Ok(s) => s,
        Err(e) => {
            resume(ctx, ran).await;
            return Err(crate::supervisor::error_chain(&e));
        }
    };
    ctx.supervisor
        .load_vm_state(state)
        .await
        .map_err(|e| format!("Error while loading VM state: {e}"))?;
    resume(ctx, ran).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth_sizes_default_to_mib() {
        assert_eq!(parse_bandwidth("20"), Some(20 << 20));
        assert_eq!(parse_bandwidth("20M"), Some(20 << 20));
        assert_eq!(parse_bandwidth("1k"), Some(1024));
        assert_eq!(parse_bandwidth("20971520B"), Some(20971520));
        assert_eq!(parse_bandwidth("abc"), None);
        assert_eq!(parse_bandwidth("-1"), None);
    }
}
