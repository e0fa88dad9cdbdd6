//! The typed operations behind both monitor front ends. Each command takes QMP-style
//! arguments (a JSON object, checked against the command's parameter list) and returns the
//! JSON value QEMU's QMP would, or a [`CmdError`] with QEMU's error class.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{MediaOp, MediaTarget, MonitorContext, PACKAGE, QEMU_VERSION};
use crate::display::input::{Buttons, InputEvent};
use crate::display::keycodes::KeyCode;
use crate::display::DumpFormat;
use crate::runtime::spawn_task;
use crate::supervisor::RunState;
use crate::vnc::PasswordExpiry;

/// A failed command, with QEMU's error class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdError {
    Generic(String),
    CommandNotFound(String),
    DeviceNotFound(String),
    DeviceNotActive(String),
}

impl CmdError {
    pub fn class(&self) -> &'static str {
        match self {
            Self::Generic(_) => "GenericError",
            Self::CommandNotFound(_) => "CommandNotFound",
            Self::DeviceNotFound(_) => "DeviceNotFound",
            Self::DeviceNotActive(_) => "DeviceNotActive",
        }
    }

    pub fn desc(&self) -> &str {
        match self {
            Self::Generic(d)
            | Self::CommandNotFound(d)
            | Self::DeviceNotFound(d)
            | Self::DeviceNotActive(d) => d,
        }
    }

    pub(crate) fn generic(d: impl Into<String>) -> Self {
        Self::Generic(d.into())
    }
}

pub type CmdResult = Result<Value, CmdError>;

/// `balloon`/`query-balloon` on a VM without a virtio-balloon.
fn no_balloon() -> CmdError {
    CmdError::DeviceNotActive("No balloon device has been activated".into())
}

/// The type a parameter must have (also what `query-qmp-schema` says of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ty {
    Str,
    Int,
    Bool,
    /// One of these strings.
    Enum(&'static [&'static str]),
    /// Anything (checked by the command).
    Any,
}

