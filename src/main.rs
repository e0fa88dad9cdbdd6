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
mod platform;
mod tables_shim;
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
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TROUPE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("troupe-io")
        .enable_all()
        .build()
        .expect("tokio runtime");
    let registry = Registry::new();
    let kernel = demo.then(demo::kernel);
    let status = match machine::build(&cfg, kernel, &rt, &registry) {
        Ok(vm) => {
            if demo {
                demo::print_banner(&cfg);
            }
            machine::run(vm, &rt)
        }
        Err(e) => {
            actors::chardev::tty::restore();
            actors::report!("troupe: {e:#}");
            1
        }
    };
    actors::chardev::tty::restore();
    rt.shutdown_background();
    std::process::exit(status);
}
