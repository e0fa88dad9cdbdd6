//! `-m`, `-smp`, `-machine`, `-cpu`, boot files, `-vcpu-pin` and the process options on whole
//! command lines.

use super::*;

#[test]
fn memory_and_smp_merge_like_qemu() {
    let env = Env::new();
    let c = env.run(&["-m", "2G", "-smp", "4,sockets=2"]);
    assert_eq!(c.memory, 2 << 30);
    assert_eq!(
        c.smp,
        SmpConfig {
            cpus: 4,
            sockets: 2,
            cores: 2,
            threads: 1,
            maxcpus: 4
        }
    );
    let c = env.run(&["-smp", "2", "-smp", "cores=1"]);
    assert_eq!(
        c.smp,
        SmpConfig {
            cpus: 2,
            sockets: 2,
            cores: 1,
            threads: 1,
            maxcpus: 2
        }
    );
    assert_eq!(
        env.err(&["-smp", "4", "-smp", "sockets=3"]),
        "-smp 4 -smp sockets=3: product of the hierarchy must match maxcpus: sockets (3) * dies (1) * \
         cores (1) * threads (1) != maxcpus (4)"
    );
    let c = env.run(&["-m", "1G", "-m", "size=512M"]);
    assert_eq!(c.memory, 512 << 20);
    assert_eq!(
        env.err(&["-m", "99999999G"]),
        "-m 99999999G: 102399998976 MiB is more memory than this host can address \
         (40-bit physical addresses allow at most 1047552 MiB)"
    );
    // The machine version decides how -smp is completed.
    let c = env.run(&["-M", "pc-i440fx-6.1", "-smp", "4"]);
    assert_eq!((c.smp.sockets, c.smp.cores), (4, 1));
    assert_eq!(
        (
            env.run(&["-smp", "4"]).smp.sockets,
            env.run(&["-smp", "4"]).smp.cores
        ),
        (1, 4)
    );
}

#[test]
fn machine_cpu_and_accel() {
    let env = Env::new();
    let c = env.run(&[
        "-machine",
        "pc,accel=kvm",
        "-cpu",
        "host,+aes,-x2apic",
        "-enable-kvm",
    ]);
    assert_eq!(c.cpu.model, "host");
    assert_eq!(c.cpu.plus, vec!["aes".to_string()]);
    assert_eq!(c.cpu.minus, vec!["x2apic".to_string()]);
    assert!(env.parse(&["-accel", "kvm", "-M", "pc"]).is_ok());
    assert_eq!(
        env.err(&["-accel", "tcg"]),
        "-accel tcg: accelerator 'tcg' is not supported: troupe runs guests with KVM only"
    );
    assert_eq!(
        env.err(&["-M", "q35"]),
        "-M q35: machine type 'q35' is not supported by troupe: it emulates only pc (i440FX + PIIX)"
    );
    assert_eq!(
        env.err(&["-M", "microvm,accel=kvm"]),
        "-M microvm,accel=kvm: machine type 'microvm' is not supported by troupe: it emulates only pc (i440FX + PIIX)"
    );
    assert_eq!(
        env.err(&["-enable-kvm", "-accel", "kvm"]),
        "-accel kvm: the -accel and -machine accel= options are incompatible"
    );
    assert_eq!(
        env.err(&["-M", "accel=kvm", "-accel", "kvm"]),
        "-accel kvm: the -accel and -machine accel= options are incompatible"
    );
    assert_eq!(
        env.err(&["-cpu", "qemu64,+foo"]),
        "-cpu qemu64,+foo: unknown CPU feature 'foo' (see -cpu help)"
    );
}

