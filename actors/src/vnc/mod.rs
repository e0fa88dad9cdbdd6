//! The VNC server.

pub mod des;
pub mod encode;
pub mod pixel;

/// Ways the VNC server or one of its clients can fail.
#[derive(Debug, thiserror::Error)]
pub enum VncError {
    /// A SetPixelFormat troupe cannot serve.
    #[error("unsupported pixel format: {0}")]
    PixelFormat(String),
}
