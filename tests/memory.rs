//! Guest RAM as the host sees it: KSM merging (`-machine mem-merge=`, `merge=`), file,
//! memfd and huge-page backends (`-mem-path`, `-mem-prealloc`, `-object memory-backend-*`),
//! `-overcommit mem-lock=on`. Each test runs the `memtouch` guest (which keeps rewriting and
//! checking an area of its RAM) and reads `/proc` of the troupe process.

mod common;

use std::time::Duration;

use common::*;

/// One mapping of `/proc/PID/smaps`: its header line and its fields.
struct Mapping {
    header: String,
    size_kib: u64,
    rss_kib: u64,
    flags: Vec<String>,
}

fn smaps(pid: u32) -> Vec<Mapping> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            out.push(Mapping {
                header: line.to_string(),
                size_kib: 0,
                rss_kib: 0,
                flags: Vec::new(),
            });
            continue;
        }
        let Some(m) = out.last_mut() else { continue };
        let kib = |v: &str| v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
        if let Some(v) = line.strip_prefix("Size:") {
            m.size_kib = kib(v);
        } else if let Some(v) = line.strip_prefix("Rss:") {
            m.rss_kib = kib(v);
        } else if let Some(v) = line.strip_prefix("VmFlags:") {
            m.flags = v.split_whitespace().map(str::to_string).collect();
        }
    }
    out
}

/// The mapping of guest RAM: the only one of exactly `mib` MiB.
fn guest_ram(pid: u32, mib: u64) -> Mapping {
    let mut found: Vec<Mapping> = smaps(pid)
        .into_iter()
        .filter(|m| m.size_kib == mib << 10)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {mib} MiB mapping expected: {:?}",
        found.iter().map(|m| &m.header).collect::<Vec<_>>()
    );
    found.pop().unwrap()
}

/// memtouch on `mib` MiB of RAM touching 8 MiB of it, with `extra` options; returns once it
/// has reported a pass.
fn memtouch(mib: u64, extra: &[&str]) -> Running {
    let kernel = guest("memtouch");
    let mem = mib.to_string();
    let mut args = guest_args(
        kernel.to_str().unwrap(),
        "mib=8 report_ms=50",
        &["-m", &mem],
    );
    args.extend_from_slice(extra);
    let vm = Vm::troupe(&args).spawn();
    vm.expect_stdout("memtouch: pass ", Duration::from_secs(30));
    vm
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn guest_ram_is_ksm_mergeable_unless_mem_merge_or_merge_is_off() {
    // smaps' VmFlags says `mg` for a MADV_MERGEABLE mapping.
    let vm = memtouch(128, &[]);
    let ram = guest_ram(vm.pid(), 128);
    assert!(ram.flags.contains(&"mg".into()), "{:?}", ram.flags);
    drop(vm);
    let vm = memtouch(128, &["-machine", "mem-merge=off"]);
    let ram = guest_ram(vm.pid(), 128);
    assert!(!ram.flags.contains(&"mg".into()), "{:?}", ram.flags);
    drop(vm);
    // A backend's merge= wins over the machine's.
    let vm = memtouch(
        128,
        &[
            "-machine",
            "memory-backend=r,mem-merge=off",
            "-object",
            "memory-backend-ram,id=r,size=128M,merge=on",
        ],
    );
    let ram = guest_ram(vm.pid(), 128);
    assert!(ram.flags.contains(&"mg".into()), "{:?}", ram.flags);
    drop(vm);
    let vm = memtouch(
        128,
        &[
            "-machine",
            "memory-backend=r",
            "-object",
            "memory-backend-ram,id=r,size=128M,merge=off",
        ],
    );
    let ram = guest_ram(vm.pid(), 128);
    assert!(!ram.flags.contains(&"mg".into()), "{:?}", ram.flags);
}

#[test]
fn file_and_memfd_backends_hold_guest_ram_and_prealloc_fills_it() {
    let dir = TempDir::new("mem-path");
    // -mem-path DIR: an unlinked file in DIR, private unless share=on; -mem-prealloc makes
    // every page resident before the guest runs.
    let d = dir.0.to_str().unwrap();
    let vm = memtouch(128, &["-mem-path", d, "-mem-prealloc"]);
    let ram = guest_ram(vm.pid(), 128);
    assert!(
        ram.header.contains(&format!("{d}/troupe_back_mem.")) && ram.header.ends_with("(deleted)"),
        "{}",
        ram.header
    );
    assert!(!ram.flags.contains(&"sh".into()), "{:?}", ram.flags);
    assert!(
        ram.rss_kib >= 120 << 10,
        "prealloc left RSS at {} kB",
        ram.rss_kib
    );
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 0);
    drop(vm);
    // memory-backend-file naming a file: the guest's writes land in it (share=on).
    let file = dir.path("ram.img");
    let obj = format!(
        "memory-backend-file,id=r,size=64M,mem-path={},share=on",
        file.display()
    );
    let vm = memtouch(64, &["-machine", "memory-backend=r", "-object", &obj]);
    let ram = guest_ram(vm.pid(), 64);
    assert!(
        ram.header.ends_with(file.to_str().unwrap()),
        "{}",
        ram.header
    );
    assert!(ram.flags.contains(&"sh".into()), "{:?}", ram.flags);
    // memtouch's area starts at 16 MiB; its first word after a pass is nonzero.
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes.len(), 64 << 20);
    assert!(bytes[16 << 20..(16 << 20) + 4096].iter().any(|b| *b != 0));
    drop(vm);
    // Without prealloc a memfd stays mostly unallocated.
    let vm = memtouch(
        128,
        &[
            "-machine",
            "memory-backend=r",
            "-object",
            "memory-backend-memfd,id=r,size=128M",
        ],
    );
    let ram = guest_ram(vm.pid(), 128);
    assert!(ram.header.contains("/memfd:troupe-ram"), "{}", ram.header);
    assert!(ram.rss_kib < 64 << 10, "RSS {} kB", ram.rss_kib);
}

