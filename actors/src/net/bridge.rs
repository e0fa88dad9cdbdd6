//! The bridge backend (`-netdev bridge,br=BR`): a new tap interface added to host bridge
//! BR, as QEMU's setuid bridge helper does — done in-process, honouring the helper's
//! access-control file: `/etc/qemu/bridge.conf` (or `TROUPE_BRIDGE_CONF`), with lines
//! `allow NAME`, `allow all`, `deny NAME`, `deny all`, `include FILE`, `#` comments.
//! A bridge not allowed there is refused, as the helper refuses it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::tap::{self, ifreq, Tap, TapError};

pub const DEFAULT_ACL: &str = "/etc/qemu/bridge.conf";
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("access denied by acl file {acl}: bridge '{br}' is not allowed")]
    Denied { br: String, acl: String },
    #[error("failed to read acl file {path}: {source}")]
    Acl {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("failed to add interface '{tap}' to bridge '{br}': {source}")]
    AddIf {
        tap: String,
        br: String,
        #[source]
        source: std::io::Error,
    },
}

/// Whether `br` is allowed by the ACL file at `path` (later lines override earlier ones,
/// `include`d files are read in place; a missing top-level file allows nothing).
pub fn allowed(path: &Path, br: &str) -> Result<bool, BridgeError> {
    fn walk(path: &Path, br: &str, verdict: &mut bool, depth: u32) -> Result<(), BridgeError> {
        let text = std::fs::read_to_string(path).map_err(|source| BridgeError::Acl {
            path: path.display().to_string(),
            source,
        })?;
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let mut w = line.split_whitespace();
            match (w.next(), w.next()) {
                (Some("allow"), Some(n)) if n == "all" || n == br => *verdict = true,
                (Some("deny"), Some(n)) if n == "all" || n == br => *verdict = false,
                (Some("include"), Some(f)) if depth < 8 => {
                    walk(Path::new(f), br, verdict, depth + 1)?
                }
                _ => {}
            }
        }
        Ok(())
    }
    let mut verdict = false;
    walk(path, br, &mut verdict, 0)?;
    Ok(verdict)
}

/// A tap added to bridge `br` and brought up, if the ACL allows `br`.
pub fn open(br: &str) -> Result<Tap, BridgeError> {
    let acl = std::env::var("TROUPE_BRIDGE_CONF").unwrap_or_else(|_| DEFAULT_ACL.to_string());
    if !allowed(Path::new(&acl), br)? {
        return Err(BridgeError::Denied {
            br: br.to_string(),
            acl,
        });
    }
    let t = tap::open(None, None, 1)?;
    let add_err = |source| BridgeError::AddIf {
        tap: t.name.clone(),
        br: br.to_string(),
        source,
    };
    // SAFETY: a plain datagram socket for interface ioctls; owned right away.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(add_err(std::io::Error::last_os_error()));
    }
    // SAFETY: sock is a new descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    let cname = std::ffi::CString::new(t.name.as_str()).unwrap_or_default();
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    let mut ifr = ifreq(br);
    ifr.ifr_ifru.ifru_ifindex = index as libc::c_int;
    // SAFETY: SIOCBRADDIF reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCBRADDIF, &mut ifr) } < 0 {
        return Err(add_err(std::io::Error::last_os_error()));
    }
    let mut up = ifreq(&t.name);
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS on the ifreq we own.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut up) < 0 {
            return Err(add_err(std::io::Error::last_os_error()));
        }
        up.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut up) < 0 {
            return Err(add_err(std::io::Error::last_os_error()));
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acl_file_allows_and_denies_like_the_bridge_helper() {
        let dir = std::env::temp_dir().join(format!("troupe-acl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let inc = dir.join("more.conf");
        std::fs::write(&inc, "allow br2\n").unwrap();
        let top = dir.join("bridge.conf");
        std::fs::write(
            &top,
            format!(
                "# comment\nallow br0\nallow all\ndeny br1\ninclude {}\n",
                inc.display()
            ),
        )
        .unwrap();
        assert!(allowed(&top, "br0").unwrap());
        assert!(allowed(&top, "anything").unwrap());
        assert!(!allowed(&top, "br1").unwrap());
        assert!(allowed(&top, "br2").unwrap());
        std::fs::write(&top, "allow br0\n").unwrap();
        assert!(!allowed(&top, "virbr0").unwrap());
        assert!(allowed(&dir.join("missing.conf"), "br0").is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
