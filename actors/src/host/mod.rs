//! Device hosts: actors that own a `devices` model, put it on a bus (the vCPU path calls
//! the model directly under the device's own lock), and connect it to its backends through
//! typed messages.

pub mod e1000;
pub mod effects;
pub mod ide;
pub mod input;
pub mod mem;
pub mod rtc;
pub mod serial;
pub mod usb;
pub mod vga;
