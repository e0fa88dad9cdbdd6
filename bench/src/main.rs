//! troupe's benchmarks: troupe and QEMU side by side on the same guests, in one run,
//! reported as ratios in a markdown table (written to stdout and, with `--write`, to
//! `bench/RESULTS.md`).
//!
//! Run: `cargo build --release && cargo run --release -p bench -- --write`

mod harness;
mod rows;
mod vnc;

use std::path::PathBuf;

use anyhow::{Context, Result};

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

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let env = Env {
        troupe: root.join("target/release/troupe"),
        guests: root.join("target/guests/elf"),
        runs: args
            .iter()
            .position(|a| a == "--runs")
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(5),
    };
    anyhow::ensure!(
        env.troupe.exists(),
        "{} is missing: run `cargo build --release` first",
        env.troupe.display()
    );
    // `--only GROUP` runs one group (for a quick look; `--write` wants them all).
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    type Group = fn(&Env) -> Result<Vec<Row>>;
    let groups: [(&str, Group); 8] = [
        ("boot", rows::boot),
        ("pio", rows::pio),
        ("storage", rows::storage),
        ("network", rows::network),
        ("memory", rows::memory),
        ("monitor", rows::monitor),
        ("vnc", vnc::rows),
        ("firmware", rows::firmware),
    ];
    if let Some(o) = &only {
        anyhow::ensure!(
            groups.iter().any(|g| g.0 == o),
            "--only {o}: groups are boot, pio, storage, network, memory, monitor, vnc, firmware"
        );
        anyhow::ensure!(
            !args.iter().any(|a| a == "--write"),
            "--write needs every group"
        );
    }
    let mut rows = Vec::new();
    for (name, f) in groups {
        if only.as_deref().is_none_or(|o| o == name) {
            rows.extend(f(&env).with_context(|| format!("{name} rows"))?);
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
    if args.iter().any(|a| a == "--write") {
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
