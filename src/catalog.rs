//! What troupe has, for the monitor's probing commands (`qom-list-types`,
//! `device-list-properties`, `query-machines`, `query-cpu-definitions`,
//! `query-cpu-model-expansion`, `query-command-line-options`): read from the tables the
//! command line and the machine use (the `-device` driver table, the machine types, the
//! option table, the CPU models and their feature table), so the answers cannot drift
//! from what troupe does.

use std::sync::OnceLock;

use actors::monitor::{Catalog, CpuDefinition, QomType};
use serde_json::{json, Map, Value};

use crate::cli;
use crate::config::CpuConfig;
use crate::vm::cpuid::{self, HostCpu, ModelInfo};

/// Devices of the `pc` machine itself (QEMU's type names, as `info qtree` shows them),
/// with their parent type. `-device` cannot add these; they come with the machine.
const BOARD_DEVICES: &[(&str, &str)] = &[
    ("i440FX-pcihost", "device"),
    ("i440FX", "pci-device"),
    ("PIIX3", "pci-device"),
    ("PIIX4_PM", "pci-device"),
    ("piix3-ide", "pci-device"),
    ("VGA", "pci-device"),
    ("isa-serial", "isa-device"),
    ("mc146818rtc", "isa-device"),
    ("i8042", "isa-device"),
    ("port92", "isa-device"),
    ("kvm-pit", "isa-device"),
    ("fw_cfg_io", "device"),
    ("ide-hd", "ide-device"),
    ("ide-cd", "ide-device"),
];

/// Abstract types the concrete ones derive from: (name, parent).
const ABSTRACT: &[(&str, Option<&str>)] = &[
    ("device", None),
    ("pci-device", Some("device")),
    ("isa-device", Some("device")),
    ("ide-device", Some("device")),
    ("virtio-serial-port", Some("device")),
    ("usb-device", Some("device")),
    ("machine", None),
    ("generic-pc-machine", Some("machine")),
    ("cpu", Some("device")),
    ("x86_64-cpu", Some("cpu")),
    ("accel", None),
];

/// The static model that static expansions are written in (QEMU's `base`).
const BASE_MODEL: &str = "base";

/// A CPU model's QOM type (`qemu64` → `qemu64-x86_64-cpu`).
fn cpu_typename(model: &str) -> String {
    format!("{model}-x86_64-cpu")
}

/// Machine type name → QOM type (`pc-i440fx-7.2` → `pc-i440fx-7.2-machine`).
fn machine_typename(m: &str) -> String {
    format!("{m}-machine")
}

/// The `-machine` properties troupe takes.
fn machine_properties() -> Vec<Value> {
    vec![
        json!({"name": "type", "type": "string"}),
        json!({"name": "kernel-irqchip", "type": "OnOffSplit",
               "description": "Configure KVM in-kernel irqchip (only on)"}),
        json!({"name": "usb", "type": "bool", "description": "Set on/off to enable/disable usb"}),
        json!({"name": "dump-guest-core", "type": "bool",
               "description": "Include guest memory in a core dump"}),
        json!({"name": "memory-backend", "type": "link<memory-backend>",
               "description": "Set RAM backend (a memory-backend-ram, -file or -memfd object)"}),
        json!({"name": "mem-merge", "type": "bool",
               "description": "Enable/disable memory merge support"}),
    ]
}

/// The catalog of this build, on this host (`host`: what its KVM can give a guest).
pub struct PcCatalog {
    host: HostCpu,
    /// Every CPU model `-cpu` takes with what this host lacks for each: worked out on the
    /// first question (resolving every model takes a while; most VMs are never asked).
    models: OnceLock<Vec<ModelInfo>>,
}

impl PcCatalog {
    pub fn new(host: HostCpu) -> Self {
        Self {
            host,
            models: OnceLock::new(),
        }
    }

    fn models(&self) -> &[ModelInfo] {
        self.models.get_or_init(|| cpuid::models(&self.host))
    }
}