/// (name, type, required)
pub(super) type Param = (&'static str, Ty, bool);

/// Every QMP command troupe knows, with its parameters. `qmp_capabilities` is served by
/// the QMP session itself but listed here for `query-commands`.
const COMMANDS: &[(&str, &[Param])] = &[
    ("qmp_capabilities", &[("enable", Ty::Any, false)]),
    ("query-version", &[]),
    ("query-status", &[]),
    ("query-kvm", &[]),
    ("query-name", &[]),
    ("query-uuid", &[]),
    ("query-cpus-fast", &[]),
    ("query-hotpluggable-cpus", &[]),
    ("query-pci", &[]),
    ("query-block", &[("flat", Ty::Bool, false)]),
    (
        "query-blockstats",
        &[("query-nodes", Ty::Bool, false), ("flat", Ty::Bool, false)],
    ),
    ("query-named-block-nodes", &[("flat", Ty::Bool, false)]),
    ("query-jobs", &[]),
    ("query-block-jobs", &[]),
    ("qom-list", &[("path", Ty::Str, true)]),
    (
        "qom-get",
        &[("path", Ty::Str, true), ("property", Ty::Str, true)],
    ),
    ("query-vnc", &[]),
    ("query-chardev", &[]),
    ("query-commands", &[]),
    ("query-events", &[]),
    ("query-mice", &[]),
    ("query-target", &[]),
    ("query-machines", &[]),
    ("query-balloon", &[]),
    ("query-migrate", &[]),
    ("stop", &[]),
    ("cont", &[]),
    ("system_reset", &[]),
    ("system_powerdown", &[]),
    ("quit", &[]),
    (
        "screendump",
        &[
            ("filename", Ty::Str, true),
            ("device", Ty::Str, false),
            ("head", Ty::Int, false),
            ("format", Ty::Enum(&["ppm", "png"]), false),
        ],
    ),
    (
        "send-key",
        &[("keys", Ty::Any, true), ("hold-time", Ty::Int, false)],
    ),
    (
        "human-monitor-command",
        &[
            ("command-line", Ty::Str, true),
            ("cpu-index", Ty::Int, false),
        ],
    ),
    (
        "set_password",
        &[
            ("protocol", Ty::Str, true),
            ("password", Ty::Str, true),
            ("connected", Ty::Str, false),
            ("display", Ty::Str, false),
        ],
    ),
    (
        "expire_password",
        &[
            ("protocol", Ty::Str, true),
            ("time", Ty::Str, true),
            ("display", Ty::Str, false),
        ],
    ),
    ("change-vnc-password", &[("password", Ty::Str, true)]),
    // Subsystems that come with later issues: they exist, and say so.
    (
        "device_add",
        &[("driver", Ty::Str, true), ("*", Ty::Any, false)],
    ),
    ("device_del", &[("id", Ty::Str, true)]),
    (
        "object-add",
        &[
            ("qom-type", Ty::Str, true),
            ("id", Ty::Str, true),
            ("*", Ty::Any, false),
        ],
    ),
    ("object-del", &[("id", Ty::Str, true)]),
    ("query-memory-devices", &[]),
    ("query-memdev", &[]),
    ("query-memory-size-summary", &[]),
    ("query-acpi-ospm-status", &[]),
    (
        "netdev_add",
        &[("type", Ty::Str, true), ("*", Ty::Any, false)],
    ),
    ("netdev_del", &[("id", Ty::Str, true)]),
    (
        "blockdev-add",
        &[("driver", Ty::Str, true), ("*", Ty::Any, false)],
    ),
    ("blockdev-del", &[("node-name", Ty::Str, true)]),
    (
        "migrate",
        &[
            ("uri", Ty::Str, true),
            ("blk", Ty::Bool, false),
            ("inc", Ty::Bool, false),
            ("detach", Ty::Bool, false),
            ("resume", Ty::Bool, false),
        ],
    ),
    ("migrate_cancel", &[]),
    // Descriptors passed over a Unix-socket QMP connection (SCM_RIGHTS), by name.
    ("getfd", &[("fdname", Ty::Str, true)]),
    ("closefd", &[("fdname", Ty::Str, true)]),
    ("migrate-incoming", &[("uri", Ty::Str, true)]),
    ("migrate-set-parameters", &[("*", Ty::Any, false)]),
    ("query-migrate-parameters", &[]),
    (
        "migrate-set-capabilities",
        &[("capabilities", Ty::Any, true)],
    ),
    ("query-migrate-capabilities", &[]),
    (
        "snapshot-save",
        &[
            ("job-id", Ty::Str, true),
            ("tag", Ty::Str, true),
            ("vmstate", Ty::Str, true),
            ("devices", Ty::Any, true),
        ],
    ),
    (
        "snapshot-load",
        &[
            ("job-id", Ty::Str, true),
            ("tag", Ty::Str, true),
            ("vmstate", Ty::Str, true),
            ("devices", Ty::Any, true),
        ],
    ),
    (
        "snapshot-delete",
        &[
            ("job-id", Ty::Str, true),
            ("tag", Ty::Str, true),
            ("devices", Ty::Any, true),
        ],
    ),
    ("job-dismiss", &[("id", Ty::Str, true)]),
    (
        "eject",
        &[
            ("device", Ty::Str, false),
            ("id", Ty::Str, false),
            ("force", Ty::Bool, false),
        ],
    ),
    (
        "blockdev-open-tray",
        &[
            ("device", Ty::Str, false),
            ("id", Ty::Str, false),
            ("force", Ty::Bool, false),
        ],
    ),
    (
        "blockdev-close-tray",
        &[("device", Ty::Str, false), ("id", Ty::Str, false)],
    ),
    ("blockdev-remove-medium", &[("id", Ty::Str, true)]),
    (
        "blockdev-insert-medium",
        &[("id", Ty::Str, true), ("node-name", Ty::Str, true)],
    ),
    (
        "blockdev-change-medium",
        &[
            ("device", Ty::Str, false),
            ("id", Ty::Str, false),
            ("filename", Ty::Str, true),
            ("format", Ty::Str, false),
            ("force", Ty::Bool, false),
            ("read-only-mode", Ty::Str, false),
        ],
    ),
    (
        "calc-dirty-rate",
        &[
            ("calc-time", Ty::Int, true),
            ("sample-pages", Ty::Int, false),
            (
                "mode",
                Ty::Enum(&["page-sampling", "dirty-ring", "dirty-bitmap"]),
                false,
            ),
        ],
    ),
    ("query-dirty-rate", &[]),
    ("balloon", &[("value", Ty::Int, true)]),
    (
        "set_link",
        &[("name", Ty::Str, true), ("up", Ty::Bool, true)],
    ),
    ("query-rx-filter", &[("name", Ty::Str, false)]),
    (
        "announce-self",
        &[
            ("initial", Ty::Int, false),
            ("max", Ty::Int, false),
            ("rounds", Ty::Int, false),
            ("step", Ty::Int, false),
            ("interfaces", Ty::Any, false),
            ("id", Ty::Str, false),
        ],
    ),
];

/// Why the VM shut down or reset, as the events' `reason` spells it.
const SHUTDOWN_CAUSES: &[&str] = &[
    "host-qmp-quit",
    "host-qmp-system-reset",
    "host-signal",
    "guest-shutdown",
    "guest-reset",
];

/// A migration's states, as `MIGRATION` events spell them ([`crate::migration::Status`]).
const MIGRATION_STATES: &[&str] = &[
    "none",
    "setup",
    "active",
    "device",
    "completed",
    "failed",
    "cancelling",
    "cancelled",
];

/// Events troupe emits (for `query-events` and the schema), with their data.
const EVENTS: &[(&str, &[Param])] = &[
    ("STOP", &[]),
    ("RESUME", &[]),
    (
        "RESET",
        &[
            ("guest", Ty::Bool, true),
            ("reason", Ty::Enum(SHUTDOWN_CAUSES), true),
        ],
    ),
    (
        "SHUTDOWN",
        &[
            ("guest", Ty::Bool, true),
            ("reason", Ty::Enum(SHUTDOWN_CAUSES), true),
        ],
    ),
    ("POWERDOWN", &[]),
    ("BALLOON_CHANGE", &[("actual", Ty::Int, true)]),
    ("MIGRATION", &[("status", Ty::Enum(MIGRATION_STATES), true)]),
    ("MIGRATION_PASS", &[("pass", Ty::Int, true)]),
    (
        "JOB_STATUS_CHANGE",
        &[("id", Ty::Str, true), ("status", Ty::Str, true)],
    ),
    (
        "DEVICE_TRAY_MOVED",
        &[
            ("device", Ty::Str, true),
            ("tray-open", Ty::Bool, true),
            ("id", Ty::Str, true),
        ],
    ),
];

/// Every command with its parameters: this table's, then the probing ones.
pub(super) fn specs() -> impl Iterator<Item = &'static (&'static str, &'static [Param])> {
    COMMANDS.iter().chain(super::probe::COMMANDS)
}

