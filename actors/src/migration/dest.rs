//! The destination side: read a stream into guest RAM and collect the machine's state.

use vm_memory::{Bytes, GuestAddress};

use super::is_zero;
use super::stream::{Frame, MachineDesc, StreamReader, PAGE};
use super::transport::Incoming;
use devices::memory::GuestMemoryMmap;
use devices::Section;

/// A stream read to its end: the sections to restore, and where to answer the source.
pub struct Loaded {
    pub sections: Vec<Section>,
    pub answer: Option<Box<dyn std::io::Write + Send>>,
    /// Bytes read.
    pub bytes: u64,
}

/// Read `inc` to its end marker: RAM straight into `ram`, device sections collected. The
/// machine descriptions must match first (the error names the difference).
pub fn receive(
    inc: Incoming,
    ram: &GuestMemoryMmap,
    blocks: &[std::sync::Arc<dyn super::DeviceRam>],
    mine: &MachineDesc,
) -> Result<Loaded, String> {
    let Incoming {
        reader,
        answer,
        child: _child,
    } = inc;
    let (mut r, theirs) = StreamReader::open(reader).map_err(|e| e.to_string())?;
    if let Some(diff) = theirs.difference(mine) {
        return Err(format!("the machines differ: {diff}"));
    }
    let mut sections = Vec::new();
    let mut page = vec![0u8; PAGE];
    loop {
        match r.next_frame().map_err(|e| e.to_string())? {
            Frame::Pages { gpa, data } => ram
                .write_slice(data, GuestAddress(gpa))
                .map_err(|e| format!("pages at {gpa:#x} lie outside guest RAM: {e}"))?,
            Frame::Zeros { gpa, count } => {
                for i in 0..u64::from(count) {
                    let at = GuestAddress(gpa + i * PAGE as u64);
                    // Untouched RAM reads as zero without being allocated: write only
                    // what holds something (firmware the destination loaded, say).
                    ram.read_slice(&mut page, at)
                        .map_err(|e| format!("page {:#x} lies outside guest RAM: {e}", at.0))?;
                    if !is_zero(&page) {
                        page.fill(0);
                        ram.write_slice(&page, at)
                            .map_err(|e| format!("page {:#x}: {e}", at.0))?;
                    }
                }
            }
            Frame::BlockPages {
                block,
                offset,
                data,
            } => {
                let b = block_at(blocks, block, offset, data.len())?;
                b.write(offset as usize, data);
            }
            Frame::BlockZeros {
                block,
                offset,
                count,
            } => {
                let len = count as usize * PAGE;
                let b = block_at(blocks, block, offset, len)?;
                b.write(offset as usize, &vec![0u8; len]);
            }
            Frame::Section(s) => sections.push(*s),
            Frame::End => break,
        }
    }
    Ok(Loaded {
        sections,
        answer,
        bytes: r.read,
    })
}

fn block_at(
    blocks: &[std::sync::Arc<dyn super::DeviceRam>],
    block: u32,
    offset: u64,
    len: usize,
) -> Result<&dyn super::DeviceRam, String> {
    let b = blocks
        .get(block as usize)
        .ok_or_else(|| format!("device memory block {block} does not exist"))?;
    if offset
        .checked_add(len as u64)
        .is_none_or(|end| end > b.len() as u64)
    {
        return Err(format!(
            "{len} bytes at {offset:#x} lie outside device memory '{}'",
            b.name()
        ));
    }
    Ok(b.as_ref())
}
