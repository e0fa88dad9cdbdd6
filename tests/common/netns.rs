//! A network namespace for tests that put taps and traffic somewhere of their own.

use std::process::Command;

use super::{troupe_bin, Vm};

/// A network namespace, deleted at drop.
pub struct NetNs(pub String);

impl NetNs {
    pub fn new(tag: &str) -> Self {
        let name = format!("troupe-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
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
    pub fn ip(&self, args: &[&str]) {
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

    /// `PROG ARGS` inside the namespace.
    pub fn run(&self, prog: &str, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0, prog])
            .args(args)
            .output()
            .unwrap()
    }

    /// troupe inside the namespace.
    pub fn troupe(&self, args: &[&str]) -> Vm {
        let bin = troupe_bin();
        let mut all = vec!["netns", "exec", &self.0, bin.to_str().unwrap()];
        all.extend_from_slice(args);
        super::require_kvm();
        Vm::program("ip", &all)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