/// Every event with its data.
pub(super) fn event_specs() -> impl Iterator<Item = &'static (&'static str, &'static [Param])> {
    EVENTS.iter()
}

/// Command names, for `query-commands` and completion.
pub fn command_names() -> impl Iterator<Item = &'static str> {
    specs().map(|(n, _)| *n)
}

fn ty_name(t: Ty) -> &'static str {
    match t {
        Ty::Str | Ty::Enum(_) => "string",
        Ty::Int => "int",
        Ty::Bool => "boolean",
        Ty::Any => "any",
    }
}

/// Check `args` against the command's parameters, with QEMU's messages.
pub fn check_args(name: &str, args: &Map<String, Value>) -> Result<(), CmdError> {
    let Some((_, params)) = specs().find(|(n, _)| *n == name) else {
        return Err(CmdError::CommandNotFound(format!(
            "The command {name} has not been found"
        )));
    };
    let open = params.iter().any(|p| p.0 == "*");
    for (k, v) in args {
        match params.iter().find(|p| p.0 == k) {
            None if open => {}
            None => return Err(CmdError::generic(format!("Parameter '{k}' is unexpected"))),
            Some((_, ty, _)) => {
                let ok = match ty {
                    Ty::Str => v.is_string(),
                    Ty::Int => v.is_i64() || v.is_u64(),
                    Ty::Bool => v.is_boolean(),
                    Ty::Enum(_) => v.is_string(),
                    Ty::Any => true,
                };
                if !ok {
                    return Err(CmdError::generic(format!(
                        "Invalid parameter type for '{k}', expected: {}",
                        ty_name(*ty)
                    )));
                }
                if let (Ty::Enum(values), Some(v)) = (ty, v.as_str()) {
                    if !values.contains(&v) {
                        return Err(CmdError::generic(format!(
                            "Parameter '{k}' does not accept value '{v}'"
                        )));
                    }
                }
            }
        }
    }
    for (p, _, required) in params.iter() {
        if *required && !args.contains_key(*p) {
            return Err(CmdError::generic(format!("Parameter '{p}' is missing")));
        }
    }
    Ok(())
}

fn s<'a>(args: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    args.get(k).and_then(Value::as_str)
}

/// QMP `netdev_add` arguments as the `-netdev` option string: `type` first, then `id`,
/// then the rest; booleans as on/off, lists (`hostfwd: [{"str": ...}]`) as repeated keys,
/// commas doubled as the option syntax wants.
fn netdev_spec(args: &Map<String, Value>) -> Result<String, CmdError> {
    option_spec(args, "type")
}

