//! The measurements, each run on troupe and QEMU in the same process of the bench.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::harness::{median, rss_split, timed_run, timed_run_until, Vmm};
use crate::{Env, Row, Target};

const DEBUG_EXIT: &str = "isa-debug-exit,iobase=0xf4,iosize=0x04";
const TIMEOUT: Duration = Duration::from_secs(60);

fn troupe_args<'a>(kernel: &'a str, append: &'a str, mem: &'a str) -> Vec<&'a str> {
    vec![
        "-nodefaults",
        "-serial",
        "stdio",
        "-device",
        DEBUG_EXIT,
        "-m",
        mem,
        "-kernel",
        kernel,
        "-append",
        append,
    ]
}

fn qemu_args<'a>(kernel: &'a str, append: &'a str, mem: &'a str) -> Vec<&'a str> {
    vec![
        "-device", DEBUG_EXIT, "-m", mem, "-kernel", kernel, "-append", append,
    ]
}

/// Start of process → first serial byte, and → exit, for the `hello` guest.
pub fn boot(env: &Env) -> Result<Vec<Row>> {
    let hello = env.guest("hello.elf");
    let hello_pvh = env.guest("hello.pvh.elf");
    let troupe = Vmm::troupe(&env.troupe);
    let measure = |vmm: &Vmm, args: Vec<&str>| -> Result<(Duration, Duration)> {
        let mut first = Vec::new();
        let mut exit = Vec::new();
        for _ in 0..env.runs {
            let t = timed_run(vmm.command(&args), &[], TIMEOUT)?;
            anyhow::ensure!(
                t.output.contains("hello from troupe test guest"),
                "{}: hello did not run: {}",
                vmm.name,
                t.output
            );
            first.push(t.first_byte.ok_or_else(|| anyhow!("no serial output"))?);
            exit.push(t.exit);
        }
        Ok((median(first), median(exit)))
    };
    let (t_first, t_exit) = measure(&troupe, troupe_args(&hello, "exit=0", "64"))?;
    let mut rows = Vec::new();
    for (machine, kernel) in [("microvm", hello_pvh.as_str()), ("pc", hello.as_str())] {
        let q = Vmm::qemu(machine);
        let (q_first, q_exit) = measure(&q, qemu_args(kernel, "exit=0", "64"))?;
        rows.push(Row {
            what: "process start → first serial byte (`hello`)".into(),
            troupe: t_first.as_secs_f64() * 1e3,
            qemu: q_first.as_secs_f64() * 1e3,
            qemu_name: format!("`-M {machine}`"),
            unit: "ms",
            target: Target::AtMostRatio(1.0),
        });
        rows.push(Row {
            what: "process start → guest exit (`hello`)".into(),
            troupe: t_exit.as_secs_f64() * 1e3,
            qemu: q_exit.as_secs_f64() * 1e3,
            qemu_name: format!("`-M {machine}`"),
            unit: "ms",
            target: Target::AtMostRatio(1.0),
        });
    }
    Ok(rows)
}

