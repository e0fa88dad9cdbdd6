//! troupe: a KVM virtual machine monitor that speaks QEMU's command line.
//!
//! Reading order: `config` (what a VM is), `cli` (QEMU syntax → config), `machine` (VM
//! assembly: `vm` for KVM/memory/CPUID/registers, `boot` for kernel loaders, `platform`
//! for devices), then the actors crate runs it all.

mod boot;
#[allow(dead_code)]
mod cli;
#[allow(dead_code)]
mod config;
mod machine;
mod platform;
mod quickargs;
mod tables_shim;
mod vm;

use actors::runtime::Registry;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match quickargs::parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("troupe: {e}");
            std::process::exit(1);
        }
    };
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
    let status = match machine::build(&cfg, None, &rt, &registry) {
        Ok(vm) => machine::run(vm, &rt),
        Err(e) => {
            actors::chardev::tty::restore();
            eprintln!("troupe: {e:#}");
            1
        }
    };
    actors::chardev::tty::restore();
    rt.shutdown_background();
    std::process::exit(status);
}
