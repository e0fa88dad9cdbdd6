//! What NIC models share: opening a `-netdev` backend (tap, bridge, user), QEMU's NIC
//! boot ROMs, and the record the monitor keeps of each NIC (`info network`, `set_link`,
//! `hostfwd_*`, `info usernet`, `query-rx-filter`) whatever its model. The e1000 is built
//! here; virtio-net is built with the other virtio devices (`virtio.rs`).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use actors::host::e1000::E1000Host;
use actors::net::backend::Backend;
use actors::net::slirp::SlirpControl;
use actors::virtio::VirtioPciHost;
use anyhow::{anyhow, Context, Result};
use devices::memory::GuestMemoryMmap;

use super::pci::{BarTarget, IntxRouter, PciPlatform};
use crate::config::VmConfig;
use devices::pci::Slot;

/// A user-mode backend: run-time hostfwd changes, and the first DHCP address (where a
/// rule with no guest address points).
pub type SlirpHandle = (SlirpControl, std::net::Ipv4Addr);

/// The model behind a NIC.
#[derive(Clone)]
pub enum NicKind {
    Virtio {
        host: Arc<VirtioPciHost>,
        /// The receive filter and MAC the driver set (`query-rx-filter`).
        filter: devices::virtio::net::SharedRxFilter,
        stats: Arc<actors::virtio::net::NetStats>,
        /// Frames the VMM sends itself (announcements), picked up when the worker wakes.
        inject: Arc<Mutex<Vec<Vec<u8>>>>,
        /// Tells the worker to drop its backends (`netdev_del`).
        detach: Arc<AtomicBool>,
    },
    E1000(Arc<E1000Host>),
}

/// A NIC and its backend, as the monitor sees it.
#[derive(Clone)]
pub struct Nic {
    /// QEMU's client name: the device id, else `MODEL.N`.
    pub name: String,
    /// `virtio-net-pci` or `e1000`.
    pub model: &'static str,
    pub netdev: String,
    /// `type=...,...` as `info network` shows the backend.
    pub backend: String,
    pub link: Arc<AtomicBool>,
    /// Why the backend stopped (a deleted tap), if it did.
    pub error: Arc<Mutex<Option<String>>>,
    pub slirp: Option<SlirpHandle>,
    pub kind: NicKind,
    /// The tap's down script and interface name, if it has one (run at `netdev_del` or
    /// as the VM ends).
    pub downscript: Option<(std::path::PathBuf, String)>,
    /// `netdev_del` took the backend away: the NIC stays, with no peer.
    pub detached: Arc<AtomicBool>,
}

impl Nic {
    /// The address in use (a virtio driver may have changed it).
    pub fn mac(&self) -> [u8; 6] {
        match &self.kind {
            NicKind::Virtio { filter, .. } => devices::virtio::net::lock_filter(filter).mac,
            NicKind::E1000(h) => actors::bus::lock(h.model()).mac(),
        }
    }

    /// Frames dropped (receive, transmit).
    pub fn dropped(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        match &self.kind {
            NicKind::Virtio { stats, .. } => (
                stats.rx_dropped.load(Relaxed),
                stats.tx_dropped.load(Relaxed),
            ),
            NicKind::E1000(h) => h.dropped(),
        }
    }

    /// One round of `announce-self`: QEMU's RARP announcement out of the NIC, and for a
    /// virtio driver that negotiated GUEST_ANNOUNCE, the ANNOUNCE status bit and a
    /// configuration interrupt (the driver acknowledges on its control queue).
    pub fn announce(&self) {
        use devices::virtio::net::{F_CTRL_VQ, F_GUEST_ANNOUNCE};
        let frame = devices::virtio::net::announce_frame(self.mac());
        match &self.kind {
            NicKind::Virtio {
                host,
                filter,
                inject,
                ..
            } => {
                inject.lock().unwrap_or_else(|e| e.into_inner()).push(frame);
                let _ = host.waker().write(1);
                let mut m = host.model().lock().unwrap_or_else(|e| e.into_inner());
                let both = F_CTRL_VQ | F_GUEST_ANNOUNCE;
                if m.driver_features() & both == both {
                    devices::virtio::net::lock_filter(filter).announce = true;
                    m.signal_config();
                }
            }
            NicKind::E1000(h) => h.send(vec![frame]),
        }
    }