/// QMP arguments as an option string whose implied first key is `first` (`type` for
/// `-netdev`, `driver` for `-device`): see [`netdev_spec`].
pub(super) fn option_spec(args: &Map<String, Value>, first: &str) -> Result<String, CmdError> {
    let esc = |v: &str| v.replace(',', ",,");
    let scalar = |k: &str, v: &Value| -> Result<String, CmdError> {
        match v {
            Value::String(t) => Ok(esc(t)),
            Value::Bool(b) => Ok(if *b { "on" } else { "off" }.to_string()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Object(o) => match o.get("str") {
                Some(Value::String(t)) => Ok(esc(t)),
                _ => Err(CmdError::generic(format!(
                    "Invalid parameter type for '{k}', expected: string"
                ))),
            },
            _ => Err(CmdError::generic(format!(
                "Invalid parameter type for '{k}', expected: string"
            ))),
        }
    };
    let mut spec = esc(s(args, first).unwrap_or_default());
    let mut keys: Vec<&String> = args.keys().filter(|k| *k != first).collect();
    keys.sort_by_key(|k| *k != "id");
    for k in keys {
        match &args[k] {
            Value::Array(items) => {
                for v in items {
                    spec.push_str(&format!(",{k}={}", scalar(k, v)?));
                }
            }
            v => spec.push_str(&format!(",{k}={}", scalar(k, v)?)),
        }
    }
    Ok(spec)
}

/// `netdev_add SPEC` (`add`) or `netdev_del ID` through the supervisor's device tree: the
/// backend's node is added (the machine opens it) or removed (its teardown closes it).
/// Err is the message to show.
pub async fn netdev_change(ctx: &MonitorContext, add: bool, arg: String) -> Result<(), String> {
    use crate::supervisor::{BackendKind, HotplugError, Plug, TreeError};
    if add {
        return ctx
            .supervisor
            .add_node(Plug::Netdev(arg))
            .await
            .map_err(|e| e.to_string());
    }
    match ctx
        .supervisor
        .remove_node(&BackendKind::Netdev.id(&arg))
        .await
    {
        Err(HotplugError::Tree(TreeError::UnknownId(_))) => {
            Err(format!("Device '{arg}' not found"))
        }
        r => r.map_err(|e| e.to_string()),
    }
}

/// The QOM path of each possible CPU that is present, by index: the command line's are
/// `/machine/unattached/device[N]`, a hot-plugged one's is its node's.
async fn cpu_paths(ctx: &MonitorContext) -> Result<Vec<Option<String>>, CmdError> {
    let tree = ctx.supervisor.tree().await.map_err(actor_gone)?;
    let n = ctx.cpu_slots.len().max(ctx.topology.len());
    let mut paths: Vec<Option<String>> = (0..n)
        .map(|i| (i < ctx.topology.len()).then(|| format!("/machine/unattached/device[{i}]")))
        .collect();
    for node in tree.iter() {
        if let Some((index, _)) = node.vcpu() {
            if let Some(p) = paths.get_mut(index as usize) {
                *p = Some(crate::supervisor::hotplug::qom_path(node));
            }
        }
    }
    Ok(paths)
}

/// `device_add SPEC` (the `-device` syntax): the machine builds the device and the guest
/// is told (ACPI PCI hotplug). Err is the message to show.
pub async fn device_add(ctx: &MonitorContext, spec: String) -> Result<(), String> {
    ctx.supervisor
        .add_node(crate::supervisor::Plug::Device(spec))
        .await
        .map_err(|e| e.to_string())
}

/// `device_del ID`: the guest is asked to eject the device; it leaves (and
/// `DEVICE_DELETED` is sent) when the guest does.
pub async fn device_del(
    ctx: &MonitorContext,
    id: &str,
) -> Result<(), crate::supervisor::HotplugError> {
    ctx.supervisor.unplug_device(id).await
}

/// `blockdev-del NODE`: a node `blockdev-add` made leaves the tree (its image closes), if
/// no device and no other node uses it; QEMU's messages otherwise.
pub async fn blockdev_del(ctx: &MonitorContext, name: &str) -> Result<(), CmdError> {
    use crate::supervisor::BackendKind;
    let tree = ctx.supervisor.tree().await.map_err(actor_gone)?;
    let id = BackendKind::Block.id(name);
    // A `drive_add` drive's node-name is generated (`#blockN`): not found by its id.
    let node = tree
        .get(&id)
        .filter(|n| !n.auto_del)
        .ok_or_else(|| CmdError::generic(format!("Failed to find node with node-name='{name}'")))?;
    if let Some(user) = node.parent.as_deref().and_then(|p| tree.get(p)) {
        return Err(CmdError::generic(if user.backend.is_some() {
            format!("Block device {name} is in use")
        } else {
            format!("Node {name} is in use")
        }));
    }
    if node.teardown.is_none() {
        return Err(CmdError::generic(format!(
            "Node {name} is not owned by the monitor"
        )));
    }
    ctx.supervisor
        .remove_node(&id)
        .await
        .map_err(|e| CmdError::Generic(e.to_string()))
}

/// HMP `drive_add` (`OPTS` in the `-drive` syntax; only `if=none`) and `drive_del ID` of
/// such a drive while no device uses it. Err is the message to show.
pub async fn drive_change(ctx: &MonitorContext, add: bool, arg: String) -> Result<(), String> {
    use crate::supervisor::{BackendKind, Plug};
    if add {
        return ctx
            .supervisor
            .add_node(Plug::Drive(arg))
            .await
            .map_err(|e| e.to_string());
    }
    let tree = ctx.supervisor.tree().await.map_err(|e| e.to_string())?;
    let id = BackendKind::Block.id(&arg);
    let node = tree
        .get(&id)
        .filter(|n| n.auto_del)
        .ok_or_else(|| format!("Device '{arg}' not found"))?;
    if let Some(user) = &node.parent {
        return Err(format!(
            "drive '{arg}' is in use by '{user}': troupe cannot take a drive from a running device yet (device_del removes the drive with it)"
        ));
    }
    ctx.supervisor
        .remove_node(&id)
        .await
        .map_err(|e| e.to_string())
}

/// A removable-media operation through the drives actor.
pub async fn media(ctx: &MonitorContext, target: MediaTarget, op: MediaOp) -> Result<(), CmdError> {
    ctx.drives.media(target, op).await
}

fn media_target(args: &Map<String, Value>) -> MediaTarget {
    MediaTarget {
        device: s(args, "device").map(str::to_string),
        id: s(args, "id").map(str::to_string),
    }
}

fn actor_gone<E: std::fmt::Display>(e: E) -> CmdError {
    CmdError::generic(format!("the VM supervisor did not answer: {e}"))
}

/// Run one command. HMP calls this too, then formats the result.
pub async fn execute(ctx: &MonitorContext, name: &str, args: &Map<String, Value>) -> CmdResult {
    check_args(name, args)?;
    if let Some(res) = super::migrate::qmp(ctx, name, args).await {
        return res;
    }
    if let Some(res) = super::jobs::qmp(ctx, name, args).await {
        return res;
    }
    if let Some(res) = super::memdev::qmp(ctx, name, args).await {
        return res;
    }
    match name {
        "qmp_capabilities" => Ok(json!({})),
        "query-version" => Ok(version()),
        "query-status" => {
            let st = ctx.supervisor.status().await.map_err(actor_gone)?;
            Ok(json!({
                "status": st.qmp_name(),
                "singlestep": false,
                "running": st == RunState::Running,
            }))
        }
        "query-kvm" => Ok(json!({"enabled": true, "present": true})),
        "query-name" => Ok(match &ctx.name {
            Some(n) => json!({ "name": n }),
            None => json!({}),
        }),
        "query-uuid" => Ok(json!({
            "UUID": ctx.uuid.clone().unwrap_or_else(|| "00000000-0000-0000-0000-000000000000".into())
        })),
        "query-cpus-fast" => {
            let vcpus = ctx.supervisor.vcpus().await.map_err(actor_gone)?;
            let paths = cpu_paths(ctx).await?;
            Ok(Value::Array(
                vcpus
                    .iter()
                    .map(|v| {
                        let i = v.index() as usize;
                        let (socket, core, thread) = ctx
                            .cpu_slots
                            .get(i)
                            .or_else(|| ctx.topology.get(i))
                            .copied()
                            .unwrap_or((0, i as u32, 0));
                        let path = paths
                            .get(i)
                            .cloned()
                            .flatten()
                            .unwrap_or_else(|| format!("/machine/unattached/device[{i}]"));
                        json!({
                            "thread-id": v.thread_id(),
                            "props": {"core-id": core, "thread-id": thread, "socket-id": socket},
                            "qom-path": path,
                            "cpu-index": i,
                            "target": "x86_64",
                        })
                    })
                    .collect(),
            ))
        }
        "query-hotpluggable-cpus" => {
            let paths = cpu_paths(ctx).await?;
            let slots = if ctx.cpu_slots.is_empty() {
                &ctx.topology
            } else {
                &ctx.cpu_slots
            };
            // As QEMU: last possible CPU first; a free slot has no qom-path.
            Ok(Value::Array(
                slots
                    .iter()
                    .enumerate()
                    .rev()
                    .map(|(i, (socket, core, thread))| {
                        let mut c = json!({
                            "props": {"core-id": core, "thread-id": thread, "socket-id": socket},
                            "vcpus-count": 1,
                            "type": ctx.cpu_type,
                        });
                        if let Some(Some(p)) = paths.get(i) {
                            c["qom-path"] = json!(p);
                        }
                        c
                    })
                    .collect(),
            ))
        }
        "query-pci" => Ok(super::tree_view::query_pci(
            &ctx.supervisor.tree().await.map_err(actor_gone)?,
        )),
        "query-block" => ctx.drives.query_block().await.map_err(actor_gone),
        "query-blockstats" => ctx.drives.query_blockstats().await.map_err(actor_gone),
        // troupe runs no background jobs (no block-commit/mirror/stream, no job-based
        // snapshot-save): the lists are truthfully empty. libvirt asks for them when it
        // reconnects to a running domain.
        // No block job runs in troupe (snapshot jobs are in jobs.rs).
        "query-block-jobs" => Ok(json!([])),
        "qom-list" => super::qom::qom_list(
            &ctx.supervisor.tree().await.map_err(actor_gone)?,
            s(args, "path").unwrap_or_default(),
        ),
        "qom-get" => super::qom::qom_get(
            &ctx.supervisor.tree().await.map_err(actor_gone)?,
            s(args, "path").unwrap_or_default(),
            s(args, "property").unwrap_or_default(),
        ),
        // `flat` only matters for backing chains nested in `image`; troupe's nodes list
        // none, so both forms are the same list.
        "query-named-block-nodes" => ctx
            .drives
            .query_named_block_nodes()
            .await
            .map_err(actor_gone),
        "query-vnc" => Ok(match &ctx.vnc {
            Some(v) => v.info().to_query_vnc(),
            None => json!({"enabled": false}),
        }),
        "query-chardev" => ctx.chipset.query_chardev().await.map_err(actor_gone),
        "query-commands" => Ok(Value::Array(
            command_names().map(|n| json!({ "name": n })).collect(),
        )),
        "query-events" => Ok(Value::Array(
            EVENTS.iter().map(|(n, _)| json!({ "name": n })).collect(),
        )),
        "query-mice" => Ok(query_mice(ctx)),
        "query-target" => Ok(json!({"arch": "x86_64"})),
        "query-machines" => Ok(ctx.catalog.machines()),
        "balloon" => {
            // QEMU checks the value before looking for the device.
            let target = args.get("value").and_then(Value::as_i64).unwrap_or(0);
            if target <= 0 {
                return Err(CmdError::generic("Parameter 'target' expects a size"));
            }
            let b = ctx.balloon.as_ref().ok_or_else(no_balloon)?;
            b.set_target(target as u64);
            Ok(json!({}))
        }
        "query-balloon" => {
            let b = ctx.balloon.as_ref().ok_or_else(no_balloon)?;
            Ok(json!({ "actual": b.actual() }))
        }
        "stop" => lifecycle(ctx.supervisor.stop().await),
        "cont" => lifecycle(ctx.supervisor.cont().await),
        "system_reset" => lifecycle(ctx.supervisor.reset().await),
        "system_powerdown" => lifecycle(ctx.supervisor.powerdown().await),
        "quit" => {
            // The reply goes out first; the supervisor ends the process right after.
            let sup = ctx.supervisor.clone();
            spawn_task(
                &tokio::runtime::Handle::current(),
                &ctx.registry,
                "monitor.quit",
                "monitor",
                None,
                async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let _ = sup.quit().await;
                },
            );
            Ok(json!({}))
        }
        "screendump" => {
            let file = s(args, "filename").unwrap_or_default();
            let format = match s(args, "format") {
                None | Some("ppm") => DumpFormat::Ppm,
                Some("png") => DumpFormat::Png,
                Some(f) => {
                    return Err(CmdError::generic(format!(
                        "Parameter 'format' does not accept value '{f}'"
                    )))
                }
            };
            if let Some(d) = s(args, "device") {
                return Err(CmdError::DeviceNotFound(format!("Device '{d}' not found")));
            }
            screendump(ctx, Path::new(file), format)
        }
        "send-key" => {
            let keys = parse_key_values(args.get("keys").unwrap_or(&Value::Null))?;
            let hold = args.get("hold-time").and_then(Value::as_u64).unwrap_or(100);
            send_keys(ctx, keys, hold).await?;
            Ok(json!({}))
        }
        // Served by the QMP session (HMP calls `execute`, so this would recurse).
        "human-monitor-command" => Err(CmdError::generic(
            "human-monitor-command is only available over QMP",
        )),
        "set_password" => {
            let protocol = s(args, "protocol").unwrap_or_default();
            set_password(ctx, protocol, s(args, "password").unwrap_or_default())?;
            Ok(json!({}))
        }
        "change-vnc-password" => {
            set_password(ctx, "vnc", s(args, "password").unwrap_or_default())?;
            Ok(json!({}))
        }
        "expire_password" => {
            let protocol = s(args, "protocol").unwrap_or_default();
            expire_password(ctx, protocol, s(args, "time").unwrap_or_default())?;
            Ok(json!({}))
        }
        "device_add" => {
            device_add(ctx, option_spec(args, "driver")?)
                .await
                .map_err(CmdError::Generic)?;
            Ok(json!({}))
        }
        "device_del" => match device_del(ctx, s(args, "id").unwrap_or_default()).await {
            Ok(()) => Ok(json!({})),
            Err(e @ crate::supervisor::HotplugError::DeviceNotFound(_)) => {
                Err(CmdError::DeviceNotFound(e.to_string()))
            }
            Err(e) => Err(CmdError::Generic(e.to_string())),
        },
        "set_link" => {
            let name = s(args, "name").unwrap_or_default();
            let up = args.get("up").and_then(Value::as_bool).unwrap_or(true);
            ctx.net
                .set_link(name, up)
                .await
                .map_err(CmdError::Generic)?;
            Ok(json!({}))
        }
        "announce-self" => {
            // QEMU's defaults (its announce-* migration parameters).
            let int = |k: &str, d: u64| args.get(k).and_then(Value::as_u64).unwrap_or(d);
            let interfaces = match args.get("interfaces") {
                None => None,
                Some(Value::Array(a)) => Some(
                    a.iter()
                        .map(|v| v.as_str().map(str::to_string))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| {
                            CmdError::generic("Invalid parameter type for 'interfaces', expected: array of strings")
                        })?,
                ),
                Some(_) => {
                    return Err(CmdError::generic(
                        "Invalid parameter type for 'interfaces', expected: array",
                    ))
                }
            };
            let schedule = crate::monitor::Announce {
                initial_ms: int("initial", 50),
                max_ms: int("max", 550),
                rounds: int("rounds", 5),
                step_ms: int("step", 100),
                interfaces,
            };
            ctx.net
                .announce_self(schedule)
                .await
                .map_err(CmdError::Generic)?;
            Ok(json!({}))
        }
        "query-rx-filter" => ctx
            .net
            .query_rx_filter(s(args, "name"))
            .await
            .map_err(CmdError::Generic),
        "netdev_add" | "netdev_del" => {
            let arg = if name == "netdev_add" {
                netdev_spec(args)?
            } else {
                s(args, "id").unwrap_or_default().to_string()
            };
            netdev_change(ctx, name == "netdev_add", arg)
                .await
                .map_err(CmdError::Generic)?;
            Ok(json!({}))
        }
        "blockdev-add" => {
            ctx.supervisor
                .add_node(crate::supervisor::Plug::Blockdev(
                    Value::Object(args.clone()).to_string(),
                ))
                .await
                .map_err(|e| CmdError::Generic(e.to_string()))?;
            Ok(json!({}))
        }
        "blockdev-del" => {
            blockdev_del(ctx, s(args, "node-name").unwrap_or_default()).await?;
            Ok(json!({}))
        }
        // A QMP session over a Unix socket answers `getfd` itself (it holds what was
        // passed); anywhere else no descriptor can have come with the command.
        "getfd" => ctx
            .fds
            .getfd(None, s(args, "fdname").unwrap_or_default())
            .map(|_| json!({})),
        "closefd" => ctx
            .fds
            .closefd(s(args, "fdname").unwrap_or_default())
            .map(|_| json!({})),
        "eject"
        | "blockdev-open-tray"
        | "blockdev-close-tray"
        | "blockdev-remove-medium"
        | "blockdev-insert-medium"
        | "blockdev-change-medium" => {
            let force = args.get("force").and_then(Value::as_bool).unwrap_or(false);
            let op = match name {
                "eject" => MediaOp::Eject { force },
                "blockdev-open-tray" => MediaOp::OpenTray { force },
                "blockdev-close-tray" => MediaOp::CloseTray,
                "blockdev-remove-medium" => MediaOp::RemoveMedium,
                "blockdev-insert-medium" => MediaOp::InsertMedium {
                    node: s(args, "node-name").unwrap_or_default().to_string(),
                },
                _ => MediaOp::Change {
                    filename: s(args, "filename").unwrap_or_default().to_string(),
                    format: s(args, "format").map(str::to_string),
                    read_only_mode: s(args, "read-only-mode").map(str::to_string),
                    force,
                },
            };
            media(ctx, media_target(args), op).await.map(|()| json!({}))
        }
        "calc-dirty-rate" => {
            let mode = match s(args, "mode") {
                None => super::dirty::Mode::PageSampling,
                Some(m) => super::dirty::Mode::parse(m).ok_or_else(|| {
                    CmdError::generic(format!("Parameter 'mode' does not accept value '{m}'"))
                })?,
            };
            let secs = args.get("calc-time").and_then(Value::as_i64).unwrap_or(0);
            super::dirty::start(
                ctx,
                u64::try_from(secs).unwrap_or(0),
                args.get("sample-pages").and_then(Value::as_u64),
                mode,
            )
            .await
            .map_err(|e| CmdError::generic(e.to_string()))?;
            Ok(json!({}))
        }
        "query-dirty-rate" => Ok(super::dirty::query(&ctx.dirty_rate)),
        other => super::probe::execute(ctx, other, args).unwrap_or_else(|| {
            Err(CmdError::CommandNotFound(format!(
                "The command {other} has not been found"
            )))
        }),
    }
}