impl Catalog for PcCatalog {
    fn machines(&self) -> Value {
        let mut list: Vec<Value> = cli::pc_machine_types()
            .map(|name| {
                let mut m = json!({
                    "name": name, "cpu-max": cli::MAX_CPUS, "hotpluggable-cpus": true,
                    "numa-mem-supported": false, "deprecated": false,
                    "default-cpu-type": cpu_typename(&CpuConfig::default().model),
                    "default-ram-id": "pc.ram",
                });
                if name == cli::DEFAULT_MACHINE {
                    m["alias"] = json!("pc");
                    m["is-default"] = json!(true);
                }
                m
            })
            .collect();
        list.push(json!({
            "name": cli::NONE_MACHINE, "cpu-max": 1, "hotpluggable-cpus": false,
            "numa-mem-supported": false, "deprecated": false, "default-ram-id": "ram",
        }));
        Value::Array(list)
    }

    fn types(&self) -> Vec<QomType> {
        let t = |name: String, parent: &str, is_abstract| QomType {
            name,
            parent: Some(parent.to_string()),
            is_abstract,
        };
        let mut v: Vec<QomType> = ABSTRACT
            .iter()
            .map(|(n, p)| QomType {
                name: n.to_string(),
                parent: p.map(str::to_string),
                is_abstract: true,
            })
            .collect();
        for (name, bus, _) in cli::creatable_devices() {
            let parent = match bus {
                "PCI" => "pci-device",
                "ISA" => "isa-device",
                "virtio-serial-bus" => "virtio-serial-port",
                "usb-bus" => "usb-device",
                _ => "device",
            };
            v.push(t(name.to_string(), parent, false));
        }
        for (name, parent) in BOARD_DEVICES {
            if !v.iter().any(|x| x.name == *name) {
                v.push(t(name.to_string(), parent, false));
            }
        }
        for m in cli::pc_machine_types() {
            v.push(t(machine_typename(&m), "generic-pc-machine", false));
        }
        v.push(t(machine_typename(cli::NONE_MACHINE), "machine", false));
        for m in self.models() {
            v.push(t(m.typename.clone(), "x86_64-cpu", false));
        }
        v.push(t("kvm-accel".into(), "accel", false));
        v
    }

    fn properties(&self, typename: &str) -> Option<Vec<Value>> {
        let types = self.types();
        let ty = types.iter().find(|t| t.name == typename)?;
        if let Some((_, _, props)) = cli::creatable_devices().find(|(n, ..)| *n == typename) {
            return Some(
                props
                    .iter()
                    .map(|(name, ty, desc)| {
                        let mut p = json!({"name": name, "type": ty.trim_matches(|c| c == '<' || c == '>')});
                        if !desc.trim().is_empty() {
                            p["description"] = json!(desc.trim());
                        }
                        p
                    })
                    .collect(),
            );
        }
        if ty.parent.as_deref() == Some("x86_64-cpu") {
            let mut v = vec![json!({"name": "type", "type": "string"})];
            v.extend(
                cpuid::feature_names()
                    .into_iter()
                    .map(|f| json!({"name": f, "type": "bool"})),
            );
            return Some(v);
        }
        if typename.ends_with("-machine") {
            return Some(machine_properties());
        }
        // The board's devices and the abstract types: nothing a user can set.
        Some(Vec::new())
    }

    fn cpu_definitions(&self) -> Vec<CpuDefinition> {
        self.models()
            .iter()
            .map(|m| CpuDefinition {
                name: m.name.clone(),
                typename: m.typename.clone(),
                unavailable_features: m.unavailable_features.clone(),
                migration_safe: m.migration_safe,
                is_static: m.is_static,
                alias_of: m.alias_of.clone(),
                deprecated: m.deprecated,
            })
            .collect()
    }

    fn expand_cpu_model(
        &self,
        full: bool,
        name: &str,
        props: &Map<String, Value>,
    ) -> Result<Value, String> {
        if !cpuid::is_model(name) {
            return Err(format!("CPU model '{name}' not found"));
        }
        let typename = cpu_typename(name);
        let mut cpu = CpuConfig::model(name);
        for (k, v) in props {
            let Some(feature) = cpuid::canonical_feature(k) else {
                return Err(format!("Property '{typename}.{k}' not found"));
            };
            let Some(on) = v.as_bool() else {
                return Err(format!(
                    "Invalid parameter type for '{k}', expected: boolean"
                ));
            };
            cpu.features.push((feature.to_string(), on));
        }
        // What a guest with this `-cpu` gets on this host (features KVM lacks left out).
        let resolved = cpuid::resolve(&cpu, &self.host).map_err(|e| e.to_string())?;
        let props: Map<String, Value> = resolved
            .feature_states()
            .into_iter()
            .map(|(f, on)| (f.to_string(), json!(on)))
            .collect();
        // A static expansion is the fixed `base` model plus every feature; a full one keeps
        // the model's name.
        let name = if full { name } else { BASE_MODEL };
        Ok(json!({"model": {"name": name, "props": props}}))
    }

