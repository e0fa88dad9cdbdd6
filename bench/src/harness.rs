//! Running a VMM process and measuring it: time to a serial marker, time to exit, and
//! resident memory that is not guest RAM.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// One VMM under test.
#[derive(Debug, Clone)]
pub struct Vmm {
    pub name: String,
    pub program: PathBuf,
    /// Arguments before the per-run ones.
    pub base_args: Vec<String>,
}

impl Vmm {
    pub fn troupe(bin: &Path) -> Self {
        Self {
            name: "troupe".into(),
            program: bin.to_path_buf(),
            base_args: vec![],
        }
    }

    pub fn qemu(machine: &str) -> Self {
        Self {
            name: format!("QEMU -M {machine}"),
            program: "qemu-system-x86_64".into(),
            base_args: vec![
                "-accel".into(),
                "kvm".into(),
                "-M".into(),
                machine.into(),
                "-display".into(),
                "none".into(),
                "-serial".into(),
                "stdio".into(),
                "-monitor".into(),
                "none".into(),
                "-no-user-config".into(),
                "-nodefaults".into(),
            ],
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.base_args).args(args);
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }
}

/// What one run produced.
#[derive(Debug, Clone)]
pub struct RunTimes {
    /// From spawn to the first byte on the serial console.
    pub first_byte: Option<Duration>,
    /// From spawn to each marker, in the order asked.
    #[allow(dead_code)]
    pub markers: Vec<Option<Duration>>,
    /// From spawn to process exit.
    pub exit: Duration,
    #[allow(dead_code)]
    pub status: Option<i32>,
    pub output: String,
}

/// Spawn, watch stdout for `markers`, wait for exit (killing after `timeout`).
pub fn timed_run(mut cmd: Command, markers: &[&str], timeout: Duration) -> Result<RunTimes> {
    let start = Instant::now();
    let mut child = cmd.spawn().context("spawning the VMM")?;
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let mut out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    let mut text = Vec::new();
    let mut first = None;
    let mut found: Vec<Option<Duration>> = vec![None; markers.len()];
    let deadline = start + timeout;
    let status = loop {
        while let Ok((t, chunk)) = rx.try_recv() {
            if first.is_none() && !chunk.is_empty() {
                first = Some(t - start);
            }
            text.extend_from_slice(&chunk);
            let s = String::from_utf8_lossy(&text);
            for (i, m) in markers.iter().enumerate() {
                if found[i].is_none() && s.contains(m) {
                    found[i] = Some(t - start);
                }
            }
        }
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            kill(&mut child);
            bail!(
                "timed out after {timeout:?}; output: {}",
                String::from_utf8_lossy(&text)
            );
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    let exit = start.elapsed();
    let _ = reader.join();
    while let Ok((t, chunk)) = rx.try_recv() {
        if first.is_none() && !chunk.is_empty() {
            first = Some(t - start);
        }
        text.extend_from_slice(&chunk);
    }
    let s = String::from_utf8_lossy(&text).into_owned();
    for (i, m) in markers.iter().enumerate() {
        if found[i].is_none() && s.contains(m) {
            found[i] = Some(exit);
        }
    }
    Ok(RunTimes {
        first_byte: first,
        markers: found,
        exit,
        status: status.code(),
        output: s,
    })
}

fn kill(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// Resident memory of `pid`, split into the mapping(s) of exactly `guest_ram` bytes (the
/// guest's RAM) and everything else, in KiB, from /proc/PID/smaps.
pub fn rss_split(pid: u32, guest_ram: u64) -> Result<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut guest = 0u64;
    let mut other = 0u64;
    let mut cur_is_guest = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            let mut parts = first.split('-');
            let a = u64::from_str_radix(parts.next().unwrap_or("0"), 16).unwrap_or(0);
            let b = u64::from_str_radix(parts.next().unwrap_or("0"), 16).unwrap_or(0);
            // QEMU rounds its RAM block up a little: a mapping of the guest's RAM size, up
            // to 4 MiB more, is the guest's.
            let size = b - a;
            cur_is_guest = size >= guest_ram && size <= guest_ram + (4 << 20);
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            if cur_is_guest {
                guest += kib;
            } else {
                other += kib;
            }
        }
    }
    Ok((guest, other))
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Spawn, wait until every marker appeared on stdout (or `timeout`), then kill; returns
/// the time of each marker.
pub fn timed_run_until(
    mut cmd: Command,
    markers: &[&str],
    timeout: Duration,
) -> Result<Vec<Option<Duration>>> {
    let start = Instant::now();
    let mut child = cmd.spawn().context("spawning the VMM")?;
    let mut out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    let mut text = Vec::new();
    let mut found: Vec<Option<Duration>> = vec![None; markers.len()];
    while start.elapsed() < timeout && found.iter().any(|f| f.is_none()) {
        if let Ok((t, chunk)) = rx.recv_timeout(Duration::from_millis(100)) {
            text.extend_from_slice(&chunk);
            let s = String::from_utf8_lossy(&text);
            for (i, m) in markers.iter().enumerate() {
                if found[i].is_none() && s.contains(m) {
                    found[i] = Some(t - start);
                }
            }
        }
    }
    kill(&mut child);
    Ok(found)
}
