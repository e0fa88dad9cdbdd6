//! Facts about the host the command line is checked against, and file checks.
//!
//! Owns everything the parser needs to ask the machine it runs on: which CPUs this process
//! may run on (`sched_getaffinity`, for `-vcpu-pin`), how many physical address bits the
//! host has (for `-m`), where the default firmware lives, and whether a file named on the
//! command line can be opened. Tests build a [`Host`] by hand instead of detecting it.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Debian's SeaBIOS image (package `seabios`), QEMU's default `-bios` for `pc`.
pub const DEFAULT_BIOS: &str = "/usr/share/seabios/bios-256k.bin";

/// Host facts the command line is validated against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// CPUs in this process's affinity mask, ascending.
    pub allowed_cpus: Vec<usize>,
    /// The host CPU's physical address width in bits.
    pub phys_addr_bits: u8,
    /// The firmware used when `-bios` is not given.
    pub default_bios: PathBuf,
}

impl Host {
    /// Look at the machine we are running on.
    pub fn detect() -> Host {
        Host {
            allowed_cpus: allowed_cpus(),
            phys_addr_bits: phys_addr_bits(),
            default_bios: PathBuf::from(DEFAULT_BIOS),
        }
    }
}

/// The CPUs in this process's affinity mask; all of 0..available_parallelism if the mask
/// can't be read.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is a plain bit array; all-zeroes is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; `set` is a live cpu_set_t of exactly the size
    // passed, which the kernel fills in.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        return (0..n).collect();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET only reads bit `cpu` of `set`, and cpu < CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// `address sizes : 48 bits physical` from /proc/cpuinfo; 40 (QEMU's default guest
/// phys-bits) when it can't be read.
fn phys_addr_bits() -> u8 {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| parse_phys_bits(&text))
        .unwrap_or(40)
}

fn parse_phys_bits(cpuinfo: &str) -> Option<u8> {
    let line = cpuinfo.lines().find(|l| l.starts_with("address sizes"))?;
    let after = line.split_once(':')?.1.trim();
    let bits = after.split_whitespace().next()?;
    bits.parse().ok()
}

/// Why a file named on the command line is not usable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FileError {
    /// open(2) failed; the OS's reason.
    #[error("could not open: {0}")]
    Open(String),
    /// open(2) for writing failed on a writable drive.
    #[error("could not open for writing: {0} (add readonly=on or snapshot=on)")]
    OpenWrite(String),
    /// A directory where a file is needed.
    #[error("is a directory, not a file")]
    Directory,
}

/// The OS's text for an I/O error without Rust's ` (os error N)` suffix.
pub fn os_error_text(e: &io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text,
    }
}

/// Check that `path` is a regular file (or device) that can be opened for reading;
/// returns its size in bytes.
pub fn check_readable(path: &Path) -> Result<u64, FileError> {
    // O_NONBLOCK: a FIFO is refused later for its unknown size, not waited on here (it
    // changes nothing for files and block devices).
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| FileError::Open(os_error_text(&e)))?;
    let meta = file
        .metadata()
        .map_err(|e| FileError::Open(os_error_text(&e)))?;
    if meta.is_dir() {
        return Err(FileError::Directory);
    }
    Ok(meta.len())
}

/// Check that `path` can be opened for reading and writing.
pub fn check_writable(path: &Path) -> Result<(), FileError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(drop)
        .map_err(|e| FileError::OpenWrite(os_error_text(&e)))
}

#[cfg(test)]
pub(crate) mod testing {
    //! Temporary files for tests, removed on drop.

    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::Host;

    /// A file in the temp dir with the given size, deleted on drop.
    pub struct TempFile(pub PathBuf);

    impl TempFile {
        /// Create a file of `len` bytes (sparse).
        pub fn new(len: u64) -> TempFile {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("troupe-cli-test-{}-{n}", std::process::id()));
            let f = std::fs::File::create(&path).expect("create temp file");
            f.set_len(len).expect("size temp file");
            TempFile(path)
        }

        /// The path as a string (temp paths are UTF-8 here).
        pub fn s(&self) -> String {
            self.0.display().to_string()
        }

        /// The path.
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A host with CPUs 0..=3, 40 physical address bits and the given default firmware.
    pub fn host(default_bios: &Path) -> Host {
        Host {
            allowed_cpus: vec![0, 1, 2, 3],
            phys_addr_bits: 40,
            default_bios: default_bios.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::TempFile;
    use super::*;

    #[test]
    fn detect_finds_at_least_one_cpu_and_sane_address_bits() {
        let host = Host::detect();
        assert!(!host.allowed_cpus.is_empty());
        assert!(host.allowed_cpus.windows(2).all(|w| w[0] < w[1]));
        assert!((32..=64).contains(&host.phys_addr_bits));
    }

    #[test]
    fn phys_bits_are_read_from_cpuinfo() {
        let text = "processor\t: 0\naddress sizes\t: 46 bits physical, 48 bits virtual\n";
        assert_eq!(parse_phys_bits(text), Some(46));
        assert_eq!(parse_phys_bits("processor : 0\n"), None);
    }

    #[test]
    fn os_errors_lose_the_errno_suffix() {
        let e = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(os_error_text(&e), "No such file or directory");
        let e = io::Error::other("plain");
        assert_eq!(os_error_text(&e), "plain");
    }

    #[test]
    fn readable_files_report_their_size() {
        let f = TempFile::new(4096);
        assert_eq!(check_readable(f.path()), Ok(4096));
        assert_eq!(check_writable(f.path()), Ok(()));
    }

    #[test]
    fn missing_files_and_directories_are_refused() {
        assert_eq!(
            check_readable(Path::new("/nonexistent/x")),
            Err(FileError::Open("No such file or directory".into()))
        );
        assert_eq!(check_readable(Path::new("/")), Err(FileError::Directory));
        assert_eq!(
            FileError::Open("No such file or directory".into()).to_string(),
            "could not open: No such file or directory"
        );
    }
}
