//! Networking through the doors a user uses, with the ring-3 virtio test guest's drivers
//! (virtio-net and e1000, under DHCP, ARP, ping, a small TCP): `-netdev user` (slirp: DHCP lease, the gateway, a TCP
//! server on the host's loopback, `hostfwd` into the guest, `restrict=on`), and
//! `-netdev tap` and `-netdev bridge` inside a network namespace the test creates (traffic
//! never leaves it);
//! bad network options refused at start.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{code, free_port, guest, Vm};

const T: Duration = Duration::from_secs(90);
const PASS: i32 = 1;

use common::netns::NetNs;

impl NetNs {
    /// One QMP command to a troupe listening on `port` inside the namespace (asked from
    /// there, by Python): the reply.
    fn qmp(&self, port: u16, cmd: &str) -> serde_json::Value {
        let ask = format!(
            "import socket\n\
             s = socket.create_connection(('127.0.0.1', {port})); f = s.makefile()\n\
             f.readline(); s.sendall(b'{{\"execute\": \"qmp_capabilities\"}}'); f.readline()\n\
             s.sendall({cmd:?}.encode())\n\
             while True:\n\
             \x20   l = f.readline()\n\
             \x20   if '\"event\"' not in l: break\n\
             print(l)\n"
        );
        let out = self.run("python3", &["-c", &ask]);
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("{e}: {text}{}", String::from_utf8_lossy(&out.stderr)))
    }

    /// [`Self::qmp`], retried until troupe listens (for up to `T`).
    fn ask(&self, port: u16, cmd: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + T;
        loop {
            match std::panic::catch_unwind(|| self.qmp(port, cmd)) {
                Ok(v) => return v,
                Err(e) if std::time::Instant::now() > deadline => std::panic::resume_unwind(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// An HMP command through QMP's human-monitor-command: its text.
    fn hmp(&self, port: u16, line: &str) -> String {
        let v = self.ask(
            port,
            &serde_json::json!({"execute": "human-monitor-command",
                                "arguments": {"command-line": line}})
            .to_string(),
        );
        v["return"].as_str().unwrap_or_default().to_string()
    }

    /// Whether something accepts TCP connections on 127.0.0.1:`port` in the namespace.
    fn listening(&self, port: u16) -> bool {
        let out = self.run(
            "python3",
            &[
                "-c",
                &format!("import socket\nprint(socket.socket().connect_ex(('127.0.0.1', {port})))"),
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim() == "0"
    }

    /// The spin guest under troupe in the namespace, with QMP on `qmp_port` and `extra`.
    fn spin_vm(&self, qmp_port: u16, extra: &[&str]) -> common::Running {
        let spin = guest("spin");
        let qmp = format!("tcp:127.0.0.1:{qmp_port},server,nowait");
        let mut args = vec![
            "-nodefaults",
            "-serial",
            "null",
            "-m",
            "64",
            "-kernel",
            spin.to_str().unwrap(),
            "-qmp",
            &qmp,
        ];
        args.extend_from_slice(extra);
        self.troupe(&args).spawn()
    }
}

/// A down script in `dir` that appends its argument (the interface) to a marker file:
/// (script, marker).
fn marker_script(dir: &common::TempDir) -> (std::path::PathBuf, std::path::PathBuf) {
    let (script, marker) = (dir.path("down.sh"), dir.path("down"));
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$1\" >> {}\n", marker.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    (script, marker)
}

#[test]
fn a_tap_in_a_namespace_carries_ping_both_ways() {
    let ns = NetNs::new("tap");
    // The second round sets the tap up with QEMU-style script= and downscript= instead.
    let dir = common::TempDir::new("tap-scripts");
    let (up, down, log) = (dir.path("up.sh"), dir.path("down.sh"), dir.path("log"));
    let script = |p: &std::path::Path, body: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(p, format!("#!/bin/sh\nset -e\n{body}")).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let log_s = log.to_str().unwrap();
    script(
        &up,
        &format!("ip addr replace 10.9.0.1/24 dev \"$1\"\nip link set \"$1\" up\necho \"up $1\" >> {log_s}\n"),
    );
    script(&down, &format!("echo \"down $1\" >> {log_s}\n"));
    let scripted = format!(
        "tap,id=n0,ifname=ttap0,script={},downscript={}",
        up.display(),
        down.display()
    );
    let plain = "tap,id=n0,ifname=ttap0,script=no,downscript=no";
    // virtio-net modern, legacy (set up by the scripts), and an e1000.
    for (iface, netdev, model) in [
        ("", plain, "virtio-net-pci"),
        ("legacy", scripted.as_str(), "virtio-net-pci"),
        ("nic=e1000", plain, "e1000"),
    ] {
        let append = format!("dev=net {iface} ip=10.9.0.2 peer=10.9.0.1 count=3 answer=3 wait=60");
        let device = format!("{model},netdev=n0,mac=52:54:00:12:34:56,romfile=");
        let mut vm =
            net_guest(Some(&ns), &append, &["-netdev", netdev, "-device", &device]).spawn();
        vm.expect_stdout("mac 52:54:00:12:34:56 link up", T);
        if netdev == plain {
            ns.ip(&["addr", "replace", "10.9.0.1/24", "dev", "ttap0"]);
            ns.ip(&["link", "set", "ttap0", "up"]);
        } else {
            assert_eq!(std::fs::read_to_string(&log).unwrap(), "up ttap0\n");
        }
        // The host side pings the guest...
        let out = ns.run("ping", &["-c", "3", "-W", "5", "10.9.0.2"]);
        assert!(
            out.status.success(),
            "{iface}: ping from the namespace: {}{}",
            String::from_utf8_lossy(&out.stdout),
            vm.stdout.text()
        );
        // ... and the guest pinged the host side.
        vm.expect_stdout("vnet: reply from 10.9.0.1 seq=3", T);
        vm.expect_stdout("vnet: done, answered 3 echo requests", T);
        assert_eq!(code(vm.wait(T)), PASS, "{iface}: {}", vm.stderr.text());
    }
    // The down script ran once, as the VM ended, with the interface's name.
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "up ttap0\ndown ttap0\n"
    );
}

/// Send one frame with ethertype 0x88b5 to `dst` out of `ifname` in `ns` (a raw packet
/// socket, from Python).
fn send_probe(ns: &NetNs, ifname: &str, dst: &str, text: &str) {
    let code = format!(
        "import socket\n\
         s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
         s.bind(('{ifname}', 0))\n\
         dst = bytes.fromhex('{}')\n\
         s.send(dst + bytes.fromhex('020000000001') + b'\\x88\\xb5' + b'{text}'.ljust(46, b'\\0'))\n",
        dst.replace(':', "")
    );
    let out = ns.run("python3", &["-c", &code]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_control_queue_sets_the_receive_filter_and_query_rx_filter_shows_it() {
    let ns = NetNs::new("rxf");
    let port = free_port();
    let qmp = format!("tcp:127.0.0.1:{port},server,nowait");
    let mut vm = net_guest(
        Some(&ns),
        "dev=net rxfilter wait=60",
        &[
            "-netdev",
            "tap,id=n0,ifname=rtap0,script=no,downscript=no",
            "-device",
            "virtio-net-pci,netdev=n0,id=nic0,mac=52:54:00:12:34:56",
            "-qmp",
            &qmp,
        ],
    )
    .spawn();
    vm.expect_stdout("vnet: rx filter acks 0 0 0 1", T);
    vm.expect_stdout("vnet: mac now 52:54:00:ab:cd:ef", T);
    ns.ip(&["link", "set", "rtap0", "up"]);
    let v = ns.qmp(
        port,
        r#"{"execute": "query-rx-filter", "arguments": {"name": "nic0"}}"#,
    );
    let text = v.to_string();
    assert_eq!(
        v["return"],
        serde_json::json!([{
            "name": "nic0",
            "promiscuous": false,
            "multicast": "normal",
            "unicast": "normal",
            "vlan": "all",
            "broadcast-allowed": true,
            "multicast-overflow": false,
            "unicast-overflow": false,
            "main-mac": "52:54:00:ab:cd:ef",
            "vlan-table": [],
            "unicast-table": ["02:00:00:00:00:aa"],
            "multicast-table": [],
        }]),
        "{text}"
    );
    // Frames to the old address, to an address not in the table and to a multicast group
    // stay out; the table's address, the new own address and broadcast get in.
    for (dst, text) in [
        ("52:54:00:12:34:56", "old-mac"),
        ("02:00:00:00:00:bb", "not-in-table"),
        ("01:00:5e:00:00:01", "multicast"),
        ("02:00:00:00:00:aa", "table"),
        ("52:54:00:ab:cd:ef", "own"),
        ("ff:ff:ff:ff:ff:ff", "broadcast"),
        ("52:54:00:ab:cd:ef", "end"),
    ] {
        send_probe(&ns, "rtap0", dst, text);
    }
    assert_eq!(code(vm.wait(T)), PASS, "{}", vm.stderr.text());
    let out = vm.stdout.text();
    let probes: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("vnet: probe "))
        .map(|l| l.trim().trim_matches('\''))
        .collect();
    assert_eq!(probes, ["table", "own", "broadcast", "end"]);
}

/// `dropped: rx N, tx M` from `info network`.
fn dropped(info: &str) -> (u64, u64) {
    let l = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("dropped: rx "))
        .unwrap_or_else(|| panic!("no drop counters in: {info}"));
    let (rx, tx) = l.split_once(", tx ").unwrap();
    (rx.trim().parse().unwrap(), tx.trim().parse().unwrap())
}

#[test]
fn announce_self_sends_rarp_on_every_nic_and_a_virtio_driver_is_asked_to_announce() {
    let ns = NetNs::new("ann");
    let port = free_port();
    let qmp = format!("tcp:127.0.0.1:{port},server,nowait");
    // virtio-net on atap0 (its driver negotiates GUEST_ANNOUNCE), an e1000 on atap1.
    let mut vm = net_guest(
        Some(&ns),
        "dev=net announce wait=60",
        &[
            "-netdev",
            "tap,id=n0,ifname=atap0,script=no,downscript=no",
            "-device",
            "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,romfile=",
            "-netdev",
            "tap,id=n1,ifname=atap1,script=no,downscript=no",
            "-device",
            "e1000,netdev=n1,mac=52:54:00:12:34:57,romfile=",
            "-qmp",
            &qmp,
        ],
    )
    .spawn();
    vm.expect_stdout("vnet: waiting for an announce request", T);
    ns.ip(&["link", "set", "atap0", "up"]);
    ns.ip(&["link", "set", "atap1", "up"]);
    // Every RARP frame seen on the namespace's interfaces for 2.5 s.
    let capture = "import socket, time\n\
                   s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x8035))\n\
                   s.settimeout(0.2)\n\
                   end = time.time() + 2.5\n\
                   while time.time() < end:\n\
                   \x20   try:\n\
                   \x20       d, a = s.recvfrom(2048)\n\
                   \x20   except socket.timeout:\n\
                   \x20       continue\n\
                   \x20   print(a[0], d[:6].hex(), d[6:12].hex(), d[20:22].hex(), d[22:28].hex(), flush=True)\n";
    let sniffer = Command::new("ip")
        .args(["netns", "exec", &ns.0, "python3", "-c", capture])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let r = ns.qmp(
        port,
        r#"{"execute": "announce-self", "arguments": {"rounds": 3, "initial": 50, "step": 50, "max": 200}}"#,
    );
    assert_eq!(r, serde_json::json!({"return": {}}));
    vm.expect_stdout("vnet: announce requested", T);
    vm.expect_stdout("vnet: announce acknowledged", T);
    let seen = String::from_utf8(sniffer.wait_with_output().unwrap().stdout).unwrap();
    for (ifname, mac) in [("atap0", "525400123456"), ("atap1", "525400123457")] {
        // Broadcast, from the NIC: a RARP reverse request naming the NIC.
        let want = format!("{ifname} ffffffffffff {mac} 0003 {mac}");
        assert_eq!(
            seen.lines().filter(|l| *l == want).count(),
            3,
            "{want}:\n{seen}"
        );
    }
    assert_eq!(code(vm.wait(T)), PASS, "{}", vm.stderr.text());
}

#[test]
fn oversized_and_malformed_transmits_are_dropped_and_the_nic_works_on() {
    // A 70 000-byte frame: returned to the guest, counted, and pings still work.
    let (mut vm, mut c) = monitored_user_guest("dev=net fault=big dhcp count=2 answer=1 wait=60");
    vm.expect_stdout("vnet: oversized frame returned", T);
    vm.expect_stdout("vnet: reply from 10.0.2.2 seq=2", T);
    let info = hmp()(&mut c, "info network");
    assert_eq!(dropped(&info).1, 1, "{info}");
    vm.kill();
    // A transmit chain that loops: NEEDS_RESET, one log line, and after a reset the NIC
    // works again.
    let (c, out, err) = net_guest(
        None,
        "dev=net fault=loop dhcp count=2 wait=60",
        &[
            "-netdev",
            "user,id=u0",
            "-device",
            "virtio-net-pci,netdev=u0",
        ],
    )
    .run(T);
    assert_eq!(code(c), PASS, "{out}\n{err}");
    assert!(out.contains("vnet: recovered after reset"), "{out}");
    assert!(out.contains("vnet: reply from 10.0.2.2 seq=2"), "{out}");
    assert_eq!(err.matches("device needs reset").count(), 1, "{err}");
}

#[test]
fn a_guest_that_stops_reading_gets_frames_dropped_and_counted_with_memory_bounded() {
    let ns = NetNs::new("flood");
    let port = free_port();
    let qmp = format!("tcp:127.0.0.1:{port},server,nowait");
    let mut vm = net_guest(
        Some(&ns),
        "dev=net stall wait=120",
        &[
            "-netdev",
            "tap,id=n0,ifname=ftap0,script=no,downscript=no",
            "-device",
            "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56",
            "-qmp",
            &qmp,
        ],
    )
    .spawn();
    vm.expect_stdout("vnet: stalled, not reading", T);
    ns.ip(&["link", "set", "ftap0", "up"]);
    // `ip netns exec` execs troupe in place: same pid.
    let pid = vm.pid();
    let before = common::rss_kib(pid);
    // 200 000 full-size frames, as fast as Python can write them.
    let flood = "import socket\n\
                 s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
                 s.bind(('ftap0', 0))\n\
                 f = bytes.fromhex('525400123456020000000001') + b'\\x88\\xb5' + bytes(1500)\n\
                 n = 0\n\
                 for i in range(200000):\n\
                 \x20   try:\n\
                 \x20       s.send(f); n += 1\n\
                 \x20   except OSError:\n\
                 \x20       pass\n\
                 print(n)\n";
    let out = ns.run("python3", &["-c", flood]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let grown = common::rss_kib(pid).saturating_sub(before);
    let r = ns.qmp(
        port,
        r#"{"execute": "human-monitor-command", "arguments": {"command-line": "info network"}}"#,
    );
    let info = r["return"].as_str().unwrap_or_default().to_string();
    let (rx, _) = dropped(&info);
    eprintln!("flood: sent {sent}, dropped {rx}, grew {grown} KiB");
    assert!(rx > 0 && rx <= sent, "sent {sent}, dropped {rx}: {info}");
    assert!(
        grown < 16 * 1024,
        "troupe grew by {grown} KiB under the flood"
    );
    assert!(
        matches!(vm.child.try_wait(), Ok(None)),
        "the VM keeps running"
    );
}

#[test]
fn a_nic_without_a_backend_runs_with_qemus_warning_and_drops_what_it_sends() {
    let port = free_port();
    let mon = format!("tcp:127.0.0.1:{port},server,nowait");
    // The guest drives the e1000: it keeps asking for its peer by ARP, into nowhere.
    let mut vm = net_guest(
        None,
        "dev=net nic=e1000 ip=10.9.0.2 count=1 wait=30",
        &[
            "-monitor",
            &mon,
            "-device",
            "e1000",
            "-device",
            "virtio-net-pci",
        ],
    )
    .spawn();
    vm.expect_stdout("vnet: e1000 mac 52:54:00:12:34:56 link up", T);
    std::thread::sleep(Duration::from_millis(1000));
    let mut c = common::connect(port);
    let info = hmp()(&mut c, "info network");
    assert!(
        info.contains("e1000.0: index=0,type=nic,model=e1000,macaddr=52:54:00:12:34:56"),
        "{info}"
    );
    assert!(
        info.contains(
            "virtio-net-pci.0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:57"
        ),
        "{info}"
    );
    assert!(!info.contains(" \\ "), "no backend lines: {info}");
    assert!(dropped(&info).1 > 0, "{info}");
    vm.kill();
    let err = vm.stderr.text();
    assert!(err.contains("warning: nic e1000.0 has no peer"), "{err}");
    assert!(
        err.contains("warning: nic virtio-net-pci.0 has no peer"),
        "{err}"
    );
}

#[test]
fn network_options_troupe_cannot_serve_yet_are_refused_at_start() {
    for (args, needle) in [
        (
            vec![
                "-netdev",
                "hubport,id=h0,hubid=0",
                "-device",
                "e1000,netdev=h0",
            ],
            "only tap, bridge, user and socket networking are available yet (hubport is not)",
        ),
        (
            vec![
                "-netdev",
                "socket,id=s0,mcast=230.0.0.1:1234",
                "-device",
                "e1000,netdev=s0",
            ],
            "socket mcast= is not supported by troupe",
        ),
    ] {
        let mut all = vec!["-nodefaults", "-display", "none"];
        all.extend_from_slice(&args);
        let (st, _, err) = Vm::troupe(&all).run(T);
        assert!(!st.success());
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

fn user_guest(append: &str, netdev: &str) -> Vm {
    net_guest(
        None,
        append,
        &["-netdev", netdev, "-device", "virtio-net-pci,netdev=u0"],
    )
}

/// The virtio guest with `append` on a virtio-net NIC with user-mode networking (netdev
/// `u0`), and a connection to its HMP monitor.
fn monitored_user_guest(append: &str) -> (common::Running, std::net::TcpStream) {
    let port = free_port();
    let mon = format!("tcp:127.0.0.1:{port},server,nowait");
    let vm = net_guest(
        None,
        append,
        &[
            "-monitor",
            &mon,
            "-netdev",
            "user,id=u0",
            "-device",
            "virtio-net-pci,netdev=u0",
        ],
    )
    .spawn();
    (vm, common::connect(port))
}

/// The virtio test guest with `append` and `extra` options (inside `ns` when given).
fn net_guest(ns: Option<&NetNs>, append: &str, extra: &[&str]) -> Vm {
    let k = guest("virtio");
    let args = common::guest_args(k.to_str().unwrap(), append, extra);
    match ns {
        Some(ns) => ns.troupe(&args),
        None => Vm::troupe(&args),
    }
}

#[test]
fn user_networking_gives_dhcp_the_gateway_the_host_and_hostfwd() {
    user_mode_story("", |netdev| {
        vec![
            "-netdev".to_string(),
            format!("user,id=u0,{netdev}"),
            "-device".into(),
            "virtio-net-pci,netdev=u0".into(),
        ]
    });
}

#[test]
fn with_mrg_rxbuf_frames_spread_over_small_receive_buffers() {
    // The guest posts 256-byte buffers: DHCP answers and TCP segments arrive in several.
    for iface in ["mrg", "mrg legacy"] {
        let out = user_mode_story(iface, |netdev| {
            vec![
                "-netdev".to_string(),
                format!("user,id=u0,{netdev}"),
                "-device".into(),
                "virtio-net-pci,netdev=u0".into(),
            ]
        });
        let merged: u64 = out
            .lines()
            .find_map(|l| {
                l.strip_prefix("vnet: ")?
                    .strip_suffix(" frames arrived in several buffers")
            })
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(merged > 0, "{iface}: {out}");
    }
}

#[test]
fn an_e1000_from_the_old_net_nic_form_gets_the_same_user_mode_story() {
    // `-net nic` with no model is QEMU's default NIC, the e1000.
    user_mode_story("nic=e1000", |netdev| {
        vec![
            "-net".to_string(),
            "nic".into(),
            "-net".into(),
            format!("user,{netdev}"),
        ]
    });
}

/// DHCP, ping the gateway, a TCP connection to a server on the host's loopback through
/// 10.0.2.2, and a hostfwd rule into the guest's TCP server; `net(hostfwd)` gives the
/// network options with `hostfwd` in the user backend.
fn user_mode_story(nic: &str, net: impl Fn(&str) -> Vec<String>) -> String {
    use std::io::{Read, Write};
    // A TCP server on the host's loopback, reached by the guest through 10.0.2.2.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let served = std::thread::spawn(move || {
        let (mut c, _) = server.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf).unwrap();
        c.write_all(b"hello from host\n").unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    let hport = free_port();
    let append = format!("dev=net {nic} dhcp count=2 tcp=10.0.2.2:{port} listen=7 wait=60");
    let args = net(&format!("hostfwd=tcp:127.0.0.1:{hport}-:7"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut vm = net_guest(None, &append, &args).spawn();
    vm.expect_stdout("vnet: dhcp lease 10.0.2.15 router 10.0.2.2", T);
    vm.expect_stdout("vnet: reply from 10.0.2.2 seq=2", T);
    vm.expect_stdout("vnet: tcp got 'hello from host'", T);
    assert_eq!(served.join().unwrap(), "hello from guest\n");
    // hostfwd: the host connects to its loopback port and reaches the guest's port 7.
    vm.expect_stdout("vnet: listening on 7", T);
    let mut c = std::net::TcpStream::connect(("127.0.0.1", hport)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"ping\n").unwrap();
    let mut got = String::new();
    c.read_to_string(&mut got).unwrap();
    assert_eq!(got, "echo: ping\n");
    vm.expect_stdout("vnet: served 'ping'", T);
    assert_eq!(code(vm.wait(T)), PASS, "{}", vm.stderr.text());
    vm.stdout.text()
}

#[test]
fn guestfwd_connects_a_guest_tcp_connection_to_a_chardev_both_ways() {
    use std::io::{Read, Write};
    let dir = common::TempDir::new("guestfwd");
    let sock = dir.path("fwd.sock");
    let chardev = format!("socket,id=c0,path={},server=on,wait=off", sock.display());
    let mut vm = net_guest(
        None,
        "dev=net dhcp count=1 tcp=10.0.2.100:4321 line wait=60",
        &[
            "-chardev",
            &chardev,
            "-netdev",
            "user,id=u0,guestfwd=tcp:10.0.2.100:4321-chardev:c0",
            "-device",
            "virtio-net-pci,netdev=u0",
        ],
    )
    .spawn();
    // Be the chardev's client before the guest connects (a socket chardev with no client
    // drops what it is given, in QEMU too).
    let deadline = std::time::Instant::now() + T;
    let mut c = loop {
        match std::os::unix::net::UnixStream::connect(&sock) {
            Ok(c) => break c,
            Err(e) if std::time::Instant::now() > deadline => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 64];
    while !got.contains(&b'\n') {
        let n = c.read(&mut b).unwrap();
        assert!(n > 0, "chardev closed: {}", vm.stdout.text());
        got.extend_from_slice(&b[..n]);
    }
    assert_eq!(got, b"hello from guest\n");
    c.write_all(b"hello from chardev\n").unwrap();
    vm.expect_stdout("vnet: tcp got 'hello from chardev'", T);
    assert_eq!(code(vm.wait(T)), PASS, "{}", vm.stderr.text());
}

#[test]
fn restrict_on_keeps_the_guest_in_and_hostfwd_errors_are_clear() {
    // With restrict=on the guest still gets a lease but cannot open a connection out.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    // (No router option in a restricted lease: the gateway is named.)
    let append = format!("dev=net dhcp peer=10.0.2.2 count=0 tcp=10.0.2.2:{port} wait=30");
    let (st, out, err) = user_guest(&append, "user,id=u0,restrict=on").run(T);
    assert!(out.contains("vnet: dhcp lease 10.0.2.15"), "{out}\n{err}");
    assert!(out.contains("vnet: tcp connect failed"), "{out}\n{err}");
    assert_ne!(code(st), PASS);
    // A host port that is taken: a clear error at start, naming the rule.
    let taken = server.local_addr().unwrap().port();
    let netdev = format!("user,id=u0,hostfwd=tcp:127.0.0.1:{taken}-:22");
    let (st, out, err) = user_guest("dev=net", &netdev).run(T);
    assert!(!st.success() && !out.contains("vnet:"), "{out}");
    assert!(
        err.contains("could not set up host forwarding rule") && err.contains(&taken.to_string()),
        "{err}"
    );
    // Bad hostfwd syntax is refused by the command line.
    let (st, _, err) = user_guest("dev=net", "user,id=u0,hostfwd=tcp:nonsense").run(T);
    assert!(!st.success());
    assert!(err.contains("hostfwd"), "{err}");
}

/// Runs one HMP command on a monitor connection and returns what came back up to the
/// next prompt (the banner's prompt is taken with the first command).
fn hmp() -> impl FnMut(&mut std::net::TcpStream, &str) -> String {
    use std::io::{Read, Write};
    let mut prompts_due = 2;
    move |c: &mut std::net::TcpStream, line: &str| {
        c.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let want = std::mem::replace(&mut prompts_due, 1);
        while got.windows(7).filter(|w| w == b"(qemu) ").count() < want {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }
}

#[test]
fn hostfwd_add_and_remove_at_run_time() {
    use std::io::{Read, Write};
    let hport = free_port();
    let (mut vm, mut c) = monitored_user_guest("dev=net dhcp count=1 listen=7 wait=60");
    vm.expect_stdout("vnet: listening on 7", T);
    let mut cmd = hmp();
    let out = cmd(&mut c, &format!("hostfwd_add u0 tcp:127.0.0.1:{hport}-:7"));
    assert!(!out.contains("could not"), "{out}");
    // info usernet lists the forwarding as QEMU does: libslirp's own table under the hub line.
    let out = cmd(&mut c, "info usernet");
    assert!(out.contains("Hub -1 (u0):"), "{out}");
    let hp = hport.to_string();
    assert!(
        out.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.first() == Some(&"TCP[HOST_FORWARD]")
                && w[1..]
                    .windows(4)
                    .any(|x| x == ["127.0.0.1", &hp, "10.0.2.15", "7"])
        }),
        "{out}"
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", hport)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"runtime\n").unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert_eq!(got, "echo: runtime\n");
    vm.expect_stdout("vnet: served 'runtime'", T);
    let out = cmd(&mut c, &format!("hostfwd_remove u0 tcp:127.0.0.1:{hport}"));
    assert!(
        out.contains(&format!(
            "host forwarding rule for tcp:127.0.0.1:{hport} removed"
        )),
        "{out}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", hport)).is_err(),
        "the rule is gone"
    );
    let out = cmd(&mut c, "hostfwd_add u0 tcp:nonsense");
    assert!(
        out.contains("invalid host forwarding rule 'tcp:nonsense'"),
        "{out}"
    );
    assert_eq!(code(vm.wait(T)), PASS);
}

#[test]
fn set_link_off_shows_link_down_to_the_guest_and_passes_no_frames() {
    // virtio-net shows the link in its STATUS field, the e1000 in STATUS.LU.
    for (model, nic) in [("virtio-net-pci", ""), ("e1000", "nic=e1000")] {
        set_link_story(model, nic);
    }
}

fn set_link_story(model: &str, nic: &str) {
    let port = free_port();
    let mon = format!("tcp:127.0.0.1:{port},server,nowait");
    let device = format!("{model},netdev=u0,mac=52:54:00:12:34:77,romfile=");
    let mut vm = net_guest(
        None,
        &format!("dev=net {nic} dhcp count=1 linkwatch wait=60"),
        &[
            "-monitor",
            &mon,
            "-netdev",
            "user,id=u0",
            "-device",
            &device,
        ],
    )
    .spawn();
    vm.expect_stdout("vnet: watching the link", T);
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut cmd = hmp();
    let net = cmd(&mut c, "info network");
    assert!(
        net.contains(&format!(
            "{model}.0: index=0,type=nic,model={model},macaddr=52:54:00:12:34:77"
        )),
        "{net}"
    );
    assert!(
        net.contains(" \\ u0: index=0,type=user,net=10.0.2.0,restrict=off"),
        "{net}"
    );
    cmd(&mut c, "set_link u0 off");
    vm.expect_stdout("vnet: link down", T);
    vm.expect_stdout("vnet: no reply while link down", T);
    assert!(cmd(&mut c, "info network").contains("link down"));
    let err = cmd(&mut c, "set_link nosuch off");
    assert!(err.contains("Device 'nosuch' not found"), "{err}");
    cmd(&mut c, &format!("set_link {model}.0 on"));
    vm.expect_stdout("vnet: reply after link up", T);
    assert_eq!(code(vm.wait(T)), PASS, "{model}");
}

#[test]
fn two_vms_on_one_bridge_reach_each_other_and_the_acl_is_honoured() {
    let ns = NetNs::new("br");
    ns.ip(&["link", "add", "tbr0", "type", "bridge"]);
    ns.ip(&["link", "set", "tbr0", "up"]);
    ns.ip(&["link", "add", "tbr1", "type", "bridge"]);
    let dir = common::TempDir::new("bridge-acl");
    let acl = dir.path("bridge.conf");
    std::fs::write(&acl, "allow tbr0\n").unwrap();
    let vm = |ip: &str, peer: &str, br: &str, mac: &str| {
        let append = format!("dev=net ip={ip} peer={peer} count=3 answer=3 wait=60");
        let netdev = format!("bridge,id=n0,br={br}");
        let device = format!("virtio-net-pci,netdev=n0,mac={mac}");
        net_guest(
            Some(&ns),
            &append,
            &["-netdev", &netdev, "-device", &device],
        )
        .env("TROUPE_BRIDGE_CONF", acl.to_str().unwrap())
    };
    let mut a = vm("10.9.1.2", "10.9.1.3", "tbr0", "52:54:00:00:00:0a").spawn();
    let mut b = vm("10.9.1.3", "10.9.1.2", "tbr0", "52:54:00:00:00:0b").spawn();
    a.expect_stdout("vnet: reply from 10.9.1.3 seq=3", T);
    b.expect_stdout("vnet: reply from 10.9.1.2 seq=3", T);
    assert_eq!(code(a.wait(T)), PASS, "{}", a.stderr.text());
    assert_eq!(code(b.wait(T)), PASS, "{}", b.stderr.text());
    // A bridge the ACL does not list is refused, naming the file.
    let (st, out, err) = vm("10.9.1.4", "10.9.1.2", "tbr1", "52:54:00:00:00:0c").run(T);
    assert!(!st.success() && !out.contains("vnet:"), "{out}");
    assert!(
        err.contains("access denied by acl file") && err.contains("tbr1"),
        "{err}"
    );
}

#[test]
fn boot_n_runs_the_nics_ipxe_rom_and_an_empty_romfile_disables_it() {
    let firmware = |device: &str| {
        Vm::troupe(&[
            "-nographic",
            "-m",
            "256",
            "-boot",
            "n",
            "-netdev",
            "user,id=n0",
            "-device",
            device,
        ])
        .spawn()
    };
    // Debian's ipxe-qemu efi-virtio.rom and efi-e1000.rom, as QEMU loads them: the banner
    // on the serial console.
    for device in ["virtio-net-pci,netdev=n0", "e1000,netdev=n0"] {
        let vm = firmware(device);
        vm.expect_stdout("iPXE initialising devices", Duration::from_secs(150));
    }
    let vm = firmware("virtio-net-pci,netdev=n0,romfile=");
    let out = vm.expect_stdout("No bootable device", Duration::from_secs(150));
    assert!(!out.contains("iPXE"), "{out}");
}

#[test]
fn a_tap_deleted_under_a_running_vm_takes_the_link_down_and_the_vm_runs_on() {
    let ns = NetNs::new("tapdel");
    let mut vm = net_guest(
        Some(&ns),
        "dev=net ip=10.9.2.2 peer=10.9.2.1 count=1 linkwatch wait=20",
        &[
            "-netdev",
            "tap,id=n0,ifname=tdel0,script=no,downscript=no",
            "-device",
            "virtio-net-pci,netdev=n0",
        ],
    )
    .spawn();
    vm.expect_stdout("vnet: mac", T);
    ns.ip(&["addr", "replace", "10.9.2.1/24", "dev", "tdel0"]);
    ns.ip(&["link", "set", "tdel0", "up"]);
    vm.expect_stdout("vnet: watching the link", T);
    ns.ip(&["link", "del", "tdel0"]);
    vm.expect_stdout("vnet: link down", T);
    vm.expect_stdout("vnet: no reply while link down", T);
    // The guest gives up waiting for the link on its own: the VM ran on until it chose to
    // exit (status 3 = guest exit code 1).
    assert_eq!(code(vm.wait(T)), 3);
    let err = vm.stderr.text();
    assert!(
        err.contains("tap tdel0:") && err.contains("link down"),
        "{err}"
    );
    assert_eq!(err.matches("link down").count(), 1, "reported once: {err}");
}

/// On a tap with virtio-net headers (troupe's default, as QEMU's) a driver that negotiates
/// the offloads hands over TCP segments of 16 MSS with only the pseudo-header checksum in
/// place, and the host kernel cuts and finishes them (the namespace's receiver checks every
/// byte); the host sends the guest segments it left whole, with partial checksums. With
/// `vnet_hdr=off` the device offers no offloads.
#[test]
fn a_tap_with_virtio_net_headers_carries_checksum_and_segmentation_offloads() {
    let ns = NetNs::new("tso");
    const MB: usize = 4;
    // The host's receiver checks the guest's pattern (stream offset % 251); its sender
    // connects to the guest once the guest listens.
    let sink = format!(
        "import socket\n\
         l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         l.bind(('0.0.0.0', 5001)); l.listen(1); print('listening', flush=True)\n\
         c, _ = l.accept(); got = bytearray()\n\
         while True:\n\
         \x20   b = c.recv(1 << 16)\n\
         \x20   if not b: break\n\
         \x20   got += b\n\
         want = (bytes(range(251)) * ({MB} * 4178 + 1))[:len(got)]\n\
         print('sink', len(got), got == want)\n"
    );
    let source = format!(
        "import socket, time\n\
         for i in range(120):\n\
         \x20   try:\n\
         \x20       c = socket.create_connection(('10.9.3.2', 5002), timeout=10); break\n\
         \x20   except OSError: time.sleep(0.5)\n\
         c.settimeout(60); c.sendall(bytes({MB} << 20)); c.shutdown(socket.SHUT_WR); c.recv(1)\n"
    );
    let spawn = |code: &str| {
        Command::new("ip")
            .args(["netns", "exec", &ns.0, "python3", "-c", code])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut sink = spawn(&sink);
    // The guest connects as soon as it is up: the sink must listen first (Python starts
    // slowly on a loaded host).
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(sink.stdout.as_mut().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "listening");
    let netdev = "tap,id=n0,ifname=otap0,script=no,downscript=no,vnet_hdr=on";
    let device = "virtio-net-pci,netdev=n0";
    let append = format!(
        "dev=net offload ip=10.9.3.2 peer=10.9.3.1 count=1 tcpsend=10.9.3.1:5001 mb={MB} tcprecv=5002 wait=80"
    );
    let mut vm = net_guest(Some(&ns), &append, &["-netdev", netdev, "-device", device]).spawn();
    vm.expect_stdout("link up", T);
    ns.ip(&["addr", "replace", "10.9.3.1/24", "dev", "otap0"]);
    ns.ip(&["link", "set", "otap0", "up"]);
    vm.expect_stdout("vnet: receiving on 5002", T);
    let source = spawn(&source);
    let status = vm.wait(T);
    let out = vm.stdout.text();
    assert_eq!(code(status), PASS, "{out}{}", vm.stderr.text());
    let sunk = String::from_utf8_lossy(&sink.wait_with_output().unwrap().stdout).to_string();
    assert_eq!(sunk.trim(), format!("sink {} True", MB << 20), "{out}");
    let _ = source.wait_with_output();
    assert!(
        out.contains(&format!("vnet: tcp received {} bytes", MB << 20)),
        "{out}"
    );
    let counts: Vec<u64> = out
        .lines()
        .find_map(|l| l.strip_prefix("vnet: offload: sent "))
        .unwrap_or_else(|| panic!("no offload counts: {out}"))
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let [tso, gso, partial] = counts[..] else {
        panic!("{out}")
    };
    // 4 MiB in segments of at most 16 MSS: at least 180 of them left the guest whole.
    assert!(tso >= 180, "{out}");
    assert!(
        gso > 0 && partial > 0,
        "the host left some segments whole: {out}"
    );

    // vnet_hdr=off: a plain tap, nothing to offer.
    let off = "tap,id=n0,ifname=otap1,script=no,downscript=no,vnet_hdr=off";
    let mut vm = net_guest(
        Some(&ns),
        "dev=net offload wait=20",
        &["-netdev", off, "-device", device],
    )
    .spawn();
    vm.expect_stdout("vnet: offloads not offered", T);
    assert_eq!(code(vm.wait(T)), 3);
}

/// A driver that hands the device 32 minimum-size frames per notification: every one of
/// them reaches the host (the tap, made persistent by the test, counts them after the VM
/// is gone; the host stack then drops them, having no use for their ethertype).
#[test]
fn a_flood_of_small_frames_reaches_the_host_whole() {
    let ns = NetNs::new("burst");
    ns.ip(&["tuntap", "add", "ftap0", "mode", "tap"]);
    ns.ip(&["addr", "replace", "10.9.4.1/24", "dev", "ftap0"]);
    ns.ip(&["link", "set", "ftap0", "up"]);
    let counter = |what: &str| -> u64 {
        let out = ns.run("cat", &[&format!("/sys/class/net/ftap0/statistics/{what}")]);
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let before = counter("rx_packets");
    let mut vm = net_guest(
        Some(&ns),
        "dev=net ip=10.9.4.2 peer=10.9.4.1 count=1 flood=20000 wait=60",
        &[
            "-netdev",
            "tap,id=n0,ifname=ftap0,script=no,downscript=no",
            "-device",
            "virtio-net-pci,netdev=n0",
        ],
    )
    .spawn();
    let status = vm.wait(T);
    let out = vm.stdout.text();
    assert_eq!(code(status), PASS, "{out}{}", vm.stderr.text());
    assert!(out.contains("vnet: flood sent 20000 frames in "), "{out}");
    // The flood, one echo request and the ARP exchange.
    let got = counter("rx_packets") - before;
    assert!((20_001..=20_004).contains(&got), "{got} frames: {out}");
}

/// User mode speaks IPv6 as QEMU's does: the guest's router solicitation gets slirp's
/// advertisement of fec0::/64 (or the `ipv6-net=` prefix), and slirp's host answers echo
/// requests at ::2 of it, which takes neighbour discovery both ways; `ipv6=off` turns it
/// off.
#[test]
fn user_mode_offers_ipv6_with_qemus_prefix_or_the_one_given() {
    for (netdev, prefix) in [
        ("user,id=u0", Some("fec0:0:0:0:0:0:0:0/64")),
        (
            "user,id=u0,ipv6-net=fd00:1:2::/64",
            Some("fd00:1:2:0:0:0:0:0/64"),
        ),
        ("user,id=u0,ipv6=off", None),
    ] {
        let mut vm = net_guest(
            None,
            "dev=net dhcp count=1 ping6 wait=20",
            &["-netdev", netdev, "-device", "virtio-net-pci,netdev=u0"],
        )
        .spawn();
        let status = vm.wait(T);
        let out = vm.stdout.text();
        match prefix {
            Some(p) => {
                assert_eq!(code(status), PASS, "{netdev}: {out}{}", vm.stderr.text());
                assert!(out.contains(&format!("vnet: ipv6 prefix {p}")), "{out}");
                let host = p.replace("0:0/64", "0:2");
                assert!(
                    out.contains(&format!("vnet: ipv6 reply from {host} seq=3")),
                    "{out}"
                );
            }
            None => {
                assert_eq!(code(status), 3, "{out}");
                assert!(out.contains("vnet: ipv6: no router advertisement"), "{out}");
            }
        }
    }
}

/// `-netdev tap,queues=2` with `mq=on`: the driver finds two queue pairs, turns both on
/// (VQ_PAIRS_SET), and datagrams of many flows from the host arrive on both receive
/// queues; each pair's answer leaves by its own transmit queue. With `mq=off` (QEMU's
/// default) the device offers one pair.
#[test]
fn a_multiqueue_tap_serves_every_queue_pair_the_driver_turns_on() {
    let ns = NetNs::new("mq");
    let netdev = "tap,id=n0,ifname=mqtap0,queues=2,script=no,downscript=no";
    let mut vm = net_guest(
        Some(&ns),
        "dev=net mq ip=10.9.6.2 wait=40",
        &[
            "-netdev",
            netdev,
            "-device",
            "virtio-net-pci,netdev=n0,mq=on,vectors=6",
        ],
    )
    .spawn();
    vm.expect_stdout("vnet: mq pairs 2", T);
    ns.ip(&["addr", "replace", "10.9.6.1/24", "dev", "mqtap0"]);
    ns.ip(&["link", "set", "mqtap0", "up"]);
    ns.ip(&[
        "neigh",
        "replace",
        "10.9.6.2",
        "lladdr",
        "52:54:00:12:34:56",
        "dev",
        "mqtap0",
    ]);
    // 64 flows (one port each) until both pairs have answered.
    let out = ns.run(
        "python3",
        &[
            "-c",
            "import socket, time\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.bind(('10.9.6.1', 7000)); s.settimeout(0.2)\n\
             got = set(); t = time.time()\n\
             while len(got) < 2 and time.time() - t < 30:\n\
             \x20   for p in range(9000, 9064): s.sendto(b'x', ('10.9.6.2', p))\n\
             \x20   try:\n\
             \x20       while True: got.add(s.recv(100).decode())\n\
             \x20   except OSError: pass\n\
             print(','.join(sorted(got)))\n",
        ],
    );
    let answers = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let status = vm.wait(T);
    let text = vm.stdout.text();
    assert_eq!(answers, "mq pair 0,mq pair 1", "{text}");
    assert_eq!(code(status), PASS, "{text}{}", vm.stderr.text());
    assert!(text.contains("vnet: mq rx ["), "{text}");

    let mut vm = net_guest(
        Some(&ns),
        "dev=net mq wait=20",
        &[
            "-netdev",
            &netdev.replace("mqtap0", "mqtap1"),
            "-device",
            "virtio-net-pci,netdev=n0",
        ],
    )
    .spawn();
    vm.expect_stdout("vnet: MQ not offered", T);
    assert_eq!(code(vm.wait(T)), 3);
}

/// `-netdev socket`: two VMs share a link over TCP (no root, no tap): one listens, the
/// other connects, and the second pings the first. The frames are QEMU's (a length, then
/// the frame), so the other end can be QEMU. Connecting to a port with no listener is a
/// clear error at start.
#[test]
fn two_vms_share_a_link_over_netdev_socket_and_qemu_can_be_the_other_end() {
    let k = guest("virtio");
    let k = k.to_str().unwrap();
    for other in ["troupe", "qemu"] {
        let port = free_port();
        let listen = format!("socket,id=s0,listen=127.0.0.1:{port}");
        let connect = format!("socket,id=s0,connect=127.0.0.1:{port}");
        let mut a = net_guest(
            None,
            "dev=net ip=10.9.8.1 peer=10.9.8.2 count=0 answer=3 wait=60",
            &[
                "-netdev",
                &listen,
                "-device",
                "virtio-net-pci,netdev=s0,mac=52:54:00:00:08:01",
            ],
        )
        .spawn();
        a.expect_stdout("vnet: mac 52:54:00:00:08:01", T);
        let b_args = common::guest_args(
            k,
            "dev=net ip=10.9.8.2 peer=10.9.8.1 count=3 wait=60",
            &[
                "-netdev",
                &connect,
                "-device",
                "virtio-net-pci,netdev=s0,mac=52:54:00:00:08:02,romfile=",
            ],
        );
        let mut b = if other == "qemu" {
            let mut q = vec!["-M", "pc"];
            q.extend(b_args);
            Vm::qemu(&q).spawn()
        } else {
            Vm::troupe(&b_args).spawn()
        };
        b.expect_stdout("vnet: reply from 10.9.8.1 seq=3", T);
        assert_eq!(code(a.wait(T)), PASS, "{other}: {}", a.stdout.text());
        let _ = b.wait(T);
        assert!(
            a.stdout
                .text()
                .contains("vnet: done, answered 3 echo requests"),
            "{other}: {}",
            a.stdout.text()
        );
    }
    let port = free_port();
    let (st, _, err) = Vm::troupe(&[
        "-nodefaults",
        "-display",
        "none",
        "-netdev",
        &format!("socket,id=s0,connect=127.0.0.1:{port}"),
        "-device",
        "e1000,netdev=s0",
    ])
    .run(T);
    assert!(!st.success());
    assert!(
        err.contains(&format!(
            "-netdev s0: could not connect to 127.0.0.1:{port}"
        )),
        "{err}"
    );
}

/// Linux's e1000 driver reads the 82540EM's EEPROM bit by bit through EECD (microwire),
/// not through EERD: the test guest's driver does the same and finds the MAC given on the
/// command line and a valid checksum, then uses the NIC.
#[test]
fn the_e1000_eeprom_reads_bit_by_bit_through_eecd() {
    let mut vm = net_guest(
        None,
        "dev=net nic=e1000 eeprom=microwire dhcp count=1 wait=30",
        &[
            "-netdev",
            "user,id=u0",
            "-device",
            "e1000,netdev=u0,mac=52:54:00:12:34:77",
        ],
    )
    .spawn();
    let status = vm.wait(T);
    let out = vm.stdout.text();
    assert_eq!(code(status), PASS, "{out}{}", vm.stderr.text());
    assert!(
        out.contains("vnet: e1000 eeprom (microwire) checksum 0xbaba"),
        "{out}"
    );
    assert!(
        out.contains("vnet: e1000 mac 52:54:00:12:34:77 link up"),
        "{out}"
    );
    assert!(out.contains("vnet: reply from 10.0.2.2 seq=1"), "{out}");
}

/// `netdev_del` of a NIC's backend given at start, as QEMU allows: the tap goes from the
/// host (its down script runs then, not again at exit), a user-mode backend's forwarded
/// port closes and its `hostfwd_add` finds nothing; the NICs stay, with no peer in `info
/// network`; the id can be used again.
#[test]
fn netdev_del_closes_a_backend_given_at_start_and_leaves_the_nic() {
    let ns = NetNs::new("delstart");
    let dir = common::TempDir::new("delstart");
    let (down, marker) = marker_script(&dir);
    let (qp, hp) = (free_port(), free_port());
    let tap = format!(
        "tap,id=n0,ifname=tdel1,script=no,downscript={}",
        down.display()
    );
    let user = format!("user,id=u0,hostfwd=tcp:127.0.0.1:{hp}-:22");
    let mut vm = ns.spin_vm(
        qp,
        &[
            "-netdev",
            &tap,
            "-device",
            "virtio-net-pci,netdev=n0,id=nic0",
            "-netdev",
            &user,
            "-device",
            "e1000,netdev=u0,id=nic1",
        ],
    );
    let ask = |cmd: &str| ns.ask(qp, cmd);
    let hmp = |line: &str| ns.hmp(qp, line);
    let connects = || ns.listening(hp);
    let del = |id: &str| {
        ask(&serde_json::json!({"execute": "netdev_del", "arguments": {"id": id}}).to_string())
    };
    assert!(hmp("info network").contains(" \\ n0: index=0,type=tap,ifname=tdel1"));
    assert!(ns.run("ip", &["link", "show", "tdel1"]).status.success());
    assert!(connects());
    assert_eq!(del("n0")["return"], serde_json::json!({}));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "tdel1\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while ns.run("ip", &["link", "show", "tdel1"]).status.success() {
        assert!(std::time::Instant::now() < deadline, "tdel1 still there");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(del("u0")["return"], serde_json::json!({}));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while connects() {
        assert!(std::time::Instant::now() < deadline, "port {hp} still open");
        std::thread::sleep(Duration::from_millis(100));
    }
    let net = hmp("info network");
    assert!(
        net.contains("nic0: index=0,type=nic,model=virtio-net-pci")
            && net.contains("nic1: index=0,type=nic,model=e1000")
            && !net.contains("n0:")
            && !net.contains("u0:"),
        "{net}"
    );
    let e = hmp("hostfwd_add u0 tcp::2222-:22");
    assert!(e.contains("unknown netdev 'u0'"), "{e}");
    assert_eq!(
        del("n0")["error"]["desc"],
        "Device 'n0' not found",
        "deleted once"
    );
    // The id is free again.
    assert_eq!(hmp("netdev_add user,id=n0"), "");
    assert!(hmp("info status").contains("running"));
    let _ = ask(r#"{"execute": "quit"}"#);
    let _ = vm.wait(T);
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "tdel1\n",
        "the down script ran once"
    );
}

/// `netdev_add` opens a backend in a running VM and `netdev_del` closes it (QMP and HMP):
/// a user-mode backend's hostfwd port answers and then stops, a tap appears on the host
/// and goes (its down script runs), `info network` lists what was added; a duplicate id or
/// a port in use is refused with the VM running on. (No NIC uses them yet: NICs come with
/// hotplug.)
#[test]
fn netdev_add_and_netdev_del_open_and_close_backends_at_run_time() {
    let ns = NetNs::new("hotnet");
    let dir = common::TempDir::new("hotnet");
    let (down, marker) = marker_script(&dir);
    let (qp, hp) = (free_port(), free_port());
    let mut vm = ns.spin_vm(qp, &[]);
    let ask = |cmd: &str| ns.ask(qp, cmd);
    let hmp = |line: &str| ns.hmp(qp, line);
    let connects = |port: u16| ns.listening(port);
    let fwd = format!("tcp:127.0.0.1:{hp}-:22");
    let add_user = |id: &str| {
        ask(&serde_json::json!({"execute": "netdev_add", "arguments":
            {"type": "user", "id": id, "hostfwd": [{"str": fwd}]}})
        .to_string())
    };
    assert_eq!(add_user("hn0")["return"], serde_json::json!({}));
    assert!(connects(hp), "the hostfwd port answers");
    let v = ask(&serde_json::json!({"execute": "netdev_add", "arguments":
        {"type": "tap", "id": "ht0", "ifname": "trhot0", "script": "no",
         "downscript": down.to_str().unwrap()}})
    .to_string());
    assert_eq!(v["return"], serde_json::json!({}), "{v}");
    assert!(ns.run("ip", &["link", "show", "trhot0"]).status.success());
    let net = hmp("info network");
    assert!(
        net.contains("hn0: index=0,type=user,net=10.0.2.0,restrict=off")
            && net.contains("ht0: index=0,type=tap,ifname=trhot0"),
        "{net}"
    );
    // Refused, and the VM runs on: a duplicate id, a forwarding port already taken.
    let e = add_user("hn0");
    assert!(
        e["error"]["desc"].as_str().unwrap().contains("duplicate"),
        "{e}"
    );
    let e = add_user("hn1");
    assert!(
        e["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("could not set up host forwarding rule"),
        "{e}"
    );
    assert!(hmp("info status").contains("running"));
    // Removing closes them.
    let del = |id: &str| {
        ask(&serde_json::json!({"execute": "netdev_del", "arguments": {"id": id}}).to_string())
    };
    assert_eq!(del("hn0")["return"], serde_json::json!({}));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while connects(hp) {
        assert!(std::time::Instant::now() < deadline, "port {hp} still open");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(del("ht0")["return"], serde_json::json!({}));
    assert!(!ns.run("ip", &["link", "show", "trhot0"]).status.success());
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "trhot0");
    let e = del("hn0");
    assert_eq!(e["error"]["desc"], "Device 'hn0' not found", "{e}");
    // HMP: the same commands.
    assert_eq!(hmp("netdev_add user,id=hn2"), "");
    assert!(hmp("info network").contains("hn2: index=0,type=user"));
    assert_eq!(hmp("netdev_del hn2"), "");
    assert!(!hmp("info network").contains("hn2"));
    assert!(hmp("netdev_del hn2").contains("Error: Device 'hn2' not found"));
    // A backend still there when the VM ends is closed, its down script run, as QEMU does.
    let add = format!(
        "netdev_add tap,id=ht1,ifname=trhot1,script=no,downscript={}",
        down.display()
    );
    assert_eq!(hmp(&add), "");
    let _ = ask(r#"{"execute": "quit"}"#);
    let _ = vm.wait(T);
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "trhot0\ntrhot1\n"
    );
}

/// `calc_dirty_rate -b SECS` in the namespace's troupe, with `during` run meanwhile: the
/// guest RAM pages written in that time.
fn dirty_pages_while(ns: &NetNs, port: u16, secs: u64, during: impl FnOnce()) -> u64 {
    let started = ns.hmp(port, &format!("calc_dirty_rate -b {secs}"));
    assert!(
        started.contains("Starting dirty rate measurement"),
        "{started}"
    );
    let t0 = std::time::Instant::now();
    during();
    std::thread::sleep(Duration::from_secs(secs).saturating_sub(t0.elapsed()));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info = ns.hmp(port, "info dirty_rate");
        if info.contains("Status: measured") {
            return info
                .lines()
                .find_map(|l| l.strip_prefix("Dirty pages: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no page count: {info}"));
        }
        assert!(std::time::Instant::now() < deadline, "{info}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_stopped_vm_takes_no_frames_into_guest_memory_until_cont() {
    let ns = NetNs::new("quiesce");
    let port = free_port();
    let qmp = format!("tcp:127.0.0.1:{port},server,nowait");
    // The guest posts its receive buffers and then never looks at them again.
    let mut vm = net_guest(
        Some(&ns),
        "dev=net stall wait=120",
        &[
            "-netdev",
            "tap,id=n0,ifname=qtap0,script=no,downscript=no",
            "-device",
            "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56",
            "-qmp",
            &qmp,
        ],
    )
    .spawn();
    vm.expect_stdout("vnet: stalled, not reading", T);
    ns.ip(&["link", "set", "qtap0", "up"]);
    let flood = |n: u32| {
        let py = format!(
            "import socket\n\
             s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
             s.bind(('qtap0', 0))\n\
             f = bytes.fromhex('525400123456020000000001') + b'\\x88\\xb5' + bytes(1000)\n\
             for i in range({n}):\n\
             \x20   s.send(f)\n"
        );
        let out = ns.run("python3", &["-c", &py]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Running, a few frames land in the posted buffers: the measure sees the device write.
    let running = dirty_pages_while(&ns, port, 2, || flood(4));
    assert!(running > 0, "frames received while running dirty no page?");

    let r = ns.hmp(port, "stop");
    assert!(!r.contains("Error"), "{r}");
    let stopped = dirty_pages_while(&ns, port, 2, || flood(500));
    assert_eq!(
        stopped, 0,
        "the NIC wrote guest memory while the VM was stopped"
    );
    assert!(ns.hmp(port, "info status").contains("VM status: paused"));

    let r = ns.hmp(port, "cont");
    assert!(!r.contains("Error"), "{r}");
    assert!(ns.hmp(port, "info status").contains("VM status: running"));
    // What waited in the tap while stopped is taken now: into the remaining buffers, the
    // rest dropped and counted.
    let deadline = std::time::Instant::now() + T;
    loop {
        let info = ns.hmp(port, "info network");
        if info.contains("dropped: rx ") && dropped(&info).0 > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{info}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        matches!(vm.child.try_wait(), Ok(None)),
        "the VM keeps running"
    );
}