    fn command_line_options(&self) -> Value {
        // QEMU names these options' groups differently from the options.
        let group = |o: &'static str| -> &'static str {
            match o {
                "m" => "memory",
                "smp" => "smp-opts",
                "boot" => "boot-opts",
                "M" => "machine",
                other => other,
            }
        };
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for (name, takes_arg) in cli::options() {
            let g = group(name);
            if !takes_arg || seen.contains(&g) {
                continue;
            }
            seen.push(g);
            let parameters = if g == "machine" {
                machine_properties()
                    .into_iter()
                    .map(|p| {
                        let ty = if p["type"] == "bool" {
                            "boolean"
                        } else {
                            "string"
                        };
                        json!({"name": p["name"], "type": ty})
                    })
                    .collect()
            } else if g == "sandbox" {
                // libvirt looks for these before it passes its -sandbox line.
                ["enable", "obsolete", "elevateprivileges", "spawn", "resourcecontrol"]
                    .iter()
                    .map(|n| json!({"name": n, "type": if *n == "enable" { "boolean" } else { "string" }}))
                    .collect()
            } else {
                Vec::new()
            };
            out.push(json!({"option": g, "parameters": parameters}));
        }
        Value::Array(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_device_type_has_a_parent_chain_to_device_and_cpu_models_expand() {
        let c = PcCatalog::new(HostCpu::probe().expect("these tests need /dev/kvm"));
        let types = c.types();
        for t in types.iter().filter(|t| !t.is_abstract) {
            let p = t.parent.as_deref().unwrap();
            assert!(types.iter().any(|x| x.name == p), "{} -> {p}", t.name);
        }
        let vnet = c.properties("virtio-net-pci").unwrap();
        assert!(vnet
            .iter()
            .any(|p| p["name"] == "netdev" && p["type"] == "str"));
        assert!(c.properties("virtio-scsi-pci").is_none());
        let m = c.machines();
        assert_eq!(m[0]["name"], "pc-i440fx-7.2");
        assert_eq!(m[0]["alias"], "pc");
        assert!(m.as_array().unwrap().iter().any(|x| x["name"] == "none"));
        // Every model `-cpu` takes, each a CPU type with the feature flags as properties.
        let defs = c.cpu_definitions();
        for name in ["qemu64", "host", "max", "base", "Haswell", "EPYC-Rome-v2"] {
            let d = defs.iter().find(|d| d.name == name).expect(name);
            assert!(types.iter().any(|t| t.name == d.typename), "{name}");
            assert!(cpuid::is_model(name), "{name}");
        }
        let haswell = defs.iter().find(|d| d.name == "Haswell").unwrap();
        assert_eq!(haswell.alias_of.as_deref(), Some("Haswell-v1"));
        let props = c.properties("Haswell-v1-x86_64-cpu").unwrap();
        assert!(props.iter().any(|p| p["name"] == "avx2"));

        let e = c.expand_cpu_model(false, "qemu64", &Map::new()).unwrap();
        assert_eq!(e["model"]["name"], "base");
        assert_eq!(e["model"]["props"]["lm"], true);
        assert_eq!(e["model"]["props"]["avx"], false);
        let mut off = Map::new();
        off.insert("lm".into(), json!(false));
        let e = c.expand_cpu_model(true, "qemu64", &off).unwrap();
        assert_eq!(e["model"]["name"], "qemu64");
        assert_eq!(e["model"]["props"]["lm"], false);
        off.insert("hv-passthrough".into(), json!(true));
        assert_eq!(
            c.expand_cpu_model(true, "host", &off).unwrap_err(),
            "Property 'host-x86_64-cpu.hv-passthrough' not found"
        );
        // `base` has nothing of its own: what is asked for (and the host has) is on.
        let mut on = Map::new();
        on.insert("sse2".into(), json!(true));
        let e = c.expand_cpu_model(true, "base", &on).unwrap();
        assert_eq!(e["model"]["props"]["sse2"], true);
        assert_eq!(e["model"]["props"]["fpu"], false);
        assert_eq!(
            c.expand_cpu_model(false, "Skylake", &Map::new())
                .unwrap_err(),
            "CPU model 'Skylake' not found"
        );
    }
}
