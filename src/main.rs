//! troupe: a KVM virtual machine monitor that speaks QEMU's command line.

#[allow(dead_code)]
mod cli;
#[allow(dead_code)]
mod config;

fn main() {}
