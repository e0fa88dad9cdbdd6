//! Whole command lines through [`parse_with`]: defaults, the exact one-line errors users
//! see, QEMU's ordering rules, listings, and a no-panic sweep over random argument soup.
//! The per-area files hold the rest.

mod chardev;
mod devices;
mod fuzz;
mod libvirt;
mod machine;
mod storage;
mod usb;

use std::net::Ipv4Addr;
use std::path::Path;

use super::drive;
use super::host::testing::{host, TempFile};
use super::hotplug::{parse_device_add, parse_netdev_add, DeviceAdd};
use super::table::OPTIONS;
use super::*;
use crate::config::*;

/// A fake host whose default firmware is a real 256 KiB file.
struct Env {
    bios: TempFile,
}

impl Env {
    fn new() -> Env {
        Env {
            bios: TempFile::new(256 << 10),
        }
    }

    fn parse(&self, args: &[&str]) -> Result<Invocation, CliError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        parse_with(&args, &host(self.bios.path()))
    }

    fn run(&self, args: &[&str]) -> VmConfig {
        match self.parse(args) {
            Ok(Invocation::Run(c)) => *c,
            other => panic!("{args:?}: expected a run, got {other:?}"),
        }
    }

    fn err(&self, args: &[&str]) -> String {
        match self.parse(args) {
            Err(e) => e.to_string(),
            other => panic!("{args:?}: expected an error, got {other:?}"),
        }
    }

    fn print(&self, args: &[&str]) -> String {
        match self.parse(args) {
            Ok(Invocation::Print(text)) => text,
            other => panic!("{args:?}: expected a listing, got {other:?}"),
        }
    }
}

fn nic_of(d: &DeviceConfig) -> (NicModel, Option<&str>, [u8; 6]) {
    match &d.kind {
        DeviceKind::Nic {
            model, netdev, mac, ..
        } => (*model, netdev.as_deref(), *mac),
        other => panic!("not a NIC: {other:?}"),
    }
}

#[test]
fn no_options_give_qemus_defaults() {
    let env = Env::new();
    let c = env.run(&[]);
    assert_eq!(c.memory, 128 << 20);
    assert_eq!(
        c.smp,
        SmpConfig {
            cpus: 1,
            sockets: 1,
            cores: 1,
            threads: 1,
            maxcpus: 1
        }
    );
    assert_eq!(c.cpu, CpuConfig::model("qemu64"));
    assert_eq!(c.machine.kind, "pc-i440fx-7.2");
    assert_eq!(
        c.boot,
        BootConfig::Firmware {
            bios: env.bios.0.clone()
        }
    );
    assert_eq!(c.boot_order.order, "cad");
    assert_eq!(c.vcpu_pin, VcpuPin::Auto);
    // QEMU without a GUI: VNC on localhost:0 (to=99), the monitor (Ctrl+Alt+2) and COM1
    // (Ctrl+Alt+3) on 80x24 text consoles.
    let vc = |index| {
        CharBackend::Vc(crate::config::VcSpec {
            index,
            cols: 80,
            rows: 24,
        })
    };
    assert_eq!(c.serials, vec![vc(1)]);
    assert_eq!(c.monitors.len(), 1);
    assert_eq!(
        (c.monitors[0].mode, &c.monitors[0].backend),
        (MonitorMode::Readline, &vc(0))
    );
    assert!(c.chardevs.is_empty());
    assert_eq!(
        (c.vnc.clone(), c.display, c.vga),
        (
            Some(crate::cli::display::default_vnc()),
            DisplayKind::Default,
            VgaKind::Std
        )
    );
    assert_eq!(c.keymap, "en-us");
    assert_eq!(c.drives, vec![drive::default_cdrom()]);
    assert_eq!(c.netdevs.len(), 1);
    assert_eq!(c.netdevs[0].id, "#net0");
    assert!(
        matches!(&c.netdevs[0].kind, NetdevKind::User(u) if u.net == (Ipv4Addr::new(10, 0, 2, 0), 24))
    );
    assert_eq!(c.devices.len(), 1);
    assert_eq!(
        nic_of(&c.devices[0]),
        (
            NicModel::E1000,
            Some("#net0"),
            [0x52, 0x54, 0, 0x12, 0x34, 0x56]
        )
    );
    assert_eq!(c.devices[0].addr, Some((3, 0)));
    assert_eq!(c.rtc.base, RtcBase::Utc);
    assert!(c.warnings.is_empty());
    assert!(!c.start_paused && !c.no_reboot && !c.no_shutdown && !c.daemonize && !c.snapshot);
}

