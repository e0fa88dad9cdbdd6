// Generated from QEMU 7.2's feature tables: word order, location and bit names.
pub const L1_EDX: usize = 0;
pub const L1_ECX: usize = 1;
pub const L7_0_EBX: usize = 2;
pub const L7_0_ECX: usize = 3;
pub const L7_0_EDX: usize = 4;
pub const L7_1_EAX: usize = 5;
pub const E1_EDX: usize = 6;
pub const E1_ECX: usize = 7;
pub const E7_EDX: usize = 8;
pub const E8_EBX: usize = 9;
pub const C1_EDX: usize = 10;
pub const KVM: usize = 11;
pub const KVM_HINTS: usize = 12;
pub const SVM: usize = 13;
pub const XSAVE: usize = 14;
pub const L6_EAX: usize = 15;
pub const ARCH_CAP: usize = 16;
pub const CORE_CAP: usize = 17;
pub const PERF_CAP: usize = 18;
pub const L14_ECX: usize = 19;
pub const SGX_12_0_EAX: usize = 20;
pub const SGX_12_0_EBX: usize = 21;
pub const SGX_12_1_EAX: usize = 22;
pub const WORDS: usize = 23;

/// Every feature word in QEMU's order (the order of its warnings and of
/// `unavailable-features`): where it lives and its named bits ("" = unnamed).
pub static WORD_INFO: [WordInfo; WORDS] = [
    WordInfo {
        source: Source::Cpuid(1, 0, Reg::Edx),
        names: ["fpu", "vme", "de", "pse", "tsc", "msr", "pae", "mce", "cx8", "apic", "", "sep", "mtrr", "pge", "mca", "cmov", "pat", "pse36", "pn", "clflush", "", "ds", "acpi", "mmx", "fxsr", "sse", "sse2", "ss", "ht", "tm", "ia64", "pbe"],
    },
    WordInfo {
        source: Source::Cpuid(1, 0, Reg::Ecx),
        names: ["pni", "pclmulqdq", "dtes64", "monitor", "ds-cpl", "vmx", "smx", "est", "tm2", "ssse3", "cid", "", "fma", "cx16", "xtpr", "pdcm", "", "pcid", "dca", "sse4.1", "sse4.2", "x2apic", "movbe", "popcnt", "tsc-deadline", "aes", "xsave", "", "avx", "f16c", "rdrand", "hypervisor"],
    },
    WordInfo {
        source: Source::Cpuid(7, 0, Reg::Ebx),
        names: ["fsgsbase", "tsc-adjust", "sgx", "bmi1", "hle", "avx2", "", "smep", "bmi2", "erms", "invpcid", "rtm", "", "", "mpx", "", "avx512f", "avx512dq", "rdseed", "adx", "smap", "avx512ifma", "pcommit", "clflushopt", "clwb", "intel-pt", "avx512pf", "avx512er", "avx512cd", "sha-ni", "avx512bw", "avx512vl"],
    },
    WordInfo {
        source: Source::Cpuid(7, 0, Reg::Ecx),
        names: ["", "avx512vbmi", "umip", "pku", "", "waitpkg", "avx512vbmi2", "", "gfni", "vaes", "vpclmulqdq", "avx512vnni", "avx512bitalg", "", "avx512-vpopcntdq", "", "la57", "", "", "", "", "", "rdpid", "", "bus-lock-detect", "cldemote", "", "movdiri", "movdir64b", "", "sgxlc", "pks"],
    },
    WordInfo {
        source: Source::Cpuid(7, 0, Reg::Edx),
        names: ["", "", "avx512-4vnniw", "avx512-4fmaps", "fsrm", "", "", "", "avx512-vp2intersect", "", "md-clear", "", "", "", "serialize", "", "tsx-ldtrk", "", "", "arch-lbr", "", "", "amx-bf16", "avx512-fp16", "amx-tile", "amx-int8", "spec-ctrl", "stibp", "", "arch-capabilities", "core-capability", "ssbd"],
    },
    WordInfo {
        source: Source::Cpuid(7, 1, Reg::Eax),
        names: ["", "", "", "", "avx-vnni", "avx512-bf16", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", ""],
    },
    WordInfo {
        source: Source::Cpuid(0x8000_0001, 0, Reg::Edx),
        names: ["", "", "", "", "", "", "", "", "", "", "", "syscall", "", "", "", "", "", "", "", "", "nx", "", "mmxext", "", "", "fxsr-opt", "pdpe1gb", "rdtscp", "", "lm", "3dnowext", "3dnow"],
    },
    WordInfo {
        source: Source::Cpuid(0x8000_0001, 0, Reg::Ecx),
        names: ["lahf-lm", "cmp-legacy", "svm", "extapic", "cr8legacy", "abm", "sse4a", "misalignsse", "3dnowprefetch", "osvw", "ibs", "xop", "skinit", "wdt", "", "lwp", "fma4", "tce", "", "nodeid-msr", "", "tbm", "topoext", "perfctr-core", "perfctr-nb", "", "", "", "", "", "", ""],
    },
    WordInfo {
        source: Source::Cpuid(0x8000_0007, 0, Reg::Edx),
        names: ["", "", "", "", "", "", "", "", "invtsc", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", ""],
    },
    WordInfo {
        source: Source::Cpuid(0x8000_0008, 0, Reg::Ebx),
        names: ["clzero", "", "xsaveerptr", "", "", "", "", "", "", "wbnoinvd", "", "", "ibpb", "", "ibrs", "amd-stibp", "", "", "", "", "", "", "", "", "amd-ssbd", "virt-ssbd", "amd-no-ssb", "", "", "", "", ""],
    },
    WordInfo {
        source: Source::Cpuid(0xc000_0001, 0, Reg::Edx),
        names: ["", "", "xstore", "xstore-en", "", "", "xcrypt", "xcrypt-en", "ace2", "ace2-en", "phe", "phe-en", "pmm", "pmm-en", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", ""],
    },
    WordInfo {
        source: Source::Cpuid(0x4000_0001, 0, Reg::Eax),
        names: ["kvmclock", "kvm-nopiodelay", "kvm-mmu", "kvmclock", "kvm-asyncpf", "kvm-steal-time", "kvm-pv-eoi", "kvm-pv-unhalt", "", "kvm-pv-tlb-flush", "", "kvm-pv-ipi", "kvm-poll-control", "kvm-pv-sched-yield", "kvm-asyncpf-int", "kvm-msi-ext-dest-id", "", "", "", "", "", "", "", "", "kvmclock-stable-bit", "", "", "", "", "", "", ""],
    },
    WordInfo {
        source: Source::Cpuid(0x4000_0001, 0, Reg::Edx),
        names: ["kvm-hint-dedicated", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", ""],
    },
    WordInfo {
        source: Source::Cpuid(0x8000_000a, 0, Reg::Edx),
        names: ["npt", "lbrv", "svm-lock", "nrip-save", "tsc-scale", "vmcb-clean", "flushbyasid", "decodeassists", "", "", "pause-filter", "", "pfthreshold", "avic", "", "v-vmsave-vmload", "vgif", "", "", "", "", "", "", "", "", "", "", "", "svme-addr-chk", "", "", ""],
    },
    WordInfo {
        source: Source::Cpuid(0xd, 1, Reg::Eax),
        names: ["xsaveopt", "xsavec", "xgetbv1", "xsaves", "xfd", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", ""],
    },
    WordInfo {
        source: Source::Cpuid(6, 0, Reg::Eax),
        names: ["", "", "arat", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", ""],
    },
    WordInfo {
        source: Source::Msr(0x10a),
        names: ["rdctl-no", "ibrs-all", "rsba", "skip-l1dfl-vmentry", "ssb-no", "mds-no", "pschange-mc-no", "tsx-ctrl", "taa-no", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", ""],
    },
    WordInfo {
        source: Source::Msr(0xcf),
        names: ["", "", "", "", "", "split-lock-detect", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", ""],
    },
    WordInfo {
        source: Source::Msr(0x345),
        names: ["", "", "", "", "", "", "", "", "", "", "", "", "", "full-width-write", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", ""],
    },
    WordInfo {
        source: Source::Cpuid(0x14, 0, Reg::Ecx),
        names: ["", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "intel-pt-lip"],
    },
    WordInfo {
        source: Source::Cpuid(0x12, 0, Reg::Eax),
        names: ["sgx1", "sgx2", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", ""],
    },
    WordInfo {
        source: Source::Cpuid(0x12, 0, Reg::Ebx),
        names: ["sgx-exinfo", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", ""],
    },
    WordInfo {
        source: Source::Cpuid(0x12, 1, Reg::Eax),
        names: ["", "sgx-debug", "sgx-mode64", "", "sgx-provisionkey", "sgx-tokenkey", "", "sgx-kss", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", ""],
    },
];