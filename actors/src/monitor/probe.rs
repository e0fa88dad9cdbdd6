//! What management tools ask before they use troupe as their emulator: libvirt starts it
//! with `-machine none -S`, then asks QMP what it is (its schema, commands, QOM types and
//! their properties, machines, CPU models, command-line options, migration
//! capabilities, TPM/SEV/SGX support) and turns on only what the answers show.
//!
//! Every answer describes what troupe really has. The QMP schema (`query-qmp-schema`, in
//! QEMU's introspection format) is generated from the same command table that checks
//! arguments ([`super::commands`]), so it cannot list a command or argument troupe does
//! not take. What the binary knows about itself (device models, CPU models, machines,
//! options) comes through the [`Catalog`] it implements. Features troupe lacks get QEMU's
//! answers for a build without them: an empty list, or the error class QEMU uses.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::commands::{CmdError, CmdResult, Param, Ty};
use super::MonitorContext;

/// A QOM type troupe has, as `qom-list-types` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QomType {
    pub name: String,
    pub parent: Option<String>,
    /// Abstract types are listed only when asked (`abstract: true`), as QEMU does.
    pub is_abstract: bool,
}

/// A CPU model, as `query-cpu-definitions` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuDefinition {
    /// `-cpu` name: `qemu64`, `host`, ...
    pub name: String,
    /// Its QOM type: `qemu64-x86_64-cpu`.
    pub typename: String,
    /// Features of the model this host cannot give a guest.
    pub unavailable_features: Vec<String>,
    /// Whether the model is the same on every host (a guest may migrate with it).
    pub migration_safe: bool,
    /// Whether the model never changes with the machine type or accelerator.
    pub is_static: bool,
    /// For an alias (`Haswell`), the versioned model it stands for (`Haswell-v1`).
    pub alias_of: Option<String>,
    pub deprecated: bool,
}

/// What the binary knows about itself that probing asks (it owns the device and CPU
/// models and the command line; the monitor only formats the answers).
pub trait Catalog: Send + Sync {
    /// `query-machines` return value.
    fn machines(&self) -> Value;
    /// Every QOM type troupe has (devices, machines, CPU models, accelerators).
    fn types(&self) -> Vec<QomType>;
    /// The properties of a type (`device-list-properties`, `qom-list-properties`), each
    /// `{"name", "type"[, "description"][, "default-value"]}`; None if troupe has no such
    /// type.
    fn properties(&self, typename: &str) -> Option<Vec<Value>>;
    /// The CPU models `-cpu` takes.
    fn cpu_definitions(&self) -> Vec<CpuDefinition>;
    /// `query-cpu-model-expansion`: `full` or `static` expansion of `model` with `props`
    /// (feature name → on/off) applied; the `{"model": {...}}` value or QEMU's error text.
    fn expand_cpu_model(
        &self,
        full: bool,
        model: &str,
        props: &Map<String, Value>,
    ) -> Result<Value, String>;
    /// `query-command-line-options` return value: each option troupe has with the
    /// parameters its option string takes.
    fn command_line_options(&self) -> Value;
}

/// Classes troupe does not have that libvirt 9.0 asks `qom-list-properties` about
/// unconditionally and cannot take "not found" for (its probe dereferences the missing
/// list and libvirtd crashes). They get an empty property list; `qom-list-types` does not
/// list them, which is what libvirt reads to decide whether it may use them.
const ASSUMED_CLASSES: &[&str] = &["memory-backend-file"];

/// The commands this module answers, with their parameters (checked by
/// [`super::commands::check_args`] like every other command).
pub(super) const COMMANDS: &[(&str, &[Param])] = &[
    ("query-qmp-schema", &[]),
    (
        "qom-list-types",
        &[
            ("implements", Ty::Str, false),
            ("abstract", Ty::Bool, false),
        ],
    ),
    ("device-list-properties", &[("typename", Ty::Str, true)]),
    ("qom-list-properties", &[("typename", Ty::Str, true)]),
    ("query-cpu-definitions", &[]),
    (
        "query-cpu-model-expansion",
        &[
            ("type", Ty::Enum(&["static", "full"]), true),
            ("model", Ty::Any, true),
        ],
    ),
    ("query-command-line-options", &[("option", Ty::Str, false)]),
    ("query-tpm-models", &[]),
    ("query-tpm-types", &[]),
    ("query-sev-capabilities", &[]),
    ("query-sgx-capabilities", &[]),
];

