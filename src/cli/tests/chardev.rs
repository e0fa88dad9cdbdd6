//! Serial ports, monitors and chardevs on whole command lines: QEMU's defaults, `-nographic`,
//! `mon:`, stdio's single user, chardev users.

use super::*;

#[test]
fn nographic_multiplexes_serial_and_monitor_on_stdio() {
    let env = Env::new();
    let c = env.run(&["-nographic"]);
    assert_eq!(c.serials, vec![CharBackend::MuxStdio]);
    assert_eq!(
        c.monitors,
        vec![MonitorConfig {
            mode: MonitorMode::Readline,
            backend: CharBackend::MuxStdio,
            pretty: false
        }]
    );
    assert_eq!(c.display, DisplayKind::None);
    assert!(c.nographic);
    assert_eq!(c.vga, VgaKind::Std);
    // A redirected monitor leaves plain stdio for the serial port, and vice versa.
    let c = env.run(&["-nographic", "-monitor", "none"]);
    assert_eq!((c.serials, c.monitors.len()), (vec![CharBackend::Stdio], 0));
    let c = env.run(&["-nographic", "-serial", "null"]);
    assert_eq!(c.serials, vec![CharBackend::Null]);
    assert_eq!(c.monitors[0].backend, CharBackend::Stdio);
    let c = env.run(&["-nographic", "-serial", "mon:stdio"]);
    assert_eq!(c.serials, vec![CharBackend::MuxStdio]);
    assert_eq!(c.monitors.len(), 1);
    assert_eq!(
        env.err(&["-nographic", "-qmp", "stdio"]),
        "-qmp stdio: cannot use stdio by multiple character devices"
    );
    assert_eq!(
        env.err(&["-nographic", "-daemonize"]),
        "-nographic: cannot be used with -daemonize"
    );
    // With everything redirected, -nographic and -daemonize get along.
    assert!(env
        .parse(&[
            "-nographic",
            "-daemonize",
            "-serial",
            "null",
            "-monitor",
            "none"
        ])
        .is_ok());
}

#[test]
fn serial_ports_in_order_and_none() {
    let env = Env::new();
    let c = env.run(&["-serial", "none"]);
    assert!(c.serials.is_empty());
    let c = env.run(&[
        "-serial",
        "none",
        "-serial",
        "null",
        "-serial",
        "file:/tmp/com2.log",
    ]);
    assert_eq!(
        c.serials,
        vec![CharBackend::Null, CharBackend::File("/tmp/com2.log".into())]
    );
    let c = env.run(&[
        "-serial",
        "tcp::4444,server,nowait",
        "-serial",
        "telnet:127.0.0.1:4445,server=on,wait=off",
    ]);
    assert_eq!(
        c.serials[1],
        CharBackend::Tcp {
            addr: SocketAddrSpec {
                host: "127.0.0.1".into(),
                port: 4445
            },
            server: true,
            wait: false,
            telnet: true,
            nodelay: false
        }
    );
    let four = [
        "-serial", "null", "-serial", "null", "-serial", "null", "-serial", "null",
    ];
    assert_eq!(env.run(&four).serials.len(), 4);
    let mut five = four.to_vec();
    five.extend(["-serial", "pty"]);
    assert_eq!(
        env.err(&five),
        "-serial pty: too many serial ports (troupe has COM1..COM4)"
    );
    assert_eq!(
        env.err(&["-serial", "foo"]),
        "-serial foo: 'foo' is not a valid char driver (see -chardev help)"
    );
    assert_eq!(
        env.err(&["-serial", "stdio", "-monitor", "stdio"]),
        "-monitor stdio: cannot use stdio by multiple character devices"
    );
    assert_eq!(
        env.err(&["-daemonize", "-serial", "stdio"]),
        "-serial stdio: cannot use stdio with -daemonize"
    );
}

fn vc(index: usize, cols: u32, rows: u32) -> CharBackend {
    CharBackend::Vc(crate::config::VcSpec { index, cols, rows })
}

