//! hello: prints a greeting on COM1 and exits with `exit=N` from the command line
//! (default 0). Also reports the boot protocol and command line it saw.
//!
//! Command line: `exit=N`; `reset=cf9|port92|kbd` asks for a platform reset; `fault=emulation` runs x87 code in ring 0 (a KVM emulation
//! failure on PVM hosts); `fault=pf|ud` instead makes it take a page fault (reading
//! 0x1_0000_0000, outside the identity map) or a genuine #UD, to exercise the exception
//! report (`guest exception <vector> at rip=<hex> err=<hex>`, exit 0x60 + vector);
//! `fault=nonsense` writes all-ones over every PCI function's configuration space (and to
//! functions that do not exist), then points fw_cfg DMA outside RAM (the descriptor, and
//! then the buffer), printing `hello: fw_cfg dma status=<hex>` for each and
//! `hello: nonsense survived`.
//! Output: `hello from troupe test guest`, `hello: protocol=<pvh|multiboot|unknown>
//! cmdline="<cmdline>"`, `hello: ring0 setup took <us> us` (32-bit entry to ring 3),
//! `hello: exit=<N>`.

#![no_std]
#![no_main]

use guestlib::println;

guestlib::entry!(main);

fn main(boot: &guestlib::BootInfo) -> u32 {
    println!("hello from troupe test guest");
    println!(
        "hello: protocol={} cmdline=\"{}\"",
        boot.protocol().name(),
        boot.cmdline()
    );
    match boot.arg("fault") {
        Some("pf") => {
            println!("hello: reading 0x100000000");
            let v = guestlib::phys::read_u8(0x1_0000_0000);
            println!("hello: read {v:#x}, no fault");
        }
        Some("ud") => {
            println!("hello: executing ud2");
            // SAFETY: raises #UD on purpose (rax does not carry the request magic); the
            // exception handler reports it and exits the VM.
            unsafe { core::arch::asm!("xor eax, eax", "ud2", out("rax") _) };
        }
        Some("emulation") => {
            println!("hello: running x87 code in ring 0");
            guestlib::sys::x87_in_ring0();
            println!("hello: x87 in ring 0 completed");
        }
        Some("nonsense") => nonsense(),
        _ => {}
    }
    match boot.arg("reset") {
        Some(how @ ("cf9" | "port92" | "kbd")) => {
            println!("hello: resetting through {how}");
            match how {
                "cf9" => guestlib::io::outb(0xcf9, 0x06),
                "port92" => guestlib::io::outb(0x92, 0x01),
                _ => guestlib::io::outb(0x64, 0xfe),
            }
            // The requesting CPU runs no further instruction (as in QEMU): this line
            // must never show.
            println!("hello: still running after the reset request");
            return 0x7e;
        }
        Some(other) => println!("hello: unknown reset method {other}"),
        None => {}
    }
    let setup = guestlib::time::ticks_to_ns(guestlib::rt::entry_to_ring3_ticks()) / 1000;
    println!("hello: ring0 setup took {setup} us");
    let code = boot.arg_u64("exit").unwrap_or(0) as u32;
    println!("hello: exit={code}");
    code
}

/// Programs nonsense into the platform, as a buggy or hostile guest would.
fn nonsense() {
    use guestlib::io::{inl, outl};
    let mut written = 0;
    for dev in 0..32u8 {
        for func in 0..8u8 {
            let present = guestlib::pci::read32(dev, func, 0) != 0xffff_ffff;
            for reg in (0..=0xfcu8).step_by(4) {
                if present || reg < 0x10 {
                    guestlib::pci::write32(dev, func, reg, 0xffff_ffff);
                    written += 1;
                }
            }
        }
    }
    // Other buses, and a disabled configuration address.
    for addr in [0x80ff_f8fcu32, 0x8012_3400, 0x0000_0010] {
        outl(0xcf8, addr);
        outl(0xcfc, 0xffff_ffff);
        let _ = inl(0xcfc);
    }
    println!("hello: wrote {written} PCI config registers");
    // fw_cfg DMA: the address register takes big-endian halves; writing the low half
    // starts the transfer.
    let dma = |desc: u64| {
        outl(0x514, ((desc >> 32) as u32).swap_bytes());
        outl(0x518, (desc as u32).swap_bytes());
    };
    // A descriptor outside RAM.
    dma(0xdead_0000_0000);
    // A descriptor in RAM whose buffer is outside RAM: select the signature and read.
    const DESC: u64 = 0x8_0000;
    let control: u32 = 0x08 | 0x02; // select key 0 | read
    let mut d = [0u8; 16];
    d[0..4].copy_from_slice(&control.to_be_bytes());
    d[4..8].copy_from_slice(&0x1000u32.to_be_bytes());
    d[8..16].copy_from_slice(&0xdead_0000_0000u64.to_be_bytes());
    guestlib::phys::copy_to(DESC, &d);
    dma(DESC);
    let status = u32::from_be(guestlib::phys::read_u32(DESC));
    println!("hello: fw_cfg dma status={status:#x}");
    println!("hello: nonsense survived");
}
