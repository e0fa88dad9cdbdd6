//! The sandbox (issue 18): every thread under a seccomp filter by default, chosen by its
//! actor kind; a forbidden call ends the process with a line naming the thread, its kind
//! and the call; QEMU's `-sandbox` switches as libvirt passes them; `-runas` drops to
//! another user once everything is open.
//!
//! The violations use the test build's `TROUPE_TEST_SECCOMP_VIOLATE=KIND` (feature
//! `fault-injection`): each thread or actor task of KIND makes a forbidden call (`iopl`) as
//! it starts.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{code, free_port, guest, Qmp, Running, TempDir, Vm};

/// Generous: guest ring 0 is emulated on this host, and the machine is shared.
const T: Duration = Duration::from_secs(60);

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img (qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 16 MiB qcow2 image in `dir`, writable by anyone (so a `-runas nobody` VM could even
/// reopen it; troupe opens it before the drop anyway).
fn disk(dir: &TempDir) -> String {
    let p = dir.path("d.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&p), "16M"]);
    s(&p).to_string()
}

/// The virtio guest writing its pattern to a virtio disk `img` and holding, with a QMP
/// server on `qmp`, user networking on a virtio NIC, and `extra`.
fn vm_args(img: &str, qmp: u16, extra: &[&str]) -> Vec<String> {
    let k = guest("virtio");
    let mut a: Vec<String> = common::guest_args(
        s(&k),
        "op=write sectors=256 seed=7 hold",
        &["-drive", &format!("file={img},if=virtio,format=qcow2")],
    )
    .iter()
    .map(|x| x.to_string())
    .collect();
    a.extend(
        [
            "-qmp",
            &format!("tcp:127.0.0.1:{qmp},server,nowait"),
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0",
        ]
        .iter()
        .map(|x| x.to_string()),
    );
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

/// (name, Seccomp mode) of every thread of `pid`.
fn seccomp_modes(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(t.join("comm")),
            std::fs::read_to_string(t.join("status")),
        ) else {
            continue; // the thread ended meanwhile
        };
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .unwrap_or("?")
            .trim()
            .to_string();
        out.push((comm.trim().to_string(), mode));
    }
    out
}

/// One line of /proc/PID/status, its value trimmed.
fn status_field(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// Wait until the guest has written and flushed its pattern, and QMP answers.
fn running(vm: &Running, qmp: u16) -> Qmp {
    vm.expect_stdout("vblk: wrote 256 sectors, flushed", T);
    let mut q = Qmp::open(qmp);
    assert_eq!(
        q.ask("{\"execute\":\"qmp_capabilities\"}\r\n")["return"],
        serde_json::json!({})
    );
    let st = q.ask("{\"execute\":\"query-status\"}\r\n");
    assert_eq!(st["return"]["status"], "running", "{st}");
    q
}

#[test]
fn every_thread_is_filtered_by_default_and_none_with_sandbox_off() {
    let dir = TempDir::new("sandbox-threads");
    let img = disk(&dir);
    for (extra, want) in [(&[][..], "2"), (&["-sandbox", "off"][..], "0")] {
        let qmp = free_port();
        let vm = Vm::troupe(&vm_args(&img, qmp, extra)).spawn();
        let _q = running(&vm, qmp);
        let modes = seccomp_modes(vm.pid());
        // The VM has its vCPU, block, virtio and slirp threads, tokio's and the main one.
        assert!(modes.len() >= 6, "{modes:?}");
        for (name, mode) in &modes {
            assert_eq!(
                mode, want,
                "{extra:?}: thread {name}: Seccomp {mode}: {modes:?}"
            );
        }
    }
}

#[test]
fn libvirts_sandbox_line_is_taken_and_the_vm_runs_under_it() {
    let dir = TempDir::new("sandbox-libvirt");
    let img = disk(&dir);
    let qmp = free_port();
    let vm = Vm::troupe(&vm_args(
        &img,
        qmp,
        &[
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ],
    ))
    .spawn();
    let mut q = running(&vm, qmp);
    assert!(seccomp_modes(vm.pid()).iter().all(|(_, m)| m == "2"));
    // A tap with a script would start a program: refused with the reason, VM unharmed.
    let r = q.ask(
        "{\"execute\":\"netdev_add\",\"arguments\":{\"type\":\"tap\",\"id\":\"t9\",\
         \"script\":\"/bin/true\",\"downscript\":\"no\"}}\r\n",
    );
    let desc = r["error"]["desc"].as_str().unwrap_or_default().to_string();
    assert!(desc.contains("spawn=deny"), "{r}");
    let st = q.ask("{\"execute\":\"query-status\"}\r\n");
    assert_eq!(st["return"]["status"], "running", "{st}");
}

#[test]
fn a_wrong_sandbox_option_is_refused_with_its_value() {
    let (st, _, err) = Vm::troupe(&["-sandbox", "on,spawn=sometimes"]).run(T);
    assert_eq!(code(st), 1);
    assert!(
        err.contains("-sandbox on,spawn=sometimes") && err.contains("sometimes"),
        "{err}"
    );
}

/// Start a VM whose actors of `kind` make a forbidden call; it must end with status 159
/// and the line naming the kind and the call.
fn violation(kind: &str, extra: &[&str], task: bool) {
    let dir = TempDir::new("sandbox-violate");
    let img = disk(&dir);
    let qmp = free_port();
    let mut vm = Vm::troupe(&vm_args(&img, qmp, extra))
        .env("TROUPE_TEST_SECCOMP_VIOLATE", kind)
        .spawn();
    let st = vm.wait(T);
    let err = vm.stderr.text();
    assert_eq!(code(st), 159, "{kind}: {err}");
    let named = if task {
        format!("running an actor task of kind {kind})")
    } else {
        format!("(kind {kind}")
    };
    let line = err
        .lines()
        .find(|l| l.starts_with("troupe: seccomp: thread "))
        .unwrap_or_else(|| panic!("{kind}: no seccomp line in {err:?}"));
    assert!(
        line.contains(&named) && line.contains("forbidden system call iopl (172)"),
        "{kind}: {line}"
    );
}

#[test]
fn a_forbidden_call_on_a_vcpu_kills_the_process_with_its_line() {
    violation("vcpu", &[], false);
}

#[test]
fn a_forbidden_call_on_a_block_engine_kills_the_process_with_its_line() {
    violation("block", &[], false);
}

#[test]
fn a_forbidden_call_on_a_device_worker_kills_the_process_with_its_line() {
    violation("virtio-worker", &[], false);
}

#[test]
fn a_forbidden_call_on_a_nic_backend_kills_the_process_with_its_line() {
    violation("nic-backend", &[], false);
}

#[test]
fn a_forbidden_call_on_a_tokio_thread_kills_the_process_with_its_line() {
    violation("tokio", &[], false);
}

#[test]
fn a_forbidden_call_on_the_main_thread_kills_the_process_with_its_line() {
    violation("main", &[], false);
}

#[test]
fn a_forbidden_call_on_the_thread_starter_kills_the_process_with_its_line() {
    violation("thread-starter", &[], false);
}

#[test]
fn a_forbidden_call_in_the_vnc_server_kills_the_process_with_its_line() {
    let port = loop {
        let p = free_port();
        if p > 5900 {
            break p;
        }
    };
    violation(
        "vnc",
        &["-vnc", &format!("127.0.0.1:{}", port - 5900)],
        true,
    );
}

#[test]
fn a_forbidden_call_in_a_monitor_kills_the_process_with_its_line() {
    violation("monitor", &[], true);
}

#[test]
fn a_forbidden_call_with_sandbox_off_is_just_a_call() {
    let dir = TempDir::new("sandbox-off-violate");
    let img = disk(&dir);
    let qmp = free_port();
    let vm = Vm::troupe(&vm_args(&img, qmp, &["-sandbox", "off"]))
        .env("TROUPE_TEST_SECCOMP_VIOLATE", "vcpu")
        .spawn();
    let _q = running(&vm, qmp);
    assert!(!vm.stderr.text().contains("seccomp"));
}

#[test]
fn runas_nobody_drops_every_credential_and_the_vm_still_writes_its_disk() {
    let dir = TempDir::new("sandbox-runas");
    let img = disk(&dir);
    let qmp = free_port();
    let mut vm = Vm::troupe(&vm_args(&img, qmp, &["-runas", "nobody"])).spawn();
    let _q = running(&vm, qmp);
    let pid = vm.pid();
    // nobody's uid and gid (65534 on Debian), real, effective, saved and filesystem.
    let nobody = "65534\t65534\t65534\t65534";
    assert_eq!(status_field(pid, "Uid"), nobody);
    assert_eq!(status_field(pid, "Gid"), nobody);
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(pid, "CapPrm"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    // Every thread took the new credentials, not just the main one (threads the kernel
    // made for KVM and io_uring run no code of ours and keep what they were made with).
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
        if comm.starts_with("kvm-") || comm.starts_with("iou-") {
            continue;
        }
        if let Ok(st) = std::fs::read_to_string(t.join("status")) {
            let uid = st.lines().find(|l| l.starts_with("Uid:")).unwrap();
            assert!(uid.ends_with(nobody), "{}: {uid}", t.display());
        }
    }
    vm.kill();
    // What the guest wrote as nobody is on the disk.
    let k = guest("virtio");
    let (st, out, err) = Vm::troupe(&common::guest_args(
        s(&k),
        "op=verify sectors=256 seed=7",
        &["-drive", &format!("file={img},if=virtio,format=qcow2")],
    ))
    .run(T);
    assert!(
        out.contains("vblk: verified 256 sectors"),
        "status {st:?}: {out}\n{err}"
    );
}

#[test]
fn chroot_enters_the_directory_once_the_vm_is_built() {
    let dir = TempDir::new("sandbox-chroot");
    let img = disk(&dir);
    let root = dir.path("root");
    std::fs::create_dir_all(&root).unwrap();
    let qmp = free_port();
    let vm = Vm::troupe(&vm_args(&img, qmp, &["-chroot", s(&root)])).spawn();
    let _q = running(&vm, qmp);
    let seen = std::fs::read_link(format!("/proc/{}/root", vm.pid())).unwrap();
    assert_eq!(seen, root);
}

#[test]
fn doors_other_hosts_can_reach_are_named_at_start_and_loopback_ones_are_not() {
    // Listening on every address happens in a network namespace of its own (unshare -n:
    // only a loopback that is down), so nothing is really offered to this host's network.
    let (qmp, mon, inc) = (free_port(), free_port(), free_port());
    let display = common::free_display();
    let (qmp_arg, mon_arg) = (
        format!("tcp:0.0.0.0:{qmp},server=on,wait=off"),
        format!("tcp::{mon},server=on,wait=off"),
    );
    let (vnc_arg, inc_arg) = (
        format!("0.0.0.0:{display},websocket=on"),
        format!("tcp:0.0.0.0:{inc}"),
    );
    let troupe = common::troupe_bin();
    let vm = Vm::program(
        "unshare",
        &[
            "-n",
            troupe.to_str().unwrap(),
            "-nodefaults",
            "-qmp",
            &qmp_arg,
            "-monitor",
            &mon_arg,
            "-vnc",
            &vnc_arg,
            "-incoming",
            &inc_arg,
        ],
    )
    .spawn();
    for needle in [
        &format!("warning: the QMP monitor listens on all addresses, port {qmp}: anyone"),
        &format!("warning: the monitor listens on all addresses, port {mon}: anyone"),
        &format!(
            "warning: the VNC server listens on all addresses, port {} without a password",
            5900 + display
        ),
        &format!(
            "warning: the VNC websocket listens on all addresses, port {} without a password",
            5700 + display
        ),
        &format!("warning: -incoming listens on all addresses, port {inc}: the first host"),
    ] {
        if let Err(e) = vm.stderr.wait_for(needle, T) {
            panic!("{e}\nstderr:\n{}", vm.stderr.text());
        }
    }
    drop(vm);

    // The same doors on loopback, and VNC everywhere but with a password: nothing to say.
    let (qmp, mon, display) = (free_port(), free_port(), common::free_display());
    let (qmp_arg, mon_arg, vnc_arg) = (
        format!("tcp:127.0.0.1:{qmp},server=on,wait=off"),
        format!("tcp:localhost:{mon},server=on,wait=off"),
        format!("127.0.0.1:{display}"),
    );
    let vm = Vm::troupe(&[
        "-S",
        "-nodefaults",
        "-qmp",
        &qmp_arg,
        "-monitor",
        &mon_arg,
        "-vnc",
        &vnc_arg,
    ])
    .spawn();
    let mut q = Qmp::open(qmp);
    q.ask("{\"execute\":\"qmp_capabilities\"}\r\n");
    let st = q.ask("{\"execute\":\"query-status\"}\r\n");
    assert_eq!(st["return"]["status"], "prelaunch", "{st}");
    let err = vm.stderr.text();
    assert!(!err.contains("listens on"), "{err}");
    drop(vm);

    let dir = TempDir::new("exposure");
    let sock = dir.path("qmp.sock");
    let qmp_arg = format!("unix:{},server=on,wait=off", sock.display());
    let vnc_arg = format!("0.0.0.0:{},password=on", common::free_display());
    let vm = Vm::program(
        "unshare",
        &[
            "-n",
            troupe.to_str().unwrap(),
            "-nodefaults",
            "-vnc",
            &vnc_arg,
            "-qmp",
            &qmp_arg,
        ],
    )
    .spawn();
    let mut q = Qmp::open_unix(&sock);
    q.ask("{\"execute\":\"qmp_capabilities\"}\r\n");
    let err = vm.stderr.text();
    assert!(!err.contains("listens on"), "{err}");
}
