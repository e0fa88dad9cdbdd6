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

/// One interactive `virsh` on libvirt's embedded QEMU driver (the driver runs inside this
/// virsh process, so the domain lives as long as the session). Commands are answered in
/// order; an `echo` after each marks where its output ends.
struct Virsh {
    r: common::Running,
    n: usize,
    out_seen: usize,
    err_seen: usize,
}

impl Virsh {
    fn open(uri: &str) -> Self {
        let r = Vm::program("virsh", &["-c", uri]).spawn();
        Self {
            r,
            n: 0,
            out_seen: 0,
            err_seen: 0,
        }
    }

    /// Run `cmd`; returns its stdout and what appeared on stderr meanwhile. virsh echoes
    /// each command after its prompt (`virsh # CMD`) and `echo` prints without a newline,
    /// so the marker is the one at the start of a line.
    fn run(&mut self, cmd: &str) -> (String, String) {
        self.n += 1;
        let marker = format!("@@troupe-done-{}@@", self.n);
        self.r.send(format!("{cmd}\necho {marker}\n").as_bytes());
        let needle = format!("\n{marker}");
        let all = self.r.expect_stdout(&needle, Duration::from_secs(120));
        let done = self.out_seen + all[self.out_seen..].find(&needle).unwrap();
        let echoed = all[..done].rfind("virsh # echo").unwrap_or(done);
        let out: String = all[self.out_seen..echoed.max(self.out_seen)]
            .lines()
            .filter(|l| !l.starts_with("virsh #"))
            .map(|l| format!("{l}\n"))
            .collect();
        self.out_seen = done + needle.len();
        let err_all = self.r.stderr.text();
        let err = err_all[self.err_seen..].to_string();
        self.err_seen = err_all.len();
        (out, err)
    }

    /// Run `cmd`, which must not fail.
    fn ok(&mut self, cmd: &str) -> String {
        let (out, err) = self.run(cmd);
        assert!(
            !err.lines().any(|l| l.starts_with("error:")),
            "virsh {cmd}: {err}\n{out}"
        );
        out
    }

    /// The domain's state as `virsh list --all` shows it.
    fn state(&mut self, name: &str) -> String {
        let list = self.ok("list --all");
        list.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .map(|l| l.split_whitespace().skip(2).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| panic!("{name} not in:\n{list}"))
    }
}

/// `virsh domblkstat NAME DEV`: the counters by name (`vda rd_req 0` lines).
fn blkstat(v: &mut Virsh, name: &str, dev: &str) -> std::collections::HashMap<String, u64> {
    let out = v.ok(&format!("domblkstat {name} {dev}"));
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(dev)).then_some(())?;
            Some((w.next()?.to_string(), w.next()?.parse().ok()?))
        })
        .collect()
}