pub fn version() -> Value {
    let (major, minor, micro) = QEMU_VERSION;
    json!({
        "qemu": {"micro": micro, "minor": minor, "major": major},
        "package": PACKAGE,
    })
}

fn lifecycle(r: Result<Result<(), String>, crate::runtime::ActorError>) -> CmdResult {
    match r {
        Ok(Ok(())) => Ok(json!({})),
        Ok(Err(e)) => Err(CmdError::Generic(e)),
        Err(e) => Err(actor_gone(e)),
    }
}

fn screendump(ctx: &MonitorContext, path: &Path, format: DumpFormat) -> CmdResult {
    let Some(display) = &ctx.display else {
        return Err(CmdError::generic(
            "There is no QemuConsole I can screendump from.",
        ));
    };
    display
        .screendump(path, format)
        .map_err(|e| CmdError::Generic(e.to_string()))?;
    Ok(json!({}))
}

/// A key as `send-key` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyValue {
    Key(KeyCode),
    Number(u16),
}

fn parse_key_values(v: &Value) -> Result<Vec<KeyValue>, CmdError> {
    let Some(list) = v.as_array() else {
        return Err(CmdError::generic(
            "Invalid parameter type for 'keys', expected: array",
        ));
    };
    if list.is_empty() {
        return Err(CmdError::generic("Parameter 'keys' is missing"));
    }
    list.iter()
        .enumerate()
        .map(|(i, k)| {
            let ty = k.get("type").and_then(Value::as_str);
            let data = k.get("data");
            match (ty, data) {
                (Some("qcode"), Some(Value::String(name))) => KeyCode::from_qcode_name(name)
                    .map(KeyValue::Key)
                    .ok_or_else(|| {
                        CmdError::generic(format!(
                            "Parameter 'keys[{i}].data' does not accept value '{name}'"
                        ))
                    }),
                (Some("number"), Some(n)) => n
                    .as_u64()
                    .filter(|n| *n <= 0xffff)
                    .map(|n| KeyValue::Number(n as u16))
                    .ok_or_else(|| {
                        CmdError::generic(format!(
                            "Invalid parameter type for 'keys[{i}].data', expected: integer"
                        ))
                    }),
                (Some(t), _) if t != "qcode" && t != "number" => Err(CmdError::generic(format!(
                    "Parameter 'keys[{i}].type' does not accept value '{t}'"
                ))),
                _ => Err(CmdError::generic(format!(
                    "Parameter 'keys[{i}].data' is missing"
                ))),
            }
        })
        .collect()
}

