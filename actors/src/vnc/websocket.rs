//! RFB over WebSocket (`-vnc ...,websocket=PORT`), so noVNC connects without websockify.
//!
//! RFC 6455: an HTTP/1.1 Upgrade handshake (§4.2; `Sec-WebSocket-Accept` is
//! base64(SHA-1(key + GUID)), the `binary` subprotocol is echoed when offered), then
//! frames (§5.2): client frames are masked, server frames are not; data goes out as
//! binary frames; pings are answered, a close is echoed. The RFB session itself never
//! sees any of this: [`accept`] returns a byte stream that two pump tasks connect to the
//! socket.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

use super::VncError;
use crate::runtime::spawn_task;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Longest handshake request accepted.
const MAX_REQUEST: usize = 16 * 1024;

/// SHA-1 (FIPS 180-4), enough for the handshake.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([
                block[4 * i],
                block[4 * i + 1],
                block[4 * i + 2],
                block[4 * i + 3],
            ]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, v) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&v.to_be_bytes());
    }
    out
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// The `Sec-WebSocket-Accept` value for a key.
pub fn accept_key(key: &str) -> String {
    base64(&sha1(format!("{}{GUID}", key.trim()).as_bytes()))
}

/// Read the handshake request (up to the blank line), bounded in size and time.
async fn read_request<S: AsyncRead + Unpin>(s: &mut S) -> Result<String, VncError> {
    let mut buf = Vec::with_capacity(1024);
    let mut byte = [0u8; 1];
    let read = async {
        loop {
            if s.read(&mut byte).await? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
            buf.push(byte[0]);
            if buf.ends_with(b"\r\n\r\n") || buf.ends_with(b"\n\n") {
                return Ok(());
            }
            if buf.len() > MAX_REQUEST {
                return Err(std::io::Error::other("request too long"));
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), read).await {
        Ok(Ok(())) => Ok(String::from_utf8_lossy(&buf).into_owned()),
        Ok(Err(e)) => Err(VncError::WebSocket(format!("reading the handshake: {e}"))),
        Err(_) => Err(VncError::WebSocket("handshake timed out".into())),
    }
}

/// What the handshake request asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct Handshake {
    pub key: String,
    pub binary: bool,
}

/// Check an upgrade request.
pub fn parse_request(req: &str) -> Result<Handshake, String> {
    let mut lines = req.lines();
    let first = lines.next().unwrap_or_default();
    if !first.starts_with("GET ") {
        return Err(format!("not a GET request: '{}'", first.trim()));
    }
    let (mut upgrade, mut key, mut version, mut binary) = (false, None, None, false);
    for l in lines {
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "upgrade" => upgrade = value.eq_ignore_ascii_case("websocket"),
            "sec-websocket-key" => key = Some(value.to_string()),
            "sec-websocket-version" => version = Some(value.to_string()),
            "sec-websocket-protocol" => {
                binary = value.split(',').any(|p| p.trim() == "binary");
            }
            _ => {}
        }
    }
    if !upgrade {
        return Err("missing 'Upgrade: websocket'".into());
    }
    if version.as_deref() != Some("13") {
        return Err(format!(
            "unsupported Sec-WebSocket-Version {version:?} (need 13)"
        ));
    }
    let key = key.ok_or("missing Sec-WebSocket-Key")?;
    Ok(Handshake { key, binary })
}

/// Do the handshake on `stream` and return a plain byte stream carrying the RFB session.
pub async fn accept<S>(
    mut stream: S,
    registry: &crate::runtime::Registry,
    actor: &str,
) -> Result<DuplexStream, VncError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let req = read_request(&mut stream).await?;
    let hs = match parse_request(&req) {
        Ok(h) => h,
        Err(e) => {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            return Err(VncError::WebSocket(e));
        }
    };
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        accept_key(&hs.key)
    );
    if hs.binary {
        resp.push_str("Sec-WebSocket-Protocol: binary\r\n");
    }
    resp.push_str("\r\n");
    stream
        .write_all(resp.as_bytes())
        .await
        .map_err(|e| VncError::WebSocket(format!("writing the handshake: {e}")))?;

    let (app, ours) = tokio::io::duplex(256 * 1024);
    let (sock_r, sock_w) = tokio::io::split(stream);
    let (ours_r, ours_w) = tokio::io::split(ours);
    let (ctl_tx, ctl_rx) = mpsc::channel::<(u8, Vec<u8>)>(4);
    let rt = tokio::runtime::Handle::current();
    let pump = |dir: &str| format!("{actor}.ws-{dir}");
    spawn_task(
        &rt,
        registry,
        &pump("write"),
        "websocket",
        None,
        write_pump(sock_w, ours_r, ctl_rx),
    );
    spawn_task(
        &rt,
        registry,
        &pump("read"),
        "websocket",
        None,
        read_pump(sock_r, ours_w, ctl_tx),
    );
    Ok(app)
}

