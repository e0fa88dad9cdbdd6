//! A small ELF loader for direct boot: ELF32 and ELF64 executables, loaded by physical
//! address (`p_paddr`), with the notes PVH needs. Every offset and size read from the file
//! is bounds-checked, so a truncated or hostile file gives a precise error, never a panic.

use super::BootError;

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// XEN_ELFNOTE_PHYS32_ENTRY (owner "Xen").
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// One loadable segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub paddr: u64,
    pub file_offset: u64,
    pub file_size: u64,
    pub mem_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfImage {
    pub class64: bool,
    pub entry: u64,
    pub segments: Vec<Segment>,
    /// The 32-bit PVH entry point, if the image has the Xen note.
    pub pvh_entry: Option<u64>,
}

fn rd<const N: usize>(b: &[u8], off: u64, what: &str) -> Result<[u8; N], BootError> {
    let start = usize::try_from(off).map_err(|_| BootError::Truncated(what.into()))?;
    b.get(start..start.saturating_add(N))
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| BootError::Truncated(what.into()))
}

fn u16_at(b: &[u8], off: u64, what: &str) -> Result<u16, BootError> {
    Ok(u16::from_le_bytes(rd(b, off, what)?))
}
fn u32_at(b: &[u8], off: u64, what: &str) -> Result<u32, BootError> {
    Ok(u32::from_le_bytes(rd(b, off, what)?))
}
fn u64_at(b: &[u8], off: u64, what: &str) -> Result<u64, BootError> {
    Ok(u64::from_le_bytes(rd(b, off, what)?))
}

pub fn is_elf(b: &[u8]) -> bool {
    b.len() >= 4 && &b[..4] == b"\x7fELF"
}

/// Parse the headers of an x86 ELF executable.
pub fn parse(b: &[u8]) -> Result<ElfImage, BootError> {
    if !is_elf(b) {
        return Err(BootError::NotElf);
    }
    let class = rd::<1>(b, 4, "ELF header")?[0];
    let data = rd::<1>(b, 5, "ELF header")?[0];
    if data != 1 {
        return Err(BootError::Unsupported("big-endian ELF".into()));
    }
    let class64 = match class {
        1 => false,
        2 => true,
        c => return Err(BootError::Unsupported(format!("ELF class {c}"))),
    };
    let machine = u16_at(b, 18, "ELF header")?;
    if machine != 3 && machine != 62 {
        return Err(BootError::Unsupported(format!(
            "ELF machine {machine} (not x86)"
        )));
    }
    let (entry, phoff, phentsize, phnum) = if class64 {
        (
            u64_at(b, 24, "ELF header")?,
            u64_at(b, 32, "ELF header")?,
            u16_at(b, 54, "ELF header")?,
            u16_at(b, 56, "ELF header")?,
        )
    } else {
        (
            u64::from(u32_at(b, 24, "ELF header")?),
            u64::from(u32_at(b, 28, "ELF header")?),
            u16_at(b, 42, "ELF header")?,
            u16_at(b, 44, "ELF header")?,
        )
    };
    let min_ent = if class64 { 56 } else { 32 };
    if phnum == 0 || u64::from(phentsize) < min_ent {
        return Err(BootError::Unsupported("ELF without program headers".into()));
    }
    let mut segments = Vec::new();
    let mut pvh_entry = None;
    for i in 0..u64::from(phnum) {
        let ph = phoff + i * u64::from(phentsize);
        let what = format!("program header {i}");
        let p_type = u32_at(b, ph, &what)?;
        let (offset, paddr, filesz, memsz) = if class64 {
            (
                u64_at(b, ph + 8, &what)?,
                u64_at(b, ph + 24, &what)?,
                u64_at(b, ph + 32, &what)?,
                u64_at(b, ph + 40, &what)?,
            )
        } else {
            (
                u64::from(u32_at(b, ph + 4, &what)?),
                u64::from(u32_at(b, ph + 12, &what)?),
                u64::from(u32_at(b, ph + 16, &what)?),
                u64::from(u32_at(b, ph + 20, &what)?),
            )
        };
        let end = offset.checked_add(filesz);
        if end.is_none_or(|e| e > b.len() as u64) {
            return Err(BootError::Truncated(format!(
                "segment {i} (bytes {offset:#x}..{:#x} of a {:#x}-byte file)",
                offset.saturating_add(filesz),
                b.len()
            )));
        }
        match p_type {
            PT_LOAD => {
                if memsz < filesz {
                    return Err(BootError::Unsupported(format!(
                        "segment {i} has memsz < filesz"
                    )));
                }
                segments.push(Segment {
                    paddr,
                    file_offset: offset,
                    file_size: filesz,
                    mem_size: memsz,
                });
            }
            PT_NOTE => {
                if let Some(e) =
                    find_pvh_note(&b[offset as usize..(offset + filesz) as usize], class64)
                {
                    pvh_entry = Some(e);
                }
            }
            _ => {}
        }
    }
    if segments.is_empty() {
        return Err(BootError::Unsupported(
            "ELF with no loadable segment".into(),
        ));
    }
    Ok(ElfImage {
        class64,
        entry,
        segments,
        pvh_entry,
    })
}

