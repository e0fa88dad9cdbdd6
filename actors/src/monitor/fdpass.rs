//! Descriptors a monitor client passes over its Unix socket (SCM_RIGHTS ancillary data,
//! unix(7)) and the names `getfd` gives them, as libvirt uses them: it sends a descriptor
//! with `{"execute": "getfd", "arguments": {"fdname": "migrate"}}` and then migrates to
//! `fd:migrate`.
//!
//! Data path: a session's [`FdStream`] reads with `recvmsg`, keeping every descriptor that
//! arrives in its [`PassedFds`]; `getfd NAME` takes the newest of them (QEMU takes the one
//! sent with the command; libvirt sends exactly one per `getfd`) into the [`NamedFds`]
//! every monitor of the VM shares (QEMU keeps one list per monitor; libvirt uses one);
//! `closefd NAME` closes it, and `migrate fd:NAME` takes it out. Descriptors passed on a
//! connection and never named stay open until its next `getfd` or its end.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

use super::commands::CmdError;

/// Most descriptors taken from one message (libvirt sends one at a time).
const MAX_FDS_PER_MESSAGE: usize = 16;

/// Descriptors received on one connection and not yet named.
#[derive(Default)]
pub struct PassedFds(Mutex<Vec<OwnedFd>>);

impl PassedFds {
    fn push(&self, fd: OwnedFd) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(fd);
    }

    /// The newest descriptor received (older ones are closed: QEMU keeps one per
    /// message and a command uses the one that came with it).
    pub fn take_newest(&self) -> Option<OwnedFd> {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let newest = v.pop();
        v.clear();
        newest
    }
}

/// The descriptors `getfd` named, shared by every session of every monitor.
#[derive(Default)]
pub struct NamedFds(Mutex<HashMap<String, OwnedFd>>);

impl NamedFds {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, OwnedFd>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `getfd NAME`: a name already in use is given the new descriptor (QEMU closes the
    /// old one).
    pub fn getfd(&self, passed: Option<&PassedFds>, name: &str) -> Result<(), CmdError> {
        if name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(CmdError::generic(
                "Parameter 'fdname' expects a name not starting with a digit",
            ));
        }
        let fd = passed
            .and_then(PassedFds::take_newest)
            .ok_or_else(|| CmdError::generic("No file descriptor supplied via SCM_RIGHTS"))?;
        self.lock().insert(name.to_string(), fd);
        Ok(())
    }

    /// `closefd NAME`.
    pub fn closefd(&self, name: &str) -> Result<(), CmdError> {
        self.lock()
            .remove(name)
            .map(drop)
            .ok_or_else(|| CmdError::generic(format!("File descriptor named '{name}' not found")))
    }

    /// Take the descriptor named `name` (a migration to `fd:NAME` owns it from then on).
    pub fn take(&self, name: &str) -> Result<OwnedFd, CmdError> {
        self.lock().remove(name).ok_or_else(|| {
            CmdError::generic(format!("File descriptor named '{name}' has not been found"))
        })
    }
}

/// A Unix-socket connection whose reads also collect passed descriptors.
pub struct FdStream {
    s: tokio::net::UnixStream,
    fds: Arc<PassedFds>,
}

impl FdStream {
    pub fn new(s: tokio::net::UnixStream) -> (Self, Arc<PassedFds>) {
        let fds = Arc::new(PassedFds::default());
        (
            Self {
                s,
                fds: fds.clone(),
            },
            fds,
        )
    }
}

/// One `recvmsg` into `buf`; descriptors in the ancillary data go to `fds` (close-on-exec).
fn recv_with_fds(fd: RawFd, buf: &mut [u8], fds: &PassedFds) -> io::Result<usize> {
    // SAFETY: CMSG_SPACE only computes a size.
    let space =
        unsafe { libc::CMSG_SPACE((MAX_FDS_PER_MESSAGE * std::mem::size_of::<RawFd>()) as u32) }
            as usize;
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; the fields set below point at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() * 8;
    // SAFETY: `msg` describes `buf` and `control`, both valid for their lengths.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: walking the control messages the kernel wrote into `control`, with the
    // CMSG_* helpers bounded by msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const RawFd;
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    // The kernel installed this descriptor for us: we own it.
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(n as usize)
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            ready!(me.s.poll_read_ready(cx))?;
            let fd = me.s.as_raw_fd();
            let unfilled = buf.initialize_unfilled();
            match me
                .s
                .try_io(Interest::READABLE, || recv_with_fds(fd, unfilled, &me.fds))
            {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().s).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().s).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().s).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Send `data` with `fd` attached on `s`.
    fn send_with_fd(s: &std::os::unix::net::UnixStream, data: &[u8], fd: RawFd) {
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
        let mut control = vec![0u64; space.div_ceil(8)];
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut _,
            iov_len: data.len(),
        };
        // SAFETY: building a msghdr over live buffers and one SCM_RIGHTS message.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut RawFd, fd);
            assert_eq!(libc::sendmsg(s.as_raw_fd(), &msg, 0), data.len() as isize);
        }
    }

    #[tokio::test]
    async fn a_passed_descriptor_is_named_then_taken_or_closed() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let (mut s, passed) = FdStream::new(tokio::net::UnixStream::from_std(b).unwrap());
        let (pr, pw) = std::os::unix::net::UnixStream::pair().unwrap();
        send_with_fd(&a, b"{\"execute\":\"getfd\"}", pw.as_raw_fd());
        drop(pw);
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"{\"execute\":\"getfd\"}");

        let named = NamedFds::default();
        named.getfd(Some(&passed), "migrate").unwrap();
        // The named descriptor is the one sent: what is written to it arrives at `pr`.
        let fd = named.take("migrate").unwrap();
        let mut w = std::os::unix::net::UnixStream::from(fd);
        std::io::Write::write_all(&mut w, b"hello").unwrap();
        let mut got = [0u8; 5];
        std::io::Read::read_exact(&mut &pr, &mut got).unwrap();
        assert_eq!(&got, b"hello");

        // Nothing more was passed; names that are gone or never were are errors.
        let e = named.getfd(Some(&passed), "again").unwrap_err();
        assert_eq!(e.desc(), "No file descriptor supplied via SCM_RIGHTS");
        assert_eq!(
            named.take("migrate").unwrap_err().desc(),
            "File descriptor named 'migrate' has not been found"
        );
        assert_eq!(
            named.closefd("nope").unwrap_err().desc(),
            "File descriptor named 'nope' not found"
        );
        assert!(named.getfd(Some(&passed), "1x").is_err());
    }
}
