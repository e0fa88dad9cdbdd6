//! One VNC client: handshake (RFB 3.8 §7.1–7.3, with QEMU's rules for 3.3/3.7), then a
//! session of two tasks. The reader parses client messages (§7.5), sends input to the
//! [`InputSink`] at once and drops update requests, format and encoding changes into a
//! coalescing slot. The writer owns the session: it follows the display, keeps a shadow
//! copy and the client's pending tiles, and answers requests — right away when the
//! pending tiles already cover them, otherwise as soon as the surface changes.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use super::des::vnc_response;
use super::encode::{enc, put_rect_header, Encoder, PixelEncoding};
use super::keymap::Keymap;
use super::pixel::PixelFormat;
use super::{tls, websocket, ClientCtx, VncError, CUT_TEXT_LIMIT};
use crate::display::input::{keysym_char, Buttons, InputEvent, InputSink};
use crate::display::keycodes::KeyCode;
use crate::display::{Cursor, DisplayHandle, Leds, Rect, Surface, TileMap};
use crate::runtime::spawn_task;

/// The whole handshake (version, security, ClientInit) must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Serve one accepted connection until it ends; never panics on client input.
pub async fn serve<S>(sock: S, addr: SocketAddr, websocket: bool, ctx: ClientCtx)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = ctx.shared.clone();
    let (id, kick) = shared.add_client(addr, websocket);
    // The client leaves the server's list just before its socket closes, so a client that
    // saw the connection end finds its slot free when it connects again at once.
    let sock = Listed {
        _place: Place {
            shared: shared.clone(),
            id,
        },
        sock,
    };
    let pressed = Arc::new(Mutex::new(HashSet::new()));
    // However the session ends (a panic included), its held keys are released.
    let _leave = Leave {
        pressed: pressed.clone(),
        input: ctx.input.clone(),
    };
    let run = async {
        if websocket {
            let s = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                websocket::accept(sock, &ctx.registry, &ctx.actor),
            )
            .await
            .map_err(|_| VncError::HandshakeTimeout)??;
            session(s, id, &ctx, pressed.clone()).await
        } else {
            session(sock, id, &ctx, pressed.clone()).await
        }
    };
    let res = tokio::select! {
        r = run => r,
        _ = kick.notified() => Err(VncError::Share("disconnected by the server")),
    };
    match res {
        Ok(()) => tracing::debug!(client = %addr, "VNC client disconnected"),
        Err(VncError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            tracing::debug!(client = %addr, "VNC client closed the connection")
        }
        Err(e) => tracing::info!(client = %addr, "VNC client dropped: {e}"),
    }
}

/// A client's place in the server's list, given up when dropped.
struct Place {
    shared: Arc<super::server::Shared>,
    id: u64,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.shared.remove_client(self.id);
    }
}

/// A client's socket with its place in the list: the place goes first (fields drop in
/// order), then the socket closes.
struct Listed<S> {
    _place: Place,
    sock: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Listed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.sock).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Listed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.sock).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.sock).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.sock).poll_shutdown(cx)
    }
}

/// A client's way out: its held keys released, the allocator's spare pages returned.
struct Leave {
    pressed: Arc<Mutex<HashSet<KeyCode>>>,
    input: Arc<dyn InputSink>,
}

