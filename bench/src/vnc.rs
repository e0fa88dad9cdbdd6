//! VNC rows, troupe and QEMU side by side on the same guests, through a minimal RFB 3.8
//! client (security None, the server's 32-bit pixel format).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::harness::{median, Vmm};
use crate::{Env, Row, Target};

const RAW: i32 = 0;
const HEXTILE: i32 = 5;
const TIGHT: i32 = 7;
const ZRLE: i32 = 16;

struct Rfb {
    s: TcpStream,
    width: u16,
    height: u16,
    /// Bytes read since the counter was last reset.
    bytes: usize,
}

impl Rfb {
    fn connect(port: u16) -> Result<Self> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let s = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut c = Self {
            s,
            width: 0,
            height: 0,
            bytes: 0,
        };
        let mut version = [0u8; 12];
        c.read(&mut version)?;
        anyhow::ensure!(version.starts_with(b"RFB 003."), "not RFB: {version:?}");
        c.s.write_all(b"RFB 003.008\n")?;
        let n = c.u8()?;
        anyhow::ensure!(n > 0, "server refused the connection");
        let mut types = vec![0u8; n as usize];
        c.read(&mut types)?;
        anyhow::ensure!(types.contains(&1), "no security type None: {types:?}");
        c.s.write_all(&[1])?;
        anyhow::ensure!(c.u32()? == 0, "security handshake failed");
        c.s.write_all(&[1])?; // shared
        c.width = c.u16()?;
        c.height = c.u16()?;
        let mut pf = [0u8; 16];
        c.read(&mut pf)?;
        anyhow::ensure!(pf[0] == 32, "expected a 32 bpp default pixel format");
        let name_len = c.u32()? as usize;
        let mut name = vec![0u8; name_len];
        c.read(&mut name)?;
        Ok(c)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<()> {
        self.s.read_exact(buf)?;
        self.bytes += buf.len();
        Ok(())
    }
    fn u8(&mut self) -> Result<u8> {
        let mut b = [0u8; 1];
        self.read(&mut b)?;
        Ok(b[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let mut b = [0u8; 2];
        self.read(&mut b)?;
        Ok(u16::from_be_bytes(b))
    }
    fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn encodings(&mut self, e: &[i32]) -> Result<()> {
        let mut m = vec![2u8, 0];
        m.extend_from_slice(&(e.len() as u16).to_be_bytes());
        for x in e {
            m.extend_from_slice(&x.to_be_bytes());
        }
        self.s.write_all(&m)?;
        Ok(())
    }

    fn request(&mut self, incremental: bool) -> Result<()> {
        let mut m = vec![3u8, incremental as u8, 0, 0, 0, 0];
        m.extend_from_slice(&self.width.to_be_bytes());
        m.extend_from_slice(&self.height.to_be_bytes());
        self.s.write_all(&m)?;
        Ok(())
    }

    fn key(&mut self, keysym: u32, down: bool) -> Result<()> {
        let mut m = vec![4u8, down as u8, 0, 0];
        m.extend_from_slice(&keysym.to_be_bytes());
        self.s.write_all(&m)?;
        Ok(())
    }

    /// Read one FramebufferUpdate in Raw encoding (skipping other server messages).
    fn raw_update(&mut self) -> Result<()> {
        loop {
            match self.u8()? {
                0 => break,
                2 => continue, // bell
                3 => {
                    let mut h = [0u8; 7];
                    self.read(&mut h)?;
                    let n = u32::from_be_bytes([h[3], h[4], h[5], h[6]]) as usize;
                    let mut skip = vec![0u8; n];
                    self.read(&mut skip)?;
                }
                t => return Err(anyhow!("unexpected server message {t}")),
            }
        }
        let _pad = self.u8()?;
        let n = self.u16()?;
        for _ in 0..n {
            let _x = self.u16()?;
            let _y = self.u16()?;
            let w = self.u16()? as usize;
            let h = self.u16()? as usize;
            let enc = self.u32()? as i32;
            match enc {
                RAW => {
                    let mut px = vec![0u8; w * h * 4];
                    self.read(&mut px)?;
                }
                // DesktopSize and other pseudo-encodings carry no data here.
                e if e < 0 => {}
                e => return Err(anyhow!("unexpected encoding {e} in a Raw session")),
            }
        }
        Ok(())
    }

    /// Bytes until the server has been quiet for `quiet`.
    fn drain_bytes(&mut self, quiet: Duration) -> Result<usize> {
        self.s.set_read_timeout(Some(quiet))?;
        let mut total = 0;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(total)
    }
}

fn free_port() -> Result<u16> {
    loop {
        let p = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        if p > 5900 {
            return Ok(p);
        }
    }
}

/// A VMM started with `-vga std -vnc` on a free display; its stdout lines are timestamped.
struct Started {
    child: Child,
    port: u16,
    lines: mpsc::Receiver<(Instant, String)>,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(vmm: &Vmm, args: &[&str]) -> Result<Started> {
    let port = free_port()?;
    let vnc = format!("127.0.0.1:{}", port - 5900);
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-vga", "std", "-vnc", vnc.as_str()]);
    let mut cmd = vmm.command(&all);
    cmd.stdin(Stdio::null());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", vmm.name))?;
    let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if tx.send((Instant::now(), l)).is_err() {
                break;
            }
        }
    });
    Ok(Started {
        child,
        port,
        lines: rx,
    })
}

