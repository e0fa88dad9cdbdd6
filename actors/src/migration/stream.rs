//! The migration stream: what a source writes and a destination reads, over any byte pipe
//! (a socket, a command's stdin, a file).
//!
//! ```text
//! header   "TROUPE-MIGRATE\r\n" (16 bytes)  version: u32 LE
//! frame*   tag: u8  length: u32 LE  payload  crc32(tag, length, payload): u32 LE
//! ```
//!
//! Frames, in the order a source sends them:
//! - `M` the machine: JSON [`MachineDesc`] (RAM layout, vCPUs, CPU model, devices). The
//!   destination compares it with its own before any byte of RAM lands.
//! - `R` RAM: guest address (u64 LE) then whole 4 KiB pages, up to [`MAX_RUN`] of them.
//! - `Z` zero pages: guest address (u64 LE), page count (u32 LE).
//! - `V` device memory (video RAM): block index (u32 LE, in the machine's `blocks`),
//!   byte offset (u64 LE), whole pages; `W` zero pages of it: index, offset, count.
//! - `S` one device-tree entry's saved state: a JSON [`Section`] (id, kind, version, state).
//! - `E` end of stream (empty payload).
//!
//! Every frame carries its own checksum, so a corrupt byte is caught in the frame it hit
//! and named; a stream that ends before `E` is truncated.

use std::io::{self, Read, Write};

use devices::Section;
use serde::{Deserialize, Serialize};

/// First bytes of every stream.
pub const MAGIC: &[u8; 16] = b"TROUPE-MIGRATE\r\n";
/// The stream version this build writes and reads.
pub const VERSION: u32 = 1;
/// Guest page size the stream counts in.
pub const PAGE: usize = 4096;
/// Pages in one `R` frame at most.
pub const MAX_RUN: usize = 64;
/// The longest payload a reader accepts (a full `R` frame plus its address; device
/// sections stay far below).
const MAX_PAYLOAD: usize = 64 << 20;

/// What went wrong with a stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a troupe migration stream (it starts with {0:02x?})")]
    Magic(Vec<u8>),
    #[error("migration stream version {0} is not supported (this build reads version {VERSION})")]
    Version(u32),
    #[error("the stream ends early (truncated {0})")]
    Truncated(&'static str),
    #[error("checksum mismatch in a '{tag}' frame of {len} bytes: the stream is corrupt")]
    Checksum { tag: char, len: usize },
    #[error("unknown frame '{0}' (byte {1:#04x}): the stream is corrupt")]
    Tag(char, u8),
    #[error("a '{tag}' frame is malformed: {why}")]
    Malformed { tag: char, why: String },
}

/// The parts of a machine both sides must agree on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineDesc {
    /// Guest RAM: (guest address, size) of each region.
    pub ram: Vec<(u64, u64)>,
    /// Device memory outside RAM: (name, size).
    #[serde(default)]
    pub blocks: Vec<(String, u64)>,
    pub vcpus: u32,
    /// The `-cpu` model as given.
    pub cpu: String,
    /// Device-tree entries: (id, driver).
    pub devices: Vec<(String, String)>,
}