impl Drop for Leave {
    fn drop(&mut self) {
        // Keys held when the client went away are released, so the guest sees no stuck key.
        let held: Vec<KeyCode> = lock(&self.pressed).drain().collect();
        for key in held {
            self.input.send(InputEvent::Key { key, down: false });
        }
        // The session's buffers are freed by now; hand the pages the allocator keeps for
        // them in this thread's arena back to the kernel.
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only releases free memory; it is thread-safe.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn random_challenge() -> [u8; 16] {
    let mut c = [0u8; 16];
    // SAFETY: getrandom writes at most `c.len()` bytes into the buffer we own.
    let n = unsafe { libc::getrandom(c.as_mut_ptr().cast(), c.len(), 0) };
    if n != c.len() as isize {
        // Fall back to time-derived bytes (never expected on Linux >= 3.17).
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        c.copy_from_slice(&t.to_le_bytes());
    }
    c
}

/// Parse `RFB xxx.yyy\n`.
pub fn parse_version(v: &[u8; 12]) -> Option<(u32, u32)> {
    if &v[..4] != b"RFB " || v[7] != b'.' || v[11] != b'\n' {
        return None;
    }
    let num = |b: &[u8]| -> Option<u32> {
        if b.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(b).ok()?.parse().ok()
        } else {
            None
        }
    };
    Some((num(&v[4..7])?, num(&v[8..11])?))
}

async fn security_failure<W: AsyncWrite + Unpin>(wr: &mut W, minor: u32) -> Result<(), VncError> {
    let mut out = 1u32.to_be_bytes().to_vec();
    if minor >= 8 {
        let reason = b"Authentication failed";
        out.extend_from_slice(&(reason.len() as u32).to_be_bytes());
        out.extend_from_slice(reason);
    }
    wr.write_all(&out).await?;
    wr.flush().await?;
    Ok(())
}

/// The connection once the security handshake is done: as it came, or inside TLS.
enum Secured<S> {
    Plain(S),
    Tls(Box<tokio_rustls::server::TlsStream<S>>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Secured<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Secured::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Secured::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Secured<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Secured::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Secured::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Secured::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Secured::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Secured::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Secured::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Version and security (VeNCrypt's TLS when the server has credentials); on success the
/// client may send ClientInit on the stream returned.
async fn handshake<S>(mut s: S, ctx: &ClientCtx) -> Result<Secured<S>, VncError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    s.write_all(b"RFB 003.008\n").await?;
    let mut v = [0u8; 12];
    s.read_exact(&mut v).await?;
    let (major, minor) = parse_version(&v)
        .ok_or_else(|| VncError::BadVersion(String::from_utf8_lossy(&v).into_owned()))?;
    if major != 3 || ![3, 4, 5, 7, 8].contains(&minor) {
        // QEMU answers an unknown version with security type 0 (invalid) and closes.
        s.write_all(&0u32.to_be_bytes()).await?;
        return Err(VncError::UnsupportedVersion(major, minor));
    }
    // 3.4 and 3.5 are treated as 3.3, as the spec asks.
    let minor = if minor == 4 || minor == 5 { 3 } else { minor };
    let password = ctx.shared.opts.password;
    let tls = ctx.shared.opts.tls.clone();
    let auth: u8 = match (&tls, password) {
        (Some(_), _) => tls::VENCRYPT,
        (None, true) => 2,
        (None, false) => 1,
    };
    if minor == 3 {
        s.write_all(&u32::from(auth).to_be_bytes()).await?;
    } else {
        s.write_all(&[1, auth]).await?;
        let chosen = s.read_u8().await?;
        if chosen != auth {
            security_failure(&mut s, minor).await?;
            return Err(VncError::BadSecurityType(chosen));
        }
    }
    if let Some(cfg) = tls {
        // VeNCrypt 0.2: versions, the one subtype offered, then TLS.
        s.write_all(&[0, 2]).await?;
        let mut cv = [0u8; 2];
        s.read_exact(&mut cv).await?;
        if cv != [0, 2] {
            s.write_all(&[1]).await?;
            return Err(VncError::VencryptVersion(cv[0], cv[1]));
        }
        let sub = if password {
            tls::X509_VNC
        } else {
            tls::X509_NONE
        };
        let mut offer = vec![0u8, 1];
        offer.extend_from_slice(&sub.to_be_bytes());
        s.write_all(&offer).await?;
        let chosen = s.read_u32().await?;
        if chosen != sub {
            s.write_all(&[0]).await?;
            return Err(VncError::VencryptSubtype(chosen));
        }
        s.write_all(&[1]).await?;
        s.flush().await?;
        let mut t = tokio_rustls::TlsAcceptor::from(cfg)
            .accept(s)
            .await
            .map_err(|e| VncError::Tls(e.to_string()))?;
        if password {
            vnc_auth(&mut t, ctx, minor).await?;
        } else {
            t.write_all(&0u32.to_be_bytes()).await?;
        }
        t.flush().await?;
        return Ok(Secured::Tls(Box::new(t)));
    }
    if auth == 1 {
        if minor >= 8 {
            s.write_all(&0u32.to_be_bytes()).await?;
        }
        return Ok(Secured::Plain(s));
    }
    vnc_auth(&mut s, ctx, minor).await?;
    Ok(Secured::Plain(s))
}

/// VNC authentication: a DES challenge against the current password, then the result.
async fn vnc_auth<S>(s: &mut S, ctx: &ClientCtx, minor: u32) -> Result<(), VncError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let challenge = random_challenge();
    s.write_all(&challenge).await?;
    s.flush().await?;
    let mut resp = [0u8; 16];
    s.read_exact(&mut resp).await?;
    let verdict = match ctx.shared.current_password() {
        None => Err("no password set, or it expired"),
        Some(pw) if vnc_response(pw.as_bytes(), &challenge) == resp => Ok(()),
        Some(_) => Err("wrong password"),
    };
    match verdict {
        Ok(()) => {
            s.write_all(&0u32.to_be_bytes()).await?;
            Ok(())
        }
        Err(why) => {
            security_failure(s, minor).await?;
            Err(VncError::AuthFailed(why))
        }
    }
}

/// A pending FramebufferUpdateRequest (several coalesce into one).
#[derive(Debug, Clone, Copy)]
struct UpdateReq {
    incremental: bool,
    rect: Rect,
}

/// What the reader hands the writer.
#[derive(Default)]
struct Requests {
    pixel_format: Option<PixelFormat>,
    encodings: Option<Vec<i32>>,
    update: Option<UpdateReq>,
    /// A SetDesktopSize to refuse.
    refuse_resize: bool,
    /// The reader ended (with this reason).
    closed: Option<VncError>,
}

struct Slot {
    req: Mutex<Requests>,
    notify: Notify,
}

impl Slot {
    fn post(&self, f: impl FnOnce(&mut Requests)) {
        f(&mut lock(&self.req));
        self.notify.notify_one();
    }
}

fn bounding(a: Rect, b: Rect) -> Rect {
    let x = a.x.min(b.x);
    let y = a.y.min(b.y);
    let r = (a.x + a.w).max(b.x + b.w);
    let bt = (a.y + a.h).max(b.y + b.h);
    Rect::new(x, y, r - x, bt - y)
}

async fn session<S>(
    stream: S,
    id: u64,
    ctx: &ClientCtx,
    pressed: Arc<Mutex<HashSet<KeyCode>>>,
) -> Result<(), VncError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = &ctx.shared;
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let mut s = handshake(stream, ctx).await?;
        let flag = s.read_u8().await?;
        shared.client_init(id, flag != 0)?;
        Ok::<_, VncError>(s)
    })
    .await
    .map_err(|_| VncError::HandshakeTimeout)??;
    let (rd, mut wr) = tokio::io::split(stream);

    let mut sub = shared.display.subscribe();
    let mut shadow = Arc::new(Surface::new(1, 1));
    let mut pending = TileMap::new(1, 1);
    let first = sub.sync(&mut shadow, &mut pending);
    // ServerInit.
    let mut init = Vec::new();
    init.extend_from_slice(&(shadow.width() as u16).to_be_bytes());
    init.extend_from_slice(&(shadow.height() as u16).to_be_bytes());
    init.extend_from_slice(&PixelFormat::SERVER.to_bytes());
    let name = shared.opts.name.as_bytes();
    init.extend_from_slice(&(name.len() as u32).to_be_bytes());
    init.extend_from_slice(name);
    wr.write_all(&init).await?;
    wr.flush().await?;

    let slot = Arc::new(Slot {
        req: Mutex::new(Requests::default()),
        notify: Notify::new(),
    });
    let _reader = AbortOnDrop(spawn_task(
        &tokio::runtime::Handle::current(),
        &ctx.registry,
        &format!("{}.reader", ctx.actor),
        "vnc-client",
        None,
        read_loop(
            rd,
            slot.clone(),
            ctx.input.clone(),
            shared.keymap,
            shared.display.clone(),
            pressed,
        ),
    ));
    let mut w = Writer {
        pf: PixelFormat::SERVER,
        encoding: PixelEncoding::Raw,
        feat: Features::default(),
        encoder: Encoder::new(shared.opts.lossy),
        client_w: shadow.width(),
        client_h: shadow.height(),
        shadow,
        pending,
        request: None,
        resized: false,
        cursor: first.cursor.flatten(),
        send_cursor: false,
        leds: first.leds.unwrap_or_default(),
        send_leds: false,
        announce: false,
        refuse_resize: false,
        absolute: ctx.input.absolute(),
        send_colour_map: false,
    };
    w.run(&mut wr, &mut sub, &slot).await
}