#[test]
fn mem_lock_on_locks_guest_ram() {
    let vm = memtouch(64, &["-overcommit", "mem-lock=on"]);
    let locked = status_kib(vm.pid(), "VmLck:");
    assert!(locked >= 64 << 10, "VmLck {locked} kB");
    drop(vm);
    let vm = memtouch(64, &["-overcommit", "mem-lock=off"]);
    assert_eq!(status_kib(vm.pid(), "VmLck:"), 0);
}

#[test]
fn numa_binding_troupe_cannot_honour_is_refused_by_name() {
    let (st, _, err) = Vm::troupe(&[
        "-display",
        "none",
        "-object",
        "memory-backend-ram,id=r,size=128M,host-nodes=0,policy=bind",
        "-machine",
        "memory-backend=r",
    ])
    .run(Duration::from_secs(10));
    assert_eq!(code(st), 1);
    assert!(
        err.contains("memory backend 'r': host-nodes=0 is not supported by troupe"),
        "{err}"
    );
}

/// Huge pages of 2 MiB reserved for one test and given back after it, with a hugetlbfs
/// mounted on a scratch directory.
struct HugePages {
    before: String,
    mount: TempDir,
}

impl HugePages {
    fn reserve(pages: u64) -> Self {
        let nr = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
        let before = std::fs::read_to_string(nr).unwrap().trim().to_string();
        let want = before.parse::<u64>().unwrap() + pages;
        std::fs::write(nr, want.to_string()).unwrap();
        let mount = TempDir::new("hugetlbfs");
        let st = std::process::Command::new("mount")
            .args(["-t", "hugetlbfs", "-o", "pagesize=2M", "none"])
            .arg(&mount.0)
            .status()
            .unwrap();
        assert!(st.success(), "mount hugetlbfs");
        let hp = Self { before, mount };
        assert!(
            hp.free() >= pages,
            "the host gave only {} free huge pages",
            hp.free()
        );
        hp
    }

    fn free(&self) -> u64 {
        meminfo("HugePages_Free:")
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.mount.0)
            .status();
        let _ = std::fs::write(
            "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
            &self.before,
        );
    }
}