impl MachineDesc {
    /// The first difference between the source's machine (`self`) and the destination's,
    /// worded for the user; None when they match.
    pub fn difference(&self, dest: &MachineDesc) -> Option<String> {
        let size = |r: &[(u64, u64)]| r.iter().map(|(_, s)| s).sum::<u64>();
        if self.ram != dest.ram {
            return Some(format!(
                "guest RAM differs: the source has {} MiB ({}), this machine {} MiB ({})",
                size(&self.ram) >> 20,
                regions(&self.ram),
                size(&dest.ram) >> 20,
                regions(&dest.ram)
            ));
        }
        if self.blocks != dest.blocks {
            let show = |b: &[(String, u64)]| {
                b.iter()
                    .map(|(n, s)| format!("{n} {} MiB", s >> 20))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Some(format!(
                "device memory differs: the source has [{}], this machine [{}]",
                show(&self.blocks),
                show(&dest.blocks)
            ));
        }
        if self.vcpus != dest.vcpus {
            return Some(format!(
                "the source has {} vCPU(s), this machine {}",
                self.vcpus, dest.vcpus
            ));
        }
        if self.cpu != dest.cpu {
            return Some(format!(
                "CPU model differs: the source runs '{}', this machine '{}'",
                self.cpu, dest.cpu
            ));
        }
        for (id, driver) in &self.devices {
            match dest.devices.iter().find(|(i, _)| i == id) {
                None => {
                    return Some(format!(
                        "device '{id}' ({driver}) of the source is missing on this machine"
                    ))
                }
                Some((_, d)) if d != driver => {
                    return Some(format!(
                        "device '{id}' is {driver} on the source but {d} on this machine"
                    ))
                }
                _ => {}
            }
        }
        if let Some((id, driver)) = dest
            .devices
            .iter()
            .find(|(i, _)| !self.devices.iter().any(|(j, _)| j == i))
        {
            return Some(format!(
                "this machine has device '{id}' ({driver}), which the source lacks"
            ));
        }
        None
    }
}

fn regions(r: &[(u64, u64)]) -> String {
    r.iter()
        .map(|(a, s)| format!("{:#x}+{:#x}", a, s))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes a stream. Counts the bytes it wrote.
pub struct StreamWriter<W: Write> {
    out: W,
    /// Bytes written so far (header and framing included).
    pub written: u64,
}

impl<W: Write> StreamWriter<W> {
    /// Start a stream: the header, then the machine.
    pub fn start(out: W, desc: &MachineDesc) -> Result<Self, StreamError> {
        let mut w = Self { out, written: 0 };
        let mut head = Vec::with_capacity(20);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        w.out.write_all(&head)?;
        w.written += head.len() as u64;
        let json = serde_json::to_vec(desc).map_err(io::Error::other)?;
        w.frame(b'M', &[&json])?;
        Ok(w)
    }

    fn frame(&mut self, tag: u8, parts: &[&[u8]]) -> Result<(), StreamError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut head = [0u8; 5];
        head[0] = tag;
        head[1..].copy_from_slice(&(len as u32).to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        for p in parts {
            crc.update(p);
        }
        self.out.write_all(&head)?;
        for p in parts {
            self.out.write_all(p)?;
        }
        self.out.write_all(&crc.finalize().to_le_bytes())?;
        self.written += len as u64 + 9;
        Ok(())
    }

    /// Whole pages starting at guest address `gpa` (`data.len()` a multiple of [`PAGE`]).
    pub fn pages(&mut self, gpa: u64, data: &[u8]) -> Result<(), StreamError> {
        debug_assert!(data.len().is_multiple_of(PAGE) && data.len() <= MAX_RUN * PAGE);
        self.frame(b'R', &[&gpa.to_le_bytes(), data])
    }

    /// `count` zero pages from guest address `gpa`.
    pub fn zeros(&mut self, gpa: u64, count: u32) -> Result<(), StreamError> {
        self.frame(b'Z', &[&gpa.to_le_bytes(), &count.to_le_bytes()])
    }

    /// Whole pages of device memory block `block` from byte `offset`.
    pub fn block_pages(&mut self, block: u32, offset: u64, data: &[u8]) -> Result<(), StreamError> {
        self.frame(b'V', &[&block.to_le_bytes(), &offset.to_le_bytes(), data])
    }

    /// `count` zero pages of device memory block `block` from byte `offset`.
    pub fn block_zeros(&mut self, block: u32, offset: u64, count: u32) -> Result<(), StreamError> {
        self.frame(
            b'W',
            &[
                &block.to_le_bytes(),
                &offset.to_le_bytes(),
                &count.to_le_bytes(),
            ],
        )
    }

    /// One device-tree entry's state.
    pub fn section(&mut self, s: &Section) -> Result<(), StreamError> {
        let json = serde_json::to_vec(s).map_err(io::Error::other)?;
        self.frame(b'S', &[&json])
    }

    /// End the stream and flush it.
    pub fn finish(&mut self) -> Result<(), StreamError> {
        self.frame(b'E', &[])?;
        self.out.flush()?;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), StreamError> {
        self.out.flush()?;
        Ok(())
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }
}

/// One frame as read.
#[derive(Debug)]
pub enum Frame<'a> {
    Pages {
        gpa: u64,
        data: &'a [u8],
    },
    Zeros {
        gpa: u64,
        count: u32,
    },
    BlockPages {
        block: u32,
        offset: u64,
        data: &'a [u8],
    },
    BlockZeros {
        block: u32,
        offset: u64,
        count: u32,
    },
    Section(Box<Section>),
    End,
}

/// Reads a stream.
pub struct StreamReader<R: Read> {
    input: R,
    buf: Vec<u8>,
    /// Bytes read so far.
    pub read: u64,
}

impl<R: Read> StreamReader<R> {
    /// Check the header and read the machine description.
    pub fn open(mut input: R) -> Result<(Self, MachineDesc), StreamError> {
        let mut head = [0u8; 20];
        read_exact(&mut input, &mut head, "in its header")?;
        if &head[..16] != MAGIC {
            return Err(StreamError::Magic(head[..16].to_vec()));
        }
        let version = u32::from_le_bytes(head[16..20].try_into().unwrap_or_default());
        if version != VERSION {
            return Err(StreamError::Version(version));
        }
        let mut r = Self {
            input,
            buf: Vec::new(),
            read: 20,
        };
        let tag = r.raw_frame()?;
        if tag != b'M' {
            return Err(StreamError::Malformed {
                tag: tag as char,
                why: "the stream must describe the machine first".into(),
            });
        }
        let desc = serde_json::from_slice(&r.buf).map_err(|e| StreamError::Malformed {
            tag: 'M',
            why: e.to_string(),
        })?;
        Ok((r, desc))
    }

