//! Image locking compatible with QEMU's: open-file-description byte-range locks on the
//! image file at 100 + permission bit (a permission held) and 200 + permission bit (a
//! permission others may not have). Two processes that would both write one image — two
//! troupes, or troupe and QEMU — are refused, as QEMU refuses them.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

const BASE_PERM: i64 = 100;
const BASE_SHARED: i64 = 200;
const CONSISTENT_READ: u32 = 0;
const WRITE: u32 = 1;
const RESIZE: u32 = 3;

fn perm_name(bit: u32) -> &'static str {
    match bit {
        0 => "consistent read",
        1 => "write",
        2 => "write unchanged",
        3 => "resize",
        _ => "change children",
    }
}

fn flock(ty: i32, byte: i64) -> libc::flock {
    // SAFETY: flock is plain data; all-zero is valid before the fields are set.
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = ty as libc::c_short;
    l.l_whence = libc::SEEK_SET as libc::c_short;
    l.l_start = byte;
    l.l_len = 1;
    l
}

/// Whether another open file description holds a lock on `byte`.
fn held_elsewhere(f: &File, byte: i64) -> std::io::Result<bool> {
    let mut l = flock(libc::F_WRLCK, byte);
    // SAFETY: F_OFD_GETLK with a valid flock on an open descriptor.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut l) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(l.l_type != libc::F_UNLCK as libc::c_short)
}

fn take(f: &File, byte: i64) -> std::io::Result<()> {
    let l = flock(libc::F_RDLCK, byte);
    // SAFETY: F_OFD_SETLK with a valid flock on an open descriptor.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &l) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The locks held on one image for as long as the drive exists.
pub struct ImageLock {
    _file: File,
}

/// Why the image could not be locked (QEMU's wording).
#[derive(Debug, thiserror::Error)]
#[error("Failed to get {kind}\"{perm}\" lock\nIs another process using the image [{path}]?")]
pub struct LockError {
    kind: &'static str,
    perm: &'static str,
    path: String,
}

/// Lock `path` for a reader (`write == false`) or a writer. Neither shares write or resize.
pub fn lock(path: &Path, write: bool) -> Result<ImageLock, LockError> {
    let err = |kind, bit| LockError {
        kind,
        perm: perm_name(bit),
        path: path.display().to_string(),
    };
    let Ok(f) = File::open(path) else {
        // Opening the image itself reports the problem.
        return Err(err("", CONSISTENT_READ));
    };
    let held: &[u32] = if write {
        &[CONSISTENT_READ, WRITE]
    } else {
        &[CONSISTENT_READ]
    };
    let unshared = [WRITE, RESIZE];
    for &p in held {
        if held_elsewhere(&f, BASE_SHARED + i64::from(p)).unwrap_or(false) {
            return Err(err("", p));
        }
    }
    for p in unshared {
        if held_elsewhere(&f, BASE_PERM + i64::from(p)).unwrap_or(false) {
            return Err(err("shared ", p));
        }
    }
    for &p in held {
        take(&f, BASE_PERM + i64::from(p)).map_err(|_| err("", p))?;
    }
    for p in unshared {
        take(&f, BASE_SHARED + i64::from(p)).map_err(|_| err("shared ", p))?;
    }
    Ok(ImageLock { _file: f })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The write lock, once free: a child another test thread forks holds a copy of a
    /// dropped lock's descriptor (and so the OFD lock) until it execs.
    fn eventually_write(p: &Path) -> ImageLock {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match lock(p, true) {
                Ok(l) => return l,
                Err(e) if std::time::Instant::now() > deadline => panic!("{e}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    }

    #[test]
    fn a_writer_excludes_readers_and_writers_readers_share() {
        let p = std::env::temp_dir().join(format!("troupe-lock-{}", std::process::id()));
        std::fs::write(&p, [0u8; 512]).unwrap();
        let r1 = lock(&p, false).unwrap();
        let r2 = lock(&p, false).unwrap();
        let e = lock(&p, true).err().unwrap().to_string();
        assert!(e.starts_with("Failed to get \"write\" lock"), "{e}");
        drop((r1, r2));
        let w = eventually_write(&p);
        assert!(lock(&p, false).is_err());
        assert!(lock(&p, true).is_err());
        drop(w);
        eventually_write(&p);
        let _ = std::fs::remove_file(p);
    }
}
