//! Live migration on loopback, troupe to troupe and QEMU to QEMU, on the same guest: an
//! idle one and one rewriting 32 MiB without pause (`memtouch`). Total time and downtime
//! as each VMM's `query-migrate` reports them, and the stream's throughput (bytes moved
//! over the total time) with no bandwidth limit.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::harness::Vmm;
use crate::{Env, Row, Target};

/// A QMP session on a unix socket.
struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Qmp {
    fn open(path: &Path) -> Result<Self> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut q = Self {
            r: BufReader::new(s.try_clone()?),
            w: s,
        };
        q.line()?;
        q.ask(r#"{"execute":"qmp_capabilities"}"#)?;
        Ok(q)
    }

    fn line(&mut self) -> Result<String> {
        let mut l = String::new();
        anyhow::ensure!(self.r.read_line(&mut l)? > 0, "QMP closed");
        Ok(l)
    }

    /// The answer to `cmd` (events skipped).
    fn ask(&mut self, cmd: &str) -> Result<String> {
        self.w.write_all(cmd.as_bytes())?;
        loop {
            let l = self.line()?;
            if !l.contains("\"event\"") {
                anyhow::ensure!(!l.contains("\"error\""), "{cmd}: {l}");
                return Ok(l);
            }
        }
    }
}

/// The number after `"key": ` in a JSON text.
fn number(json: &str, key: &str) -> Option<f64> {
    let at = json.find(&format!("\"{key}\": "))? + key.len() + 4;
    let rest = &json[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (total ms, downtime ms, bytes moved) of one migration of `append` on `vmm`.
fn migrate_once(
    env: &Env,
    vmm: &Vmm,
    troupe: bool,
    append: &str,
    unlimited: bool,
) -> Result<(f64, f64, f64)> {
    let dir = std::env::temp_dir().join(format!(
        "troupe-bench-mig-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    std::fs::create_dir_all(&dir)?;
    let kernel = env.guest("memtouch.elf");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let incoming = format!("tcp:127.0.0.1:{port}");
    // Each VM's serial console, watched for the guest's start line (QEMU boots SeaBIOS
    // first) and drained so the guest never blocks on it.
    let start =
        |name: &str, extra: &[&str]| -> Result<(Kill, PathBuf, std::sync::mpsc::Receiver<()>)> {
            let sock = dir.join(format!("{name}.qmp"));
            let qmp = format!("unix:{},server=on,wait=off", sock.display());
            let mut args: Vec<&str> = if troupe {
                vec!["-nodefaults", "-display", "none", "-serial", "stdio"]
            } else {
                vec![]
            };
            args.extend([
                "-m",
                "128",
                "-device",
                "isa-debug-exit,iobase=0xf4,iosize=0x04",
                "-kernel",
                &kernel,
                "-append",
                append,
                "-qmp",
                &qmp,
            ]);
            args.extend_from_slice(extra);
            let mut c = vmm.command(&args);
            c.stdout(Stdio::piped()).stderr(Stdio::null());
            let mut child = c.spawn()?;
            let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("memtouch: start") {
                        let _ = tx.send(());
                    }
                }
            });
            Ok((Kill(child), sock, rx))
        };
    let result = (|| -> Result<(f64, f64, f64)> {
        let (_dst, dsock, _) = start("dst", &["-incoming", &incoming])?;
        let (_src, ssock, started) = start("src", &[])?;
        let mut d = Qmp::open(&dsock)?;
        let mut s = Qmp::open(&ssock)?;
        started
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| anyhow!("{}: the guest did not start", vmm.name))?;
        // Let it run its loop a while.
        std::thread::sleep(Duration::from_millis(300));
        if unlimited {
            s.ask(
                r#"{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":10000000000}}"#,
            )?;
        }
        s.ask(&format!(
            r#"{{"execute":"migrate","arguments":{{"uri":"{incoming}"}}}}"#
        ))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let done = loop {
            let v = s.ask(r#"{"execute":"query-migrate"}"#)?;
            if v.contains("\"completed\"") {
                break v;
            }
            anyhow::ensure!(
                !v.contains("\"failed\"") && Instant::now() < deadline,
                "{}: {v}",
                vmm.name
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        // The destination runs the guest on.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !d
            .ask(r#"{"execute":"query-status"}"#)?
            .contains("\"running\"")
        {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{}: destination not running",
                vmm.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let total = number(&done, "total-time").ok_or_else(|| anyhow!("total-time: {done}"))?;
        let down = number(&done, "downtime").ok_or_else(|| anyhow!("downtime: {done}"))?;
        let bytes = number(&done, "transferred").ok_or_else(|| anyhow!("transferred: {done}"))?;
        Ok((total, down, bytes))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result.with_context(|| format!("{} migration", vmm.name))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn rows(env: &Env) -> Result<Vec<Row>> {
    let troupe = Vmm::troupe(&env.troupe);
    let qemu = Vmm::qemu("pc");
    let mut rows = Vec::new();
    for (what, append, unlimited) in [
        ("idle guest", "mib=1 report_ms=1000000", false),
        ("guest rewriting 32 MiB", "mib=32 report_ms=1000000", false),
        (
            "guest rewriting 32 MiB, no bandwidth limit",
            "mib=32 report_ms=1000000",
            true,
        ),
    ] {
        let mut t = Vec::new();
        let mut q = Vec::new();
        for _ in 0..env.runs {
            t.push(migrate_once(env, &troupe, true, append, unlimited)?);
            q.push(migrate_once(env, &qemu, false, append, unlimited)?);
        }
        let pick = |v: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| {
            median(v.iter().map(f).collect())
        };
        if unlimited {
            let mbs = |r: &(f64, f64, f64)| r.2 / 1e3 / r.0.max(1.0);
            rows.push(Row {
                what: format!("migration stream throughput, {what}"),
                troupe: pick(&t, mbs),
                qemu: pick(&q, mbs),
                qemu_name: "`-M pc`".into(),
                unit: "MB/s",
                target: Target::AtLeastRatio(1.0),
            });
            continue;
        }
        rows.push(Row {
            what: format!("migration total time, {what}"),
            troupe: pick(&t, |r| r.0),
            qemu: pick(&q, |r| r.0),
            qemu_name: "`-M pc`".into(),
            unit: "ms",
            target: Target::AtMostRatio(1.0),
        });
        rows.push(Row {
            what: format!("migration downtime, {what}"),
            troupe: pick(&t, |r| r.1),
            qemu: pick(&q, |r| r.1),
            qemu_name: "`-M pc`".into(),
            unit: "ms",
            target: Target::AtMostRatio(0.5),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_from_query_migrate() {
        let j = r#"{"return": {"status": "completed", "downtime": 12, "total-time": 345, "ram": {"transferred": 1048576, "mbps": 12.5}}}"#;
        assert_eq!(number(j, "downtime"), Some(12.0));
        assert_eq!(number(j, "total-time"), Some(345.0));
        assert_eq!(number(j, "transferred"), Some(1048576.0));
        assert_eq!(number(j, "mbps"), Some(12.5));
        assert_eq!(number(j, "nosuch"), None);
    }
}