fn wait_line(s: &Started, needle: &str, timeout: Duration) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok((t, l)) = s.lines.recv_timeout(Duration::from_millis(100)) {
            if l.contains(needle) {
                return Ok(t);
            }
        }
    }
    Err(anyhow!("no `{needle}` on the serial console"))
}

/// Process CPU time (user + system) from /proc.
fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').ok_or_else(|| anyhow!("bad stat"))?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_micros(ticks * 1_000_000 / hz))
}

struct VncFigures {
    first_frame: Duration,
    change: Duration,
    bytes: Vec<(i32, usize)>,
    idle_cpu: f64,
    /// RSS each of 32 connected clients adds, KiB.
    per_client: f64,
    /// RSS left after ten rounds of 32 clients, MiB over the start.
    growth: f64,
}

/// Resident set size from /proc, KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for {pid}"))
}

fn measure(env: &Env, vmm: &Vmm, demo_args: &[&str], fw_args: &[&str]) -> Result<VncFigures> {
    // The demo guest: a text screen with a live clock; keys it reads on the PS/2
    // keyboard are echoed on the screen and reported on serial (`demo: key x`).
    let vm = start(vmm, demo_args)?;
    wait_line(&vm, "vCPUs running", Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_millis(500));
    let mut firsts = Vec::new();
    for _ in 0..env.runs.max(3) {
        let t = Instant::now();
        let mut c = Rfb::connect(vm.port)?;
        c.encodings(&[RAW])?;
        c.request(false)?;
        c.raw_update()?;
        firsts.push(t.elapsed());
    }
    // Guest screen write → client sees it: type a key, take the moment the guest reports
    // it on serial (it draws it at the same time) to the first update after that.
    let mut c = Rfb::connect(vm.port)?;
    c.encodings(&[RAW])?;
    c.request(false)?;
    c.raw_update()?;
    let mut changes = Vec::new();
    for (i, key) in "abcdefghij".chars().enumerate() {
        c.request(true)?;
        c.key(key as u32, true)?;
        c.key(key as u32, false)?;
        let seen = wait_line(&vm, &format!("demo: key {key}"), Duration::from_secs(10))?;
        // Updates may already be on the way (the clock); the one that follows the key is
        // the first to complete after the guest drew it.
        loop {
            c.raw_update()?;
            let now = Instant::now();
            if now > seen {
                changes.push(now - seen);
                break;
            }
            c.request(true)?;
        }
        if i % 3 == 2 {
            // Let the screen go idle for a while, as a user pausing between keys.
            std::thread::sleep(Duration::from_millis(1500));
            let _ = c.drain_bytes(Duration::from_millis(10))?;
        }
    }
    drop(c);
    drop(vm);

    // Firmware with no boot device: a static screen, a guest that mostly halts.
    // (SeaBIOS writes to the VGA console here, not serial: give it time to reach "No
    // bootable device", past its 2.5 s boot-menu wait.)
    let vm = start(vmm, fw_args)?;
    std::thread::sleep(Duration::from_secs(7));
    let mut bytes = Vec::new();
    for enc in [RAW, HEXTILE, ZRLE, TIGHT] {
        let mut c = Rfb::connect(vm.port)?;
        c.encodings(&[enc])?;
        c.bytes = 0;
        c.request(false)?;
        bytes.push((enc, c.drain_bytes(Duration::from_millis(500))?));
    }
    // Memory: ten rounds of 32 clients (the most either VMM takes) that each take one full
    // frame and then all close; RSS alone, with the 32 connected, and after each round.
    let pid = vm.child.id();
    let rss_start = rss_kib(pid)?;
    let (mut peak, mut after) = (0, 0);
    for _ in 0..10 {
        let mut cs = Vec::new();
        for _ in 0..32 {
            let mut c = Rfb::connect(vm.port)?;
            c.encodings(&[RAW])?;
            c.request(false)?;
            c.raw_update()?;
            cs.push(c);
        }
        peak = peak.max(rss_kib(pid)?);
        drop(cs);
        std::thread::sleep(Duration::from_millis(500));
        after = rss_kib(pid)?;
    }
    let per_client = peak.saturating_sub(rss_start) as f64 / 32.0;
    let growth = after.saturating_sub(rss_start) as f64 / 1024.0;
    // CPU use over 20 s with one client asking for updates the way viewers do (/proc
    // counts in 10 ms ticks: over 5 s one tick was a fifth of the figure).
    let mut c = Rfb::connect(vm.port)?;
    c.encodings(&[RAW])?;
    c.request(false)?;
    c.raw_update()?;
    let c0 = cpu_time(pid)?;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(20);
    c.s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut buf = vec![0u8; 1 << 16];
    c.request(true)?;
    while Instant::now() < deadline {
        match c.s.read(&mut buf) {
            Ok(0) => break,
            // Any update: ask for the next (a real viewer keeps one request outstanding).
            Ok(_) => c.request(true)?,
            Err(_) => {}
        }
    }
    let idle_cpu = (cpu_time(pid)? - c0).as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0;
    Ok(VncFigures {
        first_frame: median(firsts),
        change: median(changes),
        bytes,
        idle_cpu,
        per_client,
        growth,
    })
}