    /// Whether the NIC has a backend (it had one and `netdev_del` did not take it).
    pub fn has_peer(&self) -> bool {
        !self.netdev.is_empty() && !self.detached.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `netdev_del` of this NIC's backend: it is closed and the NIC stays, with no peer
    /// (frames are dropped), as QEMU leaves it.
    pub fn detach(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.detached.store(true, Relaxed);
        match &self.kind {
            NicKind::Virtio { host, detach, .. } => {
                detach.store(true, Relaxed);
                let _ = host.waker().write(1);
            }
            NicKind::E1000(h) => h.detach_backend(),
        }
    }

    /// `set_link`: what the guest's driver sees changes, and frames stop or flow.
    pub fn set_link(&self, up: bool) {
        match &self.kind {
            NicKind::Virtio { host, .. } => {
                self.link.store(up, std::sync::atomic::Ordering::Relaxed);
                let mut m = host.model().lock().unwrap_or_else(|e| e.into_inner());
                if m.device_mut().set_link(up) {
                    m.signal_config();
                }
            }
            NicKind::E1000(h) => h.set_link(up),
        }
    }
}

/// Chardevs named by `guestfwd=` rules, with their input, by id (taken by the backend
/// that uses them).
pub type GuestFwdChardevs = std::collections::HashMap<
    String,
    (
        actors::chardev::ChardevHandle,
        tokio::sync::mpsc::Receiver<actors::chardev::FrontendEvent>,
    ),
>;

/// What opening a NIC backend takes.
pub struct BackendParts<'a> {
    pub cfg: &'a VmConfig,
    /// The `-netdev` id; None for a NIC with no backend (its frames go nowhere).
    pub id: Option<&'a str>,
    /// The NIC model, for messages.
    pub model: &'a str,
    pub guestfwds: &'a mut GuestFwdChardevs,
    pub rt: &'a tokio::runtime::Handle,
    pub registry: &'a actors::runtime::Registry,
}

/// Open the backend of `-netdev` `id` for a NIC of `model`: the backend, how `info network`
/// describes it, and the user-mode handle if it is slirp. Tap `downscript=`s to run at
/// exit are added to `downscripts`.
pub fn open_backend(
    p: BackendParts<'_>,
    downscripts: &mut Vec<(std::path::PathBuf, String)>,
) -> Result<(Backend, String, Option<SlirpHandle>)> {
    let BackendParts {
        cfg,
        id,
        model,
        guestfwds,
        rt,
        registry,
    } = p;
    let Some(id) = id else {
        return Ok((Backend::Gone, String::new(), None));
    };
    let nd = cfg
        .netdevs
        .iter()
        .find(|n| n.id == id)
        .ok_or_else(|| anyhow!("{model}: netdev '{id}' not found"))?;
    open_netdev(nd, guestfwds, rt, registry, downscripts)
}

