//! Fuzzing on stable Rust, small enough to run inside `cargo test`.
//!
//! A target is what cargo-fuzz calls one: a `fn(&[u8])` that feeds the bytes to one door
//! of troupe (a parser, a device model, a protocol session) and must neither panic nor
//! hang, whatever the bytes. [`fuzz`] runs a target for a fixed time: first its seed
//! inputs (valid inputs of that door), then inputs made from them by stacked mutations
//! (bit flips, interesting values, inserted and deleted ranges, dictionary words, splices
//! of two seeds). Input `i` depends only on the run's seed, the target's name and `i`, so
//! any failure can be replayed. A panic anywhere on the target's thread counts, even one
//! the code under test catches (tokio tasks, `catch_unwind` in actor runners); an input
//! that runs longer than the per-input timeout is a hang. Either fails the calling test
//! with the input written out as a byte-string literal and to a file.
//!
//! Knobs (environment): `TROUPE_FUZZ_MS` time per target (default 2000),
//! `TROUPE_FUZZ_SEED` run seed (default fixed, so CI is reproducible),
//! `TROUPE_FUZZ_TIMEOUT_MS` per-input timeout (default 5000), `TROUPE_FUZZ_TRACE=1`
//! prints each input's number and writes the input to `troupe-fuzz-<name>-current.bin`
//! in the temporary directory before it runs (to find an input that kills the process
//! outright: a stack overflow or an allocation failure aborts before any report).
//!
//! Each run prints one line to stderr (not captured by the test harness):
//! `fuzz <name>: <execs> execs in <secs> s (seed <seed>; slowest: input <i>, <ms> ms)`.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

/// One fuzz target and what to start from.
pub struct Target {
    /// Short name, printed with the exec count (`cli`, `qcow2`, ...).
    pub name: &'static str,
    /// The target: any bytes in, no panic, no hang.
    pub run: fn(&[u8]),
    /// Valid (or nearly valid) inputs to mutate; at least one.
    pub seeds: Vec<Vec<u8>>,
    /// Words the mutator inserts or writes over (keywords, magic numbers, delimiters).
    pub dict: Vec<Vec<u8>>,
    /// Mutated inputs are cut to this length.
    pub max_len: usize,
    /// Threads the code under test starts itself (an actor's own thread), by a part of
    /// their name: a panic on one of them during the run counts as well.
    pub threads: Vec<&'static str>,
}

/// What a run did.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    pub execs: u64,
    pub elapsed: Duration,
    /// The input that took longest, and how long.
    pub slowest: (u64, Duration),
}

/// The run's settings, from the environment.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub budget: Duration,
    pub seed: u64,
    pub timeout: Duration,
    pub trace: bool,
}

impl Config {
    pub fn from_env() -> Config {
        let num = |k: &str, d: u64| {
            std::env::var(k)
                .ok()
                .and_then(|v| {
                    let v = v.trim();
                    match v.strip_prefix("0x") {
                        Some(h) => u64::from_str_radix(h, 16).ok(),
                        None => v.parse().ok(),
                    }
                })
                .unwrap_or(d)
        };
        Config {
            budget: Duration::from_millis(num("TROUPE_FUZZ_MS", 2000)),
            seed: num("TROUPE_FUZZ_SEED", 0x7e0b_e5ee_d000_0001),
            timeout: Duration::from_millis(num("TROUPE_FUZZ_TIMEOUT_MS", 5000)),
            trace: num("TROUPE_FUZZ_TRACE", 0) != 0,
        }
    }
}

/// A small, fast, seedable generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

const INTERESTING: [u64; 24] = [
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    0xf,
    0x10,
    0x20,
    0x40,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x200,
    0x1000,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
];

fn interesting(rng: &mut Rng) -> u64 {
    match rng.below(4) {
        0 => u64::MAX - (rng.below(4) as u64),
        1 => 1u64 << rng.below(64),
        _ => INTERESTING[rng.below(INTERESTING.len())],
    }
}

