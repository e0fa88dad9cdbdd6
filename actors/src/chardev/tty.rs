//! Terminal handling for `stdio` (raw mode, restored at exit) and `pty` backends.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The terminal settings found at start, restored by [`restore`].
static SAVED: OnceLock<libc::termios> = OnceLock::new();

/// Put stdin in raw mode like QEMU's stdio chardev: no echo, no line editing; with
/// `signals` Ctrl-C still interrupts troupe. Does nothing when stdin is not a terminal.
pub fn enter_raw_mode(signals: bool) {
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(0) } != 1 {
        return;
    }
    // SAFETY: termios is plain data, filled by tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd 0 is a terminal (checked) and `t` is a valid out-pointer.
    if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
        return;
    }
    let _ = SAVED.set(t);
    t.c_iflag &= !(libc::IGNBRK
        | libc::BRKINT
        | libc::PARMRK
        | libc::ISTRIP
        | libc::INLCR
        | libc::IGNCR
        | libc::ICRNL
        | libc::IXON);
    t.c_oflag |= libc::OPOST;
    t.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ICANON | libc::IEXTEN);
    if !signals {
        t.c_lflag &= !libc::ISIG;
    }
    t.c_cflag &= !(libc::CSIZE | libc::PARENB);
    t.c_cflag |= libc::CS8;
    t.c_cc[libc::VMIN] = 1;
    t.c_cc[libc::VTIME] = 0;
    // SAFETY: fd 0 is a terminal; `t` is a valid termios.
    unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
}

/// Put the terminal back the way it was (call before exiting).
pub fn restore() {
    if let Some(t) = SAVED.get() {
        // SAFETY: restoring settings previously read from the same terminal.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
    }
}

/// Open a new pseudo-terminal pair; returns the master as an async stream and the slave's
/// path (`/dev/pts/N`). The slave stays open so output is buffered until someone attaches.
pub fn open_pty() -> std::io::Result<(PtyMaster, String)> {
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    // SAFETY: out-pointers are valid; name/termios/winsize may be null.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: slave is an open pty; the buffer is valid for its length.
    unsafe { libc::ttyname_r(slave, name.as_mut_ptr(), name.len()) };
    // SAFETY: ttyname_r NUL-terminated the buffer (or left it zeroed).
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    // Raw mode on the slave so the guest sees bytes as typed.
    // SAFETY: termios is plain data filled by tcgetattr on the open slave.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(slave, &mut t) == 0 {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(slave, libc::TCSANOW, &t);
        }
    }
    // Keep the slave open for the life of the process (leaked on purpose) so writes before
    // a client attaches do not fail with EIO.
    std::mem::forget(
        // SAFETY: we own `slave`.
        unsafe { OwnedFd::from_raw_fd(slave) },
    );
    // SAFETY: we own `master`; set non-blocking for tokio.
    unsafe {
        let fl = libc::fcntl(master, libc::F_GETFL);
        libc::fcntl(master, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    // SAFETY: we own `master` and hand it over.
    let fd = unsafe { OwnedFd::from_raw_fd(master) };
    // SAFETY: `fd` is an open descriptor the AsyncFd owns from here on; an OwnedFd's
    // as_raw_fd never changes.
    let fd = unsafe { AsyncFd::register(fd) }?;
    Ok((PtyMaster(fd), path))
}

/// A pty's master side, read and written when the reactor says it is ready (a
/// `tokio::fs::File` would read a non-blocking descriptor on the blocking pool and take
/// its `EAGAIN` for the end of input, so nothing typed on the pty ever reached the guest).
pub struct PtyMaster(AsyncFd<OwnedFd>);

impl AsyncRead for PtyMaster {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let res = guard.try_io(|fd| {
                // SAFETY: reading into the caller's initialized buffer, within its length.
                let n = unsafe {
                    libc::read(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len())
                };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match res {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyMaster {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            let res = guard.try_io(|fd| {
                // SAFETY: writing from the caller's buffer, within its length.
                let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match res {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
