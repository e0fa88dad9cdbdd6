//! The tap backend: a host tap interface opened through /dev/net/tun (IFF_TAP, no packet
//! information header), non-blocking, optionally set up by a QEMU-style script that is
//! run with the interface name. With `vnet_hdr` (IFF_VNET_HDR, used when the kernel has
//! it unless `vnet_hdr=off`), every frame carries a virtio-net header, so checksum and
//! segmentation offloads pass between the guest's virtio-net driver and the host stack.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETFEATURES: libc::c_ulong = 0x8004_54cf;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_ATTACH_QUEUE: libc::c_short = 0x0200;
const IFF_DETACH_QUEUE: libc::c_short = 0x0400;
const TUNSETQUEUE: libc::c_ulong = 0x4004_54d9;

/// TUNSETOFFLOAD bits.
pub use devices::virtio::net::tun as offload;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("could not open /dev/net/tun: {0}")]
    Open(std::io::Error),
    #[error("could not configure tap '{name}': {source}")]
    SetIff {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("network script {script} failed for {ifname}: {why}")]
    Script {
        script: String,
        ifname: String,
        why: String,
    },
    #[error("fd={0} is not an open file descriptor")]
    BadFd(i32),
    #[error("vnet_hdr=on: this kernel's tap driver has no IFF_VNET_HDR")]
    NoVnetHdr,
}

/// An open tap interface.
pub struct Tap {
    pub file: File,
    pub name: String,
    /// Frames carry a virtio-net header (IFF_VNET_HDR) of this many bytes; 0 without.
    vnet_len: usize,
    /// The offloads the kernel accepted when probed ([`offload`] bits; none without
    /// virtio-net headers).
    pub offloads: u32,
    /// A multiqueue tap's other queues (detached until a NIC uses them).
    pub more: Vec<File>,
}

/// A zeroed ifreq naming `name`.
pub(crate) fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    ifr
}

impl Tap {
    fn new(file: File, name: String, vnet_hdr: bool) -> Self {
        let mut t = Tap {
            file,
            name,
            vnet_len: 0,
            offloads: 0,
            more: Vec::new(),
        };
        if vnet_hdr {
            t.vnet_len = 10;
            // QEMU's probe: each offload the kernel takes, alone with checksums.
            use offload::*;
            for bit in [TSO4, TSO6, TSO_ECN, UFO] {
                if t.set_offload(CSUM | bit).is_ok() {
                    t.offloads |= CSUM | bit;
                }
            }
            if t.set_offload(CSUM).is_ok() {
                t.offloads |= CSUM;
            }
            let _ = t.set_offload(0);
        }
        t
    }

    /// One tap per queue (this one first), each with the same interface and settings.
    pub fn split(mut self) -> Vec<Tap> {
        let more = std::mem::take(&mut self.more);
        let (name, len, offloads) = (self.name.clone(), self.vnet_len, self.offloads);
        let mut all = vec![self];
        all.extend(more.into_iter().map(|file| Tap {
            file,
            name: name.clone(),
            vnet_len: len,
            offloads,
            more: Vec::new(),
        }));
        all
    }

    /// Whether frames carry virtio-net headers (IFF_VNET_HDR).
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_len > 0
    }

    /// The virtio-net header length on this tap (0 without IFF_VNET_HDR).
    pub fn vnet_len(&self) -> usize {
        self.vnet_len
    }

    /// Set the header length the kernel reads and writes (10, or 12 with num_buffers).
    pub fn set_vnet_len(&mut self, len: usize) -> std::io::Result<()> {
        let v = len as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int we own.
        ioctl_done(unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETVNETHDRSZ, &v) })?;
        self.vnet_len = len;
        Ok(())
    }

    /// Tell the kernel which unfinished frames (partial checksums, unsegmented TCP) the
    /// reader takes ([`offload`] bits).
    pub fn set_offload(&self, bits: u32) -> std::io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        ioctl_done(unsafe {
            libc::ioctl(self.file.as_raw_fd(), TUNSETOFFLOAD, bits as libc::c_ulong)
        })
    }
}

