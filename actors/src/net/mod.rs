//! NIC backends: where a NIC's frames go on the host — a tap ([`tap`]), a tap added to a
//! host bridge ([`bridge`]), user-mode networking on libslirp ([`slirp`]), or a TCP
//! connection to another VMM ([`socket`]).

pub mod backend;
pub mod bridge;
pub mod slirp;
pub mod socket;
pub mod tap;
