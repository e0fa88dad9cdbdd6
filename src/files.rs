//! Reading a file the command line names into memory, bounded by what it may fill.
//!
//! `-kernel`, `-initrd`, `-bios` and option ROMs are read whole. Before reading, the file
//! must be a regular file or a block device whose size is known and no larger than where
//! it goes (guest RAM, a ROM window): an endless file (`/dev/zero`, a FIFO) or a huge one
//! is refused at once instead of being read until memory runs out.

use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("could not read '{path}': {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("'{path}' is not a regular file or block device, so its size is unknown")]
    NotAFile { path: PathBuf },
    #[error("'{path}' is empty")]
    Empty { path: PathBuf },
    #[error("'{path}' is {size} bytes, more than the {limit} bytes of {room}")]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
        room: &'static str,
    },
    #[error("'{path}' changed size while being read ({read} of {size} bytes)")]
    Short { path: PathBuf, size: u64, read: u64 },
}

/// Read `path` whole if it is at most `limit` bytes (`room` says what the limit is, for
/// the message).
pub fn read_bounded(path: &Path, limit: u64, room: &'static str) -> Result<Vec<u8>, LoadError> {
    let io_err = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    // O_NONBLOCK: a FIFO is refused below, not waited on here.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io_err)?;
    let kind = f.metadata().map_err(io_err)?.file_type();
    let size = if kind.is_file() {
        f.metadata().map_err(io_err)?.len()
    } else if kind.is_block_device() {
        let end = f.seek(SeekFrom::End(0)).map_err(io_err)?;
        f.seek(SeekFrom::Start(0)).map_err(io_err)?;
        end
    } else {
        return Err(LoadError::NotAFile {
            path: path.to_path_buf(),
        });
    };
    if size == 0 {
        return Err(LoadError::Empty {
            path: path.to_path_buf(),
        });
    }
    if size > limit {
        return Err(LoadError::TooLarge {
            path: path.to_path_buf(),
            size,
            limit,
            room,
        });
    }
    let mut data = Vec::with_capacity(size as usize);
    // One byte more than expected shows a file that grew.
    f.take(size + 1).read_to_end(&mut data).map_err(io_err)?;
    if data.len() as u64 != size {
        return Err(LoadError::Short {
            path: path.to_path_buf(),
            size,
            read: data.len() as u64,
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endless_and_oversized_files_are_refused_before_reading() {
        let e = read_bounded(Path::new("/dev/zero"), 1 << 20, "guest RAM").unwrap_err();
        assert!(matches!(e, LoadError::NotAFile { .. }), "{e}");
        let dir = std::env::temp_dir().join(format!("troupe-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("k");
        std::fs::write(&p, vec![7u8; 4096]).unwrap();
        assert_eq!(read_bounded(&p, 4096, "x").unwrap(), vec![7u8; 4096]);
        let e = read_bounded(&p, 4095, "the ROM window").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "'{}' is 4096 bytes, more than the 4095 bytes of the ROM window",
                p.display()
            )
        );
        std::fs::write(&p, b"").unwrap();
        assert!(matches!(
            read_bounded(&p, 10, "x"),
            Err(LoadError::Empty { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