/// Press the keys in order, hold them `hold_ms`, release in reverse order. Returns once
/// the presses are queued; the release happens in the background (as QEMU does), and a
/// following key sequence waits for it.
pub async fn send_keys(ctx: &MonitorContext, keys: Vec<KeyValue>, hold_ms: u64) -> CmdResult {
    let Some(input) = ctx.input.clone() else {
        return Err(CmdError::generic("no keyboard is attached to this machine"));
    };
    let guard = ctx.keys.clone().lock_owned().await;
    let ev = |k: KeyValue, down| match k {
        KeyValue::Key(key) => InputEvent::Key { key, down },
        KeyValue::Number(number) => InputEvent::RawKey { number, down },
    };
    for k in &keys {
        input.send(ev(*k, true));
    }
    let release = async move {
        let _guard = guard;
        tokio::time::sleep(Duration::from_millis(hold_ms)).await;
        for k in keys.iter().rev() {
            input.send(ev(*k, false));
        }
    };
    spawn_task(
        &tokio::runtime::Handle::current(),
        &ctx.registry,
        "sendkey.release",
        "monitor",
        None,
        release,
    );
    Ok(json!({}))
}

/// Relative mouse motion with the buttons currently held.
pub fn mouse_move(ctx: &MonitorContext, dx: i32, dy: i32, dz: i32) -> CmdResult {
    let Some(input) = &ctx.input else {
        return Err(CmdError::generic("no mouse is attached to this machine"));
    };
    let buttons = Buttons(ctx.buttons.load(Ordering::Relaxed));
    input.send(InputEvent::PointerRel {
        dx,
        dy,
        dz,
        buttons,
    });
    Ok(json!({}))
}

