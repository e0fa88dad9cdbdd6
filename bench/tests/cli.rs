//! The bench binary's command line, run as a user runs it: `--help` prints the usage and
//! runs nothing, a bad option is named and nothing runs.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn bench(args: &[&str]) -> (Output, Duration) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(args)
        .output()
        .expect("run the bench binary");
    (out, t.elapsed())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_prints_the_options_and_every_group_and_runs_nothing() {
    for flag in ["--help", "-h"] {
        let (out, took) = bench(&[flag]);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{flag}: {stdout}{stderr}");
        assert!(stdout.starts_with("usage: bench "), "{stdout}");
        for opt in ["--runs N", "--only GROUP", "--write", "-h, --help"] {
            assert!(stdout.contains(opt), "{flag} misses {opt}: {stdout}");
        }
        for group in [
            "boot", "pio", "storage", "network", "memory", "monitor", "vnc", "firmware",
        ] {
            assert!(
                stdout.contains(&format!("\n  {group} ")),
                "{flag} misses group {group}: {stdout}"
            );
        }
        // No table: no benchmark ran (the slowest group takes minutes, the fastest seconds).
        assert!(!stdout.contains("| measurement |"), "{stdout}");
        assert!(stderr.is_empty(), "{stderr}");
        assert!(took < Duration::from_secs(5), "{flag} took {took:?}");
    }
}

#[test]
fn unknown_and_bad_options_are_named_with_status_2() {
    for (args, needle) in [
        (&["--frobnicate"][..], "unknown option '--frobnicate'"),
        (&["--runs", "many"][..], "--runs many"),
        (
            &["--only", "disks"][..],
            "--only disks: groups are boot, pio",
        ),
        (
            &["--only", "pio", "--write"][..],
            "--write needs every group",
        ),
    ] {
        let (out, _) = bench(args);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.starts_with("bench: ") && stderr.contains(needle),
            "{args:?}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?} ran something: {stdout}");
    }
}