/// Stops the reader task (which holds the socket's read half) whenever the session
/// ends, including when its future is dropped because the client was kicked.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Pseudo-encodings the client announced.
#[derive(Debug, Default, Clone, Copy)]
struct Features {
    desktop_size: bool,
    ext_desktop_size: bool,
    cursor: bool,
    ext_key: bool,
    leds: bool,
    pointer_type: bool,
}

struct Writer {
    pf: PixelFormat,
    encoding: PixelEncoding,
    feat: Features,
    encoder: Encoder,
    /// The framebuffer size the client believes in.
    client_w: u32,
    client_h: u32,
    /// The display's shared copy as of the last sync.
    shadow: Arc<Surface>,
    /// Tiles changed since the client last got them.
    pending: TileMap,
    request: Option<UpdateReq>,
    /// The surface changed size and the client has not been told.
    resized: bool,
    cursor: Option<Arc<Cursor>>,
    send_cursor: bool,
    leds: Leds,
    send_leds: bool,
    /// Pseudo-encoding acknowledgements to send after SetEncodings.
    announce: bool,
    refuse_resize: bool,
    absolute: bool,
    /// The client chose a colour-map format: its palette goes before the next update.
    send_colour_map: bool,
}

impl Writer {
    async fn run<W: AsyncWrite + Unpin>(
        &mut self,
        wr: &mut W,
        sub: &mut crate::display::DisplaySubscriber,
        slot: &Slot,
    ) -> Result<(), VncError> {
        loop {
            let report = sub.sync(&mut self.shadow, &mut self.pending);
            if report.resized {
                self.resized = true;
            }
            if let Some(c) = report.cursor {
                self.cursor = c;
                self.send_cursor = true;
            }
            if let Some(l) = report.leds {
                self.leds = l;
                self.send_leds = true;
            }
            let reqs = std::mem::take(&mut *lock(&slot.req));
            if let Some(e) = reqs.closed {
                return Err(e);
            }
            self.apply(reqs);
            // The update is freed once written, not kept while the client idles.
            {
                let out = self.produce();
                if !out.is_empty() {
                    wr.write_all(&out).await?;
                    // TLS keeps what it could not send yet until flushed.
                    wr.flush().await?;
                }
            }
            tokio::select! {
                _ = sub.changed() => {}
                _ = slot.notify.notified() => {}
            }
        }
    }

