//! memtouch: keeps rewriting a large memory area and checking what it wrote before, so a
//! page lost or corrupted on the way (a live migration, a save and restore) is seen by the
//! guest itself.
//!
//! Command line: `mib=N` MiB to touch (default 32), `at_mib=N` where the area starts
//! (default 16), `report_ms=N` how often to print (default 200), `passes=N` stop after N
//! passes (default 0: run until stopped). Each pass reads every 64-bit word of the area,
//! checks it holds what the previous pass wrote, and writes the pass's own value.
//! Output: `memtouch: start mib=<N> at=0x<addr>`, `memtouch: pass <n> ok` every
//! `report_ms` (the pass just finished), and on a wrong word
//! `memtouch: MISMATCH pass <n> at 0x<addr> got 0x<v> want 0x<v>` (then exit 1);
//! `memtouch: done passes=<n>` when `passes` is reached (exit 0).

#![no_std]
#![no_main]

use guestlib::{println, BootInfo};

guestlib::entry!(main);

/// The value pass `pass` leaves in word `i`.
fn value(pass: u64, i: u64) -> u64 {
    (pass << 40) ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn main(boot: &BootInfo) -> u32 {
    let mib = boot.arg_u64("mib").unwrap_or(32).max(1);
    let at = boot.arg_u64("at_mib").unwrap_or(16) << 20;
    let report_ns = boot.arg_u64("report_ms").unwrap_or(200) * 1_000_000;
    let passes = boot.arg_u64("passes").unwrap_or(0);
    let words = (mib << 20) / 8;
    guestlib::time::tsc_hz();
    println!("memtouch: start mib={mib} at={at:#x}");
    let area = at as *mut u64;
    let mut last = guestlib::time::now_ns();
    let mut pass = 1u64;
    loop {
        for i in 0..words {
            // SAFETY: the ring-3 page tables map 0-4 GiB identity, user-accessible; the
            // area lies in RAM above the image (the test gives the guest enough of it) and
            // nothing else in the guest uses it.
            let p = unsafe { area.add(i as usize) };
            if pass > 1 {
                // SAFETY: as above.
                let got = unsafe { p.read_volatile() };
                let want = value(pass - 1, i);
                if got != want {
                    println!(
                        "memtouch: MISMATCH pass {pass} at {:#x} got {got:#x} want {want:#x}",
                        at + i * 8
                    );
                    return 1;
                }
            }
            // SAFETY: as above.
            unsafe { p.write_volatile(value(pass, i)) };
        }
        let now = guestlib::time::now_ns();
        if now.wrapping_sub(last) >= report_ns {
            println!("memtouch: pass {pass} ok");
            last = now;
        }
        if passes != 0 && pass >= passes {
            println!("memtouch: done passes={pass}");
            return 0;
        }
        pass += 1;
    }
}
