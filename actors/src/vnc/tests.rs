//! In-process tests of the whole server over real TCP sockets: handshakes byte for byte,
//! passwords, bad clients, every encoding against the surface, latency, input.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::des::vnc_response;
use super::encode::decode::{decode_update, expected, Decoder};
use super::encode::enc;
use super::pixel::PixelFormat;
use super::*;
use crate::display::input::{InputEvent, RecordingSink};
use crate::display::keycodes::KeyCode;
use crate::display::{new_display, testpattern, DisplayWriter, Rect, Surface};
use crate::runtime::Registry;

/// A display number whose port is free right now.
fn free_display() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p > 5900 {
            return p - 5900;
        }
    }
}

struct Server {
    handle: VncHandle,
    writer: DisplayWriter,
    sink: RecordingSink,
}

fn server(f: impl FnOnce(&mut VncOptions)) -> Server {
    server_with(false, f)
}

fn server_with(absolute: bool, f: impl FnOnce(&mut VncOptions)) -> Server {
    let (writer, display) = new_display(720, 400).unwrap();
    testpattern::TestPattern::new(writer.clone()).redraw();
    let mut opts = VncOptions::new("127.0.0.1", free_display());
    f(&mut opts);
    let sink = RecordingSink::new(absolute);
    let handle = start(
        &tokio::runtime::Handle::current(),
        &Registry::new(),
        opts,
        display,
        Arc::new(sink.clone()),
    )
    .unwrap();
    Server {
        handle,
        writer,
        sink,
    }
}

struct Client {
    s: TcpStream,
}

impl Client {
    async fn connect(h: &VncHandle) -> Self {
        let s = TcpStream::connect(h.local_addr()).await.unwrap();
        s.set_nodelay(true).unwrap();
        Self { s }
    }

    async fn read(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        tokio::time::timeout(Duration::from_secs(5), self.s.read_exact(&mut b))
            .await
            .expect("timed out reading")
            .expect("read");
        b
    }

    async fn write(&mut self, b: &[u8]) {
        self.s.write_all(b).await.unwrap();
    }

    /// True when the server closed the connection (reads EOF or reset) within 5 s.
    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    /// Everything that arrives until the line is quiet for `quiet`.
    async fn drain(&mut self, quiet: Duration) -> Vec<u8> {
        let mut out = Vec::new();
        let mut b = vec![0u8; 1 << 16];
        while let Ok(Ok(n)) = tokio::time::timeout(quiet, self.s.read(&mut b)).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&b[..n]);
        }
        out
    }

    /// RFB 3.8 with security None up to ServerInit; returns (w, h, pixel format, name).
    async fn init(&mut self, shared: bool) -> (u16, u16, Vec<u8>, String) {
        assert_eq!(self.read(12).await, b"RFB 003.008\n");
        self.write(b"RFB 003.008\n").await;
        assert_eq!(self.read(2).await, [1, 1]);
        self.write(&[1]).await;
        assert_eq!(self.read(4).await, [0, 0, 0, 0]);
        self.write(&[u8::from(shared)]).await;
        self.server_init().await
    }

    async fn server_init(&mut self) -> (u16, u16, Vec<u8>, String) {
        let b = self.read(24).await;
        let w = u16::from_be_bytes([b[0], b[1]]);
        let h = u16::from_be_bytes([b[2], b[3]]);
        let n = u32::from_be_bytes([b[20], b[21], b[22], b[23]]) as usize;
        let name = String::from_utf8(self.read(n).await).unwrap();
        (w, h, b[4..20].to_vec(), name)
    }

    async fn set_encodings(&mut self, e: &[i32]) {
        let mut m = vec![2, 0];
        m.extend_from_slice(&(e.len() as u16).to_be_bytes());
        for x in e {
            m.extend_from_slice(&x.to_be_bytes());
        }
        self.write(&m).await;
    }

    async fn set_pixel_format(&mut self, pf: &PixelFormat) {
        let mut m = vec![0, 0, 0, 0];
        m.extend_from_slice(&pf.to_bytes());
        self.write(&m).await;
    }

    async fn request(&mut self, incremental: bool, r: Rect) {
        let mut m = vec![3, u8::from(incremental)];
        for v in [r.x, r.y, r.w, r.h] {
            m.extend_from_slice(&(v as u16).to_be_bytes());
        }
        self.write(&m).await;
    }

    async fn key(&mut self, keysym: u32, down: bool) {
        let mut m = vec![4, u8::from(down), 0, 0];
        m.extend_from_slice(&keysym.to_be_bytes());
        self.write(&m).await;
    }
}

