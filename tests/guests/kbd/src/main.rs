//! kbd: polls the i8042 with interrupts off and prints every byte it reads.
//!
//! Command line: `timeout=SECONDS` (default 10), `stop=N` the byte that ends the run
//! (default 0x10, the set-1 make code of `q`), `mouse=1` to enable the PS/2 mouse too.
//! Output: `kbd: ready` once it polls (`kbd: mouse on` before it with `mouse=1`), then
//! `kbd: <hex byte>` per keyboard byte (two lower-case hex digits) and `kbd: mouse <hex>`
//! per mouse byte, then `kbd: stop` or `kbd: timeout`. Without a controller: `kbd: no i8042`.
//! Exit: 0 after the stop byte, 2 on timeout, 3 without a controller.

#![no_std]
#![no_main]

use guestlib::time::Deadline;
use guestlib::{i8042, println, BootInfo};

guestlib::entry!(main);

fn main(boot: &BootInfo) -> u32 {
    let timeout = boot.arg_u64("timeout").unwrap_or(10);
    let stop = boot.arg_u64("stop").unwrap_or(0x10) as u8;
    if !i8042::present() {
        println!("kbd: no i8042");
        return 3;
    }
    i8042::enable_translation();
    i8042::flush();
    if boot.arg_u64("mouse") == Some(1) {
        if i8042::enable_mouse() {
            println!("kbd: mouse on");
        } else {
            println!("kbd: mouse did not answer");
        }
    }
    let deadline = Deadline::after_ms(timeout.saturating_mul(1000));
    println!("kbd: ready");
    loop {
        if let Some((b, aux)) = i8042::try_read_tagged() {
            if aux {
                println!("kbd: mouse {b:02x}");
                continue;
            }
            println!("kbd: {b:02x}");
            if b == stop {
                println!("kbd: stop");
                return 0;
            }
        } else if deadline.expired() {
            println!("kbd: timeout");
            return 2;
        }
    }
}
