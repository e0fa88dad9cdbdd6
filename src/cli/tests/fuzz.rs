//! Fuzz target for the command line: any bytes, split into arguments at NUL bytes, go
//! through [`parse_with`] as `troupe ARGS...` would; when the line parses, each argument
//! also goes to the monitor's `device_add` and `netdev_add` parsers against that machine.
//! `@D/` in an argument stands for a directory holding a disk image, a CD image and a
//! firmware file, so seeds name real files and stay the same from run to run.

use std::path::PathBuf;
use std::sync::OnceLock;

use troupe_fuzz::{fuzz, Target};

use super::*;

fn files() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("troupe-fuzz-cli-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        for (name, len) in [
            ("disk.img", 1u64 << 20),
            ("cd.iso", 2048),
            ("bios.bin", 256 << 10),
        ] {
            if let Ok(f) = std::fs::File::create(dir.join(name)) {
                let _ = f.set_len(len);
            }
        }
        dir
    })
}

pub fn cli(data: &[u8]) {
    let dir = files();
    let d = format!("{}/", dir.display());
    let args: Vec<String> = data
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).replace("@D/", &d))
        .collect();
    let host = host(&dir.join("bios.bin"));
    if let Ok(Invocation::Run(config)) = parse_with(&args, &host) {
        for a in &args {
            let _ = parse_device_add(a, &config);
            let _ = parse_netdev_add(a, &config);
        }
    }
}

fn line(args: &[&str]) -> Vec<u8> {
    args.join("\0").into_bytes()
}

fn cli_seeds() -> Vec<Vec<u8>> {
    vec![
        line(&[
            "-m",
            "2048",
            "-smp",
            "4,sockets=1,cores=2,threads=2",
            "-cpu",
            "qemu64,+aes",
            "-boot",
            "order=cd",
            "-hda",
            "@D/disk.img",
            "-cdrom",
            "@D/cd.iso",
            "-netdev",
            "user,id=n0,hostfwd=tcp::2222-:22",
            "-device",
            "virtio-net-pci,netdev=n0",
            "-vnc",
            ":1",
            "-monitor",
            "telnet:127.0.0.1:4444,server,nowait",
        ]),
        line(&[
            "-nodefaults",
            "-machine",
            "pc,accel=kvm",
            "-drive",
            "file=@D/disk.img,format=raw,if=none,id=d0,cache=none,aio=io_uring",
            "-device",
            "virtio-blk-pci,drive=d0,bootindex=1",
            "-blockdev",
            "driver=file,node-name=f1,filename=@D/disk.img",
            "-blockdev",
            "driver=raw,node-name=r1,file=f1",
            "-device",
            "ide-hd,drive=r1,bus=ide.1",
            "-chardev",
            "socket,id=c0,path=/tmp/troupe-fuzz-nonexistent.sock,server=on,wait=off",
            "-mon",
            "chardev=c0,mode=control,pretty=on",
            "-serial",
            "mon:stdio",
            "-display",
            "none",
            "-vga",
            "std",
            "-rtc",
            "base=2020-01-02T03:04:05,clock=vm",
            "-name",
            "guest=vm1,debug-threads=on",
            "-uuid",
            "c0ffee00-1234-5678-9abc-def012345678",
        ]),
        line(&[
            "-nic",
            "user,model=e1000,mac=52:54:00:12:34:56",
            "-net",
            "nic,model=virtio",
            "-net",
            "user,net=10.0.3.0/24,dhcpstart=10.0.3.20",
            "-netdev",
            "tap,id=t0,ifname=tap0,script=no,downscript=no",
            "-device",
            "e1000,netdev=t0,addr=0x5",
            "-vcpu-pin",
            "0=1",
            "-k",
            "de",
            "-bios",
            "@D/bios.bin",
            "-kernel",
            "@D/disk.img",
            "-append",
            "console=ttyS0",
            "-initrd",
            "@D/cd.iso",
            "-incoming",
            "tcp:127.0.0.1:4444",
        ]),
        line(&["-device", "help"]),
        line(&["-cpu", "help"]),
        line(&["-machine", "none", "-qmp", "stdio", "-S", "-no-user-config"]),
        line(&["-sandbox", "on,obsolete=deny", "-snapshot", "@D/disk.img"]),
    ]
}

#[test]
fn fuzz_cli_parser() {
    let mut dict: Vec<Vec<u8>> = OPTIONS
        .iter()
        .map(|(n, ..)| format!("\0-{n}\0").into_bytes())
        .collect();
    for w in [
        ",",
        ",,",
        "=",
        "help",
        "?",
        "id=",
        "on",
        "off",
        "0x",
        "-1",
        "18446744073709551616",
        ":",
        "::",
        "tcp:",
        "unix:",
        "mon:",
        "chardev:",
        "file=",
        "driver=",
        "netdev=",
        "drive=",
        "bus=",
        "addr=",
        "if=",
        "media=cdrom",
        "format=qcow2",
        "@D/disk.img",
    ] {
        dict.push(w.as_bytes().to_vec());
    }
    fuzz(Target {
        name: "cli",
        run: cli,
        seeds: cli_seeds(),
        dict,
        max_len: 2048,
        threads: vec![],
    });
}