/// `mouse_button STATE`: 1 left, 2 middle, 4 right (QEMU's HMP numbering, which is also
/// [`Buttons`]' layout).
pub fn mouse_button(ctx: &MonitorContext, state: u8) -> CmdResult {
    let Some(input) = &ctx.input else {
        return Err(CmdError::generic("no mouse is attached to this machine"));
    };
    let state = state & (Buttons::LEFT | Buttons::MIDDLE | Buttons::RIGHT);
    ctx.buttons.store(state, Ordering::Relaxed);
    input.send(InputEvent::PointerRel {
        dx: 0,
        dy: 0,
        dz: 0,
        buttons: Buttons(state),
    });
    Ok(json!({}))
}

fn vnc_protocol<'a>(
    ctx: &'a MonitorContext,
    protocol: &str,
) -> Result<&'a crate::vnc::VncHandle, CmdError> {
    match protocol {
        "vnc" => ctx
            .vnc
            .as_ref()
            .ok_or_else(|| CmdError::generic("Could not set password")),
        "spice" => Err(CmdError::generic("SPICE is not in use")),
        other => Err(CmdError::generic(format!(
            "Parameter 'protocol' does not accept value '{other}'"
        ))),
    }
}

pub fn set_password(ctx: &MonitorContext, protocol: &str, password: &str) -> CmdResult {
    vnc_protocol(ctx, protocol)?
        .set_password(password)
        .map_err(|e| CmdError::Generic(e.to_string()))?;
    Ok(json!({}))
}