/// Answer one of [`COMMANDS`] (arguments already checked); None if `name` is not one.
pub(super) fn execute(
    ctx: &MonitorContext,
    name: &str,
    args: &Map<String, Value>,
) -> Option<CmdResult> {
    let s = |k: &str| args.get(k).and_then(Value::as_str);
    let cat = ctx.catalog.as_ref();
    Some(match name {
        "query-qmp-schema" => Ok(schema()),
        "qom-list-types" => Ok(list_types(
            cat,
            s("implements"),
            args.get("abstract")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        )),
        "device-list-properties" => device_properties(cat, s("typename").unwrap_or_default()),
        "qom-list-properties" => {
            let t = s("typename").unwrap_or_default();
            cat.properties(t)
                .or_else(|| ASSUMED_CLASSES.contains(&t).then(Vec::new))
                .map(Value::Array)
                .ok_or_else(|| CmdError::DeviceNotFound(format!("Class '{t}' not found")))
        }
        "query-cpu-definitions" => Ok(Value::Array(
            cat.cpu_definitions()
                .into_iter()
                .map(|d| {
                    let mut v = json!({
                        "name": d.name, "typename": d.typename,
                        "unavailable-features": d.unavailable_features,
                        "static": d.is_static, "migration-safe": d.migration_safe,
                        "deprecated": d.deprecated,
                    });
                    if let Some(a) = d.alias_of {
                        v["alias-of"] = json!(a);
                    }
                    v
                })
                .collect(),
        )),
        "query-cpu-model-expansion" => expand(cat, args),
        "query-command-line-options" => command_line_options(cat, s("option")),
        // No TPM device or backend: QEMU built without TPM answers empty lists.
        "query-tpm-models" | "query-tpm-types" => Ok(json!([])),
        "query-sev-capabilities" => Err(CmdError::generic("SEV is not available in troupe")),
        "query-sgx-capabilities" => Err(CmdError::generic("SGX is not available in troupe")),
        _ => return None,
    })
}

/// Whether `t` is `base` or derives from it.
fn implements(types: &[QomType], t: &str, base: &str) -> bool {
    let mut cur = Some(t.to_string());
    // The chain is finite in any sane catalog; bound it anyway.
    for _ in 0..64 {
        match cur {
            Some(c) if c == base => return true,
            Some(c) => {
                cur = types
                    .iter()
                    .find(|x| x.name == c)
                    .and_then(|x| x.parent.clone())
            }
            None => return false,
        }
    }
    false
}

fn list_types(cat: &dyn Catalog, base: Option<&str>, with_abstract: bool) -> Value {
    let types = cat.types();
    Value::Array(
        types
            .iter()
            .filter(|t| with_abstract || !t.is_abstract)
            .filter(|t| base.is_none_or(|b| implements(&types, &t.name, b)))
            .map(|t| {
                let mut v = json!({"name": t.name});
                if let Some(p) = &t.parent {
                    v["parent"] = json!(p);
                }
                if t.is_abstract {
                    v["abstract"] = json!(true);
                }
                v
            })
            .collect(),
    )
}

fn device_properties(cat: &dyn Catalog, t: &str) -> CmdResult {
    let types = cat.types();
    let Some(ty) = types.iter().find(|x| x.name == t) else {
        return Err(CmdError::DeviceNotFound(format!("Device '{t}' not found")));
    };
    if ty.is_abstract || !implements(&types, t, "device") {
        return Err(CmdError::generic(
            "Parameter 'typename' expects a non-abstract device type",
        ));
    }
    Ok(Value::Array(cat.properties(t).unwrap_or_default()))
}