    /// Read one frame into the buffer, checking its checksum; returns its tag.
    fn raw_frame(&mut self) -> Result<u8, StreamError> {
        let mut head = [0u8; 5];
        read_exact(&mut self.input, &mut head, "between frames")?;
        let tag = head[0];
        if !matches!(tag, b'M' | b'R' | b'Z' | b'V' | b'W' | b'S' | b'E') {
            return Err(StreamError::Tag(
                if tag.is_ascii_graphic() {
                    tag as char
                } else {
                    '?'
                },
                tag,
            ));
        }
        let len = u32::from_le_bytes(head[1..].try_into().unwrap_or_default()) as usize;
        if len > MAX_PAYLOAD {
            return Err(StreamError::Malformed {
                tag: tag as char,
                why: format!("{len} bytes is too long for a frame"),
            });
        }
        self.buf.resize(len, 0);
        read_exact(&mut self.input, &mut self.buf, "inside a frame")?;
        let mut crc = [0u8; 4];
        read_exact(&mut self.input, &mut crc, "inside a frame")?;
        let mut h = crc32fast::Hasher::new();
        h.update(&head);
        h.update(&self.buf);
        if h.finalize() != u32::from_le_bytes(crc) {
            return Err(StreamError::Checksum {
                tag: tag as char,
                len,
            });
        }
        self.read += len as u64 + 9;
        Ok(tag)
    }