fn meminfo(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn a_guest_on_huge_pages_uses_them_and_asking_for_too_many_fails_at_start() {
    let hp = HugePages::reserve(48);
    let free = hp.free();
    let mount = hp.mount.0.to_str().unwrap().to_string();
    // 64 MiB of 2 MiB pages, preallocated: 32 pages leave the free pool.
    let vm = memtouch(64, &["-mem-path", &mount, "-mem-prealloc"]);
    let used = free - hp.free();
    assert_eq!(used, 32, "HugePages_Free fell by {used}");
    let ram = guest_ram(vm.pid(), 64);
    assert!(ram.flags.contains(&"ht".into()), "{:?}", ram.flags);
    // Too many for what is left: refused before the guest runs, naming the counts.
    let kernel = guest("memtouch");
    let args = guest_args(
        kernel.to_str().unwrap(),
        "mib=8",
        &["-m", "64", "-mem-path", &mount],
    );
    let (st, out, err) = Vm::troupe(&args).run(Duration::from_secs(20));
    assert_eq!(code(st), 1, "{err}");
    let want = format!(
        "guest RAM needs 32 huge pages of 2048 kB but only {} are free",
        free - 32
    );
    assert!(err.contains(&want), "{err}");
    assert!(!out.contains("memtouch: start"), "the guest ran: {out}");
    drop(vm);
    // The pages come back when troupe exits; a memfd with hugetlb=on takes them too.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while hp.free() != free && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(hp.free(), free);
    let vm = memtouch(
        64,
        &[
            "-machine",
            "memory-backend=r",
            "-object",
            "memory-backend-memfd,id=r,size=64M,hugetlb=on,hugetlbsize=2M,prealloc=on",
        ],
    );
    assert_eq!(free - hp.free(), 32);
    drop(vm);
    let args = guest_args(
        kernel.to_str().unwrap(),
        "mib=8",
        &[
            "-m",
            "128",
            "-machine",
            "memory-backend=r",
            "-object",
            "memory-backend-memfd,id=r,size=128M,hugetlb=on",
        ],
    );
    let (st, _, err) = Vm::troupe(&args).run(Duration::from_secs(20));
    assert_eq!(code(st), 1, "{err}");
    let want = format!("guest RAM needs 64 huge pages of 2048 kB but only {free} are free");
    assert!(err.contains(&want), "{err}");
}

/// Wait until `cond` holds, polling every 50 ms; panics with `what` after `secs` seconds.
fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Send a QMP command; (its answer, the events that came before it).
fn qmp_ask(q: &mut Qmp, cmd: &str) -> (serde_json::Value, Vec<serde_json::Value>) {
    q.send(cmd.as_bytes());
    let mut events = Vec::new();
    loop {
        let v: serde_json::Value = serde_json::from_str(&q.line()).unwrap();
        if v.get("event").is_some() {
            events.push(v);
        } else {
            return (v, events);
        }
    }
}

#[test]
fn ballooning_a_guest_down_gives_its_memory_back_to_the_host_and_deflating_returns_it() {
    let (qport, hport) = (free_port(), free_port());
    let qmp = format!("tcp:127.0.0.1:{qport},server,nowait");
    let hmp = format!("tcp:127.0.0.1:{hport},server,nowait");
    let kernel = guest("virtio");
    let args = guest_args(
        kernel.to_str().unwrap(),
        "dev=balloon",
        &[
            "-m",
            "256",
            "-device",
            "virtio-balloon-pci,id=balloon0",
            "-qmp",
            &qmp,
            "-monitor",
            &hmp,
        ],
    );
    let vm = Vm::troupe(&args).spawn();
    let mut q = Qmp::open(qport);
    q.ask(r#"{"execute":"qmp_capabilities"}"#);
    let mut h = Hmp::open(hport);
    let start = vm.expect_stdout("touched", Duration::from_secs(30));
    assert!(start.contains("vballoon: features=0x100000002 "), "{start}");
    let pid = vm.pid();
    let full = rss_kib(pid);
    assert!(
        full > 200 << 10,
        "the guest touched its pool but RSS is {full} kB"
    );
    assert_eq!(h.cmd("info balloon"), "balloon: actual=256\r\n");

    // Down to 64 MiB: the driver gives 192 MiB (49152 pages), the host drops them.
    assert_eq!(h.cmd("balloon 64"), "");
    vm.expect_stdout("vballoon: actual=49152 pages", Duration::from_secs(30));
    wait_until(10, "info balloon says 64", || {
        h.cmd("info balloon") == "balloon: actual=64\r\n"
    });
    let low = rss_kib(pid);
    assert!(
        full - low > 168 << 10,
        "RSS fell only from {full} kB to {low} kB"
    );
    let (answer, events) = qmp_ask(&mut q, r#"{"execute":"query-balloon"}"#);
    assert_eq!(answer["return"], serde_json::json!({"actual": 64u64 << 20}));
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "BALLOON_CHANGE" && e["data"]["actual"] == 64u64 << 20),
        "{events:?}"
    );

    // Back up over QMP: the pages come back as the guest touches them.
    let (answer, _) = qmp_ask(
        &mut q,
        &format!(
            r#"{{"execute":"balloon","arguments":{{"value":{}}}}}"#,
            256u64 << 20
        ),
    );
    assert_eq!(answer["return"], serde_json::json!({}), "{answer}");
    vm.expect_stdout("vballoon: actual=0 pages", Duration::from_secs(30));
    wait_until(10, "info balloon says 256", || {
        h.cmd("info balloon") == "balloon: actual=256\r\n"
    });
    let back = rss_kib(pid);
    assert!(
        back - low > 168 << 10,
        "RSS rose only from {low} kB to {back} kB"
    );
    assert_eq!(
        h.cmd("balloon 0"),
        "Error: Parameter 'target' expects a size\r\n"
    );
    let out = vm.stdout.text();
    assert!(!out.contains("does not keep"), "{out}");
}