pub fn rows(env: &Env) -> Result<Vec<Row>> {
    let demo = env.guest("demo.elf");
    // The demo redraws every 250 ms by default; every 10 ms here, so the guest's own
    // delay stays small next to the VMM's.
    let demo_args = [
        "-m",
        "128",
        "-smp",
        "2",
        "-kernel",
        demo.as_str(),
        "-append",
        "redraw_ms=10",
    ];
    let fw_args = ["-m", "128"];
    let troupe = Vmm::troupe(&env.troupe);
    let mut troupe_demo = vec!["-nodefaults", "-serial", "stdio"];
    troupe_demo.extend(demo_args);
    let mut troupe_fw = vec!["-nodefaults", "-serial", "stdio"];
    troupe_fw.extend(fw_args);
    let t = measure(env, &troupe, &troupe_demo, &troupe_fw).context("troupe")?;
    let qemu = Vmm::qemu("pc");
    let q = measure(env, &qemu, &demo_args, &fw_args).context("QEMU")?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut rows = vec![
        Row {
            what: "VNC connect → first full frame (Raw, demo text screen)".into(),
            troupe: ms(t.first_frame),
            qemu: ms(q.first_frame),
            qemu_name: "`-M pc`".into(),
            unit: "ms",
            target: Target::AtMostRatio(1.0),
        },
        Row {
            what: "guest screen write → VNC client sees it (median of 10 keys, some after idling)"
                .into(),
            troupe: ms(t.change),
            qemu: ms(q.change),
            qemu_name: "`-M pc`".into(),
            unit: "ms",
            target: Target::AtMostRatio(1.0),
        },
    ];
    for ((enc, tb), (_, qb)) in t.bytes.iter().zip(&q.bytes) {
        let name = match *enc {
            RAW => "Raw",
            HEXTILE => "Hextile",
            ZRLE => "ZRLE",
            _ => "Tight",
        };
        rows.push(Row {
            what: format!("bytes per full-screen update, {name} (SeaBIOS screen)"),
            troupe: *tb as f64 / 1024.0,
            qemu: *qb as f64 / 1024.0,
            qemu_name: "`-M pc`".into(),
            unit: "KiB",
            target: Target::AtMostRatio(1.0),
        });
    }
    rows.push(Row {
        what: "RSS per connected VNC client (32 clients, one full frame each)".into(),
        troupe: t.per_client,
        qemu: q.per_client,
        qemu_name: "`-M pc`".into(),
        unit: "KiB",
        target: Target::AtMost(1024.0),
    });
    rows.push(Row {
        what: "RSS left after 10 rounds of 32 VNC clients".into(),
        troupe: t.growth,
        qemu: q.growth,
        qemu_name: "`-M pc`".into(),
        unit: "MiB",
        target: Target::AtMost(16.0),
    });
    rows.push(Row {
        what: "VMM CPU use, idle firmware guest, one VNC client".into(),
        troupe: t.idle_cpu,
        qemu: q.idle_cpu,
        qemu_name: "`-M pc`".into(),
        unit: "%",
        target: Target::AtMostRatio(1.0),
    });
    Ok(rows)
}
