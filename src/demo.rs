//! `troupe` with no arguments: boot the built-in demo guest (a test guest embedded in the
//! binary) and tell the user what it is, where to look, and how to stop it.

use crate::config::{BootConfig, VmConfig};
use crate::machine::KernelSource;

/// The demo guest image, built from `tests/guests/demo` by build.rs.
pub static DEMO_GUEST: &[u8] = include_bytes!(concat!(env!("TROUPE_GUEST_DIR"), "/demo.elf"));

/// The demo's command line, as a user would type it.
pub const DEMO_ARGS: &[&str] = &[
    "-m",
    "256",
    "-smp",
    "2",
    "-nodefaults",
    "-vga",
    "std",
    "-vnc",
    "127.0.0.1:0,to=99",
    "-serial",
    "stdio",
    "-monitor",
    "telnet:127.0.0.1:4444,server,nowait",
    "-device",
    "isa-debug-exit,iobase=0xf4,iosize=0x04",
];

pub fn config() -> VmConfig {
    // Parse the demo line like any other, with a stand-in readable -kernel (the demo image
    // is embedded, not a file), then point the boot at the embedded guest.
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let mut args: Vec<String> = DEMO_ARGS.iter().map(|s| s.to_string()).collect();
    args.push("-kernel".into());
    args.push(exe.display().to_string());
    let mut cfg = match crate::cli::parse(&args) {
        Ok(crate::cli::Invocation::Run(c)) => *c,
        other => unreachable!("the demo command line is valid: {other:?}"),
    };
    cfg.name = Some("troupe-demo".into());
    cfg.boot = BootConfig::Direct {
        kernel: "(built-in demo guest)".into(),
        initrd: None,
        cmdline: String::new(),
    };
    cfg
}

pub fn kernel() -> KernelSource {
    KernelSource::Embedded(DEMO_GUEST)
}

pub fn print_banner(
    cfg: &VmConfig,
    vnc: Option<std::net::SocketAddr>,
    monitor: Option<std::net::SocketAddr>,
) {
    actors::report!(
        "troupe: running the built-in demo guest ({} vCPUs, {} MiB): the same as\n  troupe {} -kernel <demo>",
        cfg.smp.cpus,
        cfg.memory >> 20,
        DEMO_ARGS.join(" ")
    );
    if let Some(a) = vnc {
        actors::report!(
            "troupe: its screen: connect a VNC viewer to {a} (e.g. `vncviewer {}::{}`)",
            a.ip(),
            a.port()
        );
    }
    if let Some(m) = monitor {
        actors::report!(
            "troupe: its monitor: `telnet {} {}` for the (qemu) prompt (try `info status`, `info actors`, `help`)",
            m.ip(),
            m.port()
        );
    }
    actors::report!(
        "troupe: its serial console is this terminal: type to see it echo; Ctrl-D powers the guest off, Ctrl-C stops troupe."
    );
}