fn frame_header(opcode: u8, len: usize) -> Vec<u8> {
    let mut h = vec![0x80 | opcode];
    if len < 126 {
        h.push(len as u8);
    } else if len <= 0xffff {
        h.push(126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(127);
        h.extend_from_slice(&(len as u64).to_be_bytes());
    }
    h
}

/// RFB bytes → binary frames; control frames from the read pump.
async fn write_pump<W, R>(mut sock: W, mut rfb: R, mut ctl: mpsc::Receiver<(u8, Vec<u8>)>)
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            n = rfb.read(&mut buf) => {
                let n = match n { Ok(0) | Err(_) => break, Ok(n) => n };
                let mut f = frame_header(2, n);
                f.extend_from_slice(&buf[..n]);
                if sock.write_all(&f).await.is_err() {
                    return;
                }
            }
            c = ctl.recv() => {
                let Some((op, payload)) = c else { break };
                let mut f = frame_header(op, payload.len());
                f.extend_from_slice(&payload);
                if sock.write_all(&f).await.is_err() || op == 8 {
                    let _ = sock.shutdown().await;
                    return;
                }
            }
        }
    }
    let mut f = frame_header(8, 2);
    f.extend_from_slice(&1000u16.to_be_bytes());
    let _ = sock.write_all(&f).await;
    let _ = sock.shutdown().await;
}

/// Frames from the client → RFB bytes.
async fn read_pump<R, W>(mut sock: R, mut rfb: W, ctl: mpsc::Sender<(u8, Vec<u8>)>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut h = [0u8; 2];
        if sock.read_exact(&mut h).await.is_err() {
            break;
        }
        let opcode = h[0] & 0x0f;
        let masked = h[1] & 0x80 != 0;
        let mut len = u64::from(h[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            if sock.read_exact(&mut b).await.is_err() {
                break;
            }
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            if sock.read_exact(&mut b).await.is_err() {
                break;
            }
            len = u64::from_be_bytes(b);
        }
        if !masked {
            // RFC 6455 §5.1: the server must close on an unmasked client frame.
            let _ = ctl.send((8, 1002u16.to_be_bytes().to_vec())).await;
            break;
        }
        let mut mask = [0u8; 4];
        if sock.read_exact(&mut mask).await.is_err() {
            break;
        }
        if opcode >= 8 {
            // Control frames carry at most 125 bytes (§5.5).
            if len > 125 {
                break;
            }
            let mut p = vec![0u8; len as usize];
            if sock.read_exact(&mut p).await.is_err() {
                break;
            }
            for (i, b) in p.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
            match opcode {
                8 => {
                    let _ = ctl.send((8, p.get(..2).unwrap_or(&[]).to_vec())).await;
                    break;
                }
                9 => {
                    let _ = ctl.send((10, p)).await;
                }
                _ => {}
            }
            continue;
        }
        // Data (binary, text or continuation): stream the payload through, unmasked,
        // without ever holding more than one buffer of it.
        let mut off = 0u64;
        while off < len {
            let n = (len - off).min(buf.len() as u64) as usize;
            if sock.read_exact(&mut buf[..n]).await.is_err() {
                return;
            }
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b ^= mask[((off as usize) + i) % 4];
            }
            if rfb.write_all(&buf[..n]).await.is_err() {
                return;
            }
            off += n as u64;
        }
    }
    let _ = rfb.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_vectors() {
        let hex = |b: [u8; 20]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            hex(sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(hex(sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            hex(sha1(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
    }

    #[test]
    fn base64_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn rfc6455_example_accept_key() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn handshake_parsing() {
        let ok = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Key: abc\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: base64, binary\r\n\r\n";
        assert_eq!(
            parse_request(ok).unwrap(),
            Handshake {
                key: "abc".into(),
                binary: true
            }
        );
        assert!(parse_request("RFB 003.008\n").is_err());
        assert!(parse_request(&ok.replace("13", "8")).is_err());
    }

    #[tokio::test]
    async fn frames_round_trip_through_the_pumps() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let reg = crate::runtime::Registry::new();
        let srv = tokio::spawn(async move { accept(server, &reg, "vnc.client0").await });
        let (mut cr, mut cw) = tokio::io::split(client);
        cw.write_all(
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        let mut app = srv.await.unwrap().unwrap();
        let mut resp = vec![0u8; 129];
        cr.read_exact(&mut resp).await.unwrap();
        let resp = String::from_utf8_lossy(&resp);
        assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
        assert!(resp.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{resp}");
        // Server → client: a binary frame.
        app.write_all(b"RFB 003.008\n").await.unwrap();
        let mut f = [0u8; 14];
        cr.read_exact(&mut f).await.unwrap();
        assert_eq!(&f[..2], &[0x82, 12]);
        assert_eq!(&f[2..], b"RFB 003.008\n");
        // Client → server: a masked frame.
        let mask = [1u8, 2, 3, 4];
        let payload = b"RFB 003.003\n";
        let mut frame = vec![0x82, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        cw.write_all(&frame).await.unwrap();
        let mut got = [0u8; 12];
        app.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, payload);
        // Ping → pong.
        cw.write_all(&[0x89, 0x80, 0, 0, 0, 0]).await.unwrap();
        let mut pong = [0u8; 2];
        cr.read_exact(&mut pong).await.unwrap();
        assert_eq!(pong, [0x8a, 0]);
    }
}
