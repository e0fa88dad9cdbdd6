//! Fuzz target for the RFB server: a whole client connection through
//! [`client::serve`] — handshake (RFB 3.3/3.7/3.8, None or VNC authentication, or the
//! WebSocket upgrade and framing first), then client messages (§7.5) — with the server's
//! answers (framebuffer updates in whatever pixel format and encodings the bytes asked
//! for) drained on the other end of an in-memory pipe. Everything runs on the fuzz
//! thread's own single-threaded runtime, so a panic in the session's reader task counts.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::encode::enc;
use super::{client, server, ClientCtx, VncOptions};
use crate::display::input::RecordingSink;
use crate::display::{new_display, Rect};
use crate::runtime::Registry;

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the fuzz thread");
}

/// Input: one byte of server settings (bit 0 password authentication, bit 1 WebSocket,
/// bit 2 an absolute pointer (tablet), bit 3 lossy), then what the client sends.
pub fn rfb(data: &[u8]) {
    let _ = session_output(data);
}

/// What the server sent to the client of [`rfb`].
fn session_output(data: &[u8]) -> Vec<u8> {
    let Some((&flags, stream)) = data.split_first() else {
        return Vec::new();
    };
    let Ok((writer, display)) = new_display(64, 48) else {
        return Vec::new();
    };
    let pixels: Vec<u32> = (0..64 * 48u32)
        .map(|i| i.wrapping_mul(0x0001_0307))
        .collect();
    writer.update(Rect::new(0, 0, 64, 48), &pixels, 64);
    let mut opts = VncOptions::new("127.0.0.1", 0);
    opts.password = flags & 1 != 0;
    opts.lossy = flags & 8 != 0;
    let shared = server::detached(opts, display);
    if flags & 1 != 0 {
        let _ = shared.set_password("secret");
    }
    let ctx = ClientCtx {
        shared,
        input: Arc::new(RecordingSink::new(flags & 4 != 0)),
        registry: Registry::new(),
        actor: "vnc.fuzz".into(),
    };
    let input = stream.to_vec();
    let out = RT.with(|rt| {
        rt.block_on(async move {
            let (server_side, client_side) = tokio::io::duplex(1 << 16);
            let (mut rd, mut wr) = tokio::io::split(client_side);
            let received = std::rc::Rc::new(std::cell::Cell::new(0usize));
            let seen = received.clone();
            let send = async move {
                let _ = wr.write_all(&input).await;
                // Hang up only once the server has answered everything (its tasks all
                // wait, so nothing arrives over several turns of the runtime): closing
                // at once would end the session before the updates were sent.
                let (mut last, mut quiet) = (usize::MAX, 0);
                while quiet < 16 {
                    tokio::task::yield_now().await;
                    let now = seen.get();
                    quiet = if now == last { quiet + 1 } else { 0 };
                    last = now;
                }
                let _ = wr.shutdown().await;
                // Keep the write half until the server is done reading.
                wr
            };
            let drain = async move {
                let mut out = Vec::new();
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n) = rd.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    out.extend_from_slice(&buf[..n]);
                    received.set(out.len());
                }
                out
            };
            let addr = SocketAddr::from(([127, 0, 0, 1], 40000));
            let serve = client::serve(server_side, addr, flags & 2 != 0, ctx);
            tokio::join!(serve, send, drain).2
        })
    });
    drop(writer);
    out
}

fn msg_set_encodings(list: &[i32]) -> Vec<u8> {
    let mut m = vec![2, 0];
    m.extend_from_slice(&(list.len() as u16).to_be_bytes());
    for e in list {
        m.extend_from_slice(&e.to_be_bytes());
    }
    m
}

fn msg_pixel_format(bpp: u8, depth: u8, big: u8, max: [u16; 3], shift: [u8; 3]) -> Vec<u8> {
    let mut m = vec![0, 0, 0, 0, bpp, depth, big, 1];
    for v in max {
        m.extend_from_slice(&v.to_be_bytes());
    }
    m.extend_from_slice(&shift);
    m.extend_from_slice(&[0, 0, 0]);
    m
}

fn msg_update(incremental: u8, x: u16, y: u16, w: u16, h: u16) -> Vec<u8> {
    let mut m = vec![3, incremental];
    for v in [x, y, w, h] {
        m.extend_from_slice(&v.to_be_bytes());
    }
    m
}

/// A session after the handshake: formats, encodings, updates and input.
fn session(encodings: &[i32], pf: Vec<u8>) -> Vec<u8> {
    let mut s = pf;
    s.extend(msg_set_encodings(encodings));
    s.extend(msg_update(0, 0, 0, 64, 48));
    s.extend([4, 1, 0, 0, 0, 0, 0, 0x61, 4, 0, 0, 0, 0, 0, 0, 0x61]);
    s.extend([5, 1, 0, 10, 0, 20, 5, 0, 0, 12, 0, 22, 5, 8, 0, 12, 0, 22]);
    s.extend([6, 0, 0, 0, 0, 0, 0, 5]);
    s.extend(b"hello");
    s.extend([255, 0, 0, 1, 0, 0, 0, 0x62, 0, 0, 0, 0x30]);
    s.extend(msg_update(1, 8, 8, 16, 16));
    s.extend([
        251, 0, 0, 64, 0, 48, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 64, 0, 48, 0, 0, 0, 0,
    ]);
    s
}