#[test]
fn virsh_defines_starts_and_drives_a_domain_on_troupe() {
    require_kvm();
    if Command::new("virsh").arg("--version").output().is_err() {
        eprintln!("SKIPPED: virsh is not installed (apt-get install libvirt-clients libvirt-daemon-system)");
        return;
    }
    let dir = TempDir::new("libvirt-domain");
    let iso = common::grub_rescue_iso(
        &dir,
        "serial --unit=0 --speed=115200\nterminal_input serial console\n\
         terminal_output serial console\nset timeout=600\n\
         menuentry 'troupe entry' { echo picked }\n",
    );
    let disk = dir.path("disk.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("64M")
        .status()
        .expect("qemu-img (qemu-utils)");
    assert!(st.success());
    // The embedded driver reads `ROOT/etc/qemu.conf`: the domain's stdio to a plain file
    // (no virtlogd). libvirt's default seccomp_sandbox gives troupe its -sandbox line.
    let root = dir.path("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/qemu.conf"), "stdio_handler = \"file\"\n").unwrap();
    let name = format!("troupe-{}", std::process::id());
    let xml = format!(
        "<domain type='kvm'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>2</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
  <devices>
    <emulator>{emu}</emulator>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='{iso}'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
      <boot order='1'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'><model type='virtio'/></interface>
    <controller type='usb' model='none'/>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>
    <video><model type='vga' vram='16384'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
",
        emu = troupe_bin().display(),
        iso = iso.display(),
        disk = disk.display(),
    );
    let xml_path = dir.path("domain.xml");
    std::fs::write(&xml_path, xml).unwrap();

    let mut v = Virsh::open(&format!("qemu:///embed?root={}", root.display()));
    v.ok(&format!("define {}", xml_path.display()));
    assert_eq!(v.state(&name), "shut off");
    let started = v.ok(&format!("start {name}"));
    assert!(started.contains("started"), "{started}");
    assert_eq!(v.state(&name), "running");

    // The monitor libvirt holds answers QMP and HMP.
    let status = v.ok(&format!(
        "qemu-monitor-command {name} '{{\"execute\":\"query-status\"}}'"
    ));
    let status: Value = serde_json::from_str(status.trim()).unwrap();
    assert_eq!(status["return"]["status"], "running", "{status}");
    let hmp = v.ok(&format!("qemu-monitor-command {name} --hmp 'info status'"));
    assert!(hmp.contains("VM status: running"), "{hmp}");

    // Pause and resume.
    v.ok(&format!("suspend {name}"));
    assert_eq!(v.state(&name), "paused");
    let hmp = v.ok(&format!("qemu-monitor-command {name} --hmp 'info status'"));
    assert!(hmp.contains("VM status: paused"), "{hmp}");
    v.ok(&format!("resume {name}"));
    assert_eq!(v.state(&name), "running");

    let info = v.ok(&format!("dominfo {name}"));
    for want in [
        "State:          running",
        "CPU(s):         2",
        "Max memory:     262144 KiB",
    ] {
        assert!(info.contains(want), "{want} missing from:\n{info}");
    }
    let blk = v.ok(&format!("domblklist {name}"));
    assert!(
        blk.contains(&format!("hdc      {}", iso.display()))
            && blk.contains(&format!("vda      {}", disk.display())),
        "{blk}"
    );
    // Statistics of the virtio disk: libvirt finds them by the qdev path QEMU reports
    // (`/machine/peripheral/virtio-disk0/virtio-backend`).
    let stats = blkstat(&mut v, &name, "vda");
    assert!(
        stats.contains_key("rd_req") && stats.contains_key("wr_bytes"),
        "{stats:?}"
    );
    let vnc = v.ok(&format!("vncdisplay {name}"));
    assert!(vnc.trim().starts_with("127.0.0.1:"), "{vnc}");

    // The process libvirt started: vCPU threads named as QEMU's (`-name debug-threads=on`).
    let pid: u32 = std::fs::read_to_string(root.join(format!("run/qemu/{name}.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut comms: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .filter(|c| c.starts_with("CPU "))
        .collect();
    comms.sort();
    assert_eq!(comms, ["CPU 0/KVM", "CPU 1/KVM"]);
    // libvirt asked for its sandbox, and every thread runs filtered.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains(
            "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        ),
        "{cmdline}"
    );
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap_or_default();
        // (A thread that ended meanwhile has no status left.)
        assert!(
            status.is_empty() || status.contains("Seccomp:\t2"),
            "{status}"
        );
    }

    let ifs = v.ok(&format!("domiflist {name}"));
    assert!(ifs.contains("user") && ifs.contains("virtio"), "{ifs}");
    // The screen through libvirt's screendump, and keys through send-key.
    let shot = dir.path("shot.png");
    v.ok(&format!("screenshot {name} {}", shot.display()));
    assert_eq!(&std::fs::read(&shot).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    v.ok(&format!("send-key {name} KEY_ESC"));

    // libvirt reconnects to a running domain when it starts again (a libvirtd restart;
    // here a second embedded driver): the domain is found running and still answers.
    v.r.send(b"quit\n");
    v.r.wait(Duration::from_secs(60));
    let mut err = v.r.stderr.text();

    // `virsh console` (a virsh of its own, on a terminal, as a user runs it): the pty
    // serial shows GRUB's menu and a key typed there picks the entry.
    let mut con = Vm::program(
        "script",
        &[
            "-qfec",
            &format!(
                "virsh -c 'qemu:///embed?root={}' console {name}",
                root.display()
            ),
            "/dev/null",
        ],
    )
    .spawn();
    con.expect_stdout(
        &format!("Connected to domain '{name}'"),
        Duration::from_secs(60),
    );
    // GRUB under emulated ring 0: a minute or more to its menu on a loaded machine.
    con.expect_stdout("executed automatically in", Duration::from_secs(240));
    let menu = con.stdout.text();
    assert!(
        menu.contains("GNU GRUB") && menu.contains("troupe entry"),
        "{menu}"
    );
    let seen = menu.len();
    con.send(b"\r");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !con.stdout.text()[seen..].contains("picked") {
        assert!(
            Instant::now() < deadline,
            "the entry did not run: {}",
            &con.stdout.text()[seen..]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Ctrl-] leaves the console.
    con.send(b"\x1d");
    assert!(con.wait(Duration::from_secs(60)).success());
    err.push_str(&con.stderr.text());

    let mut v = Virsh::open(&format!("qemu:///embed?root={}", root.display()));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // The reconnection runs in the background; `list` shows the saved state at once.
        let (out, _) = v.run(&format!("qemu-monitor-command {name} --hmp 'info status'"));
        if out.contains("VM status: running") {
            break;
        }
        assert!(Instant::now() < deadline, "no reconnection: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    v.err_seen = v.r.stderr.text().len();
    assert_eq!(v.state(&name), "running");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    // SeaBIOS and GRUB read the CD: its statistics count the reads.
    let stats = blkstat(&mut v, &name, "hdc");
    assert!(stats["rd_req"] > 0 && stats["rd_bytes"] > 0, "{stats:?}");

    v.ok(&format!("destroy {name}"));
    assert_eq!(v.state(&name), "shut off");
    v.ok(&format!("undefine {name}"));
    v.r.send(b"quit\n");
    v.r.wait(Duration::from_secs(60));

    // Nothing went wrong with the emulator: no libvirt error, and troupe's log (its
    // command line and stderr) has no error of its own.
    err.push_str(&v.r.stderr.text());
    assert!(
        !err.contains(" error : "),
        "libvirt reported an error:\n{err}"
    );
    let log = std::fs::read_to_string(root.join(format!("log/qemu/{name}.log"))).unwrap();
    assert!(
        !log.lines().any(|l| l.contains("troupe:")
            && !l.contains("troupe: warning:")
            && !l.contains("terminating on signal")),
        "{log}"
    );
}

/// What a domain's serial port (a unix socket libvirt binds) has said since we connected.
struct SerialLog(std::sync::Arc<std::sync::Mutex<String>>);

impl SerialLog {
    fn connect(path: &Path) -> Self {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => panic!("connect {}: {e}", path.display()),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let t = text.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut s, &mut buf) {
                if n == 0 {
                    break;
                }
                t.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self(text)
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// Wait for a line starting with `prefix` after byte `from`; returns the line and
    /// where it ends.
    fn line_after(&self, from: usize, prefix: &str) -> (String, usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = self.text();
            let mut at = from;
            for l in text[from.min(text.len())..].split_inclusive('\n') {
                at += l.len();
                if l.ends_with('\n') && l.starts_with(prefix) {
                    return (l.trim().to_string(), at);
                }
            }
            assert!(
                Instant::now() < deadline,
                "no line {prefix:?} after byte {from}:\n{}",
                &text[from.min(text.len())..]
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The number of the next `demo: tick N` line after `from`, and where it ends.
    fn tick_after(&self, from: usize) -> (u64, usize) {
        let (l, at) = self.line_after(from, "demo: tick ");
        (l["demo: tick ".len()..].parse().unwrap(), at)
    }
}

/// A small domain booting a test guest directly (`<kernel>`), its serial port on a unix
/// socket, defined under its own embedded-driver root: the files, not yet defined.
struct DirectDomain {
    dir: TempDir,
    root: std::path::PathBuf,
    sock: std::path::PathBuf,
    name: String,
    xml_path: std::path::PathBuf,
}

impl DirectDomain {
    /// `tag` names the temp dir, `prefix` the domain (short: libvirt refuses long monitor
    /// socket paths).
    fn new(tag: &str, prefix: &str, guest: &str, cmdline: &str) -> Self {
        let dir = TempDir::new(tag);
        let root = dir.path("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/qemu.conf"), "stdio_handler = \"file\"\n").unwrap();
        let sock = dir.path("serial.sock");
        let name = format!("{prefix}-{}", std::process::id());
        let xml = format!(
            "<domain type='kvm'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <devices>
    <emulator>{emu}</emulator>
    <controller type='usb' model='none'/>
    <serial type='unix'><source mode='bind' path='{sock}'/><target port='0'/></serial>
    <video><model type='vga' vram='16384'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
",
            kernel = common::guest(guest).display(),
            emu = troupe_bin().display(),
            sock = sock.display(),
        );
        let xml_path = dir.path("domain.xml");
        std::fs::write(&xml_path, xml).unwrap();
        Self {
            dir,
            root,
            sock,
            name,
            xml_path,
        }
    }
}

#[test]
fn virsh_save_restore_reboot_and_shutdown_a_guest_that_handles_the_power_button() {
    require_kvm();
    if Command::new("virsh").arg("--version").output().is_err() {
        eprintln!("SKIPPED: virsh is not installed (apt-get install libvirt-clients libvirt-daemon-system)");
        return;
    }
    // The demo guest, booted directly: it counts on its serial port and powers off (S5)
    // when the ACPI power button is pressed.
    let DirectDomain {
        dir,
        root,
        sock,
        name,
        xml_path,
    } = DirectDomain::new("lvpw", "tp", "demo", "tick_ms=50");
    let mut v = Virsh::open(&format!("qemu:///embed?root={}", root.display()));
    v.ok(&format!("define {}", xml_path.display()));
    v.ok(&format!("start {name}"));
    let pid: u32 = std::fs::read_to_string(root.join(format!("run/qemu/{name}.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let serial = SerialLog::connect(&sock);
    // Counting for a while (two seconds), so a guest that started over is told from one
    // that goes on.
    let mut at = 0;
    let mut last = 0;
    while last < 40 {
        (last, at) = serial.tick_after(at);
    }

    // save: libvirt stops the guest, passes troupe a descriptor (`getfd`) and migrates
    // to it (`migrate fd:migrate`) behind its own header, then ends the process.
    let image = dir.path("saved.img");
    v.ok(&format!("save {name} {}", image.display()));
    assert_eq!(v.state(&name), "shut off");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "troupe still runs after the save"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let saved = std::fs::read(&image).unwrap();
    assert!(
        saved.starts_with(b"LibvirtQemudSave"),
        "libvirt's save image"
    );
    let saved_len = saved.len();
    drop(saved);
    // restore: a new troupe reads the stream from the descriptor libvirt hands it
    // (`migrate-incoming fd:N`) and the guest goes on counting where it stopped.
    let log = root.join(format!("log/qemu/{name}.log"));
    let (out, err) = v.run(&format!("restore {}", image.display()));
    assert!(
        !err.lines().any(|l| l.starts_with("error:")),
        "virsh restore: {err}\n{out}\ntroupe's log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(
        v.state(&name),
        "running",
        "troupe's log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let pid: u32 = std::fs::read_to_string(root.join(format!("run/qemu/{name}.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let serial = SerialLog::connect(&sock);
    let (tick, at) = serial.tick_after(0);
    assert!(
        tick > last,
        "after the restore the guest counted {tick}, before the save {last} (image {saved_len} bytes)"
    );
    assert!(
        !serial.text().contains("troupe demo guest:"),
        "{}",
        serial.text()
    );

    // reboot: libvirt presses the power button, and once the guest has powered off
    // (troupe stays, as -no-shutdown asks) resets it and lets it run again.
    v.ok(&format!("reboot {name}"));
    let (_, at) = serial.line_after(at, "demo: power button, powering off");
    let (_, at) = serial.line_after(at, "troupe demo guest:");
    let (tick, at) = serial.tick_after(at);
    assert_eq!(tick, 1, "the guest started again");
    assert_eq!(v.state(&name), "running");
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "same process");

    // shutdown: the guest powers off, libvirt sees it and ends the process.
    v.ok(&format!("shutdown {name}"));
    serial.line_after(at, "demo: power button, powering off");
    let deadline = Instant::now() + Duration::from_secs(60);
    while v.state(&name) != "shut off" {
        assert!(
            Instant::now() < deadline,
            "libvirt did not see the power-off"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let reason = v.ok(&format!("domstate {name} --reason"));
    assert_eq!(reason.trim(), "shut off (shutdown)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "troupe still runs after the shutdown"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    v.ok(&format!("undefine {name}"));
    v.r.send(b"quit\n");
    v.r.wait(Duration::from_secs(60));
    let err = v.r.stderr.text();
    assert!(
        !err.contains(" error : "),
        "libvirt reported an error:\n{err}"
    );
}

#[test]
fn virsh_attach_and_detach_a_virtio_nic_and_disk_on_a_guest_that_ejects() {
    require_kvm();
    if Command::new("virsh").arg("--version").output().is_err() {
        eprintln!("SKIPPED: virsh is not installed (apt-get install libvirt-clients libvirt-daemon-system)");
        return;
    }
    // The pcihp guest: the OSPM side of ACPI PCI hotplug (sees the slot come, ejects it
    // when asked).
    let DirectDomain {
        dir,
        root,
        sock,
        name,
        xml_path,
    } = DirectDomain::new("lvhp", "th", "pcihp", "cycles=3 timeout=120");
    let nic = dir.path("nic.xml");
    std::fs::write(
        &nic,
        "<interface type='user'><mac address='52:54:00:12:34:99'/><model type='virtio'/></interface>\n",
    )
    .unwrap();
    let mut v = Virsh::open(&format!("qemu:///embed?root={}", root.display()));
    v.ok(&format!("define {}", xml_path.display()));
    v.ok(&format!("start {name}"));
    let serial = SerialLog::connect(&sock);
    // libvirt adds the backend (`netdev_add`) and the device (`device_add`).
    v.ok(&format!("attach-device {name} {} --live", nic.display()));
    let (up, at) = serial.line_after(0, "pcihp: up slot=");
    assert!(up.contains("vendor=1af4 device=1000"), "{up}");
    let ifs = v.ok(&format!("domiflist {name}"));
    assert!(ifs.contains("52:54:00:12:34:99"), "{ifs}");
    // detach: `device_del`, the guest ejects, DEVICE_DELETED, libvirt drops the NIC.
    v.ok(&format!("detach-device {name} {} --live", nic.display()));
    serial.line_after(at, "pcihp: ejected slot=");
    let deadline = Instant::now() + Duration::from_secs(60);
    while v
        .ok(&format!("domiflist {name}"))
        .contains("52:54:00:12:34:99")
    {
        assert!(Instant::now() < deadline, "libvirt still lists the NIC");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A disk: libvirt adds a file node and a qcow2 node over it (`blockdev-add`), then
    // the device on the format node; the guest sees a virtio-blk function arrive.
    let disk = dir.path("hot.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("16M")
        .status()
        .expect("qemu-img (qemu-utils)");
    assert!(st.success());
    let disk_xml = dir.path("disk.xml");
    std::fs::write(
        &disk_xml,
        format!(
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
             <source file='{}'/><target dev='vdb' bus='virtio'/></disk>\n",
            disk.display()
        ),
    )
    .unwrap();
    v.ok(&format!(
        "attach-device {name} {} --live",
        disk_xml.display()
    ));
    let (up, at) = serial.line_after(at, "pcihp: up slot=");
    assert!(up.contains("vendor=1af4 device=1001"), "{up}");
    let disks = v.ok(&format!("domblklist {name}"));
    assert!(
        disks.contains("vdb") && disks.contains(&disk.display().to_string()),
        "{disks}"
    );
    // detach: `device_del`, the guest ejects, then libvirt deletes both nodes
    // (`blockdev-del`), which closes the image: another process may write (resize) it.
    v.ok(&format!(
        "detach-device {name} {} --live",
        disk_xml.display()
    ));
    let (_, at) = serial.line_after(at, "pcihp: ejected slot=");
    let deadline = Instant::now() + Duration::from_secs(60);
    while v.ok(&format!("domblklist {name}")).contains("vdb") {
        assert!(Instant::now() < deadline, "libvirt still lists the disk");
        std::thread::sleep(Duration::from_millis(200));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("qemu-img")
            .args(["resize", "-q"])
            .arg(&disk)
            .arg("32M")
            .output()
            .expect("qemu-img");
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the image is still locked after detach: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // `virsh attach-disk`: the same path from virsh's own options.
    v.ok(&format!(
        "attach-disk {name} {} vdc --driver qemu --subdriver qcow2 --targetbus virtio --live",
        disk.display()
    ));
    let (up, _) = serial.line_after(at, "pcihp: up slot=");
    assert!(up.contains("vendor=1af4 device=1001"), "{up}");
    let disks = v.ok(&format!("domblklist {name}"));
    assert!(disks.contains("vdc"), "{disks}");
    v.ok(&format!("destroy {name}"));
    v.ok(&format!("undefine {name}"));
    v.r.send(b"quit\n");
    v.r.wait(Duration::from_secs(60));
}
