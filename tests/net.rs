//! Networking through the doors a user uses: `-netdev tap` + `-device virtio-net-pci` with
//! the ring-3 virtio test guest's driver (ARP, ping both ways) inside a network namespace
//! the test creates (traffic never leaves it); bad network options refused at start.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{code, guest, troupe_bin, Vm};

const T: Duration = Duration::from_secs(90);
const PASS: i32 = 1;

/// A network namespace, deleted at drop.
struct NetNs(String);

impl NetNs {
    fn new(tag: &str) -> Self {
        let name = format!("troupe-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip (iproute2)");
        assert!(st.success(), "ip netns add {name} (tests run as root)");
        let ns = Self(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip ARGS` inside the namespace; panics on failure.
    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "ip"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn run(&self, prog: &str, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0, prog])
            .args(args)
            .output()
            .unwrap()
    }

    /// troupe inside the namespace.
    fn troupe(&self, args: &[&str]) -> Vm {
        let bin = troupe_bin();
        let mut all = vec!["netns", "exec", &self.0, bin.to_str().unwrap()];
        all.extend_from_slice(args);
        common::require_kvm();
        Vm::program("ip", &all)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn a_tap_in_a_namespace_carries_ping_both_ways() {
    let ns = NetNs::new("tap");
    let k = guest("virtio");
    for iface in ["", "legacy"] {
        let append = format!("dev=net {iface} ip=10.9.0.2 peer=10.9.0.1 count=3 answer=3 wait=60");
        let mut vm = ns
            .troupe(&[
                "-nodefaults",
                "-display",
                "none",
                "-serial",
                "stdio",
                "-device",
                "isa-debug-exit,iobase=0xf4,iosize=0x04",
                "-kernel",
                k.to_str().unwrap(),
                "-append",
                &append,
                "-netdev",
                "tap,id=n0,ifname=ttap0,script=no,downscript=no",
                "-device",
                "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56",
            ])
            .spawn();
        vm.expect_stdout("vnet: mac 52:54:00:12:34:56 link up", T);
        ns.ip(&["addr", "replace", "10.9.0.1/24", "dev", "ttap0"]);
        ns.ip(&["link", "set", "ttap0", "up"]);
        // The host side pings the guest...
        let out = ns.run("ping", &["-c", "3", "-W", "5", "10.9.0.2"]);
        assert!(
            out.status.success(),
            "{iface}: ping from the namespace: {}{}",
            String::from_utf8_lossy(&out.stdout),
            vm.stdout.text()
        );
        // ... and the guest pinged the host side.
        vm.expect_stdout("vnet: reply from 10.9.0.1 seq=3", T);
        vm.expect_stdout("vnet: answered 3 echo requests", T);
        assert_eq!(code(vm.wait(T)), PASS, "{iface}: {}", vm.stderr.text());
    }
}

#[test]
fn network_options_troupe_cannot_serve_yet_are_refused_at_start() {
    for (args, needle) in [
        (
            vec![
                "-netdev",
                "user,id=u0",
                "-device",
                "virtio-net-pci,netdev=u0",
            ],
            "only tap networking is available yet",
        ),
        (
            vec![
                "-netdev",
                "tap,id=t0,ifname=x,script=no",
                "-device",
                "e1000,netdev=t0",
            ],
            "only virtio-net-pci on a tap netdev",
        ),
    ] {
        let mut all = vec!["-nodefaults", "-display", "none"];
        all.extend_from_slice(&args);
        let (st, _, err) = Vm::troupe(&all).run(T);
        assert!(!st.success());
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
