//! `-h`/`--help` and `-version`: what troupe says about itself.

/// The QEMU release whose command line troupe follows.
pub const QEMU_COMPAT: &str = "7.2.22";

/// `-version`.
pub fn version() -> String {
    format!(
        "troupe version {} (QEMU emulator version {QEMU_COMPAT} compatible command line, KVM only)\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// `-h`, `-help`, `--help`.
pub fn help() -> String {
    let mut out = format!(
        "troupe {}: a KVM virtual machine monitor that speaks QEMU's command line\n\
         usage: troupe [options] [disk_image]\n\n\
         'disk_image' is a raw or qcow2 hard disk image for IDE hard disk 0.\n\
         Options may start with - or --. Values in KEY=VALUE lists write ',' as ',,'.\n\
         Any option troupe cannot honour is refused with a message, never ignored.\n",
        env!("CARGO_PKG_VERSION")
    );
    for (section, lines) in SECTIONS {
        out.push_str(&format!("\n{section}:\n"));
        for (opt, text) in *lines {
            if opt.len() <= 30 {
                out.push_str(&format!("{opt:<31}{text}\n"));
            } else {
                out.push_str(&format!("{opt}\n{:<31}{text}\n", ""));
            }
        }
    }
    out.push_str(
        "\nDuring emulation, with -nographic or -serial mon:stdio, Ctrl-a c switches between\n\
         the serial console and the monitor, Ctrl-a x exits. On the VNC display, Ctrl+Alt+1\n\
         shows the guest's screen, Ctrl+Alt+2 and up the text consoles (the monitor, then\n\
         the serial port, by default).\n",
    );
    out
}

type Lines = &'static [(&'static str, &'static str)];

const SECTIONS: &[(&str, Lines)] = &[
    (
        "Standard options",
        &[
            ("-h, -help, --help", "display this help and exit"),
            ("-version", "display version information and exit"),
            (
                "-M, -machine [type=]pc[,accel=kvm]",
                "the machine: pc (i440FX + PIIX) or pc-i440fx-X.Y; 'help' lists",
            ),
            ("", "(none: the empty machine management tools probe with)"),
            (
                "-accel kvm, -enable-kvm",
                "use KVM (the only accelerator troupe has)",
            ),
            (
                "-cpu host|max|qemu64[,+f|-f|f=on|off]",
                "CPU model and CPUID features (default qemu64); 'help' lists",
            ),
            (
                "-smp [cpus=]n[,sockets=][,cores=]",
                "number of vCPUs and topology (also threads=, dies=1, maxcpus=)",
            ),
            (
                "-m [size=]N[K|M|G|T]",
                "guest RAM; a plain number is MiB (default 128)",
            ),
            (
                "-name NAME[,process=][,debug-threads=on]",
                "the guest's name",
            ),
            ("-uuid UUID", "the system UUID"),
            (
                "-boot [order=]cdn[,once=][,menu=on]",
                "boot order: c disk, d CD-ROM, n network, a/b floppy",
            ),
            ("", "(also splash-time=MS, strict=on, reboot-timeout=MS)"),
            (
                "-k LAYOUT",
                "VNC keyboard layout (default en-us); 'help' lists",
            ),
            (
                "-snapshot",
                "write to temporary overlays, never to the images",
            ),
            (
                "-nodefaults",
                "no default serial port, monitor, NIC, CD-ROM drive or VGA",
            ),
            (
                "-no-user-config",
                "accepted: troupe reads no configuration files",
            ),
            (
                "-overcommit mem-lock=on|off",
                "lock guest RAM (and troupe) in host memory (cpu-pm=off only)",
            ),
            (
                "-mem-path PATH",
                "guest RAM from a file in PATH (hugetlbfs: huge pages)",
            ),
            ("-mem-prealloc", "allocate all guest RAM before it runs"),
        ],
    ),
    (
        "Block devices",
        &[
            (
                "-drive [file=]...,if=ide|virtio|none",
                "a drive; also media=disk|cdrom, index=, format=raw|qcow2,",
            ),
            ("", "cache=writeback|none|writethrough|directsync|unsafe,"),
            ("", "aio=threads|native|io_uring, readonly=on, snapshot=on,"),
            ("", "discard=ignore|unmap, id=, serial=, bus=, unit="),
            ("-hda/-hdb/-hdc/-hdd FILE", "IDE hard disk 0..3"),
            ("-cdrom FILE", "IDE CD-ROM (secondary master)"),
            (
                "-blockdev driver=raw|qcow2|file,...",
                "a block node: node-name=, file=NODE or file.driver=file,",
            ),
            (
                "",
                "file.filename=PATH, filename=, read-only=, cache.direct=,",
            ),
            ("", "cache.no-flush=, discard=, aio="),
        ],
    ),
    (
        "Devices",
        &[
            (
                "-device DRIVER[,prop=value...]",
                "add a device; 'help' lists drivers, 'DRIVER,help' properties:",
            ),
            ("", "isa-debug-exit, virtio-blk-pci, virtio-net-pci, e1000,"),
            ("", "virtio-rng-pci, virtio-serial-pci, virtconsole,"),
            ("", "virtio-tablet-pci, virtio-balloon-pci, ide-cd, ide-hd,"),
            ("", "isa-serial, VGA, piix3-usb-uhci, usb-tablet,"),
            ("", "usb-mouse, usb-kbd"),
            ("-vga std|none", "the VGA card (default std)"),
            (
                "-usb",
                "the PIIX3 UHCI USB controller at 00:01.2 (-machine usb=on)",
            ),
            (
                "-usbdevice tablet|mouse|keyboard",
                "a USB HID device on it (turns USB on)",
            ),
        ],
    ),
    (
        "Network",
        &[
            (
                "-netdev user,id=ID[,...]",
                "user-mode network: net=, host=, dhcpstart=, dns=, ipv6=,",
            ),
            ("", "ipv6-net=PREFIX/LEN, ipv6-host=, ipv6-dns=,"),
            ("", "hostname=, domainname=, restrict=, tftp=, bootfile=,"),
            ("", "hostfwd=[tcp|udp]:[HADDR]:HPORT-[GADDR]:GPORT,"),
            ("", "guestfwd=tcp:[ADDR]:PORT-chardev:ID"),
            (
                "-netdev tap,id=ID[,...]",
                "host tap: ifname=, fd=, script=, downscript=, vnet_hdr=, queues=",
            ),
            (
                "-netdev bridge,id=ID[,br=][,helper=]",
                "tap on a host bridge via the bridge helper",
            ),
            (
                "-netdev socket,id=ID,listen=|connect=",
                "frames over TCP to another VMM",
            ),
            ("-netdev hubport,id=ID,hubid=N", "a port on a hub"),
            (
                "-nic [TYPE][,model=][,mac=][,...]",
                "a backend and a NIC in one option (TYPE default user)",
            ),
            (
                "-net nic[,model=][,macaddr=][,vlan=]",
                "legacy NIC, connected to the -net backend on its vlan",
            ),
            (
                "-net user|tap|bridge|socket[,...]",
                "legacy backend; -net none: no network",
            ),
        ],
    ),
    (
        "Character devices",
        &[
            (
                "-chardev BACKEND,id=ID[,...]",
                "null, stdio, file,path=, pty, socket (host=, port=, path=,",
            ),
            ("", "server=on, wait=off, telnet=on, nodelay=on); mux=on,"),
            ("", "signal=off, logfile=; vc[,cols=,rows=|,width=,height=]"),
            (
                "-serial DEV",
                "COM1..COM4 in order: stdio, null, none, file:PATH, pty,",
            ),
            (
                "",
                "tcp:[HOST]:PORT[,server][,nowait][,nodelay], telnet:...,",
            ),
            (
                "",
                "unix:PATH[,server][,nowait], vc[:WxH], mon:DEV, chardev:ID",
            ),
            ("", "(default: a text console, vc, on the display)"),
            (
                "-monitor DEV",
                "an HMP monitor on DEV (same syntax as -serial), or none",
            ),
            ("-qmp DEV, -qmp-pretty DEV", "a QMP monitor on DEV"),
            (
                "-mon chardev=ID[,mode=readline|control]",
                "a monitor on a -chardev (pretty=on for QMP)",
            ),
        ],
    ),
    (
        "Display",
        &[
            (
                "-nographic",
                "no display; serial and monitor multiplexed on stdio",
            ),
            (
                "-display none|vnc=DISPLAY",
                "the display (troupe has no GUI; default: VNC on",
            ),
            ("", "127.0.0.1:5900, or the next free display up to :99)"),
            (
                "-vnc [HOST]:N[,...]|none",
                "VNC server on port 5900+N: password=on, lossy=on, to=N,",
            ),
            (
                "",
                "share=allow-exclusive|force-shared|ignore, websocket=PORT|on",
            ),
        ],
    ),
    (
        "Boot",
        &[
            (
                "-bios FILE",
                "firmware (default /usr/share/seabios/bios-256k.bin)",
            ),
            (
                "-kernel FILE",
                "boot this kernel directly (bzImage, PVH ELF, multiboot)",
            ),
            ("-initrd FILE", "initial ram disk for -kernel"),
            ("-append CMDLINE", "kernel command line for -kernel"),
        ],
    ),
    (
        "Running",
        &[
            (
                "-S",
                "do not start the vCPUs (cont in the monitor starts them)",
            ),
            ("-no-reboot", "exit instead of rebooting"),
            (
                "-no-shutdown",
                "stop instead of exiting when the guest powers off",
            ),
            (
                "-daemonize",
                "detach from the terminal once the VM is set up",
            ),
            ("-pidfile FILE", "write the process id to FILE"),
            (
                "-sandbox on|off[,obsolete=|elevateprivileges=|spawn=|resourcecontrol=]",
                "seccomp filters per thread (on by default)",
            ),
            (
                "-runas USER[:GROUP]",
                "drop to USER once devices, images and sockets are open",
            ),
            (
                "-chroot DIR",
                "enter DIR once the VM is built (-run-with chroot=)",
            ),
            (
                "-rtc [base=utc|localtime|DATE]",
                "where the guest clock starts (clock=host, driftfix=none)",
            ),
            (
                "-incoming tcp:[HOST]:PORT|unix:PATH|exec:CMD|fd:N|file:PATH|defer",
                "wait for an incoming migration instead of starting the guest",
            ),
            ("-loadvm TAG", "start from the VM snapshot TAG (savevm)"),
            ("-D FILE", "write the log to FILE"),
            (
                "-d ITEM[,...]",
                "log guest_errors, unimp, cpu_reset; 'help' lists",
            ),
        ],
    ),
    (
        "troupe's own options",
        &[
            (
                "-vcpu-pin auto|none|V=CORES[,...]",
                "pin vCPU threads to host CPUs (default auto); CORES is N,",
            ),
            ("", "A-B or several joined by + (0=2,1=3-4)"),
            (
                "-dump-acpi DIR",
                "write the ACPI tables troupe built to DIR, then run",
            ),
        ],
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_troupe_and_qemu() {
        let v = version();
        assert!(v.starts_with("troupe version "));
        assert!(v.contains("QEMU emulator version 7.2.22"));
        assert!(v.ends_with('\n'));
    }

    #[test]
    fn help_names_the_drivers_device_help_lists() {
        let h = help();
        let start = h.find("-device DRIVER").unwrap();
        let end = h.find("-vga ").unwrap();
        let mut in_help: Vec<&str> = h[start..end]
            .lines()
            .skip(1)
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        let listing = crate::cli::device::device_help();
        let mut listed: Vec<&str> = listing
            .lines()
            .filter_map(|l| l.strip_prefix("name \""))
            .filter_map(|l| l.split('"').next())
            .collect();
        in_help.sort_unstable();
        listed.sort_unstable();
        assert_eq!(in_help, listed);
    }

    #[test]
    fn help_lists_every_supported_option() {
        let h = help();
        for opt in [
            "-machine",
            "-accel",
            "-enable-kvm",
            "-cpu",
            "-smp",
            "-m ",
            "-name",
            "-uuid",
            "-boot",
            "-k ",
            "-snapshot",
            "-nodefaults",
            "-no-user-config",
            "-overcommit",
            "-drive",
            "-hda",
            "-cdrom",
            "-blockdev",
            "-device",
            "-vga",
            "-netdev",
            "-nic",
            "-net ",
            "-chardev",
            "-serial",
            "-monitor",
            "-qmp",
            "-mon ",
            "-nographic",
            "-display",
            "-vnc",
            "-bios",
            "-kernel",
            "-initrd",
            "-append",
            "-S ",
            "-no-reboot",
            "-no-shutdown",
            "-daemonize",
            "-pidfile",
            "-rtc",
            "-incoming",
            "-D ",
            "-d ",
            "-vcpu-pin",
            "-dump-acpi",
            "-version",
            "-qmp-pretty",
        ] {
            assert!(h.contains(opt), "help misses {opt}");
        }
    }
}
