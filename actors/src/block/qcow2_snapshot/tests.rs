//! Snapshots made here are checked with QEMU's own tools (`qemu-img check` must find no
//! error and no leak; `qemu-img snapshot -l/-a/-c/-d` must see and use them), and the
//! other way round.

use super::*;
use std::process::Command;

pub(crate) struct Dir(pub PathBuf);

impl Dir {
    pub fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("troupe-snap-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run a QEMU tool; its stdout and stderr, and whether it succeeded.
pub(crate) fn tool(prog: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{prog} is needed for this test: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub(crate) fn create(path: &Path, size: &str, opts: &str) {
    let p = path.to_str().unwrap();
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([p, size]);
    let (ok, out) = tool("qemu-img", &args);
    assert!(ok, "qemu-img create: {out}");
}

/// `qemu-io` commands on the image (as a guest would write, with QEMU's COW).
pub(crate) fn qio(path: &Path, cmds: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(path.to_str().unwrap());
    let (ok, out) = tool("qemu-io", &args);
    assert!(
        ok && !out.contains("error") && !out.contains("failed"),
        "qemu-io {cmds:?}: {out}"
    );
}

/// `qemu-img check` finds neither errors nor leaks.
pub(crate) fn check_clean(path: &Path) {
    let (ok, out) = tool("qemu-img", &["check", path.to_str().unwrap()]);
    assert!(
        ok && out.contains("No errors were found"),
        "qemu-img check: {out}"
    );
}

/// The guest-visible disk, as QEMU reads it.
pub(crate) fn guest_bytes(path: &Path) -> Vec<u8> {
    let raw = path.with_extension("raw");
    let (ok, out) = tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            path.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
    assert!(ok, "qemu-img convert: {out}");
    let b = std::fs::read(&raw).unwrap();
    let _ = std::fs::remove_file(raw);
    b
}

pub(crate) fn qemu_list(path: &Path) -> String {
    let (ok, out) = tool("qemu-img", &["snapshot", "-l", path.to_str().unwrap()]);
    assert!(ok, "qemu-img snapshot -l: {out}");
    out
}

/// Bytes no two calls with different seeds share.
pub(crate) fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn new_snap<'a>(name: &'a str, vm_state: &'a [u8]) -> NewSnapshot<'a> {
    NewSnapshot {
        name,
        vm_state,
        vm_clock_ns: 1_500_000_000,
        icount: None,
        date: (1_700_000_000, 5),
    }
}

fn filled(len: usize, runs: &[(usize, usize, u8)]) -> Vec<u8> {
    let mut v = vec![0u8; len];
    for &(at, n, b) in runs {
        v[at..at + n].fill(b);
    }
    v
}

#[test]
fn a_snapshot_is_listed_loaded_and_deleted_as_qemu_img_sees_it() {
    // v3 with 16-bit refcounts (the default), v2, and 4- and 64-bit refcounts.
    for (n, opts) in ["", "compat=0.10", "refcount_bits=4", "refcount_bits=64"]
        .iter()
        .enumerate()
    {
        let dir = Dir::new(&format!("cycle{n}"));
        let img = dir.path("d.qcow2");
        create(&img, "8M", opts);
        qio(&img, &["write -P 0xaa 0 1M", "write -P 0x11 3M 64k"]);
        let vm = pattern(1, 300_000);

        let mut s = Qcow2Snapshots::open(&img, true).unwrap();
        let info = s.create(&new_snap("s1", &vm)).unwrap();
        drop(s);
        assert_eq!(info.id, "1");
        check_clean(&img);
        let listed = qemu_list(&img);
        assert!(
            listed
                .lines()
                .any(|l| l.contains(" s1 ") && l.contains("293 KiB")),
            "{opts}: {listed}"
        );
        let before = guest_bytes(&img);
        assert_eq!(
            before,
            filled(8 << 20, &[(0, 1 << 20, 0xaa), (3 << 20, 65536, 0x11)])
        );

        // The guest writes over shared clusters and into new ones.
        qio(&img, &["write -P 0xbb 512k 1M", "write -P 0x22 6M 64k"]);
        check_clean(&img);
        assert_ne!(guest_bytes(&img), before);

        let mut s = Qcow2Snapshots::open(&img, true).unwrap();
        let l = s.list();
        assert_eq!(l.len(), 1);
        assert_eq!(
            (l[0].name.as_str(), l[0].vm_state_size, l[0].vm_clock_ns),
            ("s1", 300_000, 1_500_000_000)
        );
        assert_eq!((l[0].icount, l[0].disk_size), (None, Some(8 << 20)));
        assert_eq!(l[0].date_sec, 1_700_000_000);
        assert_eq!(s.load("s1").unwrap(), vm, "{opts}");
        drop(s);
        check_clean(&img);
        assert_eq!(guest_bytes(&img), before, "{opts}");

        let mut s = Qcow2Snapshots::open(&img, true).unwrap();
        s.delete("s1").unwrap();
        assert!(s.list().is_empty());
        drop(s);
        check_clean(&img);
        assert!(!qemu_list(&img).contains("s1"));
        assert_eq!(guest_bytes(&img), before, "{opts}");
        // With every count back to 1 the guest writes in place again, cleanly.
        qio(&img, &["write -P 0xcc 0 2M"]);
        check_clean(&img);
    }
}

#[test]
fn qemu_img_snapshots_load_here_and_ours_apply_with_qemu_img() {
    let dir = Dir::new("interop");
    let img = dir.path("d.qcow2");
    let p = img.to_str().unwrap();
    create(&img, "4M", "");
    qio(&img, &["write -P 0x33 0 256k"]);
    let (ok, out) = tool("qemu-img", &["snapshot", "-c", "q1", p]);
    assert!(ok, "{out}");
    qio(&img, &["write -P 0x44 0 128k"]);
    let at_t1 = guest_bytes(&img);

    let mut s = Qcow2Snapshots::open(&img, true).unwrap();
    let l = s.list();
    assert_eq!(
        (l[0].id.as_str(), l[0].name.as_str(), l[0].vm_state_size),
        ("1", "q1", 0)
    );
    let vm = pattern(2, 70_000);
    assert_eq!(s.create(&new_snap("t1", &vm)).unwrap().id, "2");
    drop(s);
    check_clean(&img);
    qio(&img, &["write -P 0x55 64k 512k"]);

    let mut s = Qcow2Snapshots::open(&img, true).unwrap();
    assert!(s.load("q1").unwrap().is_empty());
    drop(s);
    check_clean(&img);
    assert_eq!(guest_bytes(&img), filled(4 << 20, &[(0, 256 << 10, 0x33)]));

    let (ok, out) = tool("qemu-img", &["snapshot", "-a", "t1", p]);
    assert!(ok, "{out}");
    check_clean(&img);
    assert_eq!(guest_bytes(&img), at_t1);

    let (ok, out) = tool("qemu-img", &["snapshot", "-d", "q1", p]);
    assert!(ok, "{out}");
    check_clean(&img);
    let s = Qcow2Snapshots::open(&img, false).unwrap();
    let names: Vec<String> = s.list().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["t1"]);
    assert_eq!(s.vm_state("t1").unwrap(), vm);
}

#[test]
fn a_big_vm_state_grows_the_refcount_table_and_shares_no_l2_table_with_the_disk() {
    // 512-byte clusters: an L2 table maps 32 KiB, so the VM state (from 100 KiB on)
    // starts inside the table that maps the disk's tail; a refcount block counts 256
    // clusters and the one-cluster refcount table 16384 clusters (8 MiB), which a 9 MiB
    // VM state outgrows.
    let dir = Dir::new("grow");
    let img = dir.path("d.qcow2");
    create(&img, "100k", "cluster_size=512");
    qio(&img, &["write -P 0x66 0 100k"]);
    let before = guest_bytes(&img);
    let vm = pattern(3, 9 << 20);
    let mut s = Qcow2Snapshots::open(&img, true).unwrap();
    s.create(&new_snap("big", &vm)).unwrap();
    drop(s);
    check_clean(&img);
    let mut h = [0u8; 60];
    File::open(&img).unwrap().read_exact_at(&mut h, 0).unwrap();
    assert!(be32(&h, 56) > 1, "refcount_table_clusters {}", be32(&h, 56));
    assert!(qemu_list(&img).contains("9 MiB"));
    assert_eq!(guest_bytes(&img), before);
    qio(&img, &["write -P 0x77 90k 10k"]);
    check_clean(&img);

    let mut s = Qcow2Snapshots::open(&img, true).unwrap();
    assert_eq!(s.load("big").unwrap(), vm);
    drop(s);
    check_clean(&img);
    assert_eq!(guest_bytes(&img), before);
    let mut s = Qcow2Snapshots::open(&img, true).unwrap();
    s.delete("big").unwrap();
    drop(s);
    check_clean(&img);
    assert_eq!(guest_bytes(&img), before);
}

#[test]
fn unknown_names_and_full_refcounts_are_refused_and_leave_the_image_clean() {
    let dir = Dir::new("errors");
    let img = dir.path("d.qcow2");
    create(&img, "1M", "refcount_bits=1");
    qio(&img, &["write -P 0x12 0 128k"]);
    let mut s = Qcow2Snapshots::open(&img, true).unwrap();
    let e = s.load("nope").unwrap_err();
    assert!(matches!(e, SnapshotError::NotFound { .. }));
    assert!(
        e.to_string().starts_with("Snapshot 'nope' does not exist"),
        "{e}"
    );
    assert!(matches!(
        s.delete("nope"),
        Err(SnapshotError::NotFound { .. })
    ));
    // 1-bit refcounts cannot count a second reference.
    let e = s.create(&new_snap("x", b"state")).unwrap_err();
    assert!(e.to_string().contains("refcount overflow"), "{e}");
    drop(s);
    check_clean(&img);
    assert!(!qemu_list(&img).contains(" x "));

    let raw = dir.path("r.raw");
    std::fs::write(&raw, [0u8; 4096]).unwrap();
    assert!(matches!(
        Qcow2Snapshots::open(&raw, false),
        Err(SnapshotError::NotQcow2 { .. })
    ));
}

#[test]
fn a_snapshot_pointing_past_the_file_is_refused_without_touching_the_image() {
    let dir = Dir::new("corrupt");
    let img = dir.path("d.qcow2");
    create(&img, "1M", "");
    qio(&img, &["write -P 0x21 0 64k"]);
    let mut s = Qcow2Snapshots::open(&img, true).unwrap();
    s.create(&new_snap("s", b"vm")).unwrap();
    let l1 = s.entries[0].l1_offset;
    drop(s);
    // The snapshot's first L2 table, moved far past the end of the file.
    let f = OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&0x00f0_0000_0000_0000u64.to_be_bytes(), l1)
        .unwrap();
    drop(f);
    let before = std::fs::read(&img).unwrap();
    let mut s = Qcow2Snapshots::open(&img, true).unwrap();
    for e in [s.load("s").unwrap_err(), s.delete("s").unwrap_err()] {
        assert!(matches!(e, SnapshotError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("past the end"), "{e}");
    }
    drop(s);
    assert!(
        std::fs::read(&img).unwrap() == before,
        "the image was written"
    );
}

/// `qemu-img check`'s exit code (0 clean, 2 corruption, 3 leaks only) and its text.
fn check_code(path: &Path) -> (i32, String) {
    let out = Command::new("qemu-img")
        .args(["check", path.to_str().unwrap()])
        .output()
        .expect("qemu-img is needed for this test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn a_crash_at_any_step_leaves_the_old_or_the_new_state_and_no_shared_cluster_writable() {
    let dir = Dir::new("crash");
    let base = dir.path("base.qcow2");
    create(&base, "2M", "");
    qio(&base, &["write -P 0xa1 0 256k"]);
    let mut s = Qcow2Snapshots::open(&base, true).unwrap();
    s.create(&new_snap("old", &pattern(5, 9000))).unwrap();
    drop(s);
    let at_old = guest_bytes(&base);
    qio(&base, &["write -P 0xb2 64k 512k"]);
    let now = guest_bytes(&base);
    let img = dir.path("d.qcow2");
    let ops: [(&str, &[u32]); 3] = [
        ("create", &[0, 1, 2, 3, 4]),
        ("delete", &[1, 3, 4]),
        ("load", &[1, 2, 3, 4]),
    ];
    for (op, steps) in ops {
        for &step in steps {
            let what = format!("{op} stopped at step {step}");
            std::fs::copy(&base, &img).unwrap();
            let mut s = Qcow2Snapshots::open(&img, true).unwrap();
            s.crash_at = Some(step);
            let e = match op {
                "create" => s.create(&new_snap("new", b"state")).map(|_| ()),
                "delete" => s.delete("old").map(|_| ()),
                _ => s.load("old").map(|_| ()),
            }
            .unwrap_err();
            assert!(e.to_string().contains("simulated crash"), "{what}: {e}");
            drop(s);
            // Leaks are allowed, and COPIED flags out of step with counts that are only
            // too high; never a COPIED flag on a cluster two tables really reach.
            let (code, out) = check_code(&img);
            assert!([0, 2, 3].contains(&code), "{what}: {out}");
            assert_no_shared_copied(&out, &what);
            let (ok, out) = tool(
                "qemu-img",
                &["check", "-q", "-r", "all", img.to_str().unwrap()],
            );
            assert!(ok, "{what}: {out}");
            check_clean(&img);
            let names: Vec<String> = Qcow2Snapshots::open(&img, false)
                .unwrap()
                .list()
                .into_iter()
                .map(|i| i.name)
                .collect();
            let done = step >= 3;
            let (want_names, want_disk): (&[&str], &Vec<u8>) = match (op, done) {
                ("create", false) | ("load", _) => {
                    (&["old"], if op == "load" && done { &at_old } else { &now })
                }
                ("create", true) => (&["old", "new"], &now),
                ("delete", false) => (&["old"], &now),
                _ => (&[], &now),
            };
            assert_eq!(names, want_names, "{what}");
            assert!(
                guest_bytes(&img) == *want_disk,
                "{what}: wrong disk contents"
            );
        }
    }
}

/// From `qemu-img check`'s report: every error is an OFLAG_COPIED one, and each COPIED
/// flag it reports sits on a cluster referenced once (its count is only too high: leaked).
fn assert_no_shared_copied(report: &str, what: &str) {
    let field = |l: &str, key: &str| -> Option<u64> {
        let v = l.split_whitespace().find_map(|w| w.strip_prefix(key))?;
        match key {
            "l2_entry=" | "l1_entry=" => u64::from_str_radix(v, 16).ok(),
            _ => v.parse().ok(),
        }
    };
    // Cluster index -> references found, for clusters whose count is too high.
    let leaked: std::collections::HashMap<u64, u64> = report
        .lines()
        .filter_map(|l| l.strip_prefix("Leaked cluster "))
        .filter_map(|l| {
            Some((
                l.split_whitespace().next()?.parse().ok()?,
                field(l, "reference=")?,
            ))
        })
        .collect();
    for l in report.lines().filter(|l| l.starts_with("ERROR")) {
        assert!(l.starts_with("ERROR OFLAG_COPIED"), "{what}: {l}\n{report}");
        let entry = field(l, "l2_entry=").or_else(|| field(l, "l1_entry="));
        let entry = entry.unwrap_or_else(|| panic!("{what}: {l}"));
        if entry & COPIED != 0 {
            let cluster = (entry & OFFSET_MASK) >> 16;
            assert_eq!(
                leaked.get(&cluster),
                Some(&1),
                "{what}: shared yet COPIED: {l}\n{report}"
            );
        }
    }
}
