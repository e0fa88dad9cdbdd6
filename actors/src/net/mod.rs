//! NIC backends: where a NIC's frames go on the host. Only tap so far; bridge and
//! user-mode (slirp) come later.

pub mod slirp;
pub mod tap;