/// Open the backend `nd` describes (at start for a NIC, or for `netdev_add`): see
/// [`open_backend`].
pub fn open_netdev(
    nd: &crate::config::NetdevConfig,
    guestfwds: &mut GuestFwdChardevs,
    rt: &tokio::runtime::Handle,
    registry: &actors::runtime::Registry,
    downscripts: &mut Vec<(std::path::PathBuf, String)>,
) -> Result<(Backend, String, Option<SlirpHandle>)> {
    let id = nd.id.as_str();
    let mut slirp = None;
    let backend = match &nd.kind {
        crate::config::NetdevKind::Tap {
            ifname,
            fd,
            script,
            downscript,
            vnet_hdr,
            queues,
        } => {
            let tap = match fd {
                Some(fd) => actors::net::tap::from_fd(*fd),
                None => actors::net::tap::open(ifname.as_deref(), *vnet_hdr, *queues),
            }
            .map_err(|e| anyhow!("-netdev {id}: {e}"))?;
            if let (Some(script), None) = (script, fd) {
                actors::net::tap::run_script(script, &tap.name)
                    .map_err(|e| anyhow!("-netdev {id}: {e}"))?;
            }
            if let (Some(down), None) = (downscript, fd) {
                downscripts.push((down.clone(), tap.name.clone()));
            }
            Backend::Tap(tap)
        }
        crate::config::NetdevKind::User(u) => {
            // Each guestfwd: guest bytes to its chardev, chardev input to the guest.
            let mut guestfwd = Vec::new();
            let mut inputs = Vec::new();
            for (addr, port, chardev) in &u.guestfwd {
                let (h, input) = guestfwds.remove(chardev).ok_or_else(|| {
                    anyhow!("-netdev {id}: guestfwd chardev '{chardev}' not found")
                })?;
                let (tx, mut out) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
                actors::runtime::spawn_task(
                    rt,
                    registry,
                    &format!("guestfwd-{id}-{port}.out"),
                    "guestfwd",
                    None,
                    async move {
                        while let Some(b) = out.recv().await {
                            h.write(b).await;
                        }
                    },
                );
                guestfwd.push(actors::net::slirp::GuestFwd {
                    addr: *addr,
                    port: *port,
                    to_chardev: tx,
                });
                inputs.push((*addr, *port, input));
            }
            let opts = actors::net::slirp::SlirpOptions {
                net: u.net.0,
                prefix: u.net.1,
                host: u.host,
                dhcpstart: u.dhcpstart,
                dns: u.dns,
                ipv6: u.ipv6.as_ref().map(|v| (v.net.0, v.net.1, v.host, v.dns)),
                restrict: u.restrict,
                hostname: u.hostname.clone(),
                domainname: u.domainname.clone(),
                tftp: u.tftp.as_ref().map(|p| p.display().to_string()),
                bootfile: u.bootfile.clone(),
                hostfwd: u
                    .hostfwd
                    .iter()
                    .map(|f| {
                        let guest = if f.guest_addr.is_unspecified() {
                            u.dhcpstart
                        } else {
                            f.guest_addr
                        };
                        (f.udp, f.host_addr, f.host_port, guest, f.guest_port)
                    })
                    .collect(),
                guestfwd,
            };
            let port =
                actors::net::slirp::start(registry, id, opts).map_err(|e| anyhow!("-netdev {id}: {e}"))?;
            for (addr, gport, mut input) in inputs {
                let ctl = port.control.clone();
                actors::runtime::spawn_task(
                    rt,
                    registry,
                    &format!("guestfwd-{id}-{gport}.in"),
                    "guestfwd",
                    None,
                    async move {
                        while let Some(ev) = input.recv().await {
                            if let actors::chardev::FrontendEvent::Input(data) = ev {
                                ctl.guestfwd_input(addr, gport, data);
                            }
                        }
                    },
                );
            }
            slirp = Some((port.control.clone(), u.dhcpstart));
            Backend::User(port)
        }
        crate::config::NetdevKind::Bridge { br, .. } => {
            let tap = actors::net::bridge::open(br).map_err(|e| anyhow!("-netdev {id}: {e}"))?;
            Backend::Tap(tap)
        }
        crate::config::NetdevKind::Socket { listen, connect } => {
            use actors::net::socket::Mode;
            let (spec, mode): (_, fn(std::net::SocketAddr) -> Mode) = match (listen, connect) {
                (Some(l), _) => (l, Mode::Listen),
                (None, Some(c)) => (c, Mode::Connect),
                (None, None) => return Err(anyhow!("-netdev {id}: listen= or connect= needed")),
            };
            let addr = spec
                .resolve()
                .map_err(|e| anyhow!("-netdev {id}: {}:{}: {e}", spec.host, spec.port))?;
            let port = actors::net::socket::start(registry, id, mode(addr))
                .map_err(|e| anyhow!("-netdev {id}: {e}"))?;
            Backend::Socket(port)
        }
        crate::config::NetdevKind::Hubport { .. } => {
            return Err(anyhow!(
                "-netdev {id}: only tap, bridge, user and socket networking are available yet (hubport is not)"
            ))
        }
    };
    let desc = match &nd.kind {
        crate::config::NetdevKind::Tap {
            ifname,
            script,
            downscript,
            ..
        } => format!(
            "type=tap,ifname={},script={},downscript={}",
            ifname.as_deref().unwrap_or(""),
            script
                .as_ref()
                .map_or("no".into(), |p| p.display().to_string()),
            downscript
                .as_ref()
                .map_or("no".into(), |p| p.display().to_string()),
        ),
        crate::config::NetdevKind::Bridge { br, .. } => {
            format!("type=tap,helper=bridge,br={br}")
        }
        crate::config::NetdevKind::User(u) => format!(
            "type=user,net={},restrict={}",
            u.net.0,
            if u.restrict { "on" } else { "off" }
        ),
        crate::config::NetdevKind::Socket { listen, connect } => match (listen, connect) {
            (Some(l), _) => format!("type=socket,listen={}:{}", l.host, l.port),
            (_, Some(c)) => format!("type=socket,connect={}:{}", c.host, c.port),
            _ => String::new(),
        },
        _ => String::new(),
    };
    Ok((backend, desc, slirp))
}