/// One mutation of `data` in place.
fn mutate_once(t: &Target, data: &mut Vec<u8>, rng: &mut Rng) {
    let len = data.len();
    let pos = rng.below(len.max(1));
    match rng.below(12) {
        0 if len > 0 => data[pos] ^= 1 << rng.below(8),
        1 if len > 0 => data[pos] = rng.next_u64() as u8,
        2 if len > 0 => {
            // Add or subtract a little, as a length or index field would be nudged.
            let d = (rng.below(35) as u8).wrapping_sub(17);
            data[pos] = data[pos].wrapping_add(d);
        }
        3 if len > 0 => {
            let width = [1usize, 2, 4, 8][rng.below(4)];
            let v = interesting(rng);
            let bytes = if rng.chance(2) {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            };
            let bytes = if rng.chance(2) {
                &bytes[..width]
            } else {
                &bytes[8 - width..]
            };
            for (k, b) in bytes.iter().enumerate() {
                if let Some(d) = data.get_mut(pos + k) {
                    *d = *b;
                }
            }
        }
        4 => {
            let n = 1 + rng.below(16);
            let fill = rng.next_u64() as u8;
            let random = rng.chance(2);
            let ins: Vec<u8> = (0..n)
                .map(|_| if random { rng.next_u64() as u8 } else { fill })
                .collect();
            data.splice(pos.min(len)..pos.min(len), ins);
        }
        5 if len > 0 => {
            let n = 1 + rng.below((len - pos).min(32));
            data.drain(pos..pos + n);
        }
        6 if len > 1 => {
            // Copy a range elsewhere (repeats a record or a header).
            let from = rng.below(len);
            let n = 1 + rng.below((len - from).min(64));
            let chunk = data[from..from + n].to_vec();
            let at = rng.below(len + 1);
            if rng.chance(2) {
                data.splice(at..at, chunk);
            } else {
                let end = (at + n).min(len);
                data.splice(at..end, chunk);
            }
        }
        7 | 8 if !t.dict.is_empty() => {
            let w = t.dict[rng.below(t.dict.len())].clone();
            if rng.chance(2) {
                data.splice(pos.min(len)..pos.min(len), w);
            } else {
                let end = (pos + w.len()).min(len);
                data.splice(pos.min(len)..end, w);
            }
        }
        9 if t.seeds.len() > 1 => {
            // Splice: keep a head of this input, take a tail of another seed.
            let other = &t.seeds[rng.below(t.seeds.len())];
            let from = rng.below(other.len() + 1);
            data.truncate(pos);
            data.extend_from_slice(&other[from..]);
        }
        10 if len > 0 => data.truncate(pos),
        _ if len > 0 => {
            // Swap two bytes.
            let other = rng.below(len);
            data.swap(pos, other);
        }
        _ => data.push(rng.next_u64() as u8),
    }
}

fn name_hash(name: &str) -> u64 {
    // FNV-1a: stable across Rust versions, unlike DefaultHasher.
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Input number `i` of a run of `t` with run seed `seed`: the seeds first, then mutants.
pub fn input(t: &Target, seed: u64, i: u64) -> Vec<u8> {
    if let Some(s) = t.seeds.get(i as usize) {
        return s.clone();
    }
    let mut rng = Rng::new(seed ^ name_hash(t.name) ^ i.wrapping_mul(0xd6e8_feb8_6659_fd93));
    let mut data = t.seeds[rng.below(t.seeds.len())].clone();
    // Mostly a few mutations; sometimes many.
    let n = if rng.chance(8) {
        1 + rng.below(64)
    } else {
        1 + rng.below(6)
    };
    for _ in 0..n {
        mutate_once(t, &mut data, &mut rng);
    }
    data.truncate(t.max_len);
    data
}

/// Runs watching threads by name: (name part, where a panic there is recorded).
type Watches = Vec<(&'static str, Arc<Mutex<Option<String>>>)>;

fn watches() -> &'static Mutex<Watches> {
    static W: OnceLock<Mutex<Watches>> = OnceLock::new();
    W.get_or_init(Mutex::default)
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

thread_local! {
    /// Set on the worker thread of a run: panics there are recorded, not printed.
    static FUZZING: Cell<bool> = const { Cell::new(false) };
    /// The first panic seen on this thread during the current input.
    static PANICKED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Chain a panic hook that records panics on fuzzing threads (even ones the code under
/// test catches) and stays silent there; other threads get the previous hook.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if FUZZING.with(Cell::get) {
                let msg = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(non-string panic)".into());
                let at = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                PANICKED.with(|p| {
                    p.borrow_mut().get_or_insert(format!("{msg}{at}"));
                });
                return;
            }
            let me = std::thread::current();
            let name = me.name().unwrap_or_default();
            let slot = locked(watches())
                .iter()
                .find(|(part, _)| name.contains(part))
                .map(|(_, slot)| slot.clone());
            match slot {
                Some(slot) => {
                    let msg = info
                        .payload()
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| info.payload().downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(non-string panic)".into());
                    let at = info
                        .location()
                        .map(|l| format!(" at {}:{}", l.file(), l.line()))
                        .unwrap_or_default();
                    locked(&slot).get_or_insert(format!("{msg}{at} (thread {name})"));
                }
                None => prev(info),
            }
        }));
    });
}

