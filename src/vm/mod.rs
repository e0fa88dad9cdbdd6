//! VM assembly: the KVM VM and its vCPUs, guest memory, CPUID, and the register states
//! vCPUs start from.

pub mod backing;
pub mod cpuid;
pub mod firmware;
pub mod kvm;
pub mod memory;
pub mod regs;
pub mod topology;

#[cfg(test)]
mod state_tests;

/// Guest RAM pages written since the dirty log was turned on or last read: those a vCPU
/// wrote (KVM's log) and those troupe's devices wrote (the memory's bitmap), each once;
/// per RAM region (its guest address, a bit per 4 KiB page). Reading clears both.
pub fn dirty_pages(
    kvm: &kvm::KvmVm,
    mem: &devices::memory::GuestMemoryMmap,
) -> Result<Vec<(u64, Vec<u64>)>, kvm::VmError> {
    let vcpus = kvm.ram_dirty_log()?;
    let mut regions = devices::memory::take_dirty(mem);
    for (gpa, bits) in vcpus {
        let Some((start, words)) = regions.iter_mut().rev().find(|(start, _)| *start <= gpa) else {
            continue;
        };
        let first = ((gpa - *start) / devices::memory::PAGE_SIZE) as usize;
        if first.is_multiple_of(64) {
            // Slots start on 256 KiB boundaries within their region: whole words.
            for (i, w) in bits.iter().enumerate() {
                if let Some(word) = words.get_mut(first / 64 + i) {
                    *word |= w;
                }
            }
            continue;
        }
        for (i, w) in bits.iter().enumerate() {
            for b in 0..64 {
                if w & (1 << b) != 0 {
                    let page = first + i * 64 + b;
                    if let Some(word) = words.get_mut(page / 64) {
                        *word |= 1 << (page % 64);
                    }
                }
            }
        }
    }
    Ok(regions)
}
