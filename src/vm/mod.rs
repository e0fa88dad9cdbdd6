//! VM assembly: the KVM VM and its vCPUs, guest memory, CPUID, and the register states
//! vCPUs start from.

pub mod cpuid;
pub mod firmware;
pub mod kvm;
pub mod memory;
pub mod regs;
pub mod topology;

#[cfg(test)]
mod state_tests;
