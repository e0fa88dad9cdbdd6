//! troupe: a KVM virtual machine monitor that speaks QEMU's command line.
//!
//! Reading order: `config` (what a VM is), `cli` (QEMU syntax → config), `machine` (VM
//! assembly: `vm` for KVM/memory/CPUID/registers, `boot` for kernel loaders, `platform`
//! for devices), then the actors crate runs it all.

mod boot;
mod catalog;
mod cli;
#[allow(dead_code)]
mod config;
mod demo;
mod errtext;
mod files;
mod machine;
mod machine_none;
#[cfg(test)]
mod machine_state_tests;
mod monitor_info;
mod platform;
mod process;
mod tables;
mod vm;

use actors::runtime::Registry;

fn main() {
    // Large buffers (frames, surfaces, clusters) come straight from mmap and go back to the
    // kernel when freed. glibc otherwise raises this threshold each time such a buffer is
    // freed, and the next ones stay in per-thread arenas after use: 32 VNC clients that
    // had come and gone left ~130 MiB behind.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes the allocator's tuning; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    let args = match utf8_args(std::env::args_os().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            actors::report!("troupe: {e}");
            std::process::exit(1);
        }
    };
    let demo = args.is_empty();
    let cfg = if demo {
        demo::config()
    } else {
        match cli::parse(&args) {
            Ok(cli::Invocation::Print(text)) => {
                print!("{text}");
                std::process::exit(0);
            }
            Ok(cli::Invocation::Run(cfg)) => *cfg,
            Err(e) => {
                actors::report!("troupe: {e}");
                std::process::exit(1);
            }
        }
    };
    actors::set_message_timestamps(cfg.msg_timestamp);
    for w in &cfg.warnings {
        actors::report!("troupe: warning: {w}");
    }
    // Fork before any thread exists.
    let daemon = if cfg.daemonize {
        match process::daemonize() {
            Ok(d) => Some(d),
            Err(e) => {
                actors::report!("troupe: {}", errtext::one_line(&e));
                std::process::exit(1);
            }
        }
    } else {
        None
    };
    if let Some(name) = &cfg.process_name {
        process::set_process_name(name);
    }
    let status = match start(&cfg, demo, daemon) {
        Ok(status) => status,
        Err(e) => {
            actors::chardev::tty::restore();
            actors::report!("troupe: {}", errtext::one_line(&e));
            1
        }
    };
    actors::chardev::tty::restore();
    std::process::exit(status);
}

/// An argument troupe cannot take.
#[derive(Debug, thiserror::Error)]
#[error("argument {index} ('{shown}') is not valid UTF-8: troupe takes option values, names and paths as UTF-8 text")]
struct ArgError {
    /// 1-based, as in `argv`.
    index: usize,
    /// The argument with each byte that is not UTF-8 written `\xNN`.
    shown: String,
}

/// The arguments as text, or which one is not.
fn utf8_args(args: impl Iterator<Item = std::ffi::OsString>) -> Result<Vec<String>, ArgError> {
    use std::os::unix::ffi::OsStrExt;
    args.enumerate()
        .map(|(i, a)| {
            a.into_string().map_err(|a| ArgError {
                index: i + 1,
                shown: a
                    .as_bytes()
                    .utf8_chunks()
                    .map(|c| {
                        let bad: String =
                            c.invalid().iter().map(|b| format!("\\x{b:02x}")).collect();
                        format!("{}{bad}", c.valid())
                    })
                    .collect(),
            })
        })
        .collect()
}