#[tokio::test]
async fn rfb_38_handshake_and_server_init_match_qemu() {
    let srv = server(|_| {});
    let mut c = Client::connect(&srv.handle).await;
    let (w, h, pf, name) = c.init(true).await;
    assert_eq!((w, h), (720, 400));
    assert_eq!(
        pf,
        [32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]
    );
    assert_eq!(name, "QEMU");
}

#[tokio::test]
async fn rfb_37_and_33_follow_their_own_rules() {
    let srv = server(|o| o.name = "guest1".into());
    // 3.7: types list, no SecurityResult for None.
    let mut c = Client::connect(&srv.handle).await;
    c.read(12).await;
    c.write(b"RFB 003.007\n").await;
    assert_eq!(c.read(2).await, [1, 1]);
    c.write(&[1]).await;
    c.write(&[1]).await; // ClientInit right away
    let (_, _, _, name) = c.server_init().await;
    assert_eq!(name, "guest1");
    // 3.3: the server picks (u32 1), then ClientInit.
    let mut c = Client::connect(&srv.handle).await;
    c.read(12).await;
    c.write(b"RFB 003.003\n").await;
    assert_eq!(c.read(4).await, [0, 0, 0, 1]);
    c.write(&[1]).await;
    let (w, _, _, _) = c.server_init().await;
    assert_eq!(w, 720);
    // 3.5 is treated as 3.3.
    let mut c = Client::connect(&srv.handle).await;
    c.read(12).await;
    c.write(b"RFB 003.005\n").await;
    assert_eq!(c.read(4).await, [0, 0, 0, 1]);
}

async fn vnc_auth(srv: &Server, version: &[u8; 12], pw: &str) -> Vec<u8> {
    let mut c = Client::connect(&srv.handle).await;
    c.read(12).await;
    c.write(version).await;
    if version == b"RFB 003.003\n" {
        assert_eq!(c.read(4).await, [0, 0, 0, 2]);
    } else {
        assert_eq!(c.read(2).await, [1, 2]);
        c.write(&[2]).await;
    }
    let ch: [u8; 16] = c.read(16).await.try_into().unwrap();
    c.write(&vnc_response(pw.as_bytes(), &ch)).await;
    let mut res = c.read(4).await;
    if res == [0, 0, 0, 1] && version == b"RFB 003.008\n" {
        let n = c.read(4).await;
        let len = u32::from_be_bytes(n.clone().try_into().unwrap()) as usize;
        res.extend_from_slice(&n);
        res.extend_from_slice(&c.read(len).await);
    }
    if res[..4] != [0, 0, 0, 0] {
        assert!(
            c.closed().await,
            "server must close after a failed authentication"
        );
    }
    res
}