pub fn expire_password(ctx: &MonitorContext, protocol: &str, time: &str) -> CmdResult {
    let vnc = vnc_protocol(ctx, protocol)?;
    let when = PasswordExpiry::parse(time).map_err(|e| CmdError::Generic(e.to_string()))?;
    vnc.expire_password(when)
        .map_err(|e| CmdError::Generic(e.to_string()))?;
    Ok(json!({}))
}

/// A lifecycle notification as a QMP event (without the timestamp).
pub fn event_json(n: &crate::supervisor::VmNotification) -> (String, Option<Value>) {
    use crate::supervisor::VmNotification as N;
    match n {
        N::Stop => ("STOP".into(), None),
        N::Resume => ("RESUME".into(), None),
        N::Reset { guest, reason } => (
            "RESET".into(),
            Some(json!({"guest": guest, "reason": reason})),
        ),
        N::Shutdown { guest, reason } => (
            "SHUTDOWN".into(),
            Some(json!({"guest": guest, "reason": reason})),
        ),
        N::Powerdown => ("POWERDOWN".into(), None),
        N::Other { event, data } => (event.clone(), serde_json::from_str(data).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn netdev_add_arguments_become_the_netdev_option_string() {
        let a = args(json!({
            "hostfwd": [{"str": "tcp::2222-:22"}, "udp::53-:53"],
            "restrict": true,
            "type": "user",
            "hostname": "a,b",
            "id": "n1",
        }));
        assert_eq!(
            netdev_spec(&a).unwrap(),
            "user,id=n1,hostfwd=tcp::2222-:22,hostfwd=udp::53-:53,restrict=on,hostname=a,,b"
        );
        let bad = args(json!({"type": "user", "id": "n1", "net": {"x": 1}}));
        assert_eq!(
            netdev_spec(&bad).unwrap_err().desc(),
            "Invalid parameter type for 'net', expected: string"
        );
    }

    #[test]
    fn migration_events_list_every_state_a_migration_reaches() {
        use crate::migration::Status;
        for st in [
            Status::None,
            Status::Setup,
            Status::Active,
            Status::Device,
            Status::Completed,
            Status::Failed,
            Status::Cancelling,
            Status::Cancelled,
        ] {
            assert!(MIGRATION_STATES.contains(&st.name()), "{}", st.name());
        }
    }

    #[test]
    fn parameters_are_checked_like_qemu() {
        assert_eq!(
            check_args("query-status", &args(json!({"x": 1}))),
            Err(CmdError::generic("Parameter 'x' is unexpected"))
        );
        assert_eq!(
            check_args("screendump", &args(json!({}))),
            Err(CmdError::generic("Parameter 'filename' is missing"))
        );
        assert_eq!(
            check_args("screendump", &args(json!({"filename": 3}))),
            Err(CmdError::generic(
                "Invalid parameter type for 'filename', expected: string"
            ))
        );
        assert_eq!(
            check_args("nope", &Map::new()).unwrap_err().class(),
            "CommandNotFound"
        );
        assert!(check_args("device_add", &args(json!({"driver": "e1000", "id": "n"}))).is_ok());
    }

    #[test]
    fn key_values_parse_and_reject() {
        let k = parse_key_values(&json!([{"type": "qcode", "data": "ctrl"},
                                         {"type": "number", "data": 0x1e}]))
        .unwrap();
        assert_eq!(
            k[0],
            KeyValue::Key(KeyCode::from_qcode_name("ctrl").unwrap())
        );
        assert_eq!(k[1], KeyValue::Number(0x1e));
        assert_eq!(
            parse_key_values(&json!([{"type": "qcode", "data": "nokey"}]))
                .unwrap_err()
                .desc(),
            "Parameter 'keys[0].data' does not accept value 'nokey'"
        );
        assert!(parse_key_values(&json!("a")).is_err());
        assert!(parse_key_values(&json!([])).is_err());
    }
}

/// `query-mice`: the PS/2 mouse (index 2, as QEMU numbers it), and the USB pointing
/// devices after it (3, 4, ... in the order they were plugged in, keyboards counted as
/// QEMU registers them too). The newest USB pointing device takes the pointer, as in
/// QEMU once the guest polls it; without one, the PS/2 mouse does.
fn query_mice(ctx: &MonitorContext) -> Value {
    let Some(input) = &ctx.input else {
        return json!([]);
    };
    let usb = ctx.usb.as_ref().map(|u| u.devices()).unwrap_or_default();
    let mut mice = Vec::new();
    let mut current_taken = false;
    for (i, d) in usb.iter().enumerate().rev() {
        let Some(name) = d.kind.mouse_name() else {
            continue;
        };
        mice.push(json!({
            "name": name,
            "index": 3 + i,
            "current": !current_taken,
            "absolute": d.kind == devices::usb::hid::HidKind::Tablet,
        }));
        current_taken = true;
    }
    mice.push(json!({
        "name": "QEMU PS/2 Mouse",
        "index": 2,
        "current": !current_taken,
        "absolute": !current_taken && input.absolute(),
    }));
    Value::Array(mice)
}
