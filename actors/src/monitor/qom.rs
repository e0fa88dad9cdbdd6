//! `qom-list` and `qom-get` over the device tree: the part of QEMU's object tree a
//! management tool walks to find a device by its `id=` (libvirt looks up its video card
//! under `/machine/peripheral` and reads `vgamem_mb`).
//!
//! Paths: `/machine` with its containers `peripheral` (devices with an `id=`) and
//! `peripheral-anon` (devices without one); a device is `/machine/peripheral/ID`, its
//! properties its `type` and what `info qtree` shows for it. Everything else is QEMU's
//! "not found".

use serde_json::{json, Value};

use super::commands::CmdError;
use crate::supervisor::{DeviceTree, Node};

const PERIPHERAL: &str = "/machine/peripheral/";
const ANON: &str = "/machine/peripheral-anon/";

fn not_found(path: &str) -> CmdError {
    CmdError::DeviceNotFound(format!("Device '{path}' not found"))
}

/// The device at a QOM path.
fn device<'a>(tree: &'a DeviceTree, path: &str) -> Option<&'a Node> {
    let path = path.trim_end_matches('/');
    tree.iter().filter(|n| n.backend.is_none()).find(|n| {
        if n.user_id {
            path.strip_prefix(PERIPHERAL) == Some(n.id.as_str())
        } else {
            n.id.starts_with(ANON) && path == n.id
        }
    })
}

/// A property value as the tree holds it for `info qtree` (`16 (0x10)`, `"text"`,
/// `true`), as the JSON QEMU's `qom-get` answers.
fn prop_value(text: &str) -> Value {
    if let Some(s) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        return json!(s);
    }
    match text {
        "true" | "on" => return json!(true),
        "false" | "off" => return json!(false),
        _ => {}
    }
    let first = text.split_whitespace().next().unwrap_or_default();
    match first.parse::<u64>() {
        Ok(n) => json!(n),
        Err(_) => json!(text),
    }
}

fn prop_type(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "bool",
        Value::Number(_) => "uint64",
        _ => "str",
    }
}

/// `qom-list PATH`.
pub fn qom_list(tree: &DeviceTree, path: &str) -> Result<Value, CmdError> {
    let children = |user: bool| -> Vec<Value> {
        tree.iter()
            .filter(|n| n.backend.is_none() && n.user_id == user)
            .filter(|n| user || n.id.starts_with(ANON))
            .map(|n| {
                let name = n.id.strip_prefix(ANON).unwrap_or(&n.id);
                json!({"name": name, "type": format!("child<{}>", n.driver)})
            })
            .collect()
    };
    let mut out = vec![json!({"name": "type", "type": "string"})];
    match path.trim_end_matches('/') {
        "" => out.push(json!({"name": "machine", "type": "child<pc-i440fx-7.2-machine>"})),
        "/machine" => {
            out.push(json!({"name": "peripheral", "type": "child<container>"}));
            out.push(json!({"name": "peripheral-anon", "type": "child<container>"}));
        }
        "/machine/peripheral" => out.extend(children(true)),
        "/machine/peripheral-anon" => out.extend(children(false)),
        p => {
            let n = device(tree, p).ok_or_else(|| not_found(p))?;
            for (name, value) in &n.props {
                out.push(json!({"name": name, "type": prop_type(&prop_value(value))}));
            }
        }
    }
    Ok(Value::Array(out))
}

/// `qom-get PATH PROPERTY`.
pub fn qom_get(tree: &DeviceTree, path: &str, property: &str) -> Result<Value, CmdError> {
    let container = matches!(
        path.trim_end_matches('/'),
        "/machine/peripheral" | "/machine/peripheral-anon"
    );
    if container && property == "type" {
        return Ok(json!("container"));
    }
    let n = device(tree, path).ok_or_else(|| not_found(path))?;
    if property == "type" {
        return Ok(json!(n.driver));
    }
    n.props
        .iter()
        .find(|(name, _)| name == property)
        .map(|(_, v)| prop_value(v))
        .ok_or_else(|| CmdError::Generic(format!("Property '{}.{property}' not found", n.driver)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> DeviceTree {
        let mut t = DeviceTree::new();
        t.insert(
            Node::new(
                "/machine/i440FX-pcihost",
                "i440FX-pcihost",
                "main-system-bus",
            )
            .providing("pci.0", "PCI"),
        )
        .unwrap();
        t.insert(Node::new("/machine/isa", "PIIX3", "pci.0").providing("isa.0", "ISA"))
            .unwrap();
        t.insert(
            Node::new("video0", "VGA", "pci.0")
                .user()
                .prop("vgamem_mb", "16 (0x10)"),
        )
        .unwrap();
        t.insert(Node::new(
            "/machine/peripheral-anon/device[0]",
            "virtio-rng-pci",
            "pci.0",
        ))
        .unwrap();
        t.insert(Node::new("/machine/i8042", "i8042", "isa.0"))
            .unwrap();
        t
    }

    #[test]
    fn devices_are_found_by_id_and_read() {
        let t = tree();
        let p = qom_list(&t, "/machine/peripheral").unwrap();
        assert_eq!(
            p,
            json!([{"name": "type", "type": "string"}, {"name": "video0", "type": "child<VGA>"}])
        );
        let a = qom_list(&t, "/machine/peripheral-anon").unwrap();
        assert_eq!(
            a[1],
            json!({"name": "device[0]", "type": "child<virtio-rng-pci>"})
        );
        assert_eq!(
            qom_get(&t, "/machine/peripheral/video0", "vgamem_mb").unwrap(),
            json!(16)
        );
        assert_eq!(
            qom_get(&t, "/machine/peripheral/video0", "type").unwrap(),
            json!("VGA")
        );
        let e = qom_get(&t, "/machine/peripheral/video0", "vram").unwrap_err();
        assert_eq!(e.desc(), "Property 'VGA.vram' not found");
        let e = qom_list(&t, "/machine/peripheral/nope").unwrap_err();
        assert_eq!(
            (e.class(), e.desc()),
            (
                "DeviceNotFound",
                "Device '/machine/peripheral/nope' not found"
            )
        );
        // Board devices are not peripherals.
        assert!(qom_list(&t, "/machine/peripheral/i8042").is_err());
    }
}