fn expand(cat: &dyn Catalog, args: &Map<String, Value>) -> CmdResult {
    let full = args.get("type").and_then(Value::as_str) == Some("full");
    let model = args
        .get("model")
        .and_then(Value::as_object)
        .ok_or_else(|| CmdError::generic("Invalid parameter type for 'model', expected: object"))?;
    let name = model
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| CmdError::generic("Parameter 'model.name' is missing"))?;
    let empty = Map::new();
    let props = match model.get("props") {
        None => &empty,
        Some(Value::Object(p)) => p,
        Some(_) => {
            return Err(CmdError::generic(
                "Invalid parameter type for 'model.props', expected: object",
            ))
        }
    };
    cat.expand_cpu_model(full, name, props)
        .map_err(CmdError::Generic)
}

fn command_line_options(cat: &dyn Catalog, option: Option<&str>) -> CmdResult {
    let all = cat.command_line_options();
    let Some(o) = option else {
        return Ok(all);
    };
    let list: Vec<Value> = all
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v.get("option").and_then(Value::as_str) == Some(o))
        .cloned()
        .collect();
    if list.is_empty() {
        return Err(CmdError::generic(format!("invalid option name: {o}")));
    }
    Ok(Value::Array(list))
}

// ---- query-qmp-schema: QEMU's introspection format, from the command table ----

/// Builds the schema: each type once, named by number as QEMU names its types
/// (management tools follow the references, never the names).
#[derive(Default)]
struct SchemaBuilder {
    entities: Vec<Value>,
    /// Canonical JSON of a type's definition → its name.
    names: BTreeMap<String, String>,
    next: usize,
}

impl SchemaBuilder {
    /// The name of a type with this definition (without `name`), adding it if new.
    fn intern(&mut self, def: Value) -> String {
        let key = def.to_string();
        if let Some(n) = self.names.get(&key) {
            return n.clone();
        }
        let name = self.next.to_string();
        self.next += 1;
        let mut v = def;
        v["name"] = json!(name);
        self.entities.push(v);
        self.names.insert(key, name.clone());
        name
    }

    fn ty(&mut self, t: Ty) -> String {
        match t {
            Ty::Str => "str".into(),
            Ty::Int => "int".into(),
            Ty::Bool => "bool".into(),
            Ty::Any => "any".into(),
            Ty::Enum(values) => self.intern(json!({
                "meta-type": "enum",
                "values": values,
                "members": values.iter().map(|v| json!({"name": v})).collect::<Vec<_>>(),
            })),
        }
    }

    /// The object type of a parameter list (`*` entries, meaning "and more the command
    /// checks itself", are not members).
    fn object(&mut self, params: &[Param]) -> String {
        let members: Vec<Value> = params
            .iter()
            .filter(|p| p.0 != "*")
            .map(|&(name, ty, required)| {
                let mut m = json!({"name": name, "type": self.ty(ty)});
                if !required {
                    m["default"] = Value::Null;
                }
                m
            })
            .collect();
        self.intern(json!({"meta-type": "object", "members": members}))
    }
}