/// Create (or attach to) tap `ifname` (None: the kernel picks `tapN`). `vnet_hdr`: None
/// uses the virtio-net header when the kernel has it, Some(true) requires it. With
/// `queues` > 1 the tap is multiqueue (IFF_MULTI_QUEUE): one descriptor per queue, the
/// first in `file`, the others in `more`; all but the first start detached, so the kernel
/// steers nothing to a queue no one reads.
pub fn open(ifname: Option<&str>, vnet_hdr: Option<bool>, queues: u32) -> Result<Tap, TapError> {
    let tun = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::Open)
    };
    let file = tun()?;
    let want = ifname.unwrap_or("");
    let mut features: libc::c_uint = 0;
    // SAFETY: TUNGETFEATURES writes the unsigned int we own.
    let has_vnet = unsafe { libc::ioctl(file.as_raw_fd(), TUNGETFEATURES, &mut features) } == 0
        && features & IFF_VNET_HDR as libc::c_uint != 0;
    let vnet = match vnet_hdr {
        Some(true) if !has_vnet => return Err(TapError::NoVnetHdr),
        Some(on) => on,
        None => has_vnet,
    };
    let flags = IFF_TAP
        | IFF_NO_PI
        | if vnet { IFF_VNET_HDR } else { 0 }
        | if queues > 1 { IFF_MULTI_QUEUE } else { 0 };
    let set_iff = |f: &File, name: &str| -> Result<String, TapError> {
        let mut ifr = ifreq(name);
        ifr.ifr_ifru.ifru_flags = flags;
        // SAFETY: TUNSETIFF reads and writes the ifreq we own, on an open tun descriptor.
        if unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF, &mut ifr) } < 0 {
            return Err(TapError::SetIff {
                name: name.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(ifr
            .ifr_name
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8 as char)
            .collect())
    };
    let name = set_iff(&file, want)?;
    let mut more = Vec::new();
    for _ in 1..queues {
        let f = tun()?;
        set_iff(&f, &name)?;
        set_queue(&f, false).map_err(|source| TapError::SetIff {
            name: name.clone(),
            source,
        })?;
        more.push(f);
    }
    let mut t = Tap::new(file, name, vnet);
    t.more = more;
    Ok(t)
}

/// Attach (the kernel steers frames to it) or detach one queue of a multiqueue tap.
pub fn set_queue(f: &File, attached: bool) -> std::io::Result<()> {
    let mut ifr = ifreq("");
    ifr.ifr_ifru.ifru_flags = if attached {
        IFF_ATTACH_QUEUE
    } else {
        IFF_DETACH_QUEUE
    };
    // SAFETY: TUNSETQUEUE reads the ifreq we own.
    ioctl_done(unsafe { libc::ioctl(f.as_raw_fd(), TUNSETQUEUE, &mut ifr) })
}

/// An ioctl's return value as a result (the error from errno).
fn ioctl_done(r: libc::c_int) -> std::io::Result<()> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A tap descriptor the caller passed in (`fd=`).
pub fn from_fd(fd: i32) -> Result<Tap, TapError> {
    // SAFETY: F_GETFD only queries the descriptor.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(TapError::BadFd(fd));
    }
    // SAFETY: the descriptor is open and handed to troupe to own (QEMU's `fd=` contract).
    let file = unsafe { File::from_raw_fd(fd) };
    // SAFETY: setting O_NONBLOCK on an open descriptor.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    // As QEMU: the header is used if whoever opened the tap asked for it.
    let mut ifr = ifreq("");
    // SAFETY: TUNGETIFF writes the ifreq we own; it fails on a descriptor that is no tap.
    let vnet = unsafe { libc::ioctl(fd, TUNGETIFF, &mut ifr) } == 0
        // SAFETY: TUNGETIFF filled in the flags member.
        && unsafe { ifr.ifr_ifru.ifru_flags } & IFF_VNET_HDR != 0;
    Ok(Tap::new(file, format!("fd{fd}"), vnet))
}

/// Run `script IFNAME` (QEMU's up/down script convention) and wait for it.
pub fn run_script(script: &Path, ifname: &str) -> Result<(), TapError> {
    let err = |why: String| TapError::Script {
        script: script.display().to_string(),
        ifname: ifname.to_string(),
        why,
    };
    crate::sandbox::may_spawn(|| format!("network script {}", script.display()))
        .map_err(|e| err(e.to_string()))?;
    let st = std::process::Command::new(script)
        .arg(ifname)
        .status()
        .map_err(|e| err(e.to_string()))?;
    if st.success() {
        Ok(())
    } else {
        Err(err(format!("exited with {st}")))
    }
}