/// Where QEMU's NIC boot ROMs live on Debian (package ipxe-qemu), and QEMU's data dir.
const ROM_DIRS: [&str; 2] = ["/usr/lib/ipxe/qemu", "/usr/share/qemu"];

/// The largest option ROM a NIC's ROM BAR is given.
const MAX_ROM: u64 = 16 << 20;

/// A NIC's boot ROM: QEMU's default (`romfile` not given; skipped with a warning when it
/// is not installed), none (`romfile=`), or the named file (a bare name is looked up where
/// QEMU looks).
pub fn load_rom(romfile: Option<&str>, default: &str) -> Result<Option<Vec<u8>>> {
    let (name, explicit) = match romfile {
        Some("") => return Ok(None),
        Some(n) => (n, true),
        None => (default, false),
    };
    let candidates: Vec<std::path::PathBuf> = if name.contains('/') {
        vec![name.into()]
    } else {
        ROM_DIRS
            .iter()
            .map(|d| std::path::Path::new(d).join(name))
            .collect()
    };
    for c in &candidates {
        match crate::files::read_bounded(c, MAX_ROM, "a PCI option ROM") {
            Ok(b) => return Ok(Some(b)),
            // Missing here: try the next directory.
            Err(crate::files::LoadError::Io { .. }) => {}
            Err(e) => return Err(anyhow!("romfile: {e}")),
        }
    }
    if explicit {
        return Err(anyhow!("failed to find romfile \"{name}\""));
    }
    actors::report!(
        "troupe: warning: NIC boot ROM {name} not found (install ipxe-qemu); no network boot"
    );
    Ok(None)
}

/// Make a boot ROM's PCI data structure name this device (as QEMU does): firmware runs a
/// ROM only when its ids match, and one iPXE image serves several device ids. The header's
/// checksum byte (offset 6) absorbs the change.
fn patch_rom_ids(rom: &mut [u8], vendor: u16, device: u16) {
    if rom.len() < 0x1a || rom[0] != 0x55 || rom[1] != 0xaa {
        return;
    }
    let p = usize::from(u16::from_le_bytes([rom[0x18], rom[0x19]]));
    if p + 8 > rom.len() || &rom[p..p + 4] != b"PCIR" {
        return;
    }
    let mut delta: u8 = 0;
    for (at, v) in [(p + 4, vendor), (p + 6, device)] {
        for (i, b) in v.to_le_bytes().into_iter().enumerate() {
            delta = delta.wrapping_add(b).wrapping_sub(rom[at + i]);
            rom[at + i] = b;
        }
    }
    rom[6] = rom[6].wrapping_sub(delta);
}

/// A NIC boot ROM as its BAR shows it: ids patched for this device, padded with 0xff to a
/// power of two (at least 4 KiB). Returns (BAR size, contents).
pub fn rom_image(
    mut rom: Vec<u8>,
    vendor: u16,
    device: u16,
) -> (u64, Arc<actors::host::mem::HostBuffer>) {
    patch_rom_ids(&mut rom, vendor, device);
    let size = (rom.len() as u64).next_power_of_two().max(0x1000);
    let mut buf = actors::host::mem::HostBuffer::new(size as usize);
    buf.as_mut_slice().fill(0xff);
    buf.as_mut_slice()[..rom.len()].copy_from_slice(&rom);
    (size, Arc::new(buf))
}

/// QEMU's boot ROM for the e1000 (Debian's ipxe-qemu).
const E1000_ROM: &str = "efi-e1000.rom";