#[tokio::test]
async fn password_refused_accepted_and_none_set_means_refused() {
    let srv = server(|o| o.password = true);
    let fail38 = {
        let mut v = vec![0, 0, 0, 1, 0, 0, 0, 21];
        v.extend_from_slice(b"Authentication failed");
        v
    };
    // No password set yet: every attempt fails, even an empty one.
    assert_eq!(vnc_auth(&srv, b"RFB 003.008\n", "").await, fail38);
    srv.handle.set_password("secret12").unwrap();
    assert_eq!(vnc_auth(&srv, b"RFB 003.008\n", "wrong").await, fail38);
    assert_eq!(
        vnc_auth(&srv, b"RFB 003.007\n", "wrong").await,
        [0, 0, 0, 1]
    );
    assert_eq!(
        vnc_auth(&srv, b"RFB 003.003\n", "wrong").await,
        [0, 0, 0, 1]
    );
    assert_eq!(
        vnc_auth(&srv, b"RFB 003.008\n", "secret12").await,
        [0, 0, 0, 0]
    );
    assert_eq!(
        vnc_auth(&srv, b"RFB 003.003\n", "secret12").await,
        [0, 0, 0, 0]
    );
    // Only the first 8 characters count.
    assert_eq!(
        vnc_auth(&srv, b"RFB 003.008\n", "secret12-and-more").await,
        [0, 0, 0, 0]
    );
    srv.handle.expire_password(PasswordExpiry::Now).unwrap();
    assert_eq!(vnc_auth(&srv, b"RFB 003.008\n", "secret12").await, fail38);
    srv.handle.expire_password(PasswordExpiry::Never).unwrap();
    assert_eq!(
        vnc_auth(&srv, b"RFB 003.008\n", "secret12").await,
        [0, 0, 0, 0]
    );
    assert_eq!(srv.handle.info().auth, "vnc");
}

#[tokio::test]
async fn set_password_without_password_auth_is_refused() {
    let srv = server(|_| {});
    let e = srv.handle.set_password("x").unwrap_err();
    assert!(e.to_string().contains("-vnc ${dpy},password"), "{e}");
    assert!(PasswordExpiry::parse("+10").is_ok());
    assert!(PasswordExpiry::parse("1700000000").is_ok());
    assert!(PasswordExpiry::parse("soon").is_err());
}

