//! troupe: a KVM virtual machine monitor that speaks QEMU's command line.
//!
//! Reading order: `config` (what a VM is), `cli` (QEMU syntax → config), `machine` (VM
//! assembly: `vm` for KVM/memory/CPUID/registers, `boot` for kernel loaders, `platform`
//! for devices), then the actors crate runs it all.

mod boot;
mod cli;
#[allow(dead_code)]
mod config;
mod demo;
mod machine;
mod monitor_info;
mod platform;
mod process;
mod tables;
mod vm;

use actors::runtime::Registry;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
    for w in &cfg.warnings {
        actors::report!("troupe: warning: {w}");
    }
    // Fork before any thread exists.
    let daemon = if cfg.daemonize {
        match process::daemonize() {
            Ok(d) => Some(d),
            Err(e) => {
                actors::report!("troupe: {e:#}");
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
            actors::report!("troupe: {e:#}");
            1
        }
    };
    actors::chardev::tty::restore();
    std::process::exit(status);
}

/// Build the VM, report readiness, run it; returns the process exit status.
fn start(
    cfg: &config::VmConfig,
    demo: bool,
    daemon: Option<process::Daemon>,
) -> anyhow::Result<i32> {
    let fail = |daemon: Option<process::Daemon>, e: anyhow::Error| {
        if let Some(d) = daemon {
            actors::report!("troupe: {e:#}");
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("troupe-io")
        .enable_all()
        .build()?;
    let registry = Registry::new();
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
    if let Some(d) = daemon {
        d.ready();
    }
    let status = machine::run(vm, &rt);
    rt.shutdown_background();
    Ok(status)
}