#[test]
fn boot_files_pick_firmware_or_direct_boot() {
    let env = Env::new();
    let kernel = TempFile::new(4096);
    let initrd = TempFile::new(4096);
    let c = env.run(&[
        "-kernel",
        &kernel.s(),
        "-initrd",
        &initrd.s(),
        "-append",
        "console=ttyS0 quiet",
    ]);
    assert_eq!(
        c.boot,
        BootConfig::Direct {
            kernel: kernel.0.clone(),
            initrd: Some(initrd.0.clone()),
            cmdline: "console=ttyS0 quiet".into()
        }
    );
    assert_eq!(
        env.err(&["-initrd", &initrd.s()]),
        format!("-initrd {}: only allowed with -kernel", initrd.s())
    );
    assert_eq!(
        env.err(&["-append", "x"]),
        "-append x: only allowed with -kernel"
    );
    assert_eq!(
        env.err(&["-kernel", &kernel.s(), "-bios", &env.bios.s()]),
        format!(
            "-bios {}: troupe boots -kernel directly, without firmware; drop -bios or -kernel",
            env.bios.s()
        )
    );
    let odd = TempFile::new(1000);
    assert_eq!(
        env.err(&["-bios", &odd.s()]),
        format!(
            "-bios {}: firmware size 1000 bytes is not a non-zero multiple of 64 KiB",
            odd.s()
        )
    );
    let big = TempFile::new(32 << 20);
    assert_eq!(
        env.err(&["-bios", &big.s()]),
        format!(
            "-bios {}: firmware is 33554432 bytes, more than the 16 MiB troupe maps",
            big.s()
        )
    );
    let ok = TempFile::new(128 << 10);
    assert_eq!(
        env.run(&["-bios", &ok.s()]).boot,
        BootConfig::Firmware { bios: ok.0.clone() }
    );
}

#[test]
fn missing_default_firmware_names_the_debian_package() {
    let args: Vec<String> = vec![];
    let h = host(Path::new("/nonexistent/seabios/bios-256k.bin"));
    assert_eq!(
        parse_with(&args, &h).unwrap_err().to_string(),
        "firmware /nonexistent/seabios/bios-256k.bin: could not open: No such file or directory \
         (install the Debian package 'seabios', or give -bios)"
    );
    // Direct boot doesn't need it.
    let k = TempFile::new(10);
    let args = vec!["-kernel".to_string(), k.s()];
    assert!(parse_with(&args, &h).is_ok());
}

#[test]
fn process_and_identity_options() {
    let env = Env::new();
    let dir = std::env::temp_dir();
    let c = env.run(&[
        "-name",
        "vm1,debug-threads=on",
        "-uuid",
        "12345678-1234-1234-1234-1234567890AB",
        "-S",
        "-no-reboot",
        "-no-shutdown",
        "-pidfile",
        "/tmp/vm.pid",
        "-D",
        "/tmp/vm.log",
        "-d",
        "guest_errors,unimp",
        "-rtc",
        "base=2006-06-17T16:01:21",
        "-incoming",
        "tcp:0:4444",
        "-boot",
        "order=dc,menu=on",
        "-dump-acpi",
        &dir.display().to_string(),
    ]);
    assert_eq!(c.name.as_deref(), Some("vm1"));
    assert!(c.debug_threads);
    assert_eq!(
        c.uuid.as_deref(),
        Some("12345678-1234-1234-1234-1234567890ab")
    );
    assert!(c.start_paused && c.no_reboot && c.no_shutdown);
    assert_eq!(c.pidfile, Some("/tmp/vm.pid".into()));
    assert_eq!(c.log_file, Some("/tmp/vm.log".into()));
    assert_eq!(c.log_items, vec!["guest_errors", "unimp"]);
    assert_eq!(c.rtc.base, RtcBase::Fixed(1_150_560_081));
    assert_eq!(c.incoming.as_deref(), Some("tcp:0:4444"));
    assert_eq!(
        (c.boot_order.order.as_str(), c.boot_order.menu),
        ("dc", true)
    );
    assert_eq!(c.dump_acpi, Some(dir));
    assert_eq!(
        env.err(&["-dump-acpi", "/nonexistent/dir"]),
        "-dump-acpi /nonexistent/dir: could not open: No such file or directory"
    );
    assert_eq!(
        env.err(&["-dump-acpi", &env.bios.s()]),
        format!("-dump-acpi {}: not a directory", env.bios.s())
    );
    assert_eq!(env.err(&["-boot", "order=cz"]), "-boot order=cz: invalid boot device 'z' (a, b: floppy; c: first hard disk; d: CD-ROM; n: network)");
    assert_eq!(env.err(&["-uuid", "foo"]), "-uuid foo: failed to parse UUID string 'foo': expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx");
}

#[test]
fn vcpu_pinning_is_checked_against_cpus_and_affinity() {
    let env = Env::new();
    let c = env.run(&["-smp", "2", "-vcpu-pin", "0=2,1=3"]);
    assert_eq!(
        c.vcpu_pin,
        VcpuPin::Explicit(vec![(0, vec![2]), (1, vec![3])])
    );
    assert_eq!(env.run(&["-vcpu-pin", "none"]).vcpu_pin, VcpuPin::None);
    assert_eq!(
        env.err(&["-smp", "2", "-vcpu-pin", "0=9"]),
        "-vcpu-pin 0=9: host CPU 9 is not in this process's allowed CPU set (0,1,2,3)"
    );
    assert_eq!(
        env.err(&["-vcpu-pin", "1=1"]),
        "-vcpu-pin 1=1: vCPU 1 does not exist (-smp gives 1 vCPU(s), numbered from 0)"
    );
}

