//! libvirt uses troupe as its emulator: the probe libvirt 9.0 runs on a binary (its
//! command line and its QMP conversation, from `shared/reference/libvirt-9.0.md`), with
//! every answer checked against what troupe really has through its other doors
//! (`-machine help`, `-device help`, `-device X,help`, `-cpu help`); and
//! `virsh domcapabilities --emulatorbin troupe` with Debian's libvirt itself.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{require_kvm, troupe_bin, TempDir, Vm};
use serde_json::{json, Value};

/// The devices libvirt 9.0 asks `device-list-properties` about, in its order.
const LIBVIRT_DEVICES: &[&str] = &[
    "virtio-blk-pci",
    "virtio-net-pci",
    "virtio-scsi-pci",
    "virtio-net-ccw",
    "virtio-scsi-ccw",
    "vfio-pci",
    "scsi-hd",
    "ide-hd",
    "PIIX4_PM",
    "usb-redir",
    "usb-storage",
    "kvm-pit",
    "VGA",
    "vmware-svga",
    "qxl",
    "virtio-gpu-pci",
    "virtio-gpu-device",
    "ICH9-LPC",
    "virtio-balloon-pci",
    "virtio-balloon-ccw",
    "virtio-balloon-device",
    "intel-iommu",
    "mch",
    "nvdimm",
    "pcie-root-port",
    "usb-host",
    "vhost-user-fs-device",
    "virtio-mem-pci",
    "virtio-iommu-pci",
];

/// A QMP client on a unix socket (libvirt's transport).
struct Qmp(BufReader<UnixStream>);

impl Qmp {
    fn connect(path: &Path) -> Self {
        let deadline = Instant::now() + Duration::from_secs(20);
        let s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => panic!("connect {}: {e}", path.display()),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut q = Self(BufReader::new(s));
        let greeting = q.read();
        assert_eq!(greeting["QMP"]["version"]["qemu"]["major"], 7, "{greeting}");
        q
    }

    fn read(&mut self) -> Value {
        let mut l = String::new();
        self.0.read_line(&mut l).unwrap();
        assert!(l.ends_with("\r\n"), "QMP lines end with CR LF: {l:?}");
        serde_json::from_str(&l).unwrap()
    }

    /// The reply (events skipped): `Ok(return)` or `Err((class, desc))`.
    fn ask(&mut self, cmd: &str, args: Value) -> Result<Value, (String, String)> {
        let mut m = json!({"execute": cmd, "id": cmd});
        if !args.is_null() {
            m["arguments"] = args;
        }
        self.0
            .get_mut()
            .write_all(m.to_string().as_bytes())
            .unwrap();
        loop {
            let v = self.read();
            if v.get("event").is_some() {
                continue;
            }
            assert_eq!(v["id"], cmd, "{v}");
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            let e = &v["error"];
            return Err((
                e["class"].as_str().unwrap().to_string(),
                e["desc"].as_str().unwrap().to_string(),
            ));
        }
    }

    fn ok(&mut self, cmd: &str, args: Value) -> Value {
        self.ask(cmd, args)
            .unwrap_or_else(|e| panic!("{cmd}: {e:?}"))
    }
}

/// Kills the daemonized troupe if the test fails before `quit`.
struct Daemon(i32);

impl Daemon {
    fn alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.0)).exists()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.0))
                .unwrap_or_default()
                .contains(") Z ")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.alive() {
            // SAFETY: signalling a process id; no memory is involved.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
}