#[test]
fn nodefaults_removes_every_default_device() {
    let c = Env::new().run(&["-nodefaults"]);
    assert!(c.serials.is_empty() && c.monitors.is_empty());
    assert!(c.drives.is_empty() && c.netdevs.is_empty() && c.devices.is_empty());
    assert_eq!(c.vga, VgaKind::None);
    let c = Env::new().run(&["-nodefaults", "-vga", "std", "-device", "virtio-rng-pci"]);
    assert_eq!(c.vga, VgaKind::Std);
    assert_eq!(c.devices[0].addr, Some((3, 0)));
}

#[test]
fn the_briefs_example_errors_read_exactly() {
    let env = Env::new();
    assert_eq!(
        env.err(&["-m", "0"]),
        "-m 0: memory size must be greater than zero"
    );
    assert_eq!(
        env.err(&["-smp", "8,maxcpus=4"]),
        "-smp 8,maxcpus=4: maxcpus (4) must be equal to or greater than cpus (8)"
    );
    assert_eq!(env.err(&["-foo"]), "-foo: invalid option");
    assert_eq!(
        env.err(&["-kernel", "/nope"]),
        "-kernel /nope: could not open: No such file or directory"
    );
}

#[test]
fn option_syntax_errors() {
    let env = Env::new();
    assert_eq!(env.err(&["-m"]), "-m: requires an argument");
    assert_eq!(env.err(&["-"]), "-: invalid option");
    assert_eq!(env.err(&["--"]), "--: invalid option");
    assert_eq!(
        env.err(&["-fda", "x.img"]),
        "-fda: not supported by troupe (no floppy drive)"
    );
    assert_eq!(env.err(&["-s"]), "-s: not supported by troupe (no gdbstub)");
    assert_eq!(
        env.err(&["-numa", "node"]),
        "-numa: not supported by troupe"
    );
    // Double dashes work like single ones, and errors quote what was written.
    assert_eq!(env.run(&["--m", "64"]).memory, 64 << 20);
    assert_eq!(
        env.err(&["--m", "0"]),
        "--m 0: memory size must be greater than zero"
    );
}

#[test]
fn listings_are_printed_not_run() {
    let env = Env::new();
    assert!(env.print(&["-version"]).starts_with("troupe version"));
    assert!(env
        .print(&["-h"])
        .contains("usage: troupe [options] [disk_image]"));
    assert!(env.print(&["--help"]).contains("-vcpu-pin"));
    assert!(env.print(&["-cpu", "help"]).contains("x86 qemu64"));
    assert!(env.print(&["-cpu", "?"]).contains("x86 host"));
    assert!(env
        .print(&["-M", "help"])
        .starts_with("Supported machines are:"));
    assert!(env.print(&["-machine", "?"]).contains("pc-i440fx-7.2"));
    assert!(env.print(&["-accel", "help"]).contains("kvm"));
    assert!(env
        .print(&["-device", "help"])
        .contains("name \"virtio-blk-pci\""));
    assert!(env
        .print(&["-device", "e1000,help"])
        .starts_with("e1000 options:"));
    assert!(env
        .print(&["-device", "isa-debug-exit,?"])
        .contains("iobase="));
    assert_eq!(
        env.print(&["-net", "nic,model=help"]),
        "Supported NIC models:\ne1000\nvirtio-net-pci\n"
    );
    assert_eq!(
        env.print(&["-nic", "model=help"]),
        "Supported NIC models:\ne1000\nvirtio-net-pci\n"
    );
    assert!(env.print(&["-netdev", "help"]).contains("user"));
    assert!(env.print(&["-chardev", "help"]).contains("socket"));
    assert!(env.print(&["-vga", "help"]).contains("std"));
    assert!(env.print(&["-display", "help"]).contains("vnc"));
    assert!(env.print(&["-d", "help"]).contains("guest_errors"));
    assert!(env.print(&["-k", "help"]).contains("en-us"));
    assert_eq!(
        env.err(&["-device", "nope,help"]),
        "-device nope,help: device 'nope' is unknown or not supported by troupe (see -device help)"
    );
    // A listing stops parsing: later errors don't matter, earlier ones do.
    assert!(env.print(&["-cpu", "help", "-foo"]).contains("qemu64"));
    assert_eq!(env.err(&["-foo", "-cpu", "help"]), "-foo: invalid option");
}

/// A deterministic xorshift generator for the sweep below.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[(self.next() % from.len() as u64) as usize]
    }
}

