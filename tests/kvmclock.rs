//! Paravirtual time: a guest reading its kvmclock sees no jump across a `stop` and `cont`
//! (QEMU holds kvmclock still while a VM is stopped) nor across a save and a restore into a
//! new process started later; its time never goes back.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Every `kvmclock: ns=N` the guest printed, in order (whole lines only: the last one may
/// still be arriving).
fn times(out: &str) -> Vec<u64> {
    let whole = &out[..out.rfind('\n').map_or(0, |i| i + 1)];
    whole
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("kvmclock: ns="))
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// Wait until the guest has printed `n` more times than `from`.
fn more_times(vm: &Running, from: usize, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = times(&vm.stdout.text());
        if t.len() >= from + n {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "the guest stopped reporting its time: {:?}\nstderr: {}",
            t,
            vm.stderr.text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The largest step between two reports, ns (the guest reports every 100 ms).
fn largest_step(t: &[u64]) -> u64 {
    assert!(t.windows(2).all(|w| w[0] < w[1]), "time went back: {t:?}");
    t.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0)
}

fn start(extra: &[&str]) -> (Running, Hmp) {
    let port = free_port();
    let hmp = format!("tcp:127.0.0.1:{port},server,nowait");
    let kernel = guest("spin");
    let mut args = guest_args(
        kernel.to_str().unwrap(),
        "kvmclock report_ms=100",
        &["-monitor", &hmp],
    );
    args.extend_from_slice(extra);
    let vm = Vm::troupe(&args).spawn();
    let h = Hmp::open(port);
    (vm, h)
}

#[test]
fn kvmclock_stands_still_while_stopped_and_continues_after_a_restore() {
    let (vm, mut h) = start(&[]);
    let before = more_times(&vm, 0, 5).len();
    assert_eq!(h.cmd("stop"), "");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(h.cmd("cont"), "");
    let t = more_times(&vm, before, 5);
    let step = largest_step(&t);
    assert!(
        step < 1_000_000_000,
        "the guest's clock jumped {step} ns across a 2 s stop"
    );

    // Saved while stopped, restored by a process started 2 s later: the guest's time goes
    // on from where it stopped.
    let dir = TempDir::new("kvmclock");
    let saved = dir.path("vm.mig");
    assert_eq!(h.cmd("stop"), "");
    let last = *times(&vm.stdout.text()).last().unwrap();
    assert_eq!(h.cmd(&format!("migrate file:{}", saved.display())), "");
    drop(h);
    drop(vm);
    std::thread::sleep(Duration::from_secs(2));
    let incoming = format!("file:{}", saved.display());
    let (dst, _h) = start(&["-incoming", &incoming]);
    let t = more_times(&dst, 0, 5);
    assert!(
        t[0] > last,
        "restored time {} is before the saved {last}",
        t[0]
    );
    assert!(
        t[0] - last < 1_000_000_000,
        "the restored clock jumped {} ns",
        t[0] - last
    );
    largest_step(&t);
}
