//! One NIC backend seen from a NIC model: frames in and out of a tap (or a tap on a
//! bridge) or of the slirp thread, with the failure of a deleted tap turned into a state
//! (`Gone`) instead of an error on every frame. Used by virtio-net's worker and by the
//! e1000's receive thread.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use super::slirp::SlirpPort;
use super::tap::Tap;

/// Where a NIC's frames go.
pub enum Backend {
    Tap(Tap),
    User(SlirpPort),
    /// The backend failed (its tap was deleted): frames are dropped, the link is down.
    Gone,
}

/// What [`Backend::recv`] found.
pub enum Recv {
    /// A frame of this many bytes is in the buffer.
    Frame(usize),
    /// Nothing more for now.
    Empty,
    /// The backend just failed (the reason); it is `Gone` from now on.
    Failed(String),
}

impl Backend {
    /// Before draining with [`Self::recv`]: clear a user-mode backend's "frames ready"
    /// signal, so a frame queued meanwhile signals again.
    pub fn ack(&self) {
        if let Backend::User(port) = self {
            port.ack();
        }
    }

    /// The next frame from the host side into `buf` (truncated to its length).
    pub fn recv(&mut self, buf: &mut [u8]) -> Recv {
        loop {
            return match self {
                Backend::Tap(tap) => match tap.file.read(buf) {
                    Ok(0) => Recv::Empty,
                    Ok(n) => Recv::Frame(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Recv::Empty,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // The interface is gone: closing the descriptor also takes it out
                        // of the caller's epoll.
                        let why = format!("tap {}: {e}; link down", tap.name);
                        *self = Backend::Gone;
                        Recv::Failed(why)
                    }
                },
                Backend::User(port) => match port.recv() {
                    Some(f) => {
                        let n = f.len().min(buf.len());
                        buf[..n].copy_from_slice(&f[..n]);
                        Recv::Frame(n)
                    }
                    None => Recv::Empty,
                },
                Backend::Gone => Recv::Empty,
            };
        }
    }

    /// Send one frame to the host side; false if it was not taken.
    pub fn send(&mut self, frame: &[u8]) -> bool {
        match self {
            // A tap takes a frame whole or not at all.
            Backend::Tap(tap) => matches!(tap.file.write(frame), Ok(n) if n == frame.len()),
            Backend::User(port) => {
                port.send(frame);
                true
            }
            Backend::Gone => false,
        }
    }

    /// What to wait on for frames from the host side.
    pub fn fd(&self) -> Option<RawFd> {
        match self {
            Backend::Tap(tap) => Some(tap.file.as_raw_fd()),
            Backend::User(port) => Some(port.ready.as_raw_fd()),
            Backend::Gone => None,
        }
    }
}
