//! The snapshot operations through running drives, the all-disk functions and the
//! `info snapshots` text.

use super::*;

#[test]
fn sizes_and_rows_are_printed_as_qemu_prints_them() {
    for (v, s) in [
        (0, "0 B"),
        (765, "765 B"),
        (999, "999 B"),
        (1000, "0.977 KiB"),
        (300_000, "293 KiB"),
        (1536 * 1024, "1.5 MiB"),
        (9 << 20, "9 MiB"),
        (5 << 30, "5 GiB"),
    ] {
        assert_eq!(size_to_str(v), s, "{v}");
    }
    let name = default_snapshot_name();
    assert!(
        name.len() == 17 && name.starts_with("vm-20") && name[3..].parse::<u64>().is_ok(),
        "{name}"
    );
    assert_eq!(
        header_line(),
        "ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT\n"
    );
    let sn = SnapshotInfo {
        id: "--".into(),
        name: "vm-20261207082748".into(),
        vm_state_size: 765,
        date_sec: 0,
        date_nsec: 0,
        vm_clock_ns: 3_723_004_000_000,
        icount: None,
        disk_size: None,
    };
    let line = snapshot_line(&sn);
    let date = local_date(0);
    assert_eq!(
        line,
        format!("--        vm-20261207082748    765 B {date} 01:02:03.004           \n")
    );
    let sn = SnapshotInfo {
        id: "1".into(),
        name: "snap1".into(),
        vm_state_size: 0,
        icount: Some(0),
        vm_clock_ns: 0,
        ..sn
    };
    assert_eq!(
        snapshot_line(&sn),
        format!("1         snap1                 0 B {date} 00:00:00.000          0\n")
    );
}

use super::super::qcow2_snapshot::tests::{
    check_clean, create, guest_bytes, pattern, qemu_list, tool, Dir,
};
use super::super::{open, Aio, BlockJob, BlockOptions, Format};
use crate::runtime::Registry;
use devices::block::{BlockOp, BlockRequest};
use futures::executor::block_on;

fn run(h: &BlockHandle, op: BlockOp) -> Vec<u8> {
    let (tx, rx) = std::sync::mpsc::channel();
    h.submit(BlockJob {
        request: BlockRequest { id: 1, op },
        done: Box::new(move |c| tx.send(c).unwrap()),
    });
    rx.recv().unwrap().result.unwrap()
}

fn write(h: &BlockHandle, offset: u64, data: Vec<u8>) {
    run(h, BlockOp::Write { offset, data });
}

fn read(h: &BlockHandle, offset: u64, len: usize) -> Vec<u8> {
    run(h, BlockOp::Read { offset, len })
}

fn drive(path: &Path, id: &str, aio: Aio, format: Format, read_only: bool) -> BlockHandle {
    open(
        &Registry::new(),
        id,
        BlockOptions {
            aio,
            format: Some(format),
            read_only,
            ..BlockOptions::raw(path.to_path_buf())
        },
    )
    .unwrap()
}

/// Once the drive's engine has let the image go, `qemu-img check` finds it clean.
fn check_when_closed(path: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (ok, out) = tool("qemu-img", &["check", path.to_str().unwrap()]);
        if ok {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never clean: {out}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    check_clean(path);
}

fn op(h: &BlockHandle, op: SnapshotOp) -> SnapshotDone {
    block_on(h.snapshot(op)).unwrap()
}

#[test]
fn a_running_drive_snapshots_then_copies_on_write_and_loads_back() {
    for aio in [Aio::IoUring, Aio::Threads] {
        let dir = Dir::new(&format!("engine-{aio:?}"));
        let img = dir.path("d.qcow2");
        create(&img, "4M", "");
        let h = drive(&img, "disk0", aio, Format::Qcow2, false);
        assert!(h.can_snapshot());
        let a = pattern(10, 256 << 10);
        write(&h, 0, a.clone());
        write(&h, 1 << 20, pattern(11, 4096));
        let vm = pattern(12, 123_456);
        let SnapshotDone::Created(info) = op(
            &h,
            SnapshotOp::Create {
                name: "s1".into(),
                vm_state: vm.clone(),
                vm_clock_ns: 7,
            },
        ) else {
            panic!("not created")
        };
        assert_eq!((info.name.as_str(), info.vm_state_size), ("s1", 123_456));

        // The guest overwrites shared clusters: imago copies them first.
        let b = pattern(13, 128 << 10);
        write(&h, 64 << 10, b.clone());
        let mut now = a.clone();
        now[64 << 10..192 << 10].copy_from_slice(&b);
        assert_eq!(read(&h, 0, 256 << 10), now);
        run(&h, BlockOp::Flush);
        // A copy of the file, with the snapshot applied by QEMU, has the old data.
        let copy = dir.path("copy.qcow2");
        std::fs::copy(&img, &copy).unwrap();
        let (ok, out) = tool(
            "qemu-img",
            &["snapshot", "-a", "s1", copy.to_str().unwrap()],
        );
        assert!(ok, "{out}");
        check_clean(&copy);
        assert_eq!(guest_bytes(&copy)[..256 << 10], a[..]);

        // Saving again under the same name replaces the snapshot.
        assert!(matches!(
            op(
                &h,
                SnapshotOp::Create {
                    name: "s1".into(),
                    vm_state: vm.clone(),
                    vm_clock_ns: 8
                }
            ),
            SnapshotDone::Created(_)
        ));
        let SnapshotDone::Listed(l) = op(&h, SnapshotOp::List) else {
            panic!("not listed")
        };
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].vm_clock_ns, 8);
        write(&h, 0, pattern(14, 4096));
        assert_eq!(
            op(&h, SnapshotOp::Load { name: "s1".into() }),
            SnapshotDone::Loaded(vm)
        );
        assert_eq!(read(&h, 0, 256 << 10), now, "{aio:?}");
        let c = pattern(15, 8192);
        write(&h, 4096, c.clone());
        assert!(matches!(
            op(&h, SnapshotOp::Delete { name: "s1".into() }),
            SnapshotDone::Deleted(Some(_))
        ));
        assert_eq!(
            op(&h, SnapshotOp::Delete { name: "s1".into() }),
            SnapshotDone::Deleted(None)
        );
        assert_eq!(read(&h, 4096, 8192), c);
        drop(h);
        check_when_closed(&img);
        assert!(!qemu_list(&img).contains("s1"));
    }
}