#[tokio::test]
async fn bad_versions_are_refused_and_the_server_keeps_serving() {
    let srv = server(|_| {});
    let mut c = Client::connect(&srv.handle).await;
    c.read(12).await;
    c.write(b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(c.closed().await);
    let mut c = Client::connect(&srv.handle).await;
    c.read(12).await;
    c.write(b"RFB 004.001\n").await;
    assert_eq!(c.read(4).await, [0, 0, 0, 0]);
    assert!(c.closed().await);
    // Wrong security type under 3.8.
    let mut c = Client::connect(&srv.handle).await;
    c.read(12).await;
    c.write(b"RFB 003.008\n").await;
    c.read(2).await;
    c.write(&[2]).await;
    assert_eq!(c.read(8).await, [0, 0, 0, 1, 0, 0, 0, 21]);
    let mut c = Client::connect(&srv.handle).await;
    c.init(true).await;
}

#[tokio::test]
async fn huge_cut_text_drops_only_that_client_without_allocating() {
    let srv = server(|_| {});
    let mut good = Client::connect(&srv.handle).await;
    good.init(true).await;
    let mut bad = Client::connect(&srv.handle).await;
    bad.init(true).await;
    let mut m = vec![6, 0, 0, 0];
    m.extend_from_slice(&100_000_000u32.to_be_bytes());
    bad.write(&m).await;
    assert!(bad.closed().await);
    // A small one is fine.
    let mut m = vec![6, 0, 0, 0];
    m.extend_from_slice(&5u32.to_be_bytes());
    m.extend_from_slice(b"hello");
    good.write(&m).await;
    good.request(false, Rect::new(0, 0, 720, 400)).await;
    let b = good.read(4).await;
    assert_eq!(b[0], 0);
}

#[tokio::test]
async fn every_encoding_matches_the_surface_full_and_incremental() {
    let srv = server(|_| {});
    for (encoding, pf) in [
        (enc::RAW, PixelFormat::SERVER),
        (enc::HEXTILE, PixelFormat::SERVER),
        (enc::ZLIB, PixelFormat::SERVER),
        (enc::ZRLE, PixelFormat::SERVER),
        (enc::TIGHT, PixelFormat::SERVER),
        (enc::TIGHT_PNG, PixelFormat::SERVER),
        (
            enc::ZRLE,
            PixelFormat {
                bpp: 16,
                depth: 16,
                big_endian: true,
                true_colour: true,
                red_max: 31,
                green_max: 63,
                blue_max: 31,
                red_shift: 11,
                green_shift: 5,
                blue_shift: 0,
            },
        ),
    ] {
        let mut c = Client::connect(&srv.handle).await;
        c.init(true).await;
        c.set_pixel_format(&pf).await;
        c.set_encodings(&[encoding]).await;
        c.request(false, Rect::new(0, 0, 720, 400)).await;
        let mut dec = Decoder::new(pf);
        let mut fb = Surface::new(720, 400);
        let msg = c.drain(Duration::from_millis(200)).await;
        let encs = decode_update(&mut dec, &msg, &mut fb);
        assert!(encs.iter().all(|e| *e == encoding), "{encs:?}");
        assert_eq!(
            fb,
            expected(&srv.handle.display().snapshot(), &pf),
            "encoding {encoding}"
        );
        // An incremental request after a small change carries only that change.
        c.request(true, Rect::new(0, 0, 720, 400)).await;
        srv.writer
            .update(Rect::new(100, 100, 3, 3), &[0x00ff00ff; 9], 3);
        let msg = c.drain(Duration::from_millis(200)).await;
        decode_update(&mut dec, &msg, &mut fb);
        assert!(
            msg.len() < 1200,
            "incremental update of a 3x3 change is {} bytes",
            msg.len()
        );
        assert_eq!(
            fb,
            expected(&srv.handle.display().snapshot(), &pf),
            "encoding {encoding} (incremental)"
        );
        srv.writer.update(Rect::new(100, 100, 3, 3), &[0; 9], 3);
    }
}

#[tokio::test]
async fn a_change_reaches_an_idle_client_within_a_frame() {
    let srv = server(|_| {});
    let mut c = Client::connect(&srv.handle).await;
    c.init(true).await;
    c.set_encodings(&[enc::RAW]).await;
    c.request(false, Rect::new(0, 0, 720, 400)).await;
    c.drain(Duration::from_millis(200)).await;
    for i in 0..5u32 {
        c.request(true, Rect::new(0, 0, 720, 400)).await;
        // Idle for a while (QEMU's timer would have backed off by now).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        srv.writer.update(Rect::new(i, 0, 1, 1), &[0x123456 + i], 1);
        let b = c.read(4).await;
        let dt = t.elapsed();
        assert_eq!(b[0], 0);
        assert!(dt < Duration::from_millis(30), "update took {dt:?}");
        c.drain(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn desktop_size_is_sent_at_once_without_a_request() {
    let srv = server(|_| {});
    let mut c = Client::connect(&srv.handle).await;
    c.init(true).await;
    c.set_encodings(&[enc::RAW, enc::DESKTOP_SIZE]).await;
    c.request(false, Rect::new(0, 0, 720, 400)).await;
    c.drain(Duration::from_millis(200)).await;
    srv.writer.resize(1024, 768).unwrap();
    let b = c.read(16).await;
    assert_eq!(&b[..4], &[0, 0, 0, 1]);
    assert_eq!(&b[4..12], &[0, 0, 0, 0, 4, 0, 3, 0]);
    assert_eq!(
        i32::from_be_bytes(b[12..16].try_into().unwrap()),
        enc::DESKTOP_SIZE
    );
}

#[tokio::test]
async fn a_mode_change_before_set_encodings_is_told_once_the_client_can_hear_it() {
    let srv = server(|_| {});
    let mut c = Client::connect(&srv.handle).await;
    c.init(true).await;
    // The guest changes mode between ServerInit and the client's SetEncodings.
    srv.writer.resize(1024, 768).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.set_encodings(&[enc::RAW, enc::DESKTOP_SIZE]).await;
    let b = c.read(16).await;
    assert_eq!(&b[..4], &[0, 0, 0, 1]);
    assert_eq!(&b[4..12], &[0, 0, 0, 0, 4, 0, 3, 0], "DesktopSize 1024x768");
    assert_eq!(
        i32::from_be_bytes(b[12..16].try_into().unwrap()),
        enc::DESKTOP_SIZE
    );
}

#[tokio::test]
async fn pseudo_encodings_are_announced_like_qemu() {
    let srv = server(|_| {});
    let mut c = Client::connect(&srv.handle).await;
    c.init(true).await;
    c.set_encodings(&[enc::RAW, enc::QEMU_EXT_KEY_EVENT, enc::LED_STATE])
        .await;
    let msg = c.drain(Duration::from_millis(200)).await;
    let mut dec = Decoder::new(PixelFormat::SERVER);
    let mut fb = Surface::new(720, 400);
    let encs = decode_update(&mut dec, &msg, &mut fb);
    assert_eq!(encs, vec![enc::QEMU_EXT_KEY_EVENT, enc::LED_STATE]);
    // The LED rectangle is 1x1 with one byte: the guest's LEDs.
    assert_eq!(
        &msg[msg.len() - 13..],
        &[0, 0, 0, 0, 0, 1, 0, 1, 0xff, 0xff, 0xfe, 0xfb, 0]
    );
    // An ExtendedDesktopSize client gets the layout with a full update.
    c.set_encodings(&[enc::RAW, enc::EXTENDED_DESKTOP_SIZE])
        .await;
    c.request(false, Rect::new(0, 0, 720, 400)).await;
    let msg = c.drain(Duration::from_millis(200)).await;
    let encs = decode_update(&mut dec, &msg, &mut fb);
    assert_eq!(encs, vec![enc::EXTENDED_DESKTOP_SIZE, enc::RAW]);
}

#[tokio::test]
async fn keys_and_pointer_become_input_events() {
    let srv = server(|_| {});
    let mut c = Client::connect(&srv.handle).await;
    c.init(true).await;
    c.key(b'a' as u32, true).await;
    c.key(b'a' as u32, false).await;
    c.key(0xff0d, true).await;
    // QEMU extended key event: Down by XT number 0xd0.
    let mut m = vec![255, 0, 0, 1];
    m.extend_from_slice(&0xff54u32.to_be_bytes());
    m.extend_from_slice(&0xd0u32.to_be_bytes());
    c.write(&m).await;
    // Pointer: first position, then a move with the left button.
    c.write(&[5, 0, 0, 10, 0, 20]).await;
    c.write(&[5, 1, 0, 15, 0, 18]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ev = srv.sink.take();
    assert_eq!(
        ev[..4],
        [
            InputEvent::Key {
                key: KeyCode::A,
                down: true
            },
            InputEvent::Key {
                key: KeyCode::A,
                down: false
            },
            InputEvent::Key {
                key: KeyCode::Ret,
                down: true
            },
            InputEvent::Key {
                key: KeyCode::Down,
                down: true
            },
        ]
    );
    assert!(ev.contains(&InputEvent::PointerRel {
        dx: 5,
        dy: -2,
        dz: 0,
        buttons: crate::display::input::Buttons(1)
    }));
    // Disconnecting releases the keys still held.
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ev = srv.sink.take();
    assert!(ev.contains(&InputEvent::Key {
        key: KeyCode::Ret,
        down: false
    }));
    assert!(ev.contains(&InputEvent::Key {
        key: KeyCode::Down,
        down: false
    }));
}

#[tokio::test]
async fn a_slow_client_does_not_slow_the_producer_or_other_clients() {
    let srv = server(|_| {});
    let mut slow = Client::connect(&srv.handle).await;
    slow.init(true).await;
    slow.set_encodings(&[enc::RAW]).await;
    // Ask for lots of full updates and never read them.
    for _ in 0..200 {
        slow.request(false, Rect::new(0, 0, 720, 400)).await;
    }
    let mut fast = Client::connect(&srv.handle).await;
    fast.init(true).await;
    fast.set_encodings(&[enc::TIGHT]).await;
    fast.request(false, Rect::new(0, 0, 720, 400)).await;
    fast.drain(Duration::from_millis(200)).await;
    let t = Instant::now();
    for i in 0..2000u32 {
        srv.writer
            .update(Rect::new(i % 720, (i / 720) % 400, 1, 1), &[i], 1);
    }
    let produce = t.elapsed();
    assert!(
        produce < Duration::from_millis(500),
        "producer took {produce:?}"
    );
    for i in 0..3u32 {
        fast.request(true, Rect::new(0, 0, 720, 400)).await;
        let t = Instant::now();
        srv.writer.update(Rect::new(0, 0, 1, 1), &[0xabc000 + i], 1);
        fast.read(4).await;
        assert!(t.elapsed() < Duration::from_millis(100));
        fast.drain(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_thousand_dropped_connections_leave_the_server_serving() {
    let srv = server(|_| {});
    for i in 0..1000 {
        let mut s = TcpStream::connect(srv.handle.local_addr()).await.unwrap();
        if i % 3 == 0 {
            let _ = s.write_all(b"RFB 003.008\n\x01").await;
        }
        drop(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = Client::connect(&srv.handle).await;
    c.init(true).await;
    c.request(false, Rect::new(0, 0, 720, 400)).await;
    assert_eq!(c.read(4).await[0], 0);
    let info = srv.handle.info();
    assert_eq!(info.clients.len(), 1, "{info:?}");
}

#[tokio::test]
async fn share_policies_follow_qemu() {
    // allow-exclusive: an exclusive client disconnects the others; then shared ones are refused.
    let srv = server(|_| {});
    let mut a = Client::connect(&srv.handle).await;
    a.init(true).await;
    let mut b = Client::connect(&srv.handle).await;
    b.init(false).await;
    assert!(a.closed().await);
    let mut c = Client::connect(&srv.handle).await;
    c.read(12).await;
    c.write(b"RFB 003.008\n").await;
    c.read(2).await;
    c.write(&[1]).await;
    c.read(4).await;
    c.write(&[1]).await;
    assert!(c.closed().await);
    drop(b);
    // force-shared: exclusive requests are refused, shared ones coexist.
    let srv = server(|o| o.share = SharePolicy::ForceShared);
    let mut a = Client::connect(&srv.handle).await;
    a.init(true).await;
    let mut b = Client::connect(&srv.handle).await;
    b.read(12).await;
    b.write(b"RFB 003.008\n").await;
    b.read(2).await;
    b.write(&[1]).await;
    b.read(4).await;
    b.write(&[0]).await;
    assert!(b.closed().await);
    a.request(false, Rect::new(0, 0, 8, 8)).await;
    assert_eq!(a.read(4).await[0], 0);
    // ignore: exclusive clients coexist.
    let srv = server(|o| o.share = SharePolicy::Ignore);
    let mut a = Client::connect(&srv.handle).await;
    a.init(false).await;
    let mut b = Client::connect(&srv.handle).await;
    b.init(false).await;
    a.request(false, Rect::new(0, 0, 8, 8)).await;
    assert_eq!(a.read(4).await[0], 0);
    assert_eq!(srv.handle.info().clients.len(), 2);
}

#[tokio::test]
async fn info_vnc_prints_like_qemu() {
    let srv = server(|_| {});
    let port = srv.handle.local_addr().port();
    assert_eq!(
        srv.handle.info().to_hmp(),
        format!("default:\n  Server: 127.0.0.1:{port} (ipv4)\n    Auth: none (Sub: none)\n")
    );
    let mut c = Client::connect(&srv.handle).await;
    c.init(true).await;
    let cport = c.s.local_addr().unwrap().port();
    let text = srv.handle.info().to_hmp();
    assert!(
        text.ends_with(&format!(
            "  Client: 127.0.0.1:{cport} (ipv4)\n    x509_dname: none\n    sasl_username: none\n"
        )),
        "{text}"
    );
    let q = srv.handle.info().to_query_vnc();
    assert_eq!(q["enabled"], true);
    assert_eq!(q["service"], port.to_string());
    assert_eq!(q["clients"][0]["service"], cport.to_string());
}

#[tokio::test]
async fn to_tries_the_next_port() {
    let d = free_display();
    let _busy = std::net::TcpListener::bind(("127.0.0.1", 5900 + d)).unwrap();
    let (_w, display) = new_display(64, 64).unwrap();
    let mut opts = VncOptions::new("127.0.0.1", d);
    assert!(start(
        &tokio::runtime::Handle::current(),
        &Registry::new(),
        opts.clone(),
        display.clone(),
        Arc::new(RecordingSink::default())
    )
    .is_err());
    opts.to = Some(d + 20);
    let h = start(
        &tokio::runtime::Handle::current(),
        &Registry::new(),
        opts,
        display,
        Arc::new(RecordingSink::default()),
    )
    .unwrap();
    assert!(h.local_addr().port() > 5900 + d);
}

#[tokio::test]
async fn cursor_shape_goes_to_cursor_aware_clients() {
    let srv = server(|_| {});
    let mut c = Client::connect(&srv.handle).await;
    c.init(true).await;
    c.set_encodings(&[enc::RAW, enc::CURSOR]).await;
    c.request(false, Rect::new(0, 0, 720, 400)).await;
    c.drain(Duration::from_millis(200)).await;
    srv.writer.set_cursor(Some(crate::display::Cursor {
        width: 2,
        height: 2,
        hot_x: 1,
        hot_y: 0,
        pixels: vec![0xff0000, 0x00ff00, 0x0000ff, 0xffffff],
        mask: vec![true, false, false, true],
    }));
    c.request(true, Rect::new(0, 0, 720, 400)).await;
    let msg = c.drain(Duration::from_millis(200)).await;
    let mut want = vec![0, 0, 0, 1, 0, 1, 0, 0, 0, 2, 0, 2];
    want.extend_from_slice(&enc::CURSOR.to_be_bytes());
    for p in [0xff0000u32, 0x00ff00, 0x0000ff, 0xffffff] {
        want.extend_from_slice(&p.to_le_bytes());
    }
    want.extend_from_slice(&[0x80, 0x40]);
    assert_eq!(msg, want);
}

#[tokio::test]
async fn with_a_tablet_pointer_events_are_absolute_and_announced() {
    let srv = server_with(true, |_| {});
    let mut c = Client::connect(&srv.handle).await;
    c.init(true).await;
    c.set_encodings(&[enc::RAW, enc::POINTER_TYPE_CHANGE]).await;
    let msg = c.drain(Duration::from_millis(200)).await;
    // x = 1: absolute.
    let mut want = vec![0, 0, 0, 1, 0, 1, 0, 0, 2, 208, 1, 144];
    want.extend_from_slice(&enc::POINTER_TYPE_CHANGE.to_be_bytes());
    assert_eq!(msg, want);
    c.write(&[5, 4, 0x02, 0xd0, 0x01, 0x00]).await; // (720, 256): clamped to 719
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        srv.sink.take(),
        vec![InputEvent::PointerAbs {
            x: 719,
            y: 256,
            width: 720,
            height: 400,
            buttons: crate::display::input::Buttons(4)
        }]
    );
}

#[tokio::test]
async fn set_desktop_size_is_refused_politely() {
    let srv = server(|_| {});
    let mut c = Client::connect(&srv.handle).await;
    c.init(true).await;
    c.set_encodings(&[enc::RAW, enc::EXTENDED_DESKTOP_SIZE])
        .await;
    c.drain(Duration::from_millis(100)).await;
    let mut m = vec![251, 0, 4, 0, 3, 0, 1, 0];
    m.extend_from_slice(&[0; 16]);
    c.write(&m).await;
    let msg = c.drain(Duration::from_millis(200)).await;
    // reason 1 (this client), status 1 (prohibited), size unchanged.
    assert_eq!(&msg[..12], &[0, 0, 0, 1, 0, 1, 0, 1, 2, 208, 1, 144]);
    // The session goes on.
    c.request(false, Rect::new(0, 0, 8, 8)).await;
    assert_eq!(c.read(4).await[0], 0);
}
