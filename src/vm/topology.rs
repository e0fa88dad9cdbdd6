//! CPU topology: how `-smp sockets=,cores=,threads=` becomes APIC ids.
//!
//! Like QEMU (and real x86), each level gets a power-of-two field in the APIC id:
//! `socket << (core_bits + thread_bits) | core << thread_bits | thread`.

use crate::config::SmpConfig;

/// Bits needed to number `n` things (0 for 1).
pub fn field_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
}

/// Where one vCPU sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuPosition {
    pub socket: u32,
    pub core: u32,
    pub thread: u32,
}

impl Topology {
    pub fn from_smp(smp: &SmpConfig) -> Self {
        Self {
            sockets: smp.sockets.max(1),
            cores: smp.cores.max(1),
            threads: smp.threads.max(1),
        }
    }

    pub fn thread_bits(&self) -> u32 {
        field_bits(self.threads)
    }

    pub fn core_bits(&self) -> u32 {
        field_bits(self.cores)
    }

    /// Logical processors per package.
    pub fn per_socket(&self) -> u32 {
        self.cores * self.threads
    }

    pub fn position(&self, index: u32) -> CpuPosition {
        CpuPosition {
            socket: index / self.per_socket(),
            core: (index / self.threads) % self.cores,
            thread: index % self.threads,
        }
    }

    pub fn apic_id(&self, index: u32) -> u32 {
        let p = self.position(index);
        (p.socket << (self.core_bits() + self.thread_bits()))
            | (p.core << self.thread_bits())
            | p.thread
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(sockets: u32, cores: u32, threads: u32) -> Topology {
        Topology {
            sockets,
            cores,
            threads,
        }
    }

    #[test]
    fn apic_ids_follow_power_of_two_fields() {
        let t = topo(2, 2, 1);
        assert_eq!(
            (0..4).map(|i| t.apic_id(i)).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        let t = topo(1, 3, 1);
        assert_eq!((0..3).map(|i| t.apic_id(i)).collect::<Vec<_>>(), [0, 1, 2]);
        let t = topo(2, 3, 2);
        assert_eq!(
            (0..12).map(|i| t.apic_id(i)).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13]
        );
        let t = topo(1, 1, 1);
        assert_eq!(t.apic_id(0), 0);
    }

    #[test]
    fn field_bits_rounds_up() {
        assert_eq!(field_bits(1), 0);
        assert_eq!(field_bits(2), 1);
        assert_eq!(field_bits(3), 2);
        assert_eq!(field_bits(4), 2);
        assert_eq!(field_bits(5), 3);
    }
}