    /// The next frame.
    pub fn next_frame(&mut self) -> Result<Frame<'_>, StreamError> {
        let tag = self.raw_frame()?;
        let bad = |why: &str| StreamError::Malformed {
            tag: tag as char,
            why: why.to_string(),
        };
        let b = &self.buf;
        Ok(match tag {
            b'R' => {
                if b.len() < 8 || !(b.len() - 8).is_multiple_of(PAGE) {
                    return Err(bad("not whole pages"));
                }
                Frame::Pages {
                    gpa: u64::from_le_bytes(b[..8].try_into().unwrap_or_default()),
                    data: &b[8..],
                }
            }
            b'Z' => {
                if b.len() != 12 {
                    return Err(bad("wrong length"));
                }
                Frame::Zeros {
                    gpa: u64::from_le_bytes(b[..8].try_into().unwrap_or_default()),
                    count: u32::from_le_bytes(b[8..].try_into().unwrap_or_default()),
                }
            }
            b'V' => {
                if b.len() < 12 || !(b.len() - 12).is_multiple_of(PAGE) {
                    return Err(bad("not whole pages"));
                }
                Frame::BlockPages {
                    block: u32::from_le_bytes(b[..4].try_into().unwrap_or_default()),
                    offset: u64::from_le_bytes(b[4..12].try_into().unwrap_or_default()),
                    data: &b[12..],
                }
            }
            b'W' => {
                if b.len() != 16 {
                    return Err(bad("wrong length"));
                }
                Frame::BlockZeros {
                    block: u32::from_le_bytes(b[..4].try_into().unwrap_or_default()),
                    offset: u64::from_le_bytes(b[4..12].try_into().unwrap_or_default()),
                    count: u32::from_le_bytes(b[12..].try_into().unwrap_or_default()),
                }
            }
            b'S' => Frame::Section(Box::new(
                serde_json::from_slice(b).map_err(|e| bad(&e.to_string()))?,
            )),
            b'E' => Frame::End,
            _ => return Err(bad("a second machine description")),
        })
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.input
    }
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], at: &'static str) -> Result<(), StreamError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => StreamError::Truncated(at),
        _ => StreamError::Io(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc() -> MachineDesc {
        MachineDesc {
            ram: vec![(0, 128 << 20)],
            blocks: vec![("vga.vram".into(), 16 << 20)],
            vcpus: 2,
            cpu: "qemu64".into(),
            devices: vec![("serial0".into(), "isa-serial".into())],
        }
    }

    fn sample() -> Vec<u8> {
        let mut w = StreamWriter::start(Vec::new(), &desc()).unwrap();
        let page = vec![0xabu8; PAGE * 2];
        w.pages(0x1000, &page).unwrap();
        w.zeros(0x3000, 5).unwrap();
        w.section(&Section::new("pit", "PIT", 1, &serde_json::json!({"x": 1})).unwrap())
            .unwrap();
        w.finish().unwrap();
        w.out
    }

    #[test]
    fn frames_come_back_in_order_with_their_contents() {
        let bytes = sample();
        let (mut r, d) = StreamReader::open(&bytes[..]).unwrap();
        assert_eq!(d, desc());
        match r.next_frame().unwrap() {
            Frame::Pages { gpa, data } => {
                assert_eq!(gpa, 0x1000);
                assert_eq!(data.len(), 2 * PAGE);
                assert!(data.iter().all(|b| *b == 0xab));
            }
            f => panic!("{f:?}"),
        }
        assert!(matches!(
            r.next_frame().unwrap(),
            Frame::Zeros {
                gpa: 0x3000,
                count: 5
            }
        ));
        match r.next_frame().unwrap() {
            Frame::Section(s) => assert_eq!((s.id.as_str(), s.kind.as_str()), ("pit", "PIT")),
            f => panic!("{f:?}"),
        }
        assert!(matches!(r.next_frame().unwrap(), Frame::End));
        assert_eq!(r.read, bytes.len() as u64);
    }

    #[test]
    fn a_flipped_byte_anywhere_after_the_header_is_a_checksum_or_framing_error() {
        let bytes = sample();
        for at in 20..bytes.len() {
            let mut b = bytes.clone();
            b[at] ^= 0x40;
            let res = StreamReader::open(&b[..]).and_then(|(mut r, _)| loop {
                if matches!(r.next_frame()?, Frame::End) {
                    return Ok(());
                }
            });
            assert!(res.is_err(), "a flip at byte {at} went unnoticed");
        }
    }

    #[test]
    fn truncation_wrong_magic_and_version_are_named() {
        let bytes = sample();
        let cut = &bytes[..bytes.len() - 3];
        let (mut r, _) = StreamReader::open(cut).unwrap();
        let err = loop {
            match r.next_frame() {
                Ok(Frame::End) => panic!("a cut stream ended"),
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert!(err.to_string().contains("truncated"), "{err}");
        let mut b = bytes.clone();
        b[0] = b'X';
        assert!(matches!(
            StreamReader::open(&b[..]),
            Err(StreamError::Magic(_))
        ));
        let mut b = bytes.clone();
        b[16] = 9;
        let e = StreamReader::open(&b[..]).err().unwrap();
        assert!(e.to_string().contains("version 9"), "{e}");
    }

    #[test]
    fn machine_differences_are_named() {
        let a = desc();
        let mut b = desc();
        assert_eq!(a.difference(&b), None);
        b.ram = vec![(0, 256 << 20)];
        assert!(a.difference(&b).unwrap().contains("128 MiB"));
        let mut b = desc();
        b.devices.push(("nic0".into(), "e1000".into()));
        assert!(a.difference(&b).unwrap().contains("nic0"));
        let mut b = desc();
        b.cpu = "host".into();
        assert!(a.difference(&b).unwrap().contains("'host'"));
    }
}
