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
    /// `-netdev socket`: another VMM over TCP.
    Socket(super::socket::SocketPort),
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
        match self {
            Backend::User(port) => port.ack(),
            Backend::Socket(port) => port.ack(),
            _ => {}
        }
    }

    /// The next frame from the host side into `buf` (truncated to its length).
    pub fn recv(&mut self, buf: &mut [u8]) -> Recv {
        match self {
            Backend::Tap(tap) if tap.vnet_len() > 0 => {
                // The header is read and dropped: with no offloads set, the kernel hands
                // over finished frames.
                let mut hdr = [0u8; 12];
                let h = tap.vnet_len().min(12);
                let got = self.read_tap(&mut [
                    std::io::IoSliceMut::new(&mut hdr[..h]),
                    std::io::IoSliceMut::new(buf),
                ]);
                match got {
                    Recv::Frame(n) => Recv::Frame(n.saturating_sub(h)),
                    other => other,
                }
            }
            Backend::Tap(_) => self.read_tap(&mut [std::io::IoSliceMut::new(buf)]),
            Backend::User(port) => copy_frame(port.recv(), buf),
            Backend::Socket(port) => copy_frame(port.recv(), buf),
            Backend::Gone => Recv::Empty,
        }
    }

    /// One read from the tap; a failure other than "nothing there" means the interface
    /// is gone.
    fn read_tap(&mut self, bufs: &mut [std::io::IoSliceMut<'_>]) -> Recv {
        let Backend::Tap(tap) = self else {
            return Recv::Empty;
        };
        loop {
            return match tap.file.read_vectored(bufs) {
                Ok(0) => Recv::Empty,
                Ok(n) => Recv::Frame(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Recv::Empty,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Closing the descriptor also takes it out of the caller's epoll.
                    let why = format!("tap {}: {e}; link down", tap.name);
                    *self = Backend::Gone;
                    Recv::Failed(why)
                }
            };
        }
    }

    /// Send one frame to the host side; false if it was not taken.
    pub fn send(&mut self, frame: &[u8]) -> bool {
        match self {
            // A tap takes a frame whole or not at all.
            Backend::Tap(tap) => {
                let zero = [0u8; 12];
                let h = tap.vnet_len().min(12);
                let want = h + frame.len();
                let bufs = [
                    std::io::IoSlice::new(&zero[..h]),
                    std::io::IoSlice::new(frame),
                ];
                matches!(tap.file.write_vectored(&bufs), Ok(n) if n == want)
            }
            Backend::User(port) => {
                port.send(frame);
                true
            }
            Backend::Socket(port) => {
                port.send(frame);
                true
            }
            Backend::Gone => false,
        }
    }

    /// After a batch of [`Self::send`]s: a user-mode backend serves the host sockets the
    /// frames made ready (see [`SlirpPort::settle`]). True if it may have frames for the
    /// guest already.
    pub fn settle(&self) -> bool {
        match self {
            Backend::User(port) => {
                port.settle();
                true
            }
            _ => false,
        }
    }

    /// One backend per queue: a multiqueue tap's queues, else just this one.
    pub fn split_queues(self) -> Vec<Backend> {
        match self {
            Backend::Tap(t) => t.split().into_iter().map(Backend::Tap).collect(),
            other => vec![other],
        }
    }

    /// Attach or detach this queue of a multiqueue tap (nothing elsewhere).
    pub fn set_queue_enabled(&self, on: bool) {
        if let Backend::Tap(t) = self {
            let _ = super::tap::set_queue(&t.file, on);
        }
    }

    /// The offloads ([`super::tap::offload`] bits) a virtio-net device may offer on this
    /// backend: those of a tap with virtio-net headers; none elsewhere.
    pub fn offloads(&self) -> u32 {
        match self {
            Backend::Tap(tap) => tap.offloads,
            _ => 0,
        }
    }

    /// A virtio-net driver negotiated headers of `hdr_len` bytes and `offload` bits: frames
    /// through [`Self::recv_with_header`] and [`Self::send_with_header`] carry them from
    /// now on. Returns false if the tap refused (then no offloads may be used).
    pub fn set_vnet(&mut self, hdr_len: usize, offload: u32) -> bool {
        match self {
            Backend::Tap(tap) if tap.vnet_hdr() => {
                tap.set_vnet_len(hdr_len).is_ok() && tap.set_offload(offload).is_ok()
            }
            _ => true,
        }
    }

    /// The next frame with a virtio-net header of `hdr` bytes in front (the tap's own
    /// when it has them, else a zeroed one): the length with the header.
    pub fn recv_with_header(&mut self, buf: &mut [u8], hdr: usize) -> Recv {
        match self {
            Backend::Tap(tap) if tap.vnet_len() == hdr => {
                self.read_tap(&mut [std::io::IoSliceMut::new(buf)])
            }
            _ => {
                buf[..hdr].fill(0);
                match self.recv(&mut buf[hdr..]) {
                    Recv::Frame(n) => Recv::Frame(n + hdr),
                    other => other,
                }
            }
        }
    }

    /// Send `buf`, a frame behind a virtio-net header of `hdr` bytes (passed on to a tap
    /// that takes them, else dropped); false if it was not taken.
    pub fn send_with_header(&mut self, buf: &[u8], hdr: usize) -> bool {
        match self {
            Backend::Tap(tap) if tap.vnet_len() == hdr => {
                matches!(tap.file.write(buf), Ok(n) if n == buf.len())
            }
            _ => self.send(&buf[hdr..]),
        }
    }

    /// What to wait on for frames from the host side.
    pub fn fd(&self) -> Option<RawFd> {
        match self {
            Backend::Tap(tap) => Some(tap.file.as_raw_fd()),
            Backend::User(port) => Some(port.ready.as_raw_fd()),
            Backend::Socket(port) => Some(port.ready.as_raw_fd()),
            Backend::Gone => None,
        }
    }
}

/// A queued frame into `buf` (truncated to its length).
fn copy_frame(f: Option<Vec<u8>>, buf: &mut [u8]) -> Recv {
    match f {
        Some(f) => {
            let n = f.len().min(buf.len());
            buf[..n].copy_from_slice(&f[..n]);
            Recv::Frame(n)
        }
        None => Recv::Empty,
    }
}