    fn apply(&mut self, reqs: Requests) {
        if let Some(pf) = reqs.pixel_format {
            if pf != self.pf {
                self.pf = pf;
                self.pending.mark_all();
            }
            // QEMU sends its palette at every SetPixelFormat with a colour map.
            self.send_colour_map = !pf.true_colour;
        }
        if let Some(list) = reqs.encodings {
            let mut f = Features::default();
            let mut chosen = None;
            for e in &list {
                if chosen.is_none() {
                    chosen = PixelEncoding::from_number(*e);
                }
                match *e {
                    enc::DESKTOP_SIZE => f.desktop_size = true,
                    enc::EXTENDED_DESKTOP_SIZE => f.ext_desktop_size = true,
                    enc::CURSOR => f.cursor = true,
                    enc::QEMU_EXT_KEY_EVENT => f.ext_key = true,
                    enc::LED_STATE => f.leds = true,
                    enc::POINTER_TYPE_CHANGE => f.pointer_type = true,
                    n if (enc::JPEG_QUALITY_0..enc::JPEG_QUALITY_0 + 10).contains(&n) => {
                        self.encoder.jpeg_quality = Some((n - enc::JPEG_QUALITY_0) as u32);
                    }
                    n if (enc::COMPRESS_LEVEL_0..enc::COMPRESS_LEVEL_0 + 10).contains(&n) => {
                        self.encoder.level = (n - enc::COMPRESS_LEVEL_0) as u32;
                    }
                    _ => {}
                }
            }
            self.encoding = chosen.unwrap_or(PixelEncoding::Raw);
            self.feat = f;
            self.announce = true;
            self.send_leds = f.leds;
            self.send_cursor = f.cursor && self.cursor.is_some();
        }
        if reqs.refuse_resize {
            self.refuse_resize = true;
        }
        if let Some(u) = reqs.update {
            self.request = Some(match self.request {
                Some(old) => UpdateReq {
                    incremental: old.incremental && u.incremental,
                    rect: bounding(old.rect, u.rect),
                },
                None => u,
            });
        }
    }