/// Parse `iobench ringN: COUNT outs T tsc X.Y ns/out`.
fn ns_per_out(output: &str, ring: &str) -> Result<f64> {
    let line = output
        .lines()
        .find(|l| l.starts_with(&format!("iobench {ring}:")) && l.contains("ns/out"))
        .ok_or_else(|| anyhow!("no `iobench {ring}` result in: {output}"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| *w == "ns/out")
        .ok_or_else(|| anyhow!("bad line {line}"))?;
    words[i - 1].parse().context("ns/out value")
}

/// Port-I/O exit round trip from ring 0 and ring 3 (100 000 `out`s to an unused port).
pub fn pio(env: &Env) -> Result<Vec<Row>> {
    let k = env.guest("iobench.pvh.elf");
    let troupe = Vmm::troupe(&env.troupe);
    let qemu = Vmm::qemu("microvm");
    let runs = |vmm: &Vmm, args: Vec<&str>| -> Result<(f64, f64)> {
        let mut r0 = Vec::new();
        let mut r3 = Vec::new();
        for _ in 0..env.runs.min(3) {
            let t = timed_run(vmm.command(&args), &[], TIMEOUT)?;
            r0.push(ns_per_out(&t.output, "ring0")?);
            r3.push(ns_per_out(&t.output, "ring3")?);
        }
        r0.sort_by(f64::total_cmp);
        r3.sort_by(f64::total_cmp);
        Ok((r0[r0.len() / 2], r3[r3.len() / 2]))
    };
    let (t0, t3) = runs(&troupe, troupe_args(&k, "", "64"))?;
    let (q0, q3) = runs(&qemu, qemu_args(&k, "", "64"))?;
    // The same troupe without its seccomp filters: what the filters cost an exit.
    let mut off = troupe_args(&k, "", "64");
    off.extend(["-sandbox", "off"]);
    let (o0, o3) = runs(&troupe, off)?;
    Ok(vec![
        Row {
            what: "port-I/O exit round trip, ring 0".into(),
            troupe: t0 / 1e3,
            qemu: q0 / 1e3,
            qemu_name: "`-M microvm`".into(),
            unit: "µs",
            target: Target::AtMostRatio(1.1),
        },
        Row {
            what: "port-I/O exit round trip, ring 3".into(),
            troupe: t3 / 1e3,
            qemu: q3 / 1e3,
            qemu_name: "`-M microvm`".into(),
            unit: "µs",
            target: Target::AtMostRatio(1.1),
        },
        Row {
            what: "port-I/O exit round trip, ring 0, seccomp filters on vs off".into(),
            troupe: t0 / 1e3,
            qemu: o0 / 1e3,
            qemu_name: "troupe `-sandbox off`".into(),
            unit: "µs",
            target: Target::AtMostRatio(1.05),
        },
        Row {
            what: "port-I/O exit round trip, ring 3, seccomp filters on vs off".into(),
            troupe: t3 / 1e3,
            qemu: o3 / 1e3,
            qemu_name: "troupe `-sandbox off`".into(),
            unit: "µs",
            target: Target::AtMostRatio(1.05),
        },
    ])
}

/// Resident memory of the VMM process that is not guest RAM, with a spinning guest.
pub fn memory(env: &Env) -> Result<Vec<Row>> {
    let k = env.guest("spin.pvh.elf");
    const RAM: u64 = 64 << 20;
    let measure = |vmm: &Vmm, args: Vec<&str>| -> Result<(f64, f64)> {
        let mut cmd = vmm.command(&args);
        let mut child = cmd.spawn()?;
        std::thread::sleep(Duration::from_millis(1500));
        let (guest, other) = rss_split(child.id(), RAM)?;
        let _ = child.kill();
        let _ = child.wait();
        Ok((guest as f64 / 1024.0, other as f64 / 1024.0))
    };
    let (_tg, t_other) = measure(
        &Vmm::troupe(&env.troupe),
        troupe_args(&k, "iters=100000000000", "64"),
    )?;
    let (_qg, q_other) = measure(
        &Vmm::qemu("microvm"),
        qemu_args(&k, "iters=100000000000", "64"),
    )?;
    Ok(vec![Row {
        what: "VMM resident memory beyond guest RAM (64 MiB guest, `spin`)".into(),
        troupe: t_other,
        qemu: q_other,
        qemu_name: "`-M microvm`".into(),
        unit: "MiB",
        target: Target::AtMost(10.0),
    }])
}

/// Firmware: process start → SeaBIOS banner, and → GRUB's menu from a CD-ROM (the ISO is
/// built with grub-mkrescue), both through `-M pc` firmware in both VMMs.
pub fn firmware(env: &Env) -> Result<Vec<Row>> {
    let dir = std::env::temp_dir().join(format!("troupe-bench-{}", std::process::id()));
    let grub_dir = dir.join("cd/boot/grub");
    std::fs::create_dir_all(&grub_dir)?;
    std::fs::write(
        grub_dir.join("grub.cfg"),
        "serial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console\nset timeout=60\nmenuentry \"bench\" {\n  halt\n}\n",
    )?;
    let iso = dir.join("grub.iso");
    let st = std::process::Command::new("grub-mkrescue")
        .arg("-o")
        .arg(&iso)
        .arg(dir.join("cd"))
        .output()
        .context("grub-mkrescue (packages grub-pc-bin, xorriso, mtools)")?;
    anyhow::ensure!(st.status.success(), "grub-mkrescue failed");
    let iso = iso.display().to_string();
    let args = [
        "-nographic",
        "-m",
        "256",
        "-cdrom",
        iso.as_str(),
        "-boot",
        "order=d",
    ];
    let markers = ["SeaBIOS (version", "highlighted entry"];
    let measure = |vmm: &Vmm, args: &[&str]| -> Result<(Duration, Duration)> {
        let mut banner = Vec::new();
        let mut menu = Vec::new();
        for _ in 0..env.runs.min(2) {
            let mut cmd = vmm.command(args);
            cmd.stdin(std::process::Stdio::null());
            let t = timed_run_until(cmd, &markers, Duration::from_secs(180))?;
            banner.push(t[0].ok_or_else(|| anyhow!("{}: no SeaBIOS banner", vmm.name))?);
            menu.push(t[1].ok_or_else(|| anyhow!("{}: no GRUB menu", vmm.name))?);
        }
        Ok((median(banner), median(menu)))
    };
    let troupe = Vmm::troupe(&env.troupe);
    let (tb, tm) = measure(&troupe, &args)?;
    // The same command line for QEMU (with -nographic it puts serial and its monitor on
    // stdio itself).
    let qemu = Vmm {
        name: "QEMU -M pc".into(),
        program: "qemu-system-x86_64".into(),
        base_args: ["-accel", "kvm", "-M", "pc"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let (qb, qm) = measure(&qemu, &args)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(vec![
        Row {
            what: "process start → SeaBIOS banner".into(),
            troupe: tb.as_secs_f64() * 1e3,
            qemu: qb.as_secs_f64() * 1e3,
            qemu_name: "`-M pc`".into(),
            unit: "ms",
            target: Target::AtMostRatio(1.0),
        },
        Row {
            what: "process start → GRUB menu (CD-ROM)".into(),
            troupe: tm.as_secs_f64() * 1e3,
            qemu: qm.as_secs_f64() * 1e3,
            qemu_name: "`-M pc`".into(),
            unit: "ms",
            target: Target::AtMostRatio(1.0),
        },
    ])
}

/// Read from `s` until `needle` has arrived.
fn read_until(s: &mut std::net::TcpStream, needle: &[u8]) -> Result<()> {
    use std::io::Read;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(needle.len()).any(|w| w == needle) {
        let n = s.read(&mut buf)?;
        anyhow::ensure!(n > 0, "monitor closed the connection");
        got.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

fn connect(port: u16) -> Result<std::net::TcpStream> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                return Ok(s);
            }
            Err(e) if std::time::Instant::now() > deadline => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Monitor round trips as a client sees them: HMP `info status` over plain TCP (a line
/// with CR, the answer and the next prompt) and QMP `query-status`, 200 of each.
pub fn monitor(env: &Env) -> Result<Vec<Row>> {
    use std::io::{BufRead, Write};
    let k = env.guest("spin.pvh.elf");
    const N: usize = 200;
    let measure = |vmm: &Vmm, base: Vec<&str>| -> Result<(Duration, Duration)> {
        let (hp, qp) = (free_port()?, free_port()?);
        let hmp = format!("tcp:127.0.0.1:{hp},server=on,wait=off");
        let qmp = format!("tcp:127.0.0.1:{qp},server=on,wait=off");
        let mut args = base;
        args.extend(["-monitor", hmp.as_str(), "-qmp", qmp.as_str()]);
        let mut child = vmm.command(&args).spawn()?;
        let result = (|| -> Result<(Duration, Duration)> {
            let mut h = connect(hp)?;
            read_until(&mut h, b"(qemu) ")?;
            let mut times = Vec::new();
            for _ in 0..N {
                let t = std::time::Instant::now();
                h.write_all(b"info status\r")?;
                read_until(&mut h, b"VM status: running\r\n(qemu) ")?;
                times.push(t.elapsed());
            }
            let h_med = median(times);
            let q = connect(qp)?;
            let mut r = std::io::BufReader::new(q.try_clone()?);
            let mut w = q;
            let mut line = String::new();
            r.read_line(&mut line)?;
            w.write_all(br#"{"execute":"qmp_capabilities"}"#)?;
            line.clear();
            r.read_line(&mut line)?;
            let mut times = Vec::new();
            for _ in 0..N {
                let t = std::time::Instant::now();
                w.write_all(br#"{"execute":"query-status"}"#)?;
                line.clear();
                r.read_line(&mut line)?;
                anyhow::ensure!(line.contains("\"running\""), "{}: {line}", vmm.name);
                times.push(t.elapsed());
            }
            Ok((h_med, median(times)))
        })();
        let _ = child.kill();
        let _ = child.wait();
        result.with_context(|| format!("{} monitor", vmm.name))
    };
    let (th, tq) = measure(
        &Vmm::troupe(&env.troupe),
        troupe_args(&k, "iters=100000000000", "64"),
    )?;
    let (qh, qq) = measure(
        &Vmm::qemu("microvm"),
        qemu_args(&k, "iters=100000000000", "64"),
    )?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(vec![
        Row {
            what: "HMP `info status` round trip (TCP, median of 200)".into(),
            troupe: ms(th),
            qemu: ms(qh),
            qemu_name: "`-M microvm`".into(),
            unit: "ms",
            target: Target::AtMost(1.0),
        },
        Row {
            what: "QMP `query-status` round trip (TCP, median of 200)".into(),
            troupe: ms(tq),
            qemu: ms(qq),
            qemu_name: "`-M microvm`".into(),
            unit: "ms",
            target: Target::AtMost(1.0),
        },
    ])
}

/// One `vblk-bench: NAME VALUE UNIT` line of the virtio guest.
fn bench_value(output: &str, name: &str) -> Result<f64> {
    let line = output
        .lines()
        .find(|l| l.starts_with(&format!("vblk-bench: {name} ")))
        .ok_or_else(|| anyhow!("no `vblk-bench: {name}` in: {output}"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .get(words.len().saturating_sub(2))
        .ok_or_else(|| anyhow!("bad line {line}"))?
        .parse()
        .context("bench value")
}

/// virtio-blk on a raw image with `cache=none,aio=io_uring`, driven by the ring-3 virtio
/// test guest (`op=bench`): sequential 1 MiB writes and reads, random 4 KiB reads at queue
/// depth 1 and 32. Same guest, same image, QEMU `-M pc`.
pub fn storage(env: &Env) -> Result<Vec<Row>> {
    let k = env.guest("virtio.elf");
    let dir = std::env::temp_dir().join(format!("troupe-bench-blk-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let img = dir.join("bench.raw");
    // Every block written out before either VMM runs: a sparse file would make whichever
    // VMM writes first pay for the file system's block allocation.
    std::fs::write(&img, vec![0x5au8; 256 << 20])?;
    let drive = format!(
        "file={},if=virtio,format=raw,cache=none,aio=io_uring",
        img.display()
    );
    // 2 GiB each way (8 passes over 256 MiB), so a sweep lasts long enough to measure.
    let append = "op=bench mib=256 passes=8 secs=3";
    const KEYS: [&str; 4] = ["seqwrite", "seqread", "randread qd1", "randread qd32"];
    let one = |vmm: &Vmm, base: &[&str], all: &mut Vec<Vec<f64>>| -> Result<()> {
        let mut args = base.to_vec();
        args.push("-drive");
        args.push(&drive);
        let t = timed_run(vmm.command(&args), &[], Duration::from_secs(180))?;
        for (i, key) in KEYS.iter().enumerate() {
            all[i].push(bench_value(&t.output, key).with_context(|| vmm.name.clone())?);
        }
        Ok(())
    };
    let medians = |all: Vec<Vec<f64>>| -> Vec<f64> {
        all.into_iter()
            .map(|mut v| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            })
            .collect()
    };
    let (troupe, qemu) = (Vmm::troupe(&env.troupe), Vmm::qemu("pc"));
    let (targs, qargs) = (troupe_args(&k, append, "256"), qemu_args(&k, append, "256"));
    let (mut tall, mut qall) = (vec![Vec::new(); KEYS.len()], vec![Vec::new(); KEYS.len()]);
    // Runs alternate between the VMMs so both see the same page cache and disk state.
    for _ in 0..env.runs.min(3) {
        one(&troupe, &targs, &mut tall)?;
        one(&qemu, &qargs, &mut qall)?;
    }
    let (t, q) = (medians(tall), medians(qall));
    let _ = std::fs::remove_dir_all(&dir);
    let what = [
        "virtio-blk sequential 1 MiB writes (raw, cache=none, io_uring)",
        "virtio-blk sequential 1 MiB reads",
        "virtio-blk random 4 KiB reads, queue depth 1",
        "virtio-blk random 4 KiB reads, queue depth 32",
    ];
    let units = ["MB/s", "MB/s", "IOPS", "IOPS"];
    Ok((0..4)
        .map(|i| Row {
            what: what[i].into(),
            troupe: t[i],
            qemu: q[i],
            qemu_name: "`-M pc`".into(),
            unit: units[i],
            target: Target::AtLeastRatio(1.0),
        })
        .collect())
}

/// Guest → gateway ping round trip over user-mode networking (virtio-net, the virtio
/// guest's driver, median of 50), troupe and QEMU `-M pc` with the same options.
pub fn network(env: &Env) -> Result<Vec<Row>> {
    let k = env.guest("virtio.elf");
    let append = "dev=net dhcp count=50 wait=60";
    let net = [
        "-netdev",
        "user,id=n0",
        "-device",
        "virtio-net-pci,netdev=n0,romfile=",
    ];
    let measure = |vmm: &Vmm, mut args: Vec<&str>| -> Result<f64> {
        args.extend_from_slice(&net);
        let mut all = Vec::new();
        for _ in 0..env.runs.min(3) {
            let t = timed_run(vmm.command(&args), &[], TIMEOUT)?;
            let mut rtts: Vec<f64> = t
                .output
                .lines()
                .filter_map(|l| l.split("rtt_ns=").nth(1))
                .filter_map(|v| v.trim().parse::<f64>().ok())
                .collect();
            anyhow::ensure!(
                rtts.len() >= 40,
                "{}: too few replies: {}",
                vmm.name,
                t.output
            );
            // The first few include ARP and slirp's warm-up.
            rtts.drain(..5);
            rtts.sort_by(f64::total_cmp);
            all.push(rtts[rtts.len() / 2]);
        }
        all.sort_by(f64::total_cmp);
        Ok(all[all.len() / 2])
    };
    let t = measure(&Vmm::troupe(&env.troupe), troupe_args(&k, append, "128"))?;
    let q = measure(&Vmm::qemu("pc"), qemu_args(&k, append, "128"))?;
    let mut rows = vec![Row {
        what: "virtio-net ping round trip to the user-mode gateway (slirp)".into(),
        troupe: t / 1e3,
        qemu: q / 1e3,
        qemu_name: "`-M pc`".into(),
        unit: "µs",
        target: Target::AtMostRatio(1.0),
    }];
    rows.extend(tcp_throughput(env)?);
    rows.extend(tap(env)?);
    Ok(rows)
}

/// A network namespace for the tap rows, deleted at drop.
struct Netns(String);

impl Netns {
    fn new() -> Result<Self> {
        let name = format!("troupe-bench-{}", std::process::id());
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()?
            .success();
        anyhow::ensure!(ok, "ip netns add {name} (the tap rows need root)");
        Ok(Self(name))
    }

    fn cmd(&self, prog: &str) -> std::process::Command {
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", &self.0, prog]);
        c
    }

    /// Once `ifname` exists, give it 10.9.0.1/24 and bring it up (from a thread).
    fn configure_when_up(&self, ifname: &'static str) -> std::thread::JoinHandle<()> {
        let ns = self.0.clone();
        std::thread::spawn(move || {
            let ip = |args: &[&str]| {
                std::process::Command::new("ip")
                    .args(["netns", "exec", &ns, "ip"])
                    .args(args)
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            for _ in 0..600 {
                if ip(&["addr", "replace", "10.9.0.1/24", "dev", ifname]) {
                    ip(&["link", "set", ifname, "up"]);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// Over a tap in a network namespace (virtio-net, vhost off in both): the guest pings the
/// host side (median of 50 round trips), sends 200 000 minimum-size frames (the host
/// stack drops them), and moves 32 MiB each way over TCP to and from a Python socket in
/// the namespace, without and with checksum/segmentation offloads.
fn tap(env: &Env) -> Result<Vec<Row>> {
    let k = env.guest("virtio.elf");
    let ns = Netns::new()?;
    let net = [
        "-netdev",
        "tap,id=n0,ifname=btap0,script=no,downscript=no",
        "-device",
        "virtio-net-pci,netdev=n0,romfile=",
    ];
    // One run of `vmm` with `append`, in the namespace; `side` runs meanwhile.
    let run = |vmm: &Vmm, append: &str, side: Option<&str>| -> Result<String> {
        let base = if vmm.name == "troupe" {
            troupe_args(&k, append, "128")
        } else {
            qemu_args(&k, append, "128")
        };
        let mut cmd = ns.cmd(vmm.program.to_str().unwrap_or_default());
        cmd.args(&vmm.base_args).args(&base).args(net);
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let conf = ns.configure_when_up("btap0");
        let helper = side
            .map(|code| ns.cmd("python3").args(["-c", code]).spawn())
            .transpose()?;
        let t = timed_run(cmd, &[], Duration::from_secs(180));
        let _ = conf.join();
        if let Some(mut h) = helper {
            let _ = h.kill();
            let _ = h.wait();
        }
        Ok(t?.output)
    };
    let rtt = |out: &str| -> Result<f64> {
        let mut v: Vec<f64> = out
            .lines()
            .filter_map(|l| l.split("rtt_ns=").nth(1))
            .filter_map(|x| x.trim().parse().ok())
            .collect();
        anyhow::ensure!(v.len() >= 40, "too few replies: {out}");
        v.drain(..5);
        v.sort_by(f64::total_cmp);
        Ok(v[v.len() / 2] / 1e3)
    };
    const SINK: &str = "import socket\n\
        l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
        l.bind(('0.0.0.0', 5001)); l.listen(1); c, _ = l.accept()\n\
        while c.recv(1 << 16): pass\n";
    // Connect once the guest can be up (QEMU's firmware takes ~3 s before the kernel),
    // with a long connect timeout: a SYN the guest answers late must not be one whose
    // socket already gave up.
    const SOURCE: &str = "import socket, time\n\
        data = bytes(32 << 20)\n\
        time.sleep(4)\n\
        for i in range(30):\n\
        \x20   try:\n\
        \x20       c = socket.create_connection(('10.9.0.2', 5001), timeout=10); break\n\
        \x20   except OSError: time.sleep(0.5)\n\
        c.settimeout(60); c.sendall(data); c.shutdown(socket.SHUT_WR); c.recv(1)\n";
    let (troupe, qemu) = (Vmm::troupe(&env.troupe), Vmm::qemu("pc"));
    type Measure<'a> = (&'a str, &'a str, Option<&'a str>, &'static str, Target);
    let cases: [Measure; 6] = [
        (
            "virtio-net ping round trip over a tap (host side in a namespace)",
            "dev=net ip=10.9.0.2 peer=10.9.0.1 count=50 wait=60",
            None,
            "µs",
            Target::AtMostRatio(1.0),
        ),
        (
            "virtio-net TCP guest → host over a tap, 32 MiB",
            "dev=net ip=10.9.0.2 peer=10.9.0.1 count=0 tcpsend=10.9.0.1:5001 mb=32 wait=120",
            Some(SINK),
            "MB/s",
            Target::AtLeastRatio(1.0),
        ),
        (
            "virtio-net TCP host → guest over a tap, 32 MiB",
            "dev=net ip=10.9.0.2 peer=10.9.0.1 count=0 tcprecv=5001 wait=120",
            Some(SOURCE),
            "MB/s",
            Target::AtLeastRatio(1.0),
        ),
        (
            "virtio-net small frames guest → host over a tap (60 bytes, 32 per notification)",
            "dev=net ip=10.9.0.2 peer=10.9.0.1 count=1 flood=200000 wait=120",
            None,
            "kframes/s",
            Target::AtLeastRatio(1.0),
        ),
        (
            "virtio-net TCP guest → host over a tap, checksum and TSO offloads, 32 MiB",
            "dev=net offload ip=10.9.0.2 peer=10.9.0.1 count=0 tcpsend=10.9.0.1:5001 mb=32 wait=120",
            Some(SINK),
            "MB/s",
            Target::AtLeastRatio(1.0),
        ),
        (
            "virtio-net TCP host → guest over a tap, checksum and GSO offloads, 32 MiB",
            "dev=net offload ip=10.9.0.2 peer=10.9.0.1 count=0 tcprecv=5001 wait=120",
            Some(SOURCE),
            "MB/s",
            Target::AtLeastRatio(1.0),
        ),
    ];
    let mut rows = Vec::new();
    for (what, append, side, unit, target) in cases {
        let figure = |out: &str| match unit {
            "µs" => rtt(out),
            "kframes/s" => guest_rate(out, "flood sent"),
            _ => guest_mbps(
                out,
                if side == Some(SINK) {
                    "sent"
                } else {
                    "received"
                },
            ),
        };
        let (mut t, mut q) = (Vec::new(), Vec::new());
        for _ in 0..env.runs.min(3) {
            t.push(figure(&run(&troupe, append, side)?).context("troupe")?);
            q.push(figure(&run(&qemu, append, side)?).context("QEMU")?);
        }
        rows.push(median_row(what, t, q, unit, target));
    }
    Ok(rows)
}

/// A row of the medians of troupe's and QEMU `-M pc`'s runs.
fn median_row(
    what: &str,
    mut t: Vec<f64>,
    mut q: Vec<f64>,
    unit: &'static str,
    target: Target,
) -> Row {
    t.sort_by(f64::total_cmp);
    q.sort_by(f64::total_cmp);
    Row {
        what: what.into(),
        troupe: t[t.len() / 2],
        qemu: q[q.len() / 2],
        qemu_name: "`-M pc`".into(),
        unit,
        target,
    }
}

/// Bytes per microsecond (MB/s) from the guest's `vnet: tcp sent|received B bytes in T ns`.
/// `vnet: WHAT N UNITS in T ns` from the guest: (N, T).
fn guest_count(output: &str, what: &str) -> Result<(f64, f64)> {
    let l = output
        .lines()
        .find_map(|l| l.split(&format!("vnet: {what} ")).nth(1))
        .with_context(|| format!("no '{what}' line in: {output}"))?;
    let mut w = l.split_whitespace();
    let n: f64 = w.next().context("count")?.parse()?;
    let ns: f64 = w.nth(2).context("ns")?.parse()?;
    Ok((n, ns.max(1.0)))
}

/// `vnet: VERB N frames in T ns` → thousands of frames a second.
fn guest_rate(output: &str, verb: &str) -> Result<f64> {
    let (frames, ns) = guest_count(output, verb)?;
    Ok(frames * 1e6 / ns)
}

fn guest_mbps(output: &str, verb: &str) -> Result<f64> {
    let (bytes, ns) = guest_count(output, &format!("tcp {verb}"))?;
    Ok(bytes * 1e3 / ns)
}

/// Bulk TCP through user-mode networking (virtio-net, the virtio guest's go-back-N TCP):
/// 32 MiB guest → a host socket on 127.0.0.1 (through 10.0.2.2), and 32 MiB from a host
/// socket → the guest through `hostfwd`. Median of the runs, as the guest measures it.
fn tcp_throughput(env: &Env) -> Result<Vec<Row>> {
    use std::io::{Read, Write};
    let k = env.guest("virtio.elf");
    const MB: usize = 32;
    let out = |vmm: &Vmm, base: Vec<&str>| -> Result<f64> {
        let sink = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = sink.local_addr()?.port();
        std::thread::spawn(move || {
            if let Ok((mut c, _)) = sink.accept() {
                let mut buf = vec![0u8; 1 << 16];
                while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
            }
        });
        let append = format!("dev=net dhcp count=0 tcpsend=10.0.2.2:{port} mb={MB} wait=120");
        let mut args = base;
        args.extend(["-append", append.as_str()]);
        args.extend([
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0,romfile=",
        ]);
        let t = timed_run(vmm.command(&args), &[], Duration::from_secs(180))?;
        guest_mbps(&t.output, "sent").with_context(|| vmm.name.clone())
    };
    let into = |vmm: &Vmm, base: Vec<&str>| -> Result<f64> {
        let hport = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let sender = std::thread::spawn(move || {
            let data = vec![0x42u8; MB << 20];
            // slirp takes the connection at once; until the guest listens it is dropped.
            for _ in 0..100 {
                std::thread::sleep(Duration::from_millis(300));
                if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", hport)) {
                    if c.write_all(&data).is_ok() {
                        let _ = c.shutdown(std::net::Shutdown::Write);
                        let mut rest = Vec::new();
                        let _ = c.read_to_end(&mut rest);
                        return;
                    }
                }
            }
        });
        let append = "dev=net dhcp count=0 tcprecv=5001 wait=120".to_string();
        let netdev = format!("user,id=n0,hostfwd=tcp:127.0.0.1:{hport}-:5001");
        let mut args = base;
        args.extend(["-append", append.as_str()]);
        args.extend([
            "-netdev",
            netdev.as_str(),
            "-device",
            "virtio-net-pci,netdev=n0,romfile=",
        ]);
        let t = timed_run(vmm.command(&args), &[], Duration::from_secs(180))?;
        let _ = sender.join();
        guest_mbps(&t.output, "received").with_context(|| vmm.name.clone())
    };
    let (troupe, qemu) = (Vmm::troupe(&env.troupe), Vmm::qemu("pc"));
    let base = |q: bool| -> Vec<&str> {
        let mut a = if q {
            qemu_args(&k, "", "128")
        } else {
            troupe_args(&k, "", "128")
        };
        // The append given here replaces the empty one.
        if let Some(i) = a.iter().position(|x| *x == "-append") {
            a.drain(i..i + 2);
        }
        a
    };
    let mut rows = Vec::new();
    for (what, f) in [
        (
            "virtio-net TCP guest → host over user-mode (slirp), 32 MiB",
            &out as &dyn Fn(&Vmm, Vec<&str>) -> Result<f64>,
        ),
        (
            "virtio-net TCP host → guest over user-mode (slirp, hostfwd), 32 MiB",
            &into,
        ),
    ] {
        let (mut t, mut q) = (Vec::new(), Vec::new());
        for _ in 0..env.runs.min(3) {
            t.push(f(&troupe, base(false))?);
            q.push(f(&qemu, base(true))?);
        }
        rows.push(median_row(what, t, q, "MB/s", Target::AtLeastRatio(1.0)));
    }
    Ok(rows)
}