/// What an e1000 is built from.
pub struct E1000Parts<'a> {
    pub cfg: &'a VmConfig,
    /// `-device e1000,id=`.
    pub id: Option<&'a str>,
    /// How many e1000s came before (QEMU names them `e1000.N`).
    pub index: usize,
    /// None: no backend (QEMU warns and runs the NIC without a peer).
    pub netdev: Option<&'a str>,
    pub mac: [u8; 6],
    pub romfile: Option<&'a str>,
    pub slot: Slot,
    pub mem: &'a GuestMemoryMmap,
    pub pci: &'a Arc<PciPlatform>,
    pub intx: &'a Arc<IntxRouter>,
    pub guestfwds: &'a mut GuestFwdChardevs,
    pub rt: &'a tokio::runtime::Handle,
    pub registry: &'a actors::runtime::Registry,
}

/// An e1000 on `slot`: its backend, its model with INTx A, BAR0/BAR1 and the boot ROM.
pub fn build_e1000(
    p: E1000Parts<'_>,
    downscripts: &mut Vec<(std::path::PathBuf, String)>,
) -> Result<Nic> {
    let before = downscripts.len();
    let (backend, desc, slirp) = open_backend(
        BackendParts {
            cfg: p.cfg,
            id: p.netdev,
            model: "e1000",
            guestfwds: p.guestfwds,
            rt: p.rt,
            registry: p.registry,
        },
        downscripts,
    )?;
    let name =
        p.id.map_or_else(|| format!("e1000.{}", p.index), str::to_string);
    if p.netdev.is_none() {
        actors::report!("troupe: warning: nic {name} has no peer");
    }
    let rom = load_rom(p.romfile, E1000_ROM)?;
    let mut model = devices::e1000::E1000::new(p.mac, p.pci.intx(p.intx, p.slot.0, 1));
    if let Some(id) = p.id {
        model.set_id(id);
    }
    let rom = rom.map(|r| {
        let (size, buf) = rom_image(r, devices::e1000::VENDOR, devices::e1000::DEVICE);
        model.add_rom(size);
        buf
    });
    let thread = format!("e1000-{}", p.index);
    let host = E1000Host::start(p.registry, &thread, model, p.mem.clone(), backend)
        .with_context(|| format!("{thread}: starting its receive thread"))?;
    p.pci.add_function(p.slot, host.function());
    let [mmio, io] = host.bars();
    p.pci.bind_bar(
        p.slot,
        devices::e1000::MMIO_BAR,
        &format!("{thread}-mmio"),
        BarTarget::Mmio(mmio),
    );
    p.pci.bind_bar(
        p.slot,
        devices::e1000::IO_BAR,
        &format!("{thread}-io"),
        BarTarget::Io(io),
    );
    if let Some(buf) = rom {
        p.pci
            .bind_bar(p.slot, 6, &format!("{thread}.rom"), BarTarget::Rom(buf));
    }
    Ok(Nic {
        name,
        model: "e1000",
        netdev: p.netdev.unwrap_or_default().to_string(),
        backend: desc,
        link: host.link.clone(),
        error: host.error.clone(),
        slirp,
        kind: NicKind::E1000(host),
        downscript: downscripts.get(before).cloned(),
        detached: Arc::default(),
    })
}

/// `announce-self` (and the announcements after an incoming migration): `a.rounds`
/// rounds on `nics`, the first at once, on a thread of its own. Not vital (a panic does
/// not stop the VM) and run once: run again, it would repeat announcements already sent.
pub fn announce_on_schedule(
    registry: &actors::runtime::Registry,
    nics: Vec<Nic>,
    a: &actors::net::Announce,
) -> std::io::Result<()> {
    if nics.is_empty() || a.rounds == 0 {
        return Ok(());
    }
    let gaps: Vec<std::time::Duration> = a.gaps().collect();
    let spec =
        actors::runtime::ThreadSpec::new("announce", "announce", actors::runtime::Restart::Always);
    actors::runtime::spawn_thread(
        registry,
        spec,
        actors::runtime::once(move || {
            // As QEMU: the first round at once, then after `initial`, each gap one
            // `step` longer, at most `max`.
            for n in &nics {
                n.announce();
            }
            for gap in gaps {
                std::thread::sleep(gap);
                for n in &nics {
                    n.announce();
                }
            }
        }),
    )
    .map(|_| ())
}
