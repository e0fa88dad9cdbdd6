//! hello: prints a greeting on COM1 and exits with `exit=N` from the command line
//! (default 0). Also reports the boot protocol and command line it saw.
//!
//! Command line: `exit=N`; `reset=cf9|port92|kbd` asks for a platform reset; `fault=emulation` runs x87 code in ring 0 (a KVM emulation
//! failure on PVM hosts); `fault=pf|ud` instead makes it take a page fault (reading
//! 0x1_0000_0000, outside the identity map) or a genuine #UD, to exercise the exception
//! report (`guest exception <vector> at rip=<hex> err=<hex>`, exit 0x60 + vector).
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
            // The reset is asynchronous: wait for it.
            for _ in 0..1_000_000_000u64 {
                core::hint::spin_loop();
            }
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