/// `data` as a Rust byte-string literal, for pasting into a regression test.
pub fn literal(data: &[u8]) -> String {
    let mut s = String::from("b\"");
    for &b in data {
        match b {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s.push('"');
    s
}

/// Ends a run's thread watches however the run ends.
struct Unwatch(Arc<Mutex<Option<String>>>);

impl Drop for Unwatch {
    fn drop(&mut self) {
        locked(watches()).retain(|(_, s)| !Arc::ptr_eq(s, &self.0));
    }
}

enum Event {
    Done(u64, (u64, Duration)),
    Crash(u64, String),
}

fn fail(t: &Target, cfg: &Config, i: u64, what: &str) -> ! {
    let data = input(t, cfg.seed, i);
    let path = std::env::temp_dir().join(format!("troupe-fuzz-{}-{i}.bin", t.name));
    let saved = match std::fs::write(&path, &data) {
        Ok(()) => format!("saved to {}", path.display()),
        Err(e) => format!("could not be saved to {}: {e}", path.display()),
    };
    panic!(
        "fuzz {}: input {i} (seed {:#x}) {what}\ninput ({} bytes, {saved}):\n{}",
        t.name,
        cfg.seed,
        data.len(),
        literal(&data)
    );
}

/// Run `t` with the settings from the environment; panics (failing the test) on the
/// first input that panics or hangs.
pub fn fuzz(t: Target) -> Report {
    fuzz_with(t, Config::from_env())
}

/// Run `t` with `cfg`.
pub fn fuzz_with(t: Target, cfg: Config) -> Report {
    assert!(!t.seeds.is_empty(), "fuzz {}: no seed inputs", t.name);
    install_hook();
    let t = Arc::new(t);
    let slot = Arc::new(Mutex::new(None));
    for part in &t.threads {
        locked(watches()).push((part, slot.clone()));
    }
    let _unwatch = Unwatch(slot.clone());
    let current = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    {
        let (t, current, slot) = (t.clone(), current.clone(), slot.clone());
        std::thread::Builder::new()
            .name(format!("fuzz-{}", t.name))
            .spawn(move || {
                FUZZING.with(|f| f.set(true));
                let mut i = 0u64;
                let mut slowest = (0, Duration::ZERO);
                while i < t.seeds.len() as u64 || started.elapsed() < cfg.budget {
                    current.store(i, Ordering::SeqCst);
                    let data = input(&t, cfg.seed, i);
                    if cfg.trace {
                        let _ = writeln!(std::io::stderr(), "fuzz {}: input {i}", t.name);
                        let f = format!("troupe-fuzz-{}-current.bin", t.name);
                        let _ = std::fs::write(std::env::temp_dir().join(f), &data);
                    }
                    PANICKED.with(|p| p.borrow_mut().take());
                    let began = Instant::now();
                    let caught = catch_unwind(AssertUnwindSafe(|| (t.run)(&data)));
                    if began.elapsed() > slowest.1 {
                        slowest = (i, began.elapsed());
                    }
                    let seen = PANICKED
                        .with(|p| p.borrow_mut().take())
                        .or_else(|| locked(&slot).take());
                    if let Some(msg) = seen.or(caught.err().map(|_| "panicked".into())) {
                        let _ = tx.send(Event::Crash(i, msg));
                        return;
                    }
                    i += 1;
                }
                let _ = tx.send(Event::Done(i, slowest));
            })
            .expect("spawn the fuzz worker thread");
    }
    let mut last = (u64::MAX, Instant::now());
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Event::Done(execs, slowest)) => {
                let elapsed = started.elapsed();
                let _ = writeln!(
                    std::io::stderr(),
                    "fuzz {}: {execs} execs in {:.1} s (seed {:#x}; slowest: input {}, {} ms)",
                    t.name,
                    elapsed.as_secs_f64(),
                    cfg.seed,
                    slowest.0,
                    slowest.1.as_millis()
                );
                return Report {
                    execs,
                    elapsed,
                    slowest,
                };
            }
            Ok(Event::Crash(i, msg)) => fail(&t, &cfg, i, &format!("panicked: {msg}")),
            Err(mpsc::RecvTimeoutError::Disconnected) => fail(
                &t,
                &cfg,
                current.load(Ordering::SeqCst),
                "killed its thread",
            ),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let now = current.load(Ordering::SeqCst);
                if now != last.0 {
                    last = (now, Instant::now());
                } else if last.1.elapsed() > cfg.timeout {
                    // The worker is left spinning; the test process ends with the test.
                    fail(
                        &t,
                        &cfg,
                        now,
                        &format!("hung (still running after {:?})", cfg.timeout),
                    );
                }
            }
        }
    }
}

