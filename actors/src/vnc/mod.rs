//! The VNC server.
