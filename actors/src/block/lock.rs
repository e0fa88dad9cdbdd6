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

/// The locks on one image, for as long as the drive exists. An image is *active* while it
/// holds them; an incoming migration's destination opens its images inactive (no locks:
/// the source still writes them) and activates them once the source has let go, as QEMU
/// does.
pub struct ImageLock {
    file: File,
    path: std::path::PathBuf,
    write: bool,
    held: std::sync::Mutex<bool>,
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
    let l = unlocked(path, write)?;
    l.acquire()?;
    Ok(l)
}

/// Open `path` for locking later ([`ImageLock::acquire`]), taking no lock now.
pub fn unlocked(path: &Path, write: bool) -> Result<ImageLock, LockError> {
    let Ok(file) = File::open(path) else {
        // Opening the image itself reports the problem.
        return Err(LockError {
            kind: "",
            perm: perm_name(CONSISTENT_READ),
            path: path.display().to_string(),
        });
    };
    Ok(ImageLock {
        file,
        path: path.to_path_buf(),
        write,
        held: std::sync::Mutex::new(false),
    })
}

impl ImageLock {
    fn held(&self) -> std::sync::MutexGuard<'_, bool> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take the locks (nothing to do if held): refused if another process holds what
    /// this one needs or denies it.
    pub fn acquire(&self) -> Result<(), LockError> {
        let mut held = self.held();
        if *held {
            return Ok(());
        }
        let err = |kind, bit| LockError {
            kind,
            perm: perm_name(bit),
            path: self.path.display().to_string(),
        };
        let f = &self.file;
        let perms: &[u32] = if self.write {
            &[CONSISTENT_READ, WRITE]
        } else {
            &[CONSISTENT_READ]
        };
        let unshared = [WRITE, RESIZE];
        for &p in perms {
            if held_elsewhere(f, BASE_SHARED + i64::from(p)).unwrap_or(false) {
                return Err(err("", p));
            }
        }
        for p in unshared {
            if held_elsewhere(f, BASE_PERM + i64::from(p)).unwrap_or(false) {
                return Err(err("shared ", p));
            }
        }
        let taken = perms
            .iter()
            .map(|&p| (BASE_PERM + i64::from(p), "", p))
            .chain(
                unshared
                    .iter()
                    .map(|&p| (BASE_SHARED + i64::from(p), "shared ", p)),
            )
            .try_for_each(|(byte, kind, p)| take(f, byte).map_err(|_| err(kind, p)));
        if let Err(e) = taken {
            unlock_all(f);
            return Err(e);
        }
        *held = true;
        Ok(())
    }

    /// Let every lock go (the image stays open), after making what was written durable.
    pub fn release(&self) -> std::io::Result<()> {
        let mut held = self.held();
        let synced = if self.write {
            self.file.sync_all()
        } else {
            Ok(())
        };
        if *held {
            unlock_all(&self.file);
            *held = false;
        }
        synced
    }

    /// Whether the locks are held (the image is active).
    pub fn is_held(&self) -> bool {
        *self.held()
    }
}

/// Drop this descriptor's locks on every permission byte.
fn unlock_all(f: &File) {
    let mut l = flock(libc::F_UNLCK, BASE_PERM);
    l.l_len = BASE_SHARED + 100 - BASE_PERM;
    // SAFETY: F_OFD_SETLK with a valid flock on an open descriptor.
    unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &l) };
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

    #[test]
    fn an_inactive_writer_takes_no_lock_until_activated_and_releases_on_demand() {
        let p = std::env::temp_dir().join(format!("troupe-lock-act-{}", std::process::id()));
        std::fs::write(&p, [0u8; 512]).unwrap();
        let src = eventually_write(&p);
        let dst = unlocked(&p, true).unwrap();
        assert!(!dst.is_held());
        let e = dst.acquire().err().unwrap().to_string();
        assert!(e.starts_with("Failed to get \"write\" lock"), "{e}");
        assert!(!dst.is_held(), "a refused acquire keeps nothing");
        src.release().unwrap();
        assert!(!src.is_held());
        dst.acquire().unwrap();
        assert!(dst.is_held());
        assert!(src.acquire().is_err(), "the source cannot take it back");
        dst.release().unwrap();
        src.acquire().unwrap();
        let _ = std::fs::remove_file(p);
    }
}