    fn ext_desktop_size(&self, out: &mut Vec<u8>, reason: u16, status: u16) {
        put_rect_header(
            out,
            Rect::new(
                u32::from(reason),
                u32::from(status),
                self.client_w,
                self.client_h,
            ),
            enc::EXTENDED_DESKTOP_SIZE,
        );
        out.extend_from_slice(&[1, 0, 0, 0]);
        out.extend_from_slice(&0u32.to_be_bytes()); // screen id
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&(self.client_w as u16).to_be_bytes());
        out.extend_from_slice(&(self.client_h as u16).to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes()); // flags
    }

    /// Everything to send now, as zero or more FramebufferUpdate messages.
    fn produce(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if std::mem::take(&mut self.send_colour_map) {
            if let Some(map) = self.pf.colour_map() {
                out.extend_from_slice(&map);
            }
        }
        // Unsolicited pseudo-rectangles, as QEMU sends them: mode changes, the extended
        // key event and LED acknowledgements, the pointer type.
        let mut rects = Vec::new();
        let mut n = 0u16;
        let (sw, sh) = (self.shadow.width(), self.shadow.height());
        // A mode change is told as soon as the client can be told: a resize that came
        // before its SetEncodings announced DesktopSize is sent once it has.
        let differs = (sw, sh) != (self.client_w, self.client_h);
        if self.resized || differs {
            self.resized = false;
            if self.feat.ext_desktop_size || self.feat.desktop_size {
                self.client_w = sw;
                self.client_h = sh;
                if self.feat.ext_desktop_size {
                    self.ext_desktop_size(&mut rects, 0, 0);
                } else {
                    put_rect_header(&mut rects, Rect::new(0, 0, sw, sh), enc::DESKTOP_SIZE);
                }
                n += 1;
            }
        }
        if self.refuse_resize {
            self.refuse_resize = false;
            if self.feat.ext_desktop_size {
                // Reason 1 (this client asked), status 1 (administratively prohibited).
                self.ext_desktop_size(&mut rects, 1, 1);
                n += 1;
            }
        }
        if self.announce {
            self.announce = false;
            if self.feat.ext_key {
                put_rect_header(&mut rects, Rect::new(0, 0, sw, sh), enc::QEMU_EXT_KEY_EVENT);
                n += 1;
            }
            if self.feat.pointer_type {
                put_rect_header(
                    &mut rects,
                    Rect::new(u32::from(self.absolute), 0, sw, sh),
                    enc::POINTER_TYPE_CHANGE,
                );
                n += 1;
            }
        }
        if self.send_leds {
            self.send_leds = false;
            if self.feat.leds {
                put_rect_header(&mut rects, Rect::new(0, 0, 1, 1), enc::LED_STATE);
                rects.push(self.leds.bits());
                n += 1;
            }
        }
        if n > 0 {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(&rects);
        }
        // The answer to the pending request, if there is anything to say.
        let Some(req) = self.request else {
            return out;
        };
        let visible = Rect::new(0, 0, self.client_w.min(sw), self.client_h.min(sh));
        let area = req.rect.intersect(&visible);
        let mut body = Vec::new();
        let mut n = 0u16;
        if !req.incremental && self.feat.ext_desktop_size {
            // QEMU re-sends the screen layout on every full request.
            self.ext_desktop_size(&mut body, 0, 0);
            n += 1;
        }
        if self.send_cursor && self.feat.cursor {
            self.send_cursor = false;
            self.put_cursor(&mut body);
            n += 1;
        }
        let dirty = if req.incremental {
            self.pending.take_rects(area)
        } else {
            self.pending.take_rects(area);
            if area.is_empty() {
                Vec::new()
            } else {
                vec![area]
            }
        };
        for r in &dirty {
            n = n.saturating_add(self.encoder.encode(
                self.encoding,
                &self.shadow,
                *r,
                &self.pf,
                &mut body,
            ));
        }
        if n == 0 {
            // Nothing new: keep the request until something changes.
            return out;
        }
        self.request = None;
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn put_cursor(&self, out: &mut Vec<u8>) {
        match &self.cursor {
            Some(c) => {
                put_rect_header(
                    out,
                    Rect::new(c.hot_x, c.hot_y, c.width, c.height),
                    enc::CURSOR,
                );
                for p in &c.pixels {
                    self.pf.put(out, *p);
                }
                let stride = (c.width as usize).div_ceil(8);
                for row in c.mask.chunks(c.width.max(1) as usize) {
                    let mut bytes = vec![0u8; stride];
                    for (i, v) in row.iter().enumerate() {
                        if *v {
                            bytes[i / 8] |= 0x80 >> (i % 8);
                        }
                    }
                    out.extend_from_slice(&bytes);
                }
            }
            // An empty cursor: the client hides its own.
            None => put_rect_header(out, Rect::new(0, 0, 0, 0), enc::CURSOR),
        }
    }
}