/// Valid inputs to start from (a corpus for cargo-fuzz too).
pub fn rfb_seeds() -> Vec<Vec<u8>> {
    let true_colour = msg_pixel_format(32, 24, 0, [255, 255, 255], [16, 8, 0]);
    let rgb565 = msg_pixel_format(16, 16, 1, [31, 63, 31], [11, 5, 0]);
    let bgr233 = msg_pixel_format(8, 8, 0, [7, 7, 3], [0, 3, 6]);
    let pseudo = [
        enc::CURSOR,
        enc::DESKTOP_SIZE,
        enc::EXTENDED_DESKTOP_SIZE,
        enc::LED_STATE,
        enc::QEMU_EXT_KEY_EVENT,
        enc::POINTER_TYPE_CHANGE,
        enc::LAST_RECT,
        enc::COMPRESS_LEVEL_0 + 6,
        enc::JPEG_QUALITY_0 + 5,
    ];
    let with = |e: i32| {
        let mut l = vec![e];
        l.extend_from_slice(&pseudo);
        l
    };
    let v38 = |rest: Vec<u8>| [b"\x00RFB 003.008\n\x01\x01".to_vec(), rest].concat();
    let mut seeds = vec![
        v38(session(&with(enc::RAW), true_colour.clone())),
        v38(session(&with(enc::HEXTILE), rgb565.clone())),
        v38(session(&with(enc::ZRLE), true_colour.clone())),
        v38(session(&with(enc::TIGHT), bgr233.clone())),
        v38(session(&with(enc::ZLIB), rgb565)),
        v38(session(&with(enc::TIGHT_PNG), true_colour.clone())),
        // Lossy Tight (JPEG) on a tablet.
        [
            b"\x0cRFB 003.008\n\x01\x01".to_vec(),
            session(&with(enc::TIGHT), true_colour.clone()),
        ]
        .concat(),
        // RFB 3.3: the server picks the security type.
        [
            b"\x00RFB 003.003\n\x00".to_vec(),
            session(&[enc::RAW], bgr233),
        ]
        .concat(),
        // VNC authentication with a wrong response.
        [b"\x01RFB 003.008\n\x02".to_vec(), vec![0x5a; 16], vec![1]].concat(),
    ];
    // The same over WebSocket: the upgrade, then the RFB bytes in masked binary frames.
    let mut ws = b"\x02GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n\r\n"
        .to_vec();
    let rfb = v38(session(&with(enc::RAW), true_colour));
    for chunk in rfb[1..].chunks(100) {
        ws.extend([0x82, 0x80 | chunk.len() as u8, 0, 0, 0, 0]);
        ws.extend_from_slice(chunk);
    }
    seeds.push(ws);
    seeds
}

/// The seeds get where the fuzzing should start: past the handshake to framebuffer
/// updates of the whole 64x48 screen (over WebSocket too), or to the refusal of a wrong
/// password.
#[test]
fn the_rfb_seeds_reach_framebuffer_updates() {
    let seeds = rfb_seeds();
    for s in seeds.iter().filter(|s| s[0] & 1 == 0) {
        let out = session_output(s);
        // Version, security result, ServerInit (24 bytes and the name), then an update
        // whose first rectangle is the whole screen.
        assert!(out.len() > 12 + 4 + 24 + 4 + 64, "{} bytes", out.len());
        let at = out.len().min(400);
        assert!(
            out.windows(8).any(|w| w == [0, 0, 0, 0, 0, 64, 0, 48]) || s[0] & 2 != 0,
            "no update in {:?}",
            &out[..at]
        );
    }
    let wrong = seeds.iter().find(|s| s[0] & 1 != 0).unwrap();
    let out = session_output(wrong);
    assert!(out.ends_with(b"Authentication failed"), "{out:?}");
}

#[test]
fn fuzz_rfb_client_messages() {
    use troupe_fuzz::{fuzz, Target};
    fuzz(Target {
        name: "rfb",
        run: rfb,
        seeds: rfb_seeds(),
        dict: vec![
            b"RFB 003.008\n".to_vec(),
            vec![0xff, 0xff, 0xfe, 0xd1],
            vec![0xff, 0xff, 0xff, 0x11],
            vec![0, 0, 0, 7],
            vec![0, 0, 0, 16],
            vec![0, 0, 0, 5],
            vec![3, 0],
            vec![0x82, 0xfe],
            vec![0x88, 0x80],
        ],
        max_len: 8192,
        threads: vec![],
    });
}