/// The shared tokio runtime. Its threads are actors too: each registers as it starts
/// (`tokio-<tid>`, first as `tokio-blocking`; a thread that parks as a worker becomes
/// `tokio-worker`) and is forgotten as it stops.
fn runtime(registry: &Registry) -> std::io::Result<tokio::runtime::Runtime> {
    use std::cell::Cell;
    thread_local! {
        /// This runtime thread has been seen parking as a worker.
        static WORKER: Cell<bool> = const { Cell::new(false) };
    }
    let (start, stop) = (registry.clone(), registry.clone());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("troupe-io")
        .enable_all()
        .on_thread_start(move || {
            // The runtime's threads are filtered as they start, like every other thread.
            if let Err(e) = actors::sandbox::enter("tokio") {
                actors::report!("troupe: tokio thread: {e}");
                std::process::exit(1);
            }
            let tid = actors::runtime::gettid();
            start.register_current_thread(&format!("tokio-{tid}"), "tokio-blocking");
        })
        .on_thread_park(|| {
            if !WORKER.with(Cell::get) {
                WORKER.with(|w| w.set(true));
                if let Some(e) = actors::runtime::current() {
                    e.set_kind("tokio-worker");
                }
            }
        })
        .on_thread_stop(move || {
            if let Some(e) = actors::runtime::current() {
                stop.remove_entry(&e);
            }
        })
        .build()
}

/// Build the VM, report readiness, run it; returns the process exit status.
fn start(
    cfg: &config::VmConfig,
    demo: bool,
    daemon: Option<process::Daemon>,
) -> anyhow::Result<i32> {
    let fail = |daemon: Option<process::Daemon>, e: anyhow::Error| {
        if let Some(d) = daemon {
            actors::report!("troupe: {}", errtext::one_line(&e));
            d.failed();
            std::process::exit(1);
        }
        e
    };
    let _log = match process::init_logging(cfg.log_file.as_deref(), &cfg.log_items) {
        Ok(l) => l,
        Err(e) => return Err(fail(daemon, e)),
    };
    let _pidfile = match cfg
        .pidfile
        .as_deref()
        .map(process::PidFile::create)
        .transpose()
    {
        Ok(p) => p,
        Err(e) => return Err(fail(daemon, e)),
    };
    let registry = Registry::new();
    registry.register_current_thread("main", "main");
    // Before any other thread starts: each installs its filter as it starts.
    let ids = cfg.runas.as_ref().map(|r| actors::sandbox::Ids {
        uid: r.uid,
        gid: r.gid,
    });
    if let Err(e) = actors::sandbox::configure(cfg.sandbox.clone(), ids, &registry) {
        return Err(fail(daemon, anyhow::Error::new(e).context("-sandbox")));
    }
    let rt = runtime(&registry)?;
    if cfg.machine.kind == cli::NONE_MACHINE {
        let mut daemon = daemon;
        let ready = || {
            if let Some(d) = daemon.take() {
                d.ready();
            }
        };
        if let Err(e) = process::confine(cfg) {
            rt.shutdown_background();
            return Err(fail(daemon, e));
        }
        return match machine_none::run(cfg, &rt, &registry, ready) {
            Ok(status) => {
                rt.shutdown_background();
                Ok(status)
            }
            Err(e) => {
                rt.shutdown_background();
                Err(fail(daemon, e))
            }
        };
    }
    let kernel = demo.then(demo::kernel);
    let vm = match machine::build(cfg, kernel, &rt, &registry) {
        Ok(vm) => vm,
        Err(e) => {
            // Do not wait for actors already started (a serial console blocked reading
            // an open stdin would hold the exit forever).
            rt.shutdown_background();
            return Err(fail(daemon, e));
        }
    };
    // QEMU's line for its default display, word for word, once the VM is built (a VM that
    // fails to build says only why).
    if let (Some(v), Some(h)) = (&cfg.vnc, &vm.console.vnc) {
        if v.announce {
            actors::report!("VNC server running on {}", h.local_addr());
        }
    }
    if demo {
        demo::print_banner(
            cfg,
            vm.console.vnc.as_ref().map(|v| v.local_addr()),
            vm.monitors.iter().find_map(|m| m.local_addr),
        );
    }
    // Everything is open: enter the chroot, drop privileges, filter the main thread.
    if let Err(e) = process::confine(cfg) {
        rt.shutdown_background();
        return Err(fail(daemon, e));
    }
    if let Some(d) = daemon {
        d.ready();
    }
    let status = machine::run(vm, &rt, &registry);
    rt.shutdown_background();
    Ok(status)
}