/// Reads client messages; input goes straight to the sink.
async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    slot: Arc<Slot>,
    input: Arc<dyn InputSink>,
    keymap: Keymap,
    display: DisplayHandle,
    pressed: Arc<Mutex<HashSet<KeyCode>>>,
) {
    let mut st = InputState {
        input,
        keymap,
        display,
        pressed,
        last: None,
        buttons: 0,
        relative: false,
    };
    let err = loop {
        if let Err(e) = read_message(&mut rd, &slot, &mut st).await {
            break e;
        }
    };
    slot.post(|r| r.closed = Some(err));
}

struct InputState {
    input: Arc<dyn InputSink>,
    keymap: Keymap,
    display: DisplayHandle,
    pressed: Arc<Mutex<HashSet<KeyCode>>>,
    last: Option<(i32, i32)>,
    buttons: u8,
    /// The client announced PointerTypeChange and no tablet exists: it sends deltas.
    relative: bool,
}

impl InputState {
    /// A key event with the character its keysym types (see [`InputSink::key_typing`]).
    fn typed(&mut self, key: Option<KeyCode>, down: bool, ch: Option<char>) {
        if let Some(k) = key {
            let mut p = lock(&self.pressed);
            if down {
                p.insert(k);
            } else {
                p.remove(&k);
            }
        }
        self.input.key_typing(key, down, ch);
    }

    fn pointer(&mut self, mask: u8, x: u16, y: u16) {
        let (x, y) = (i32::from(x), i32::from(y));
        let newly = mask & !self.buttons;
        let buttons = Buttons(mask & 0x1f);
        if self.input.absolute() {
            let (w, h) = self.display.size();
            self.input.send(InputEvent::PointerAbs {
                x: (x.max(0) as u32).min(w.saturating_sub(1)),
                y: (y.max(0) as u32).min(h.saturating_sub(1)),
                width: w,
                height: h,
                buttons,
            });
        } else {
            let dz = if newly & Buttons::WHEEL_UP != 0 {
                -1
            } else if newly & Buttons::WHEEL_DOWN != 0 {
                1
            } else {
                0
            };
            let (dx, dy) = if self.relative {
                // A PointerTypeChange-aware client in relative mode sends deltas
                // offset by 0x7fff (QEMU's convention).
                (x - 0x7fff, y - 0x7fff)
            } else {
                match self.last {
                    Some((lx, ly)) => (x - lx, y - ly),
                    None => (0, 0),
                }
            };
            self.last = Some((x, y));
            if dx != 0 || dy != 0 || dz != 0 || mask != self.buttons {
                self.input.send(InputEvent::PointerRel {
                    dx,
                    dy,
                    dz,
                    buttons: Buttons(mask & 7),
                });
            }
        }
        self.buttons = mask;
    }
}