/// Walk a PT_NOTE segment for Xen's PHYS32_ENTRY note.
fn find_pvh_note(notes: &[u8], class64: bool) -> Option<u64> {
    let mut off = 0usize;
    let align = |n: usize| (n + 3) & !3;
    while off + 12 <= notes.len() {
        let namesz = u32::from_le_bytes(notes[off..off + 4].try_into().ok()?) as usize;
        let descsz = u32::from_le_bytes(notes[off + 4..off + 8].try_into().ok()?) as usize;
        let ntype = u32::from_le_bytes(notes[off + 8..off + 12].try_into().ok()?);
        let name_start = off + 12;
        let desc_start = name_start.checked_add(align(namesz))?;
        let next = desc_start.checked_add(align(descsz))?;
        if desc_start.checked_add(descsz)? > notes.len() {
            return None;
        }
        let name = &notes[name_start..name_start + namesz];
        if ntype == XEN_ELFNOTE_PHYS32_ENTRY && name.starts_with(b"Xen") {
            let d = &notes[desc_start..desc_start + descsz];
            return match descsz {
                4 => Some(u64::from(u32::from_le_bytes(d.try_into().ok()?))),
                8 if class64 => Some(u64::from_le_bytes(d.try_into().ok()?)),
                8 => Some(u64::from(u32::from_le_bytes(d[..4].try_into().ok()?))),
                _ => None,
            };
        }
        off = next;
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 with one PT_LOAD of `code` at `paddr` and optionally a PVH note.
    pub fn tiny_elf(paddr: u64, code: &[u8], pvh: Option<u32>) -> Vec<u8> {
        let phnum: u16 = if pvh.is_some() { 2 } else { 1 };
        let mut b = vec![0u8; 64 + 56 * phnum as usize];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[6] = 1;
        b[16..18].copy_from_slice(&2u16.to_le_bytes());
        b[18..20].copy_from_slice(&62u16.to_le_bytes());
        b[24..32].copy_from_slice(&paddr.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&phnum.to_le_bytes());
        let note_off = b.len();
        if let Some(e) = pvh {
            b.extend_from_slice(&4u32.to_le_bytes());
            b.extend_from_slice(&4u32.to_le_bytes());
            b.extend_from_slice(&18u32.to_le_bytes());
            b.extend_from_slice(b"Xen\0");
            b.extend_from_slice(&e.to_le_bytes());
        }
        let code_off = b.len();
        b.extend_from_slice(code);
        let ph = |b: &mut Vec<u8>, i: usize, t: u32, off: usize, pa: u64, sz: usize| {
            let p = 64 + 56 * i;
            b[p..p + 4].copy_from_slice(&t.to_le_bytes());
            b[p + 8..p + 16].copy_from_slice(&(off as u64).to_le_bytes());
            b[p + 16..p + 24].copy_from_slice(&pa.to_le_bytes());
            b[p + 24..p + 32].copy_from_slice(&pa.to_le_bytes());
            b[p + 32..p + 40].copy_from_slice(&(sz as u64).to_le_bytes());
            b[p + 40..p + 48].copy_from_slice(&(sz as u64).to_le_bytes());
        };
        ph(&mut b, 0, PT_LOAD, code_off, paddr, code.len());
        if pvh.is_some() {
            ph(&mut b, 1, PT_NOTE, note_off, 0, 20);
        }
        b
    }

    #[test]
    fn finds_segments_and_the_pvh_entry() {
        let img = parse(&tiny_elf(0x10_0000, &[0xf4; 16], Some(0x10_0004))).unwrap();
        assert_eq!(img.pvh_entry, Some(0x10_0004));
        assert_eq!(img.segments[0].paddr, 0x10_0000);
        assert_eq!(img.segments[0].file_size, 16);
    }

    #[test]
    fn truncated_files_are_reported_not_panicked_on() {
        let full = tiny_elf(0x10_0000, &[0x90; 64], Some(0x10_0000));
        for cut in [3, 10, 40, 100, 150, full.len() - 1] {
            let e = parse(&full[..cut]);
            assert!(e.is_err(), "cut at {cut} parsed");
        }
        let e = parse(&full[..full.len() - 1]).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }
}
