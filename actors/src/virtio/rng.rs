//! The virtio-rng worker: fills each device-writable buffer with bytes from the host's
//! getrandom.

use super::{Ctx, QueueWorker};

/// Most bytes served per request (a driver asking for more gets this many).
const MAX_REQUEST: u64 = 64 * 1024;

pub struct RngWorker;

impl QueueWorker for RngWorker {
    fn process(&mut self, q: usize, ctx: &mut Ctx) {
        let mut used = false;
        while let Some(chain) = ctx.pop(q) {
            let n = chain.writable_len().min(MAX_REQUEST) as usize;
            let mut buf = vec![0u8; n];
            let mut filled = 0;
            while filled < n {
                // SAFETY: the pointer and length describe the unfilled tail of `buf`.
                let r =
                    unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), n - filled, 0) };
                if r <= 0 {
                    break;
                }
                filled += r as usize;
            }
            let len = chain.write_at(&ctx.mem, 0, &buf[..filled]);
            ctx.add_used(q, chain.head, len as u32);
            used = true;
        }
        if used {
            ctx.notify(q);
        }
    }
}