#[test]
fn no_input_makes_the_parser_panic() {
    let env = Env::new();
    let names: Vec<String> = OPTIONS
        .iter()
        .map(|(n, ..)| format!("-{n}"))
        .chain(["-fda", "-", "--m", "x.img", ""].map(String::from))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let values = [
        "",
        ",",
        ",,",
        "=",
        "help",
        "?",
        "0",
        "1",
        "-1",
        "18446744073709551616",
        "99999999999999999999E",
        "1.99999999999999999999999999999999E",
        "15.9999999999999999999999E",
        "4,maxcpus=2",
        "sockets=0",
        "cpus=2,sockets=4294967296,cores=4294967296",
        ":",
        "::",
        "tcp:",
        "tcp::",
        "tcp::1-:",
        "user,id=n,hostfwd=::-:",
        "mon:",
        "mon:mon:stdio",
        "chardev:",
        "file:",
        "unix:",
        "socket,id=s,port=",
        "e1000,mac=::::::",
        "virtio-blk-pci,drive=",
        "é",
        "=é,ü",
        "a=1,,",
        "isa-debug-exit,iobase=0xffffffffffffffff",
        "driver=qcow2,node-name=a,file.driver=qcow2",
        "driver=raw,node-name=a,file.driver=file,file.filename=",
        "0=0-18446744073709551615",
        "0=",
        ":99999999999999999999",
        "base=9999-12-31T23:59:59",
        "user,id=n,net=0.0.0.0/0",
        "user,id=n,net=255.255.255.255/32",
        "nic,vlan=4294967296",
        "pc,accel=",
        "host,=on,+,-",
        "order=",
        "if=none",
        "media=cdrom,if=virtio",
        "tap,id=t,fd=2147483648",
        "vnc=",
        "none,gl=on",
    ];
    let mut rng = Rng(0x5eed_1234_abcd_9876);
    for _ in 0..4000 {
        let n = (rng.next() % 7) as usize;
        let mut args: Vec<&str> = Vec::new();
        for _ in 0..n {
            args.push(rng.pick(&names));
            if rng.next() & 3 != 0 {
                args.push(rng.pick(&values));
            }
        }
        let _ = env.parse(&args);
    }
}

#[test]
fn the_design_docs_example_command_line_parses() {
    let env = Env::new();
    let disk = TempFile::new(1 << 20);
    let iso = TempFile::new(2048);
    let c = env.run(&[
        "-m",
        "2048",
        "-smp",
        "4,sockets=1,cores=2,threads=2",
        "-cpu",
        "qemu64,+aes",
        "-boot",
        "order=cd",
        "-hda",
        &disk.s(),
        "-cdrom",
        &iso.s(),
        "-netdev",
        "user,id=n0,hostfwd=tcp::2222-:22",
        "-device",
        "virtio-net-pci,netdev=n0",
        "-vnc",
        ":1",
        "-monitor",
        "telnet:127.0.0.1:4444,server,nowait",
    ]);
    assert_eq!(c.memory, 2048 << 20);
    assert_eq!(
        c.smp,
        SmpConfig {
            cpus: 4,
            sockets: 1,
            cores: 2,
            threads: 2,
            maxcpus: 4
        }
    );
    assert_eq!(c.cpu.plus, vec!["aes".to_string()]);
    assert_eq!(c.boot_order.order, "cd");
    assert_eq!(c.drives.len(), 2);
    // -vnc :1 keeps QEMU's default COM1 on a text console of that display.
    assert!(matches!(c.serials[..], [CharBackend::Vc(_)]));
    assert_eq!(
        c.monitors,
        vec![MonitorConfig {
            mode: MonitorMode::Readline,
            backend: CharBackend::Tcp {
                addr: SocketAddrSpec {
                    host: "127.0.0.1".into(),
                    port: 4444
                },
                server: true,
                wait: false,
                telnet: true,
                nodelay: false,
            },
            pretty: false,
        }]
    );
    assert_eq!(c.vnc.unwrap().listen.port, 5901);
    assert_eq!(c.devices.len(), 1);
    assert_eq!(c.devices[0].addr, Some((3, 0)));
    // `-vnc :1` listens on every address with no password: said once, nothing else.
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(
        c.warnings[0].starts_with("the VNC server listens on all addresses, port 5901"),
        "{:?}",
        c.warnings
    );
}

#[test]
fn the_real_host_is_detected() {
    // parse() looks at this machine: pinning vCPU 0 to the first allowed CPU works.
    let h = Host::detect();
    let first = h.allowed_cpus.first().copied().unwrap_or(0);
    let args: Vec<String> = vec![
        "-kernel".into(),
        "/proc/self/exe".into(),
        "-vcpu-pin".into(),
        format!("0={first}"),
    ];
    assert!(matches!(parse(&args), Ok(Invocation::Run(_))));
}
