//! What happens when a thread makes a forbidden call: the filter answers
//! `SECCOMP_RET_TRAP`, the kernel sends the thread SIGSYS, and this handler writes one line
//! naming the thread, its kind, the actor task it was running (on tokio's threads) and the
//! call, then ends the process with status 159 (128 + SIGSYS, as a shell shows a process
//! killed by SIGSYS). The handler uses only write(2) and exit_group(2), both on every list.

use std::cell::Cell;

/// The thread's name and kind, set when its filter is installed.
#[derive(Clone, Copy)]
struct Who {
    name: [u8; 16],
    kind: &'static str,
}

thread_local! {
    static WHO: Cell<Who> = const { Cell::new(Who { name: [0; 16], kind: "" }) };
    /// The kind of the actor task being polled on this thread (tokio's threads).
    static TASK: Cell<&'static str> = const { Cell::new("") };
}

/// Exit status of a process killed for a forbidden call.
pub const EXIT_STATUS: i32 = 128 + libc::SIGSYS;

/// Remember this thread's identity for the handler.
pub(super) fn set_thread(kind: &'static str) {
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into the buffer given.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr(), 0, 0, 0) };
    WHO.with(|w| w.set(Who { name, kind }));
}

/// Note the kind of the actor task polled on this thread (`""`: none); returns the
/// previous one.
pub(super) fn set_task(t: &'static str) -> &'static str {
    TASK.with(|c| c.replace(t))
}

/// Install the SIGSYS handler (process-wide).
pub(super) fn install() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; we fill the handler, flags and an empty mask.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = on_sigsys;
    sa.sa_sigaction = handler as usize;
    sa.sa_flags = libc::SA_SIGINFO;
    // SAFETY: sa is a valid sigaction whose handler has the SA_SIGINFO signature.
    let rc = unsafe {
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A line built in a fixed buffer (no allocation in a signal handler).
struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        for &b in s {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }
    fn num(&mut self, mut n: u64) {
        let mut d = [0u8; 20];
        let mut i = d.len();
        loop {
            i -= 1;
            d[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&d[i..]);
    }
}

/// The message for call `nr` made by `thread` of `kind` while running a task of kind
/// `task` (empty: none).
fn message(line: &mut Line, thread: &[u8], kind: &str, task: &str, nr: i64) {
    line.push(b"troupe: seccomp: thread ");
    line.push(thread);
    line.push(b" (kind ");
    line.push(if kind.is_empty() {
        b"unknown"
    } else {
        kind.as_bytes()
    });
    if !task.is_empty() {
        line.push(b", running an actor task of kind ");
        line.push(task.as_bytes());
    }
    line.push(b") made forbidden system call ");
    match super::sysnames::name(nr) {
        Some(n) => line.push(n.as_bytes()),
        None => line.push(b"?"),
    }
    line.push(b" (");
    line.num(nr as u64);
    line.push(b"); killing the process (-sandbox off disables the filters)\n");
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // Linux's siginfo for SIGSYS: si_signo, si_errno, si_code (3 ints), then at offset 16
    // the union: _call_addr (pointer), _syscall (int), _arch (unsigned int).
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler; the offsets are
    // inside its 128 bytes.
    let nr = unsafe { *(info as *const u8).add(24).cast::<i32>() };
    let who = WHO.try_with(Cell::get).unwrap_or(Who {
        name: [0; 16],
        kind: "",
    });
    let task = TASK.try_with(Cell::get).unwrap_or("");
    let end = who.name.iter().position(|&b| b == 0).unwrap_or(16);
    let mut line = Line {
        buf: [0; 512],
        len: 0,
    };
    message(&mut line, &who.name[..end], who.kind, task, i64::from(nr));
    // SAFETY: write(2) and exit_group(2) are async-signal-safe; the buffer is valid for
    // `len` bytes.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::syscall(libc::SYS_exit_group, EXIT_STATUS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_thread_kind_task_and_call() {
        let mut l = Line {
            buf: [0; 512],
            len: 0,
        };
        message(&mut l, b"troupe-io", "tokio-worker", "vnc", 172);
        let s = std::str::from_utf8(&l.buf[..l.len]).unwrap();
        assert_eq!(
            s,
            "troupe: seccomp: thread troupe-io (kind tokio-worker, running an actor task of kind vnc) \
             made forbidden system call iopl (172); killing the process (-sandbox off disables the filters)\n"
        );
        let mut l = Line {
            buf: [0; 512],
            len: 0,
        };
        message(&mut l, b"troupe-vcpu0", "vcpu", "", 9999);
        let s = std::str::from_utf8(&l.buf[..l.len]).unwrap();
        assert!(
            s.contains("troupe-vcpu0 (kind vcpu)") && s.contains("call ? (9999)"),
            "{s}"
        );
    }
}
