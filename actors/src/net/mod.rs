//! NIC backends: where a NIC's frames go on the host — a tap ([`tap`]), a tap added to a
//! host bridge ([`bridge`]), or user-mode networking on libslirp ([`slirp`]).

pub mod backend;
pub mod bridge;
pub mod slirp;
pub mod tap;
