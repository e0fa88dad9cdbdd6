//! The bench's command line: which groups of rows to run, how often, and whether to write
//! `bench/RESULTS.md`. Parsed before anything runs, so `--help` and a bad option never
//! start a VM.

use thiserror::Error;

use crate::{Env, Row};

/// A group of rows: its `--only` name, what it measures, and the function that runs it.
pub struct Group {
    pub name: &'static str,
    pub rows: &'static str,
    pub run: fn(&Env) -> anyhow::Result<Vec<Row>>,
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// `--help`, `-h`: print [`usage`] and exit 0.
    Help,
    /// Run the benchmarks.
    Run(Options),
}

/// How to run.
#[derive(Debug, PartialEq, Eq)]
pub struct Options {
    /// `--runs N`: runs per cell (default 5; some rows take fewer).
    pub runs: usize,
    /// `--only GROUP`: one group instead of all.
    pub only: Option<String>,
    /// `--write`: also write `bench/RESULTS.md`.
    pub write: bool,
}

/// Ways the command line can be wrong.
#[derive(Debug, PartialEq, Eq, Error)]
pub enum ArgsError {
    /// An option the bench does not have.
    #[error("unknown option '{0}'")]
    Unknown(String),
    /// An option whose value is missing.
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    /// `--runs` that is not a positive number.
    #[error("--runs {0}: expects a number of runs, at least 1")]
    Runs(String),
    /// `--only` naming no group.
    #[error("--only {name}: groups are {groups}")]
    Group {
        /// What was given.
        name: String,
        /// The groups there are.
        groups: String,
    },
    /// `--write` with `--only` (the results file holds every row).
    #[error("--write needs every group; drop --only {0}")]
    WriteOnly(String),
}

/// Read the arguments (without the program name).
pub fn parse(args: &[String], groups: &[Group]) -> Result<Command, ArgsError> {
    let mut opts = Options {
        runs: 5,
        only: None,
        write: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--help" | "-h" => return Ok(Command::Help),
            "--write" => opts.write = true,
            "--runs" => {
                let v = it.next().ok_or(ArgsError::MissingValue("--runs"))?;
                opts.runs = match v.parse::<usize>() {
                    Ok(n) if n >= 1 => n,
                    _ => return Err(ArgsError::Runs(v.clone())),
                };
            }
            "--only" => {
                let v = it.next().ok_or(ArgsError::MissingValue("--only"))?;
                if !groups.iter().any(|g| g.name == v) {
                    return Err(ArgsError::Group {
                        name: v.clone(),
                        groups: names(groups),
                    });
                }
                opts.only = Some(v.clone());
            }
            other => return Err(ArgsError::Unknown(other.to_string())),
        }
    }
    if let (true, Some(o)) = (opts.write, &opts.only) {
        return Err(ArgsError::WriteOnly(o.clone()));
    }
    Ok(Command::Run(opts))
}

fn names(groups: &[Group]) -> String {
    groups.iter().map(|g| g.name).collect::<Vec<_>>().join(", ")
}

/// `--help`: the options and the groups of rows.
pub fn usage(groups: &[Group]) -> String {
    let mut out = String::from(
        "usage: bench [--runs N] [--only GROUP] [--write]\n\n\
         Runs troupe and QEMU side by side on the same guests and prints a markdown table\n\
         of the results (troupe: target/release/troupe, so `cargo build --release` first).\n\n\
         options:\n  \
         --runs N       runs per cell, the median is reported (default 5; some rows take\n                 \
         at most 2 or 3)\n  \
         --only GROUP   run one group of rows\n  \
         --write        also write bench/RESULTS.md (needs every group)\n  \
         -h, --help     print this and exit\n\ngroups and their rows:\n",
    );
    for g in groups {
        out.push_str(&format!("  {:<13}{}\n", g.name, g.rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &Env) -> anyhow::Result<Vec<Row>> {
        Ok(Vec::new())
    }

    const GROUPS: &[Group] = &[
        Group {
            name: "boot",
            rows: "start to first serial byte",
            run: none,
        },
        Group {
            name: "pio",
            rows: "exit round trip",
            run: none,
        },
    ];

    fn p(args: &[&str]) -> Result<Command, ArgsError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        parse(&args, GROUPS)
    }

    #[test]
    fn options_parse_with_defaults() {
        assert_eq!(
            p(&[]),
            Ok(Command::Run(Options {
                runs: 5,
                only: None,
                write: false
            }))
        );
        assert_eq!(
            p(&["--runs", "3", "--only", "pio"]),
            Ok(Command::Run(Options {
                runs: 3,
                only: Some("pio".into()),
                write: false
            }))
        );
        assert_eq!(p(&["--write", "--help"]), Ok(Command::Help));
        assert_eq!(p(&["-h"]), Ok(Command::Help));
    }

    #[test]
    fn bad_options_name_what_is_wrong() {
        let err = |a: &[&str]| p(a).unwrap_err().to_string();
        assert_eq!(err(&["--frob"]), "unknown option '--frob'");
        assert_eq!(err(&["--runs"]), "--runs needs a value");
        assert_eq!(
            err(&["--runs", "0"]),
            "--runs 0: expects a number of runs, at least 1"
        );
        assert_eq!(
            err(&["--runs", "x"]),
            "--runs x: expects a number of runs, at least 1"
        );
        assert_eq!(err(&["--only", "vnc"]), "--only vnc: groups are boot, pio");
        assert_eq!(
            err(&["--only", "pio", "--write"]),
            "--write needs every group; drop --only pio"
        );
    }

    #[test]
    fn usage_lists_options_and_groups() {
        let u = usage(GROUPS);
        for s in [
            "--runs N",
            "--only GROUP",
            "--write",
            "--help",
            "boot",
            "pio",
        ] {
            assert!(u.contains(s), "{s}: {u}");
        }
        assert!(u.contains("exit round trip"));
    }
}