#[test]
fn libvirts_probe_and_domain_options_that_troupe_takes() {
    let env = Env::new();
    // The probe: the empty machine, with no default devices even without -nodefaults.
    let c = env.run(&[
        "-S",
        "-no-user-config",
        "-nodefaults",
        "-nographic",
        "-machine",
        "none,accel=kvm:tcg",
    ]);
    assert_eq!(c.machine.kind, "none");
    let c = env.run(&["-machine", "none"]);
    assert!(c.devices.is_empty() && c.drives.is_empty() && c.serials.is_empty());
    assert!(env.print(&["-machine", "help"]).contains("\nnone "));
    assert_eq!(
        env.err(&["-machine", "none", "-m", "256"]),
        "-m 256: machine 'none' has no RAM (it is the empty machine management tools probe troupe with)"
    );
    // From the command line libvirt 9.0 builds for a domain.
    let c = env.run(&[
        "-name",
        "guest=small,debug-threads=on",
        "-overcommit",
        "mem-lock=off",
        "-no-user-config",
        "-chardev",
        "socket,id=charmonitor,path=/tmp/troupe-cli-test-mon.sock,server=on,wait=off",
        "-mon",
        "chardev=charmonitor,id=monitor,mode=control",
        "-rtc",
        "base=utc",
        "-no-shutdown",
        "-boot",
        "strict=on",
    ]);
    assert_eq!(c.name.as_deref(), Some("small"));
    assert!(c.no_shutdown);
    assert!(!c.machine.ram.mem_lock);
    assert!(
        env.run(&["-overcommit", "mem-lock=on"])
            .machine
            .ram
            .mem_lock
    );
    assert_eq!(
        env.err(&["-overcommit", "cpu-pm=on"]),
        "-overcommit cpu-pm=on: cpu-pm=on is not supported by troupe (only cpu-pm=off)"
    );
    assert!(env
        .err(&["-chardev", "null,id=m", "-mon", "chardev=m,id=9x"])
        .contains("invalid id '9x'"));
}

#[test]
fn ram_backing_from_mem_path_prealloc_merge_and_memory_backends() {
    use crate::config::{RamBacking, RamSource};
    let env = Env::new();
    // Defaults: anonymous, private, KSM-mergeable (QEMU's mem-merge=on).
    assert_eq!(env.run(&[]).machine.ram, RamBacking::default());
    assert!(RamBacking::default().merge);
    assert!(!env.run(&["-machine", "mem-merge=off"]).machine.ram.merge);
    let c = env.run(&["-mem-path", "/dev/hugepages", "-mem-prealloc"]);
    assert_eq!(
        c.machine.ram.source,
        RamSource::File("/dev/hugepages".into())
    );
    assert!(c.machine.ram.prealloc && !c.machine.ram.share);
    // A backend's own properties win; unset ones follow -machine and -mem-prealloc.
    let c = env.run(&[
        "-m",
        "256",
        "-mem-prealloc",
        "-machine",
        "mem-merge=off,dump-guest-core=on,memory-backend=m",
        "-object",
        "memory-backend-memfd,id=m,size=256M,share=on,dump=off",
    ]);
    assert_eq!(
        c.machine.ram,
        RamBacking {
            source: RamSource::Memfd {
                hugetlb: false,
                hugetlbsize: 0
            },
            share: true,
            prealloc: true,
            merge: false,
            mem_lock: false,
        }
    );
    assert!(!c.machine.dump_guest_core);
    let c = env.run(&[
        "-machine",
        "memory-backend=m",
        "-object",
        "memory-backend-file,id=m,size=64M,mem-path=/tmp,merge=on",
        "-machine",
        "mem-merge=off",
    ]);
    assert!(c.machine.ram.merge);
    assert_eq!(c.memory, 64 << 20);
    assert_eq!(
        env.err(&[
            "-mem-path",
            "/tmp",
            "-machine",
            "memory-backend=m",
            "-object",
            "memory-backend-ram,id=m,size=64M"
        ]),
        "-mem-path /tmp: '-mem-path' can't be used together with '-machine memory-backend'"
    );
}
