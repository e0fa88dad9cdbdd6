//! QEMU's ACPI linker/loader (`etc/table-loader`, hw/acpi/bios-linker-loader.c): 128-byte
//! commands telling the firmware to allocate fw_cfg files in guest memory, patch pointers
//! between them, and fix checksums.

pub const ALLOC_ZONE_HIGH: u8 = 1;
pub const ALLOC_ZONE_FSEG: u8 = 2;

const CMD_ALLOCATE: u32 = 1;
const CMD_ADD_POINTER: u32 = 2;
const CMD_ADD_CHECKSUM: u32 = 3;
const FILE_LEN: usize = 56;

/// One loader command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Allocate {
        file: String,
        align: u32,
        zone: u8,
    },
    /// Add the address of `src` to the `size`-byte little-endian value at `offset` in `dest`.
    AddPointer {
        dest: String,
        src: String,
        offset: u32,
        size: u8,
    },
    /// Set the byte at `offset` in `file` so that `[start, start + length)` sums to 0.
    AddChecksum {
        file: String,
        offset: u32,
        start: u32,
        length: u32,
    },
}

fn put_name(b: &mut [u8], name: &str) {
    let n = name.as_bytes();
    b[..n.len().min(FILE_LEN - 1)].copy_from_slice(&n[..n.len().min(FILE_LEN - 1)]);
}

impl Command {
    pub fn encode(&self) -> [u8; 128] {
        let mut c = [0u8; 128];
        match self {
            Self::Allocate { file, align, zone } => {
                c[0..4].copy_from_slice(&CMD_ALLOCATE.to_le_bytes());
                put_name(&mut c[4..60], file);
                c[60..64].copy_from_slice(&align.to_le_bytes());
                c[64] = *zone;
            }
            Self::AddPointer {
                dest,
                src,
                offset,
                size,
            } => {
                c[0..4].copy_from_slice(&CMD_ADD_POINTER.to_le_bytes());
                put_name(&mut c[4..60], dest);
                put_name(&mut c[60..116], src);
                c[116..120].copy_from_slice(&offset.to_le_bytes());
                c[120] = *size;
            }
            Self::AddChecksum {
                file,
                offset,
                start,
                length,
            } => {
                c[0..4].copy_from_slice(&CMD_ADD_CHECKSUM.to_le_bytes());
                put_name(&mut c[4..60], file);
                c[60..64].copy_from_slice(&offset.to_le_bytes());
                c[64..68].copy_from_slice(&start.to_le_bytes());
                c[68..72].copy_from_slice(&length.to_le_bytes());
            }
        }
        c
    }

    #[cfg_attr(not(test), allow(dead_code))] // the tests read tables back with it
    pub fn decode(c: &[u8; 128]) -> Option<Self> {
        let name = |b: &[u8]| {
            let end = b.iter().position(|x| *x == 0).unwrap_or(b.len());
            String::from_utf8_lossy(&b[..end]).into_owned()
        };
        let u32_at = |o: usize| u32::from_le_bytes(c[o..o + 4].try_into().unwrap_or_default());
        Some(match u32_at(0) {
            CMD_ALLOCATE => Self::Allocate {
                file: name(&c[4..60]),
                align: u32_at(60),
                zone: c[64],
            },
            CMD_ADD_POINTER => Self::AddPointer {
                dest: name(&c[4..60]),
                src: name(&c[60..116]),
                offset: u32_at(116),
                size: c[120],
            },
            CMD_ADD_CHECKSUM => Self::AddChecksum {
                file: name(&c[4..60]),
                offset: u32_at(60),
                start: u32_at(64),
                length: u32_at(68),
            },
            _ => return None,
        })
    }
}

/// The `etc/table-loader` file for these commands.
pub fn encode_all(cmds: &[Command]) -> Vec<u8> {
    cmds.iter().flat_map(|c| c.encode()).collect()
}

/// What a firmware does with the commands: returns each file's (address, patched bytes),
/// allocating from `high` (and `fseg`) upward. For tests and for direct boot.
pub fn execute(
    cmds: &[Command],
    files: &[(String, Vec<u8>)],
    mut high: u64,
    mut fseg: u64,
) -> Result<Vec<(String, u64, Vec<u8>)>, String> {
    let mut placed: Vec<(String, u64, Vec<u8>)> = Vec::new();
    for cmd in cmds {
        match cmd {
            Command::Allocate { file, align, zone } => {
                let data = files
                    .iter()
                    .find(|(n, _)| n == file)
                    .ok_or_else(|| format!("no file {file}"))?
                    .1
                    .clone();
                let a = u64::from((*align).max(1));
                let cursor = if *zone == ALLOC_ZONE_FSEG {
                    &mut fseg
                } else {
                    &mut high
                };
                let addr = (*cursor).div_ceil(a) * a;
                *cursor = addr + data.len() as u64;
                placed.push((file.clone(), addr, data));
            }
            Command::AddPointer {
                dest,
                src,
                offset,
                size,
            } => {
                let src_addr = placed
                    .iter()
                    .find(|(n, _, _)| n == src)
                    .ok_or_else(|| format!("pointer to unallocated {src}"))?
                    .1;
                let d = placed
                    .iter_mut()
                    .find(|(n, _, _)| n == dest)
                    .ok_or_else(|| format!("pointer in unallocated {dest}"))?;
                let (o, s) = (*offset as usize, usize::from(*size));
                let field = d.2.get_mut(o..o + s).ok_or("pointer outside its file")?;
                let mut v = [0u8; 8];
                v[..s].copy_from_slice(field);
                let patched = u64::from_le_bytes(v).wrapping_add(src_addr);
                field.copy_from_slice(&patched.to_le_bytes()[..s]);
            }
            Command::AddChecksum {
                file,
                offset,
                start,
                length,
            } => {
                let d = placed
                    .iter_mut()
                    .find(|(n, _, _)| n == file)
                    .ok_or_else(|| format!("checksum in unallocated {file}"))?;
                let (o, st, len) = (*offset as usize, *start as usize, *length as usize);
                if st + len > d.2.len() || o >= d.2.len() {
                    return Err("checksum range outside its file".into());
                }
                d.2[o] = 0;
                let sum = d.2[st..st + len]
                    .iter()
                    .fold(0u8, |a, b| a.wrapping_add(*b));
                d.2[o] = 0u8.wrapping_sub(sum);
            }
        }
    }
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_through_their_encoding() {
        for c in [
            Command::Allocate {
                file: "etc/acpi/rsdp".into(),
                align: 16,
                zone: ALLOC_ZONE_FSEG,
            },
            Command::AddPointer {
                dest: "a".into(),
                src: "b".into(),
                offset: 36,
                size: 4,
            },
            Command::AddChecksum {
                file: "a".into(),
                offset: 9,
                start: 0,
                length: 40,
            },
        ] {
            assert_eq!(Command::decode(&c.encode()), Some(c));
        }
    }
}
