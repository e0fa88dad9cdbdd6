//! Firmware tables troupe builds for its `pc` machine: ACPI ([`acpi`]) for both direct
//! boot (placed in low memory) and SeaBIOS (through fw_cfg's linker/loader), and the
//! direct-boot memory map ([`e820`]).

pub mod acpi;
pub mod dsdt;
pub mod e820;
pub mod loader;
