//! CPUID feature words and their flag names, as QEMU 7.2 defines them.
//!
//! A feature set is one `u32` per word ([`Words`]); each word says where its bits appear
//! (a CPUID leaf/subleaf register, or a feature MSR) and names its bits the way `-cpu help`
//! spells them. The word order is QEMU's, which is the order its `check` warnings and
//! `unavailable-features` lists follow.

/// A CPUID output register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

impl Reg {
    pub fn name(self) -> &'static str {
        match self {
            Reg::Eax => "EAX",
            Reg::Ebx => "EBX",
            Reg::Ecx => "ECX",
            Reg::Edx => "EDX",
        }
    }
}

/// Where a feature word's bits are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// CPUID leaf, subleaf, register.
    Cpuid(u32, u32, Reg),
    /// A feature MSR (its value, not a CPUID register).
    Msr(u32),
}

pub struct WordInfo {
    pub source: Source,
    pub names: [&'static str; 32],
}

impl WordInfo {
    /// How QEMU names the word in its warnings: `CPUID.07H:EBX`, `CPUID.80000001H:ECX`,
    /// `MSR(10AH)`.
    pub fn description(&self) -> String {
        match self.source {
            Source::Cpuid(leaf, _, reg) => format!("CPUID.{leaf:02X}H:{}", reg.name()),
            Source::Msr(msr) => format!("MSR({msr:02X}H)"),
        }
    }
}

/// One bit per named feature, per word.
pub type Words = [u32; WORDS];

#[allow(dead_code)] // every word has an index, used or not
mod table {
    use super::{Reg, Source, WordInfo};
    include!("feature_table.rs");
}
pub use table::*;

/// The word and bit of a flag (canonical spelling, as `-cpu help` lists it).
pub fn lookup(name: &str) -> Option<(usize, u32)> {
    WORD_INFO.iter().enumerate().find_map(|(w, info)| {
        info.names
            .iter()
            .position(|n| !n.is_empty() && *n == name)
            .map(|bit| (w, bit as u32))
    })
}

/// Every bit named `name` (`kvmclock` names two).
pub fn bits_named(name: &str) -> Vec<(usize, u32)> {
    let mut out = Vec::new();
    for (w, info) in WORD_INFO.iter().enumerate() {
        for (bit, n) in info.names.iter().enumerate() {
            if !n.is_empty() && *n == name {
                out.push((w, bit as u32));
            }
        }
    }
    out
}

/// The set of flags in a space-separated list (names that are not flags are ignored).
pub fn parse_list(list: &str) -> Words {
    let mut words = [0; WORDS];
    for name in list.split_whitespace() {
        for (w, bit) in bits_named(name) {
            words[w] |= 1 << bit;
        }
    }
    words
}

/// `(word, bit, name)` of every named bit set in `words`, in QEMU's order.
pub fn named_bits(words: &Words) -> Vec<(usize, u32, &'static str)> {
    let mut out = Vec::new();
    for (w, info) in WORD_INFO.iter().enumerate() {
        for (bit, n) in info.names.iter().enumerate() {
            if words[w] & (1 << bit) != 0 && !n.is_empty() {
                out.push((w, bit as u32, *n));
            }
        }
    }
    out
}

/// A mask of the named bits of each word.
pub fn named_mask() -> Words {
    let mut m = [0; WORDS];
    for (w, info) in WORD_INFO.iter().enumerate() {
        for (bit, n) in info.names.iter().enumerate() {
            if !n.is_empty() {
                m[w] |= 1 << bit;
            }
        }
    }
    m
}