/// The `query-qmp-schema` answer: every command troupe has with its arguments, every event
/// it emits with its data, and the types they use.
pub fn schema() -> Value {
    let mut b = SchemaBuilder::default();
    let mut out = Vec::new();
    for (name, params) in super::commands::specs() {
        let arg = b.object(params);
        out.push(json!({
            "name": name, "meta-type": "command", "arg-type": arg, "ret-type": "any",
        }));
    }
    for (name, params) in super::commands::event_specs() {
        let arg = b.object(params);
        out.push(json!({"name": name, "meta-type": "event", "arg-type": arg}));
    }
    out.append(&mut b.entities);
    for (name, json_type) in [
        ("str", "string"),
        ("int", "int"),
        ("bool", "boolean"),
        ("any", "value"),
        ("null", "null"),
        ("number", "number"),
    ] {
        out.push(json!({"name": name, "meta-type": "builtin", "json-type": json_type}));
    }
    Value::Array(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_name(schema: &Value) -> BTreeMap<String, Value> {
        schema
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
            .collect()
    }

    #[test]
    fn schema_lists_every_command_with_its_arguments_and_every_reference_resolves() {
        let s = schema();
        let all = by_name(&s);
        for (name, params) in super::super::commands::specs() {
            let c = &all[*name];
            assert_eq!(c["meta-type"], "command", "{name}");
            let arg = &all[c["arg-type"].as_str().unwrap()];
            let members = arg["members"].as_array().unwrap();
            let named: Vec<_> = params.iter().filter(|p| p.0 != "*").collect();
            assert_eq!(members.len(), named.len(), "{name}");
            for ((pname, _, required), m) in named.iter().zip(members) {
                assert_eq!(m["name"], *pname, "{name}");
                assert_eq!(m.get("default").is_some(), !required, "{name}.{pname}");
            }
        }
        for e in s.as_array().unwrap() {
            for k in ["arg-type", "ret-type", "element-type"] {
                if let Some(t) = e.get(k) {
                    assert!(all.contains_key(t.as_str().unwrap()), "{e}");
                }
            }
            for m in e
                .get("members")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(t) = m.get("type") {
                    assert!(all.contains_key(t.as_str().unwrap()), "{e}");
                }
            }
        }
        // An enum argument lists its values (libvirt asks `screendump/arg-type/format/^png`).
        let sd = &all[all["screendump"]["arg-type"].as_str().unwrap()];
        let format = sd["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "format")
            .unwrap();
        let e = &all[format["type"].as_str().unwrap()];
        assert_eq!(e["meta-type"], "enum");
        assert_eq!(e["values"], json!(["ppm", "png"]));
        assert_eq!(all["SHUTDOWN"]["meta-type"], "event");
        // The migration commands and events are there, with their data.
        for c in [
            "migrate",
            "migrate_cancel",
            "migrate-incoming",
            "migrate-set-parameters",
            "query-migrate-parameters",
            "migrate-set-capabilities",
            "query-migrate-capabilities",
        ] {
            assert_eq!(all[c]["meta-type"], "command", "{c}");
        }
        let data = |event: &str| -> Vec<String> {
            let e = &all[event];
            assert_eq!(e["meta-type"], "event", "{event}");
            all[e["arg-type"].as_str().unwrap()]["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(data("MIGRATION"), ["status"]);
        assert_eq!(data("MIGRATION_PASS"), ["pass"]);
        assert_eq!(data("DEVICE_TRAY_MOVED"), ["device", "tray-open", "id"]);
    }

    struct Cat;
    impl Catalog for Cat {
        fn machines(&self) -> Value {
            json!([])
        }
        fn types(&self) -> Vec<QomType> {
            let t = |n: &str, p: Option<&str>, a| QomType {
                name: n.into(),
                parent: p.map(Into::into),
                is_abstract: a,
            };
            vec![
                t("device", None, true),
                t("pci-device", Some("device"), true),
                t("VGA", Some("pci-device"), false),
                t("kvm-accel", Some("accel"), false),
            ]
        }
        fn properties(&self, t: &str) -> Option<Vec<Value>> {
            (t == "VGA").then(|| vec![json!({"name": "vgamem_mb", "type": "uint32"})])
        }
        fn cpu_definitions(&self) -> Vec<CpuDefinition> {
            Vec::new()
        }
        fn expand_cpu_model(
            &self,
            _: bool,
            m: &str,
            _: &Map<String, Value>,
        ) -> Result<Value, String> {
            Err(format!("no {m}"))
        }
        fn command_line_options(&self) -> Value {
            json!([{"option": "m", "parameters": []}])
        }
    }

    #[test]
    fn types_and_properties_follow_the_catalog() {
        let l = list_types(&Cat, Some("pci-device"), false);
        assert_eq!(l, json!([{"name": "VGA", "parent": "pci-device"}]));
        assert_eq!(list_types(&Cat, None, true).as_array().unwrap().len(), 4);
        assert_eq!(
            device_properties(&Cat, "VGA").unwrap(),
            json!([{"name": "vgamem_mb", "type": "uint32"}])
        );
        let e = device_properties(&Cat, "qxl").unwrap_err();
        assert_eq!(
            (e.class(), e.desc()),
            ("DeviceNotFound", "Device 'qxl' not found")
        );
        for t in ["kvm-accel", "pci-device"] {
            assert_eq!(
                device_properties(&Cat, t).unwrap_err().desc(),
                "Parameter 'typename' expects a non-abstract device type"
            );
        }
        assert_eq!(
            command_line_options(&Cat, Some("x")).unwrap_err().desc(),
            "invalid option name: x"
        );
        assert_eq!(
            command_line_options(&Cat, Some("m"))
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
}