/// What QEMU 7.2 (built without a GUI) does with each combination, checked with its
/// `info chardev` and `info vnc`: the defaults are text consoles whenever there is no
/// -nographic, even with -display none or -vnc.
#[test]
fn default_serial_and_monitor_are_text_consoles_as_in_qemu() {
    let env = Env::new();
    let default_vnc = Some(crate::cli::display::default_vnc());
    let c = env.run(&["-monitor", "stdio"]);
    assert_eq!(c.serials, vec![vc(0, 80, 24)]);
    assert_eq!(c.monitors[0].backend, CharBackend::Stdio);
    assert_eq!(c.vnc, default_vnc);
    let c = env.run(&["-serial", "stdio"]);
    assert_eq!(c.serials, vec![CharBackend::Stdio]);
    assert_eq!(c.monitors[0].backend, vc(0, 80, 24));
    let c = env.run(&["-daemonize"]);
    assert_eq!(c.serials, vec![vc(1, 80, 24)]);
    for args in [
        &["-display", "none"][..],
        &["-vnc", ":1"],
        &["-display", "vnc=:2"],
        &["-vnc", "none"],
    ] {
        let c = env.run(args);
        assert_eq!(c.monitors[0].backend, vc(0, 80, 24), "{args:?}");
        assert_eq!(c.serials, vec![vc(1, 80, 24)], "{args:?}");
        // Only the default display is announced; a named one is the user's.
        assert!(c.vnc.as_ref().is_none_or(|v| !v.announce), "{args:?}");
    }
    assert_eq!(env.run(&["-display", "none"]).vnc, None);
    assert_eq!(env.run(&["-vnc", "none"]).vnc, None);
    assert_eq!(env.run(&["-display", "default"]).vnc, default_vnc);
    let c = env.run(&["-nographic"]);
    assert_eq!(c.vnc, None);
    assert_eq!(c.serials, vec![CharBackend::MuxStdio]);
    let c = env.run(&["-nodefaults"]);
    assert!(c.serials.is_empty() && c.monitors.is_empty());
    assert_eq!(c.vnc, default_vnc);
}

/// Ctrl+Alt+2 and up follow QEMU's creation order: chardevs, then monitors, then serials.
#[test]
fn text_consoles_are_numbered_in_qemus_order() {
    let env = Env::new();
    let c = env.run(&[
        "-serial",
        "vc:100Cx40C",
        "-monitor",
        "vc",
        "-chardev",
        "vc,id=extra,cols=20,rows=5",
        "-serial",
        "chardev:extra",
    ]);
    assert_eq!(c.chardevs[0].backend, vc(0, 20, 5));
    assert_eq!(c.monitors[0].backend, vc(1, 80, 30));
    assert_eq!(
        c.serials,
        vec![vc(2, 100, 40), CharBackend::Named("extra".into())]
    );
}

#[test]
fn mon_prefix_shares_a_backend_between_serial_and_monitor() {
    let env = Env::new();
    let c = env.run(&["-serial", "mon:telnet::4444,server,nowait"]);
    assert_eq!(c.serials, vec![CharBackend::Named("serial0".into())]);
    assert_eq!(c.chardevs.len(), 1);
    assert!(c.chardevs[0].mux);
    assert_eq!(c.monitors[0].backend, CharBackend::Named("serial0".into()));
    assert_eq!(
        env.err(&["-monitor", "mon:stdio"]),
        "-monitor mon:stdio: 'mon:' can only prefix a -serial device"
    );
}

#[test]
fn chardevs_monitors_and_their_users() {
    let env = Env::new();
    let c = env.run(&[
        "-chardev",
        "socket,id=mon0,host=127.0.0.1,port=4444,server=on,wait=off,telnet=on",
        "-mon",
        "chardev=mon0,mode=readline",
        "-chardev",
        "socket,id=qmp0,path=/tmp/q.sock,server=on,wait=off",
        "-mon",
        "chardev=qmp0,mode=control,pretty=on",
        "-qmp",
        "tcp:127.0.0.1:4446,server,nowait",
    ]);
    assert_eq!(c.monitors.len(), 3);
    assert_eq!(c.monitors[0].backend, CharBackend::Named("mon0".into()));
    assert_eq!(
        (c.monitors[1].mode, c.monitors[1].pretty),
        (MonitorMode::Control, true)
    );
    assert_eq!(c.monitors[2].mode, MonitorMode::Control);
    assert_eq!(
        env.err(&["-mon", "chardev=zz"]),
        "-mon chardev=zz: chardev 'zz' not found"
    );
    assert_eq!(
        env.err(&["-chardev", "null,id=a", "-chardev", "null,id=a"]),
        "-chardev null,id=a: duplicate chardev id 'a'"
    );
    assert_eq!(
        env.err(&["-chardev", "null,id=a", "-serial", "chardev:a", "-mon", "a"]),
        "-mon a: chardev 'a' is already in use (create it with mux=on to share it)"
    );
    let c = env.run(&[
        "-chardev",
        "stdio,id=s,mux=on",
        "-serial",
        "chardev:s",
        "-mon",
        "s",
    ]);
    assert_eq!(c.serials, vec![CharBackend::Named("s".into())]);
    assert_eq!(
        env.err(&["-chardev", "null"]),
        "-chardev null: parameter 'id' is missing"
    );
    assert_eq!(
        env.err(&["-serial", "chardev:nope"]),
        "-serial chardev:nope: chardev 'nope' not found"
    );
    assert_eq!(
        env.err(&["-chardev", "stdio,id=s", "-serial", "stdio"]),
        "-chardev stdio,id=s: cannot use stdio by multiple character devices"
    );
}
