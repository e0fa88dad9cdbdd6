//! Memory devices at the monitor: `object_add`/`object_del` of memory backends (through
//! the supervisor's tree, as `/objects/ID` nodes), and what QEMU reports about them and the
//! DIMMs that map them — `query-memory-devices` / `info memory-devices`, `query-memdev` /
//! `info memdev`, `query-memory-size-summary` / `info memory_size_summary`,
//! `query-acpi-ospm-status` — from the machine's [`MemoryDevices`].

use serde_json::{json, Map, Value};

use super::commands::CmdError;
use super::MonitorContext;
use crate::supervisor::{BackendKind, HotplugError, Plug, TreeError};

/// A memory backend as `query-memdev` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memdev {
    pub id: String,
    pub size: u64,
    pub merge: bool,
    pub dump: bool,
    pub prealloc: bool,
    pub share: bool,
}

/// A plugged DIMM as `query-memory-devices` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dimm {
    /// Its `id=`, if it has one.
    pub id: Option<String>,
    pub addr: u64,
    pub size: u64,
    pub slot: u32,
    /// The backend's id.
    pub memdev: String,
    /// Plugged at run time (`device_add`), not by the command line.
    pub hotplugged: bool,
}

/// A DIMM slot's last `_OST` report, as `query-acpi-ospm-status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ospm {
    pub slot: u32,
    /// The `id=` of the DIMM in it, if any.
    pub device: Option<String>,
    pub source: u32,
    pub status: u32,
}

/// The machine's memory devices, for the monitor to report.
pub trait MemoryDevices: Send + Sync {
    /// The memory backends `object_add` made, by id.
    fn memdevs(&self) -> Vec<Memdev>;
    /// The plugged DIMMs, by slot.
    fn dimms(&self) -> Vec<Dimm>;
    /// Every DIMM slot's `_OST` state.
    fn ospm(&self) -> Vec<Ospm>;
    /// The RAM the machine started with (`-m`).
    fn base_memory(&self) -> u64;
}

/// QMP commands of this module; None: not one of them.
pub async fn qmp(
    ctx: &MonitorContext,
    name: &str,
    args: &Map<String, Value>,
) -> Option<Result<Value, CmdError>> {
    let s = |k: &str| args.get(k).and_then(Value::as_str).unwrap_or_default();
    Some(match name {
        "object-add" => match super::commands::option_spec(args, "qom-type") {
            Ok(spec) => object_add(ctx, spec).await.map(|()| json!({})),
            Err(e) => Err(e),
        },
        "object-del" => object_del(ctx, s("id")).await.map(|()| json!({})),
        "query-memory-devices" => Ok(Value::Array(
            devices(ctx)
                .map(|d| d.dimms())
                .unwrap_or_default()
                .iter()
                .map(|d| {
                    let mut data = json!({
                        "memdev": format!("/objects/{}", d.memdev),
                        "hotplugged": d.hotplugged,
                        "addr": d.addr,
                        "hotpluggable": true,
                        "size": d.size,
                        "slot": d.slot,
                        "node": 0,
                    });
                    if let Some(id) = &d.id {
                        data["id"] = json!(id);
                    }
                    json!({ "type": "dimm", "data": data })
                })
                .collect(),
        )),
        "query-memdev" => Ok(Value::Array(
            devices(ctx)
                .map(|d| d.memdevs())
                .unwrap_or_default()
                .iter()
                .map(|m| {
                    json!({
                        "share": m.share,
                        "reserve": true,
                        "prealloc": m.prealloc,
                        "host-nodes": [],
                        "size": m.size,
                        "merge": m.merge,
                        "dump": m.dump,
                        "policy": "default",
                        "id": m.id,
                    })
                })
                .collect(),
        )),
        "query-memory-size-summary" => Ok(match devices(ctx) {
            Some(d) => json!({
                "base-memory": d.base_memory(),
                "plugged-memory": d.dimms().iter().map(|d| d.size).sum::<u64>(),
            }),
            None => json!({ "base-memory": ram_size(ctx) }),
        }),
        "query-acpi-ospm-status" => Ok(Value::Array(
            devices(ctx)
                .map(|d| d.ospm())
                .unwrap_or_default()
                .iter()
                .map(|o| {
                    let mut v = json!({
                        "source": o.source,
                        "status": o.status,
                        "slot": o.slot.to_string(),
                        "slot-type": "DIMM",
                    });
                    if let Some(id) = &o.device {
                        v["device"] = json!(id);
                    }
                    v
                })
                .collect(),
        )),
        _ => return None,
    })
}

