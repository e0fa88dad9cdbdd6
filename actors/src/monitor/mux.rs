//! A character device shared by a serial port and an HMP monitor (`-nographic`,
//! `-serial mon:stdio`, `-chardev ...,mux=on`), with QEMU's escape keys: Ctrl-a c switches
//! the input between the serial port and the monitor, Ctrl-a x ends the VM, Ctrl-a h
//! prints help, Ctrl-a Ctrl-a sends a Ctrl-a. Output from both always reaches the terminal.

use std::sync::{Arc, OnceLock};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::chardev::{spawn_chardev, Backend, ChardevError, ChardevHandle, FrontendEvent};
use crate::runtime::{spawn_task, Registry};
use crate::supervisor::SupervisorHandle;

const CTRL_A: u8 = 1;

const HELP: &str = "\r\nC-a h    print this help\r\nC-a x    exit emulator\r\nC-a s    save disk data back to file (if -snapshot)\r\nC-a t    toggle console timestamps\r\nC-a b    send break (magic sysrq)\r\nC-a c    switch between console and monitor\r\nC-a C-a  sends C-a\r\n";

/// The monitor's end: a byte stream and whether it has the input focus.
pub struct MuxMonitor {
    pub stream: tokio::io::DuplexStream,
    pub focus: watch::Receiver<bool>,
    pub label: String,
}

/// What the machine wires up: the shared chardev (the serial port writes to it), the
/// serial port's input, and the monitor's end (taken by the monitor, if there is one).
pub struct MuxHandle {
    pub chardev: ChardevHandle,
    pub serial_rx: Option<mpsc::Receiver<FrontendEvent>>,
    pub monitor: Option<MuxMonitor>,
    supervisor: Arc<OnceLock<SupervisorHandle>>,
}

impl MuxHandle {
    /// Ctrl-a x needs the supervisor, which is created after the serial ports.
    pub fn set_supervisor(&self, s: SupervisorHandle) {
        let _ = self.supervisor.set(s);
    }
}

/// Open `backend` and start the mux actor in front of it.
pub async fn spawn_mux(
    rt: &tokio::runtime::Handle,
    registry: &Registry,
    id: &str,
    backend: Backend,
) -> Result<MuxHandle, ChardevError> {
    let (tx, mut rx) = mpsc::channel(64);
    let chardev = spawn_chardev(rt, registry, id, backend, tx).await?;
    let (serial_tx, serial_rx) = mpsc::channel(64);
    let (mine, theirs) = tokio::io::duplex(1 << 16);
    let (focus_tx, focus_rx) = watch::channel(false);
    let supervisor: Arc<OnceLock<SupervisorHandle>> = Arc::new(OnceLock::new());
    let sup = supervisor.clone();
    let out = chardev.clone();
    let mux = async move {
        let (mut mon_r, mut mon_w) = tokio::io::split(mine);
        let mut focus_monitor = false;
        let mut escape = false;
        let mut mon_open = true;
        let mut buf = vec![0u8; 4096];
        loop {
            tokio::select! {
                ev = rx.recv() => {
                    let Some(ev) = ev else { break };
                    let FrontendEvent::Input(bytes) = ev else {
                        let _ = serial_tx.send(ev).await;
                        continue;
                    };
                    let mut pass = Vec::with_capacity(bytes.len());
                    for b in bytes {
                        if escape {
                            escape = false;
                            match b {
                                b'c' => {
                                    // Whatever was typed for the old focus goes there first.
                                    flush(&mut pass, focus_monitor, &serial_tx, &mut mon_w).await;
                                    focus_monitor = !focus_monitor;
                                    let _ = focus_tx.send(focus_monitor);
                                }
                                b'x' => {
                                    out.write(b"QEMU: Terminated\n\r".to_vec()).await;
                                    match sup.get() {
                                        Some(s) => { let _ = s.quit().await; }
                                        None => std::process::exit(0),
                                    }
                                }
                                b'h' | b'?' => out.write(HELP.as_bytes().to_vec()).await,
                                CTRL_A => pass.push(CTRL_A),
                                // s (commit), t (timestamps), b (break): nothing to do here.
                                _ => {}
                            }
                        } else if b == CTRL_A {
                            escape = true;
                        } else {
                            pass.push(b);
                        }
                    }
                    flush(&mut pass, focus_monitor, &serial_tx, &mut mon_w).await;
                }
                n = mon_r.read(&mut buf), if mon_open => match n {
                    Ok(0) | Err(_) => mon_open = false,
                    Ok(n) => out.write(buf[..n].to_vec()).await,
                },
            }
        }
    };
    // The mux owns both ends of its streams: not restartable; a panic ends it (listed as
    // actor `<id>.mux` while it runs).
    spawn_task(rt, registry, &format!("{id}.mux"), "monitor-mux", None, mux);
    let label = chardev.label.clone();
    Ok(MuxHandle {
        chardev,
        serial_rx: Some(serial_rx),
        monitor: Some(MuxMonitor {
            stream: theirs,
            focus: focus_rx,
            label,
        }),
        supervisor,
    })
}

async fn flush(
    pass: &mut Vec<u8>,
    to_monitor: bool,
    serial: &mpsc::Sender<FrontendEvent>,
    monitor: &mut tokio::io::WriteHalf<tokio::io::DuplexStream>,
) {
    if pass.is_empty() {
        return;
    }
    let bytes = std::mem::take(pass);
    if to_monitor {
        let _ = monitor.write_all(&bytes).await;
    } else {
        let _ = serial.send(FrontendEvent::Input(bytes)).await;
    }
}
