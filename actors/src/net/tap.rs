//! The tap backend: a host tap interface opened through /dev/net/tun (IFF_TAP, no packet
//! information header), non-blocking, optionally set up by a QEMU-style script that is
//! run with the interface name.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

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
}

/// An open tap interface.
pub struct Tap {
    pub file: File,
    pub name: String,
}

/// Create (or attach to) tap `ifname` (None: the kernel picks `tapN`).
pub fn open(ifname: Option<&str>) -> Result<Tap, TapError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(TapError::Open)?;
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let want = ifname.unwrap_or("");
    for (d, s) in ifr
        .ifr_name
        .iter_mut()
        .zip(want.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI;
    // SAFETY: TUNSETIFF reads and writes the ifreq we own, on an open tun descriptor.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut ifr) } < 0 {
        return Err(TapError::SetIff {
            name: want.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    let name: String = ifr
        .ifr_name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8 as char)
        .collect();
    Ok(Tap { file, name })
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
    Ok(Tap {
        file,
        name: format!("fd{fd}"),
    })
}

/// Run `script IFNAME` (QEMU's up/down script convention) and wait for it.
pub fn run_script(script: &Path, ifname: &str) -> Result<(), TapError> {
    let err = |why: String| TapError::Script {
        script: script.display().to_string(),
        ifname: ifname.to_string(),
        why,
    };
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