fn devices(ctx: &MonitorContext) -> Option<&dyn MemoryDevices> {
    ctx.memory_devices.as_deref()
}

fn ram_size(ctx: &MonitorContext) -> u64 {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    ctx.mem.iter().map(|r| r.len()).sum()
}

/// `object_add TYPE,id=ID,...`: the machine makes the object; its node is `/objects/ID`.
pub async fn object_add(ctx: &MonitorContext, spec: String) -> Result<(), CmdError> {
    ctx.supervisor
        .add_node(Plug::Object(spec))
        .await
        .map_err(|e| CmdError::generic(e.to_string()))
}

/// `object_del ID`: refused while a device uses it, as QEMU.
pub async fn object_del(ctx: &MonitorContext, id: &str) -> Result<(), CmdError> {
    let node = BackendKind::Memory.id(id);
    let tree = ctx
        .supervisor
        .tree()
        .await
        .map_err(|e| CmdError::generic(format!("the VM supervisor did not answer: {e}")))?;
    if tree.iter().any(|n| n.uses.contains(&node)) {
        return Err(CmdError::generic(format!(
            "object '{id}' is in use, can not be deleted"
        )));
    }
    match ctx.supervisor.remove_node(&node).await {
        Err(HotplugError::Tree(TreeError::UnknownId(_))) => {
            Err(CmdError::generic(format!("object '{id}' not found")))
        }
        r => r.map_err(|e| CmdError::generic(e.to_string())),
    }
}

/// `info memory-devices`, from `query-memory-devices`' answer.
pub fn hmp_memory_devices(v: &Value) -> String {
    let mut out = String::new();
    for d in v.as_array().into_iter().flatten() {
        let data = &d["data"];
        out.push_str(&format!(
            "Memory device [dimm]: \"{}\"\n  addr: {:#x}\n  slot: {}\n  node: {}\n  size: {}\n  \
             memdev: {}\n  hotplugged: {}\n  hotpluggable: {}\n",
            data["id"].as_str().unwrap_or_default(),
            data["addr"].as_u64().unwrap_or_default(),
            data["slot"],
            data["node"],
            data["size"],
            data["memdev"].as_str().unwrap_or_default(),
            data["hotplugged"],
            data["hotpluggable"],
        ));
    }
    out
}

/// `info memdev`, from `query-memdev`'s answer (QEMU ends it with an empty line).
pub fn hmp_memdev(v: &Value) -> String {
    let mut out = String::new();
    for m in v.as_array().into_iter().flatten() {
        out.push_str(&format!(
            "memory backend: {}\n  size:  {}\n  merge: {}\n  dump: {}\n  prealloc: {}\n  \
             share: {}\n  reserve: {}\n  policy: {}\n  host nodes: \n",
            m["id"].as_str().unwrap_or_default(),
            m["size"],
            m["merge"],
            m["dump"],
            m["prealloc"],
            m["share"],
            m["reserve"],
            m["policy"].as_str().unwrap_or_default(),
        ));
    }
    out.push('\n');
    out
}

/// `info memory_size_summary`, from `query-memory-size-summary`'s answer.
pub fn hmp_size_summary(v: &Value) -> String {
    let mut out = format!("base memory: {}\n", v["base-memory"]);
    if let Some(p) = v.get("plugged-memory") {
        out.push_str(&format!("plugged memory: {p}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmp_texts_are_qemus() {
        let devs = json!([{"type": "dimm", "data": {"memdev": "/objects/m1", "hotplugged": true,
            "addr": 5368709120u64, "hotpluggable": true, "size": 268435456, "slot": 0,
            "node": 0, "id": "dimm1"}}]);
        assert_eq!(
            hmp_memory_devices(&devs),
            "Memory device [dimm]: \"dimm1\"\n  addr: 0x140000000\n  slot: 0\n  node: 0\n  \
             size: 268435456\n  memdev: /objects/m1\n  hotplugged: true\n  hotpluggable: true\n"
        );
        let mem = json!([{"share": false, "reserve": true, "prealloc": false, "host-nodes": [],
            "size": 268435456, "merge": true, "dump": true, "policy": "default", "id": "m1"}]);
        assert_eq!(
            hmp_memdev(&mem),
            "memory backend: m1\n  size:  268435456\n  merge: true\n  dump: true\n  \
             prealloc: false\n  share: false\n  reserve: true\n  policy: default\n  \
             host nodes: \n\n"
        );
        assert_eq!(
            hmp_size_summary(&json!({"base-memory": 1073741824u64, "plugged-memory": 268435456})),
            "base memory: 1073741824\nplugged memory: 268435456\n"
        );
    }
}