/// Reads a fuzz input as a sequence of fields; past the end every field reads as zero,
/// so any input is a complete program for a structured target.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Cursor<'a> {
        Cursor { data, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub fn remaining(&self) -> &'a [u8] {
        &self.data[self.pos.min(self.data.len())..]
    }

    /// Up to `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let r = self.remaining();
        let n = n.min(r.len());
        self.pos += n;
        &r[..n]
    }

    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    pub fn u16(&mut self) -> u16 {
        let mut b = [0u8; 2];
        let s = self.bytes(2);
        b[..s.len()].copy_from_slice(s);
        u16::from_le_bytes(b)
    }

    pub fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        let s = self.bytes(4);
        b[..s.len()].copy_from_slice(s);
        u32::from_le_bytes(b)
    }

    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let s = self.bytes(8);
        b[..s.len()].copy_from_slice(s);
        u64::from_le_bytes(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(run: fn(&[u8])) -> Target {
        Target {
            name: "selftest",
            run,
            seeds: vec![b"seed".to_vec(), vec![1, 2, 3]],
            dict: vec![b"BOOM".to_vec()],
            max_len: 64,
            threads: vec![],
        }
    }

    fn cfg(ms: u64) -> Config {
        Config {
            budget: Duration::from_millis(ms),
            seed: 1,
            timeout: Duration::from_millis(500),
            trace: false,
        }
    }

    #[test]
    fn inputs_are_reproducible_and_mutated() {
        let t = quick(|_| {});
        assert_eq!(input(&t, 9, 0), b"seed");
        assert_eq!(input(&t, 9, 1), [1, 2, 3]);
        let a: Vec<_> = (2..200).map(|i| input(&t, 9, i)).collect();
        let b: Vec<_> = (2..200).map(|i| input(&t, 9, i)).collect();
        assert_eq!(a, b);
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert!(
            distinct.len() > 150,
            "only {} distinct mutants",
            distinct.len()
        );
        assert!(a.iter().all(|x| x.len() <= 64));
        assert!(a.iter().any(|x| x.windows(4).any(|w| w == b"BOOM")));
    }

    #[test]
    fn a_clean_target_runs_for_its_budget() {
        let r = fuzz_with(quick(|_| {}), cfg(100));
        assert!(r.execs > 2);
        assert!(r.elapsed >= Duration::from_millis(100));
    }

    #[test]
    fn a_panic_is_reported_with_the_input() {
        let err = catch_unwind(|| {
            fuzz_with(
                quick(|d| assert!(!d.windows(4).any(|w| w == b"BOOM"), "found it")),
                cfg(10_000),
            )
        })
        .unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.contains("panicked: found it"), "{msg}");
        assert!(msg.contains("BOOM"), "{msg}");
    }

    #[test]
    fn a_panic_the_target_catches_still_counts() {
        let err = catch_unwind(|| {
            fuzz_with(
                quick(|d| {
                    if d == b"seed" {
                        let _ = catch_unwind(|| panic!("swallowed"));
                    }
                }),
                cfg(100),
            )
        })
        .unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(
            msg.contains("input 0") && msg.contains("swallowed"),
            "{msg}"
        );
    }

    #[test]
    fn a_panic_on_a_watched_thread_counts() {
        let err = catch_unwind(|| {
            let mut t = quick(|d| {
                if d == [1, 2, 3] {
                    let _ = std::thread::Builder::new()
                        .name("t-selftest-helper0".into())
                        .spawn(|| panic!("in a helper"))
                        .unwrap()
                        .join();
                }
            });
            t.threads = vec!["selftest-helper"];
            fuzz_with(t, cfg(100))
        })
        .unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(
            msg.contains("input 1") && msg.contains("in a helper"),
            "{msg}"
        );
    }

    #[test]
    fn a_hang_is_reported() {
        let err = catch_unwind(|| {
            fuzz_with(
                quick(|d| {
                    if d == [1, 2, 3] {
                        std::thread::sleep(Duration::from_secs(3));
                    }
                }),
                cfg(100),
            )
        })
        .unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.contains("input 1") && msg.contains("hung"), "{msg}");
    }

    #[test]
    fn cursor_reads_zero_past_the_end() {
        let mut c = Cursor::new(&[1, 2, 3]);
        assert_eq!(c.u16(), 0x0201);
        assert_eq!(c.u32(), 3);
        assert_eq!(c.u64(), 0);
        assert!(c.is_empty());
    }

    #[test]
    fn literal_escapes() {
        assert_eq!(literal(b"a\"\\\n\x00\xff"), r#"b"a\"\\\n\x00\xff""#);
    }
}