async fn skip<R: AsyncRead + Unpin>(rd: &mut R, mut n: u64) -> Result<(), VncError> {
    let mut buf = [0u8; 4096];
    while n > 0 {
        let k = n.min(buf.len() as u64) as usize;
        rd.read_exact(&mut buf[..k]).await?;
        n -= k as u64;
    }
    Ok(())
}

async fn read_message<R: AsyncRead + Unpin>(
    rd: &mut R,
    slot: &Slot,
    st: &mut InputState,
) -> Result<(), VncError> {
    let t = rd.read_u8().await?;
    match t {
        // SetPixelFormat.
        0 => {
            let mut b = [0u8; 19];
            rd.read_exact(&mut b).await?;
            let mut pf = [0u8; 16];
            pf.copy_from_slice(&b[3..]);
            let pf = PixelFormat::from_bytes(&pf)?;
            slot.post(|r| r.pixel_format = Some(pf));
        }
        // SetEncodings.
        2 => {
            let _pad = rd.read_u8().await?;
            let n = rd.read_u16().await?;
            let mut list = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                list.push(rd.read_i32().await?);
            }
            // A PointerTypeChange client without a tablet sends relative motion.
            st.relative = list.contains(&enc::POINTER_TYPE_CHANGE) && !st.input.absolute();
            st.last = None;
            slot.post(|r| r.encodings = Some(list));
        }
        // FramebufferUpdateRequest.
        3 => {
            let incremental = rd.read_u8().await? != 0;
            let x = rd.read_u16().await?;
            let y = rd.read_u16().await?;
            let w = rd.read_u16().await?;
            let h = rd.read_u16().await?;
            let rect = Rect::new(x.into(), y.into(), w.into(), h.into());
            slot.post(|r| {
                r.update = Some(match r.update {
                    Some(old) => UpdateReq {
                        incremental: old.incremental && incremental,
                        rect: bounding(old.rect, rect),
                    },
                    None => UpdateReq { incremental, rect },
                })
            });
        }
        // KeyEvent.
        4 => {
            let down = rd.read_u8().await? != 0;
            let _pad = rd.read_u16().await?;
            let keysym = rd.read_u32().await?;
            let key = st.keymap.lookup(keysym);
            let ch = keysym_char(keysym);
            if key.is_none() && ch.is_none() {
                tracing::debug!("VNC keysym {keysym:#x} has no key in this layout");
            }
            st.typed(key, down, ch);
        }
        // PointerEvent.
        5 => {
            let mask = rd.read_u8().await?;
            let x = rd.read_u16().await?;
            let y = rd.read_u16().await?;
            st.pointer(mask, x, y);
        }
        // ClientCutText: read and dropped; bounded.
        6 => {
            let mut pad = [0u8; 3];
            rd.read_exact(&mut pad).await?;
            let len = rd.read_u32().await?;
            if len > CUT_TEXT_LIMIT {
                return Err(VncError::CutTextTooLong(len));
            }
            skip(rd, u64::from(len)).await?;
        }
        // SetDesktopSize (ExtendedDesktopSize clients): the guest decides its mode.
        251 => {
            let mut b = [0u8; 7];
            rd.read_exact(&mut b).await?;
            let screens = u64::from(b[5]);
            skip(rd, screens * 16).await?;
            slot.post(|r| r.refuse_resize = true);
        }
        // QEMU client message.
        255 => {
            let sub = rd.read_u8().await?;
            match sub {
                0 => {
                    let down = rd.read_u16().await? != 0;
                    let keysym = rd.read_u32().await?;
                    let keycode = rd.read_u32().await?;
                    let ch = keysym_char(keysym);
                    if keycode == 0 {
                        st.typed(st.keymap.lookup(keysym), down, ch);
                    } else if let Some(k) =
                        u16::try_from(keycode).ok().and_then(KeyCode::from_number)
                    {
                        st.typed(Some(k), down, ch);
                    } else {
                        st.input.send(InputEvent::RawKey {
                            number: keycode as u16,
                            down,
                        });
                    }
                }
                other => return Err(VncError::UnknownQemuMessage(other)),
            }
        }
        other => return Err(VncError::UnknownMessage(other)),
    }
    Ok(())
}
