//! troupe's benchmarks: troupe and QEMU side by side on the same guests, in one run,
//! reported as ratios in a markdown table (written to stdout and, with `--write`, to
//! `bench/RESULTS.md`).
//!
//! Run: `cargo build --release && cargo run --release -p bench -- --write`
//! (`--help` lists the options and the groups of rows).

mod cli;
mod harness;
mod migration;
mod rows;
mod vnc;

use std::path::PathBuf;

use anyhow::{Context, Result};
use cli::{Command, Group};

/// Where things are.
pub struct Env {
    pub troupe: PathBuf,
    pub guests: PathBuf,
    pub runs: usize,
}

impl Env {
    pub fn guest(&self, name: &str) -> String {
        self.guests.join(name).display().to_string()
    }
}

/// One table row: what, troupe's value, QEMU's value, unit, which way is better, target.
pub struct Row {
    pub what: String,
    pub troupe: f64,
    pub qemu: f64,
    pub qemu_name: String,
    pub unit: &'static str,
    pub target: Target,
}

/// What counts as good for a row.
pub enum Target {
    /// troupe / QEMU at most this.
    AtMostRatio(f64),
    /// troupe / QEMU at least this (throughput).
    AtLeastRatio(f64),
    /// troupe's own value at most this, in the row's unit.
    AtMost(f64),
}

impl Row {
    fn ratio(&self) -> f64 {
        self.troupe / self.qemu
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::AtMostRatio(r) => format!("≤ {r:.1}×"),
            Target::AtLeastRatio(r) => format!("≥ {r:.1}×"),
            Target::AtMost(v) => format!("≤ {v} {}", self.unit),
        }
    }

    fn verdict(&self) -> &'static str {
        let ok = match self.target {
            Target::AtMostRatio(r) => self.ratio() <= r,
            Target::AtLeastRatio(r) => self.ratio() >= r,
            Target::AtMost(v) => self.troupe <= v,
        };
        if ok {
            "met"
        } else {
            "not met"
        }
    }
}

/// Every group of rows, in table order.
const GROUPS: &[Group] = &[
    Group {
        name: "boot",
        rows: "process start to first serial byte and to guest exit (`hello`), QEMU microvm and pc",
        run: rows::boot,
    },
    Group {
        name: "pio",
        rows: "port-I/O exit round trip in ring 0 and ring 3",
        run: rows::pio,
    },
    Group {
        name: "storage",
        rows: "virtio-blk sequential 1 MiB writes and reads, random 4 KiB reads at depth 1 and 32",
        run: rows::storage,
    },
    Group {
        name: "network",
        rows: "virtio-net ping and TCP both ways over user-mode networking and over a tap",
        run: rows::network,
    },
    Group {
        name: "memory",
        rows: "VMM resident memory beyond guest RAM",
        run: rows::memory,
    },
    Group {
        name: "monitor",
        rows: "HMP `info status` and QMP `query-status` round trips",
        run: rows::monitor,
    },
    Group {
        name: "vnc",
        rows: "VNC first frame, screen write to client, bytes per update, idle CPU use",
        run: vnc::rows,
    },
    Group {
        name: "migration",
        rows: "live migration on loopback: total time and downtime (idle guest, guest rewriting 32 MiB), stream throughput",
        run: migration::rows,
    },
    Group {
        name: "firmware",
        rows: "process start to the SeaBIOS banner and to GRUB's menu from a CD-ROM",
        run: rows::firmware,
    },
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match cli::parse(&args, GROUPS) {
        Ok(Command::Help) => {
            print!("{}", cli::usage(GROUPS));
            return Ok(());
        }
        Ok(Command::Run(o)) => o,
        Err(e) => {
            eprintln!("bench: {e} (see --help)");
            std::process::exit(2);
        }
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let env = Env {
        troupe: root.join("target/release/troupe"),
        guests: root.join("target/guests/elf"),
        runs: opts.runs,
    };
    anyhow::ensure!(
        env.troupe.exists(),
        "{} is missing: run `cargo build --release` first",
        env.troupe.display()
    );
    let mut rows = Vec::new();
    for g in GROUPS {
        if opts.only.as_deref().is_none_or(|o| o == g.name) {
            rows.extend((g.run)(&env).with_context(|| format!("{} rows", g.name))?);
        }
    }

    let mut table = String::from(
        "| measurement | troupe | QEMU | QEMU config | troupe / QEMU | target | verdict |\n|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        table.push_str(&format!(
            "| {} | {:.2} {} | {:.2} {} | {} | {:.2}× | {} | {} |\n",
            r.what,
            r.troupe,
            r.unit,
            r.qemu,
            r.unit,
            r.qemu_name,
            r.ratio(),
            r.target_text(),
            r.verdict()
        ));
    }
    println!("{table}");
    if opts.write {
        let host = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            })
            .unwrap_or_default();
        let text = format!(
            "# Benchmark results\n\nMade by `cargo build --release && cargo run --release -p bench -- --write` \
             (median of {} runs per cell) on {} with {} host cores, QEMU {}.\n\n{}\n\
             Ratios below 1.0 are better for times and memory.\n",
            env.runs,
            host,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            qemu_version(),
            table
        );
        std::fs::write(root.join("bench/RESULTS.md"), text)?;
    }
    Ok(())
}

fn qemu_version() -> String {
    std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.trim_start_matches("QEMU emulator version ").to_string())
        })
        .unwrap_or_else(|| "(not found)".into())
}
