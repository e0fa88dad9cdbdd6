//! hello: prints a greeting on COM1 and exits with `exit=N` from the command line
//! (default 0). Also reports the boot protocol and command line it saw.

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
    let code = boot.arg_u64("exit").unwrap_or(0) as u32;
    println!("hello: exit={code}");
    code
}
