//! The typed block I/O interface between disk front ends (IDE, virtio-blk) and the block
//! backend actors that own image files. A front end issues [`BlockRequest`]s and later
//! receives [`BlockCompletion`]s carrying the same id; data for reads comes back in the
//! completion, data for writes goes with the request.

use serde::{Deserialize, Serialize};

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockOp {
    Read {
        offset: u64,
        len: usize,
    },
    Write {
        offset: u64,
        data: Vec<u8>,
    },
    Flush,
    /// Deallocate (the range may read back as anything, zeros for raw/qcow2).
    Discard {
        offset: u64,
        len: u64,
    },
    /// Make the range read as zeros.
    WriteZeroes {
        offset: u64,
        len: u64,
    },
    /// Read straight into guest buffers (no copy through the request).
    ReadV {
        offset: u64,
        bufs: Vec<HostBuf>,
    },
    /// Write straight from guest buffers.
    WriteV {
        offset: u64,
        bufs: Vec<HostBuf>,
    },
}

/// A buffer by host address: inside one guest RAM region, which stays mapped for the
/// life of the VM, or a front end's own buffer that it keeps alive until the request's
/// completion (virtio-blk's read bounce buffers). The front end has checked the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostBuf {
    pub addr: usize,
    pub len: usize,
}

impl HostBuf {
    /// Total length of `bufs`.
    pub fn total(bufs: &[HostBuf]) -> u64 {
        bufs.iter().map(|b| b.len as u64).sum()
    }
}

/// A request tagged with the front end's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRequest {
    pub id: u64,
    pub op: BlockOp,
}

/// Why a request failed (what the front end reports to the guest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum BlockError {
    #[error("I/O error")]
    Io,
    #[error("the drive is read-only")]
    ReadOnly,
    #[error("access beyond the end of the medium")]
    OutOfRange,
    #[error("no medium")]
    NoMedium,
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockCompletion {
    pub id: u64,
    /// For reads: the data (exactly the requested length).
    pub result: Result<Vec<u8>, BlockError>,
}

/// What a front end needs to know about its medium.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockInfo {
    pub size: u64,
    pub read_only: bool,
}

/// An in-memory image that serves requests synchronously (for tests).
#[derive(Debug, Clone)]
pub struct MemDisk {
    pub data: Vec<u8>,
    pub read_only: bool,
    pub flushes: usize,
}

impl MemDisk {
    pub fn new(data: Vec<u8>) -> Self {
        Self {
            data,
            read_only: false,
            flushes: 0,
        }
    }

    pub fn info(&self) -> BlockInfo {
        BlockInfo {
            size: self.data.len() as u64,
            read_only: self.read_only,
        }
    }

    pub fn serve(&mut self, r: BlockRequest) -> BlockCompletion {
        let len = self.data.len() as u64;
        let result = match r.op {
            BlockOp::Read { offset, len: n } => {
                if offset + n as u64 > len {
                    Err(BlockError::OutOfRange)
                } else {
                    Ok(self.data[offset as usize..offset as usize + n].to_vec())
                }
            }
            BlockOp::Write { offset, data } => {
                if self.read_only {
                    Err(BlockError::ReadOnly)
                } else if offset + data.len() as u64 > len {
                    Err(BlockError::OutOfRange)
                } else {
                    self.data[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
                    Ok(Vec::new())
                }
            }
            BlockOp::Flush => {
                self.flushes += 1;
                Ok(Vec::new())
            }
            BlockOp::Discard { offset, len: n } | BlockOp::WriteZeroes { offset, len: n } => {
                if self.read_only {
                    Err(BlockError::ReadOnly)
                } else if offset + n > len {
                    Err(BlockError::OutOfRange)
                } else {
                    self.data[offset as usize..(offset + n) as usize].fill(0);
                    Ok(Vec::new())
                }
            }
            // The in-memory test disk takes only copying requests.
            BlockOp::ReadV { .. } | BlockOp::WriteV { .. } => Err(BlockError::Io),
        };
        BlockCompletion { id: r.id, result }
    }
}