#[test]
fn savevm_loadvm_delvm_across_drives_follow_qemu() {
    let dir = Dir::new("alldisks");
    let (p0, p1, raw) = (dir.path("a.qcow2"), dir.path("b.qcow2"), dir.path("r.raw"));
    create(&p0, "2M", "");
    create(&p1, "2M", "");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let d0 = drive(&p0, "d0", Aio::IoUring, Format::Qcow2, false);
    let d1 = drive(&p1, "d1", Aio::Threads, Format::Qcow2, false);
    let r = drive(&raw, "r0", Aio::Threads, Format::Raw, false);
    let iso = dir.path("cd.iso");
    std::fs::write(&iso, vec![0u8; 1 << 20]).unwrap();
    let ro = drive(&iso, "cd", Aio::Threads, Format::Raw, true);
    let disks = vec![
        ("d0".to_string(), d0.clone()),
        ("d1".to_string(), d1.clone()),
        ("cd".to_string(), ro),
    ];
    assert_eq!(
        block_on(info_snapshots_text(&disks)),
        "There is no snapshot available.\n"
    );
    write(&d0, 0, vec![1; 4096]);
    write(&d1, 0, vec![2; 4096]);
    let vm = pattern(20, 5000);
    block_on(create_snapshot_on_all_disks(
        &disks,
        "snap",
        vm.clone(),
        2_000_000_000,
    ))
    .unwrap();
    let text = block_on(info_snapshots_text(&disks));
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("List of snapshots present on all disks:")
    );
    assert_eq!(
        lines.next().map(|l| l.trim_end()),
        Some(header_line().trim_end())
    );
    let row = lines.next().unwrap();
    assert!(
        row.starts_with("--        snap             4.88 KiB "),
        "{text}"
    );
    assert!(row.ends_with(" 00:00:02.000           "), "{text}");
    assert_eq!(lines.next(), None, "{text}");
    // Only the first drive holds the VM state.
    let SnapshotDone::Listed(l) = op(&d1, SnapshotOp::List) else {
        panic!()
    };
    assert_eq!(l[0].vm_state_size, 0);

    write(&d0, 0, vec![3; 4096]);
    write(&d1, 0, vec![4; 4096]);
    let e = block_on(load_snapshot_from_disks(&disks, "nope")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Snapshot 'nope' does not exist in one or more devices"
    );
    assert_eq!(
        block_on(load_snapshot_from_disks(&disks, "snap")).unwrap(),
        vm
    );
    assert_eq!(read(&d0, 0, 4096), vec![1; 4096]);
    assert_eq!(read(&d1, 0, 4096), vec![2; 4096]);

    // A snapshot only one drive has is partial; one without VM state cannot be loaded.
    op(
        &d1,
        SnapshotOp::Create {
            name: "only1".into(),
            vm_state: Vec::new(),
            vm_clock_ns: 0,
        },
    );
    let text = block_on(info_snapshots_text(&disks));
    assert!(
        text.contains("\nList of partial (non-loadable) snapshots on 'd1':\nID "),
        "{text}"
    );
    assert!(
        text.contains("\n2         only1                 0 B "),
        "{text}"
    );
    op(
        &d0,
        SnapshotOp::Create {
            name: "only1".into(),
            vm_state: Vec::new(),
            vm_clock_ns: 0,
        },
    );
    let e = block_on(load_snapshot_from_disks(&disks, "only1")).unwrap_err();
    assert!(matches!(e, DiskSnapshotError::DiskOnly(_)), "{e}");

    block_on(delete_snapshot_on_all_disks(&disks, "snap")).unwrap();
    block_on(delete_snapshot_on_all_disks(&disks, "snap")).unwrap();
    let text = block_on(info_snapshots_text(&disks));
    assert!(!text.contains("snap "), "{text}");

    // A writable raw drive stops them all; with it the list is only partial.
    let mut with_raw = disks.clone();
    with_raw.push(("r0".to_string(), r));
    let e = block_on(create_snapshot_on_all_disks(&with_raw, "x", vec![1], 0)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Device 'r0' is writable but does not support snapshots"
    );
    let e = block_on(delete_snapshot_on_all_disks(&with_raw, "only1")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Device 'r0' is writable but does not support snapshots"
    );
    let text = block_on(info_snapshots_text(&with_raw));
    assert!(
        text.starts_with("List of snapshots present on all disks:\nNone\n\nList of partial"),
        "{text}"
    );
    let only_raw = vec![with_raw[3].clone(), with_raw[2].clone()];
    assert_eq!(
        block_on(info_snapshots_text(&only_raw)),
        "no block device can store vmstate for snapshot\n"
    );
    drop((disks, with_raw, only_raw, d0, d1));
    check_when_closed(&p0);
    check_when_closed(&p1);
}