/// Names in the first column of a `help` listing after its header line.
fn help_names(args: &[&str]) -> Vec<String> {
    let out = Command::new(troupe_bin()).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Start troupe exactly as libvirt probes it; return the QMP session and the daemon.
fn probe_launch(dir: &TempDir, accel: &str) -> (Qmp, Daemon) {
    let sock = dir.path("qmp.monitor");
    let pidfile = dir.path("qmp.pid");
    let machine = format!("none,accel={accel}");
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let args = [
        "-S",
        "-no-user-config",
        "-nodefaults",
        "-nographic",
        "-machine",
        &machine,
        "-qmp",
        &qmp,
        "-pidfile",
        pidfile.to_str().unwrap(),
        "-daemonize",
    ];
    // With -daemonize the launching process returns once the daemon is ready.
    let (status, _out, err) = Vm::troupe(&args).run(Duration::from_secs(60));
    assert!(status.success(), "probe launch failed: {err}");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let daemon = Daemon(pid);
    assert!(daemon.alive(), "the pidfile names a live process");
    (Qmp::connect(&sock), daemon)
}

#[test]
fn libvirt_probe_gets_truthful_answers_over_qmp() {
    require_kvm();
    let dir = TempDir::new("libvirt-probe");
    let (mut q, daemon) = probe_launch(&dir, "kvm:tcg");
    q.ok("qmp_capabilities", Value::Null);
    let v = q.ok("query-version", Value::Null);
    assert_eq!(
        (v["qemu"]["major"].clone(), v["qemu"]["minor"].clone()),
        (json!(7), json!(2))
    );
    assert_eq!(q.ok("query-target", Value::Null)["arch"], "x86_64");

    // The schema: every reference resolves; every command listed is in it.
    let schema = q.ok("query-qmp-schema", Value::Null);
    let entities: std::collections::HashMap<String, Value> = schema
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect();
    for e in entities.values() {
        for k in ["arg-type", "ret-type", "element-type"] {
            if let Some(t) = e.get(k) {
                assert!(
                    entities.contains_key(t.as_str().unwrap()),
                    "dangling {k}: {e}"
                );
            }
        }
        for m in e
            .get("members")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(t) = m.get("type") {
                assert!(
                    entities.contains_key(t.as_str().unwrap()),
                    "dangling member: {e}"
                );
            }
        }
    }
    let commands: Vec<String> = q
        .ok("query-commands", Value::Null)
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    for c in &commands {
        assert_eq!(entities[c.as_str()]["meta-type"], "command", "{c}");
    }
    let schema_commands = entities
        .values()
        .filter(|e| e["meta-type"] == "command")
        .count();
    assert_eq!(
        schema_commands,
        commands.len(),
        "the schema lists exactly query-commands"
    );
    // libvirt reads capabilities out of argument types: screendump's format enum.
    let sd = &entities[entities["screendump"]["arg-type"].as_str().unwrap()];
    let format = sd["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "format")
        .unwrap();
    assert_eq!(
        entities[format["type"].as_str().unwrap()]["values"],
        json!(["ppm", "png"])
    );

    let kvm = q.ok("query-kvm", Value::Null);
    assert_eq!(kvm, json!({"enabled": true, "present": true}));

    // QOM types: KVM and no TCG (so libvirt does not probe a TCG troupe does not have);
    // every `-device help` driver, with the properties `-device X,help` shows.
    let types = q.ok("qom-list-types", Value::Null);
    let type_names: Vec<&str> = types
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(type_names.contains(&"kvm-accel"));
    assert!(!type_names.contains(&"tcg-accel"));
    for line in help_names(&["-device", "help"]) {
        let Some(rest) = line.strip_prefix("name \"") else {
            continue;
        };
        let driver = rest.split('"').next().unwrap();
        assert!(
            type_names.contains(&driver),
            "{driver} missing from qom-list-types"
        );
        let mut from_help: Vec<String> = help_names(&["-device", &format!("{driver},help")])
            .iter()
            .skip(1)
            .filter_map(|l| l.trim().split('=').next().map(str::to_string))
            .filter(|p| p != "id")
            .collect();
        let mut from_qmp: Vec<String> = q
            .ok("device-list-properties", json!({"typename": driver}))
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        from_help.sort();
        from_qmp.sort();
        assert_eq!(from_qmp, from_help, "{driver}");
    }
    for d in LIBVIRT_DEVICES {
        match q.ask("device-list-properties", json!({"typename": d})) {
            Ok(props) => {
                assert!(type_names.contains(d), "{d} answered but not a listed type");
                assert!(props.is_array());
            }
            Err((class, desc)) => {
                assert!(
                    !type_names.contains(d),
                    "{d} is listed but not answered: {desc}"
                );
                assert_eq!(class, "DeviceNotFound", "{d}: {desc}");
            }
        }
    }
    let cpu_props = q.ok("qom-list-properties", json!({"typename": "max-x86_64-cpu"}));
    assert!(cpu_props
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "avx2" && p["type"] == "bool"));
    assert_eq!(
        q.ask(
            "qom-list-properties",
            json!({"typename": "memory-backend-memfd"})
        )
        .unwrap_err()
        .0,
        "DeviceNotFound"
    );

    // Machines: exactly what `-machine help` lists.
    let machines = q.ok("query-machines", Value::Null);
    let mut from_qmp: Vec<String> = machines
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    let mut from_help: Vec<String> = help_names(&["-machine", "help"])
        .iter()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .filter(|n| n != "pc")
        .collect();
    from_qmp.sort();
    from_help.sort();
    assert_eq!(from_qmp, from_help);
    let default = machines
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["is-default"] == true)
        .unwrap();
    assert_eq!(
        (default["name"].clone(), default["alias"].clone()),
        (json!("pc-i440fx-7.2"), json!("pc"))
    );

    // CPU models: exactly what `-cpu help` lists.
    let defs = q.ok("query-cpu-definitions", Value::Null);
    let mut from_qmp: Vec<String> = defs
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect();
    let mut from_help: Vec<String> = help_names(&["-cpu", "help"])
        .iter()
        .filter_map(|l| l.strip_prefix("x86 "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    from_qmp.sort();
    from_help.sort();
    assert_eq!(from_qmp, from_help);
    assert_eq!(q.ok("query-tpm-models", Value::Null), json!([]));
    assert_eq!(q.ok("query-tpm-types", Value::Null), json!([]));
    let opts = q.ok("query-command-line-options", Value::Null);
    let groups: Vec<&str> = opts
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["option"].as_str().unwrap())
        .collect();
    assert!(groups.contains(&"machine") && groups.contains(&"drive"));
    // Options troupe refuses are not offered.
    assert!(!groups.contains(&"spice"), "{groups:?}");
    // -sandbox is, with the switches libvirt looks for.
    let sandbox = opts
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["option"] == "sandbox")
        .expect("-sandbox offered");
    assert!(
        sandbox["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "elevateprivileges"),
        "{sandbox}"
    );
    // Migration capabilities are the migration's own, settable as on any machine (libvirt
    // turns `events` on).
    let events = |caps: Value| {
        caps.as_array()
            .unwrap()
            .iter()
            .find(|c| c["capability"] == "events")
            .map(|c| c["state"].clone())
    };
    assert_eq!(
        events(q.ok("query-migrate-capabilities", Value::Null)),
        Some(json!(false))
    );
    q.ok(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events", "state": true}]}),
    );
    assert_eq!(
        events(q.ok("query-migrate-capabilities", Value::Null)),
        Some(json!(true))
    );
    for c in ["query-sev-capabilities", "query-sgx-capabilities"] {
        assert_eq!(q.ask(c, Value::Null).unwrap_err().0, "GenericError", "{c}");
    }
    // Host CPU expansion: a static one in terms of `base`, which expands back.
    let host = q.ok(
        "query-cpu-model-expansion",
        json!({"type": "static", "model": {"name": "host"}}),
    );
    assert_eq!(host["model"]["name"], "base");
    let props = host["model"]["props"].clone();
    assert!(props.as_object().unwrap().values().all(Value::is_boolean));
    let back = q.ok(
        "query-cpu-model-expansion",
        json!({"type": "full", "model": {"name": "base", "props": props}}),
    );
    assert_eq!(back["model"]["props"], props);
    let e = q
        .ask(
            "query-cpu-model-expansion",
            json!({"type": "full", "model": {"name": "host", "props": {"hv-passthrough": true}}}),
        )
        .unwrap_err();
    assert_eq!(e.0, "GenericError");

    // Every command listed is answered (arguments may be missing, never the command;
    // `qmp_capabilities` again is QEMU's CommandNotFound "negotiation is already complete").
    for c in commands
        .iter()
        .filter(|c| !matches!(c.as_str(), "quit" | "qmp_capabilities"))
    {
        if let Err((class, desc)) = q.ask(c, Value::Null) {
            assert_ne!(class, "CommandNotFound", "{c}: {desc}");
        }
    }

    // The empty machine runs like any other, and quits.
    q.ok("cont", Value::Null);
    assert_eq!(q.ok("query-status", Value::Null)["status"], "running");
    q.ok("quit", Value::Null);
    let deadline = Instant::now() + Duration::from_secs(20);
    while daemon.alive() {
        assert!(Instant::now() < deadline, "troupe did not exit after quit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn machine_none_takes_no_devices_and_no_tcg() {
    let run = |args: &[&str]| {
        let out = Command::new(troupe_bin()).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run(&["-machine", "none", "-nodefaults", "-m", "64"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("-m 64: machine 'none' has no RAM"), "{err}");
    let (code, err) = run(&["-machine", "none,accel=tcg", "-nodefaults"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("accelerator 'tcg' is not supported"), "{err}");
    let (code, err) = run(&["-machine", "none", "-device", "virtio-rng-pci"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("-device: machine 'none' has no buses or devices"),
        "{err}"
    );
}

#[test]
fn virsh_domcapabilities_accepts_troupe_as_emulator() {
    require_kvm();
    if Command::new("virsh").arg("--version").output().is_err() {
        eprintln!("SKIPPED: virsh is not installed (apt-get install libvirt-clients libvirt-daemon-system)");
        return;
    }
    // The embedded QEMU driver: libvirt's own probing and capability code, in-process,
    // with its state under `root` (no daemon, no system configuration, a fresh cache).
    let dir = TempDir::new("libvirt-embed");
    let uri = format!("qemu:///embed?root={}", dir.path("root").display());
    let out = Command::new("virsh")
        .args([
            "-c",
            &uri,
            "domcapabilities",
            "--virttype",
            "kvm",
            "--emulatorbin",
        ])
        .arg(troupe_bin())
        .output()
        .unwrap();
    let xml = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "virsh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        xml.contains(&format!("<path>{}</path>", troupe_bin().display())),
        "{xml}"
    );
    for want in [
        "<domain>kvm</domain>",
        "<machine>pc-i440fx-7.2</machine>",
        "<arch>x86_64</arch>",
        "<vcpu max='255'/>",
        "<value>vnc</value>",
        "<value>vga</value>",
        "<tpm supported='no'/>",
        "<sev supported='no'/>",
        "<sgx supported='no'/>",
    ] {
        assert!(xml.contains(want), "{want} missing from:\n{xml}");
    }
    // Things troupe does not have are not offered.
    for absent in ["spice", "qxl", "virtio-gpu", "q35"] {
        assert!(!xml.contains(absent), "{absent} offered:\n{xml}");
    }
}
