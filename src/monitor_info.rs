//! The machine's sides the monitor's actors serve, in the shapes QEMU's QMP and HMP use:
//! the drives ([`PcDrives`]), the board: memory map, chardevs, ROMs, in-kernel interrupt
//! controllers ([`PcChipset`]), the NICs and their backends ([`PcNet`]) and guest memory
//! ([`PcMemory`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use actors::bus::Bus;
use actors::host::ide::IdeHost;
use actors::monitor::commands::CmdError;
use actors::monitor::handles::{ChipsetService, DrivesService, MemoryService, NetService};
use actors::monitor::{MediaOp, MediaTarget};
use actors::supervisor::{BackendKind, DeviceTree};
use devices::ide::MediaError;
use serde_json::{json, Value};

use crate::config::{CacheMode, DriveConfig, DriveInterface, Media};
use crate::platform::nic::NicKind;
use crate::vm::kvm::KvmVm;

/// One chardev for `query-chardev` (label, filename).
pub type ChardevEntry = (String, String);

/// The drives, for the drives actor.
pub struct PcDrives {
    pub ide: Arc<IdeHost>,
    pub drives: Vec<DriveConfig>,
    /// virtio-blk devices: (drive id, qdev path, backend).
    pub virtio_disks: Vec<(String, String, actors::block::BlockHandle)>,
    /// Where the images `change` opens list their threads.
    pub registry: actors::runtime::Registry,
    /// Block nodes and virtio-blk devices added at run time.
    pub hot: crate::platform::hotblk::SharedBlock,
}

/// The board, for the chipset actor.
pub struct PcChipset {
    pub kvm: Arc<KvmVm>,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub chardevs: Arc<Mutex<Vec<ChardevEntry>>>,
    pub bios: Option<PathBuf>,
    pub vcpus: usize,
}

/// The NICs and backends, for the network actor.
pub struct PcNet {
    /// virtio-net NICs.
    pub nics: Vec<crate::platform::nic::Nic>,
    /// The netdevs (those `netdev_add` opened, and the configuration new ones are
    /// checked against).
    pub hot: crate::platform::hotnet::SharedNetdevs,
    /// Where threads started on the monitor's behalf (announce-self) are listed.
    pub registry: actors::runtime::Registry,
}

/// Guest memory as the monitor reads it.
pub struct PcMemory {
    pub kvm: Arc<KvmVm>,
    pub mmio: Arc<Bus>,
    pub mem: devices::memory::GuestMemoryMmap,
    pub coalesced: Arc<std::sync::OnceLock<Arc<actors::coalesced::CoalescedRing>>>,
}

fn ide_qdev(index: u32) -> String {
    format!("/machine/unattached/device[{}]", 23 + index)
}

/// One drive as the block queries show it.
struct BlockDev<'a> {
    drive: std::borrow::Cow<'a, DriveConfig>,
    /// The medium in it now (a CD-ROM's changes with `change`/`eject`).
    backend: Option<actors::block::BlockHandle>,
    qdev: String,
    node: String,
    /// The node of the image file under `node`.
    file_node: String,
    /// IDE position (0..4), for the tray.
    ide: Option<usize>,
    /// A lone `file` node (`blockdev-add driver=file`): one node, the file itself.
    lone_file: bool,
}

impl PcNet {
    fn hot(&self) -> std::sync::MutexGuard<'_, crate::platform::hotnet::HotNetdevs> {
        self.hot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every user-mode backend by netdev id: the NICs' (in order), then those added with
    /// `netdev_add`.
    fn slirps(&self) -> Vec<(String, crate::platform::nic::SlirpHandle)> {
        let mut v: Vec<(String, crate::platform::nic::SlirpHandle)> = self
            .nics
            .iter()
            .filter(|n| n.has_peer())
            .filter_map(|n| n.slirp.clone().map(|s| (n.netdev.clone(), s)))
            .collect();
        v.extend(
            self.hot()
                .slirps()
                .map(|(id, s)| (id.to_string(), s.clone())),
        );
        v
    }
}

impl PcDrives {
    /// IDE drives in index order, then virtio-blk drives in device order.
    fn block_devices(&self) -> Vec<BlockDev<'_>> {
        let mut v: Vec<BlockDev<'_>> = self
            .drives
            .iter()
            .filter(|d| d.interface == DriveInterface::Ide)
            .filter_map(|d| d.index.map(|i| (i as usize, d)))
            .filter(|(i, _)| *i < 4)
            .map(|(i, d)| BlockDev {
                drive: std::borrow::Cow::Borrowed(d),
                backend: self.ide.backend(i),
                qdev: d.device_id.clone().unwrap_or_else(|| ide_qdev(i as u32)),
                node: node_name(d, 0, 100 + i),
                file_node: node_name(d, 1, 300 + i),
                ide: Some(i),
                lone_file: false,
            })
            .collect();
        for (n, (id, qdev, b)) in self.virtio_disks.iter().enumerate() {
            if let Some(d) = self.drives.iter().find(|d| &d.id == id) {
                v.push(BlockDev {
                    drive: std::borrow::Cow::Borrowed(d),
                    backend: Some(b.clone()),
                    qdev: qdev.clone(),
                    node: node_name(d, 0, 200 + n),
                    file_node: node_name(d, 1, 400 + n),
                    ide: None,
                    lone_file: false,
                });
            }
        }
        // The virtio-blk devices plugged at run time, on a command-line drive or a node
        // added at run time.
        let hot = self.hot();
        let base = 200 + self.virtio_disks.len();
        for (n, (id, qdev, b)) in hot.disks().into_iter().enumerate() {
            let d = self.drives.iter().find(|d| d.id == id).cloned();
            if let Some(d) = d.or_else(|| hot.drive(&id)) {
                v.push(BlockDev {
                    node: node_name(&d, 0, base + n),
                    file_node: node_name(&d, 1, base + 200 + n),
                    drive: std::borrow::Cow::Owned(d),
                    backend: Some(b),
                    qdev,
                    ide: None,
                    lone_file: false,
                });
            }
        }
        v
    }

    fn hot(&self) -> std::sync::MutexGuard<'_, crate::platform::hotblk::HotBlock> {
        self.hot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The nodes added at run time that no device uses (`query-named-block-nodes` lists
    /// them; `query-block` lists devices).
    fn unattached(&self) -> Vec<BlockDev<'_>> {
        self.hot()
            .unattached()
            .into_iter()
            .enumerate()
            .map(|(n, (d, b, lone_file))| BlockDev {
                node: node_name(&d, 0, 600 + n),
                file_node: if lone_file {
                    node_name(&d, 0, 600 + n)
                } else {
                    node_name(&d, 1, 700 + n)
                },
                drive: std::borrow::Cow::Owned(d),
                backend: Some(b),
                qdev: String::new(),
                ide: None,
                lone_file,
            })
            .collect()
    }
}

/// The drive's name as `query-block`/`query-blockstats` give it: its id, or "" for a
/// `-blockdev` node (as QEMU: the device's backend has no name; tools find it by its
/// `node-name` and `qdev`).
fn backend_name(d: &DriveConfig) -> &str {
    if d.node_names.is_some() {
        ""
    } else {
        &d.id
    }
}

/// A drive's block node name: `-blockdev`'s own (`which` 0: the top node, 1: its file
/// node), or a generated `#blockN` like QEMU's for nodes nobody named.
fn node_name(d: &DriveConfig, which: u8, generated: usize) -> String {
    let named = d.node_names.as_ref().and_then(|(top, file)| match which {
        0 => Some(top.clone()),
        _ => file.clone(),
    });
    named.unwrap_or_else(|| format!("#block{generated}"))
}

/// One node as `query-block`'s `inserted` and `query-named-block-nodes` show it: the
/// format node (`drv` the image format) or, with `file_level`, the file under it.
fn node_info(bd: &BlockDev<'_>, b: &actors::block::BlockHandle, file_level: bool) -> Value {
    let d = &bd.drive;
    let file = b.path.display().to_string();
    let meta = std::fs::metadata(&file).ok();
    let actual = meta.as_ref().map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.blocks() * 512
    });
    let (name, drv, size) = if file_level {
        (
            bd.file_node.as_str(),
            "file",
            meta.map(|m| m.len()).unwrap_or(0),
        )
    } else {
        (bd.node.as_str(), b.format.name(), b.info.size)
    };
    json!({
        "iops_rd": 0, "detect_zeroes": "off",
        "image": {"virtual-size": size, "filename": file,
                  "format": drv, "actual-size": actual.unwrap_or(0),
                  "dirty-flag": false},
        "iops_wr": 0, "ro": b.info.read_only,
        "node-name": name,
        "backing_file_depth": 0, "drv": drv, "iops": 0, "bps_wr": 0,
        "write_threshold": 0, "encrypted": false, "bps": 0, "bps_rd": 0,
        "cache": {
            "no-flush": d.cache == CacheMode::Unsafe,
            "direct": matches!(d.cache, CacheMode::None | CacheMode::DirectSync),
            "writeback": !matches!(d.cache, CacheMode::Writethrough | CacheMode::DirectSync),
        },
        "file": file,
    })
}

/// QEMU's message for a refused media operation on drive `name`.
fn media_error(name: &str, e: MediaError) -> CmdError {
    CmdError::Generic(match e {
        MediaError::NoDrive(_) => return CmdError::DeviceNotFound(format!("Device '{name}' not found")),
        MediaError::NotRemovable(_) => format!("Device '{name}' is not removable"),
        MediaError::Locked(_) => format!(
            "Device '{name}' is locked and force was not specified, wait for tray to open and try again"
        ),
        MediaError::TrayClosed(_) => format!("Tray of device '{name}' is not open"),
        MediaError::MediumPresent(_) => format!("There already is a medium in device '{name}'"),
    })
}

impl PcDrives {
    /// The drive a media command names: (its name for messages, the drive, its IDE
    /// position if it has one).
    fn media_drive(
        &self,
        t: &MediaTarget,
    ) -> Result<(String, &DriveConfig, Option<usize>), CmdError> {
        let name = match (&t.device, &t.id) {
            (Some(d), None) => d,
            // Front ends with qdev ids (-device ide-cd,id=) are not in troupe: no drive is
            // reachable by one, as in QEMU without them.
            (None, Some(id)) => {
                return Err(CmdError::DeviceNotFound(format!("Device '{id}' not found")))
            }
            _ => {
                return Err(CmdError::Generic(
                    "Need exactly one of 'device' and 'id'".into(),
                ))
            }
        };
        let d = self
            .drives
            .iter()
            .find(|d| &d.id == name)
            .ok_or_else(|| CmdError::DeviceNotFound(format!("Device '{name}' not found")))?;
        let ide = (d.interface == DriveInterface::Ide)
            .then(|| d.index.map(|i| i as usize))
            .flatten()
            .filter(|i| *i < 4);
        Ok((name.clone(), d, ide))
    }

    /// Open `filename` as drive `d`'s new medium, with QEMU's messages for what fails.
    fn open_medium(
        &self,
        d: &DriveConfig,
        filename: &str,
        format: Option<&str>,
        read_only_mode: Option<&str>,
    ) -> Result<actors::block::BlockHandle, CmdError> {
        use actors::block::Format;
        let err = |m: String| CmdError::Generic(m);
        if let Some(m) = read_only_mode {
            if !matches!(m, "retain" | "read-only" | "read-write") {
                return Err(err(format!(
                    "Parameter 'read-only-mode' does not accept value '{m}'"
                )));
            }
        }
        let format = match format {
            None => None,
            Some("raw") => Some(Format::Raw),
            Some("qcow2") => Some(Format::Qcow2),
            Some(f) => return Err(err(format!("Unknown driver '{f}'"))),
        };
        let path = std::path::PathBuf::from(filename);
        match crate::cli::host::check_readable(&path) {
            Ok(_) => {}
            Err(crate::cli::host::FileError::Directory) => {
                return Err(err(format!(
                    "'file' driver requires '{filename}' to be a regular file"
                )))
            }
            Err(
                crate::cli::host::FileError::Open(why)
                | crate::cli::host::FileError::OpenWrite(why),
            ) => return Err(err(format!("Could not open '{filename}': {why}"))),
        }
        let qcow2 = actors::block::is_qcow2(&path);
        if format == Some(Format::Qcow2) && !qcow2 {
            return Err(err("Image is not in qcow2 format".into()));
        }
        let mut opts = crate::platform::drive_options(d, path);
        // Probed here, so a raw image is not warned about: a CD-ROM never writes.
        opts.format = Some(format.unwrap_or(if qcow2 { Format::Qcow2 } else { Format::Raw }));
        opts.read_only = true;
        actors::block::open(&self.registry, &d.id, opts).map_err(|e| err(e.to_string()))
    }

    /// Where drive `n`'s tray movements go: `DEVICE_TRAY_MOVED` through the supervisor.
    pub fn tray_listener(
        &self,
        supervisor: actors::supervisor::SupervisorHandle,
    ) -> actors::host::ide::TrayListener {
        let names: Vec<(usize, String)> = self
            .drives
            .iter()
            .filter(|d| d.interface == DriveInterface::Ide)
            .filter_map(|d| d.index.map(|i| (i as usize, d.id.clone())))
            .collect();
        Box::new(move |n, open| {
            let Some((_, name)) = names.iter().find(|(i, _)| *i == n) else {
                return;
            };
            supervisor.publish(actors::supervisor::VmNotification::Other {
                event: "DEVICE_TRAY_MOVED".into(),
                data: json!({"device": name, "tray-open": open, "id": ide_qdev(n as u32)})
                    .to_string(),
            });
        })
    }
}

impl DrivesService for PcDrives {
    fn media(&self, target: &MediaTarget, op: MediaOp) -> Result<(), CmdError> {
        let (name, d, ide) = self.media_drive(target)?;
        let fail = |e| media_error(&name, e);
        // A drive that is no IDE one (virtio-blk) is not removable either.
        let n = ide.ok_or_else(|| fail(MediaError::NotRemovable(4)));
        match op {
            MediaOp::Eject { force } => {
                let n = n?;
                self.ide.open_tray(n, force).map_err(fail)?;
                self.ide.remove_medium(n).map_err(fail)
            }
            MediaOp::OpenTray { force } => self.ide.open_tray(n?, force).map_err(fail),
            MediaOp::CloseTray => self.ide.close_tray(n?).map_err(fail),
            MediaOp::RemoveMedium => self.ide.remove_medium(n?).map_err(fail),
            // No node can be made (blockdev-add is not in troupe yet), so none is found.
            MediaOp::InsertMedium { node } => {
                n?;
                Err(CmdError::Generic(format!(
                    "Cannot find device= nor node_name={node}"
                )))
            }
            MediaOp::Change {
                filename,
                format,
                read_only_mode,
                force,
            } => {
                // As QEMU: the image is opened first, then the tray moves.
                let medium =
                    self.open_medium(d, &filename, format.as_deref(), read_only_mode.as_deref())?;
                self.ide
                    .change_medium(n?, Some(medium), force)
                    .map_err(fail)
            }
        }
    }

    fn query_block(&self) -> Value {
        // A `drive_add` drive no device uses yet is listed too (a `blockdev-add` node,
        // which has no drive name, is not), as QEMU lists it: removable, no `qdev`.
        let drives = self
            .unattached()
            .into_iter()
            .filter(|bd| bd.drive.node_names.is_none());
        let list: Vec<Value> = self
            .block_devices()
            .into_iter()
            .chain(drives)
            .map(|bd| {
                let d = &bd.drive;
                let cdrom = d.media == Media::Cdrom;
                let loose = bd.qdev.is_empty();
                let (tray_open, locked) = bd
                    .ide
                    .and_then(|i| self.ide.tray(i))
                    .unwrap_or((false, false));
                let mut v = json!({
                    "io-status": "ok",
                    "device": backend_name(d),
                    "locked": locked,
                    "removable": cdrom,
                    "qdev": bd.qdev,
                    "type": "unknown",
                });
                if cdrom || loose {
                    v["tray_open"] = json!(tray_open);
                }
                if loose {
                    v["removable"] = json!(true);
                    if let Some(m) = v.as_object_mut() {
                        m.remove("qdev");
                    }
                }
                if let Some(b) = &bd.backend {
                    v["inserted"] = node_info(&bd, b, false);
                }
                v
            })
            .collect();
        Value::Array(list)
    }

    fn query_named_block_nodes(&self) -> Value {
        // Each image as its two nodes, format over file, as `-blockdev` builds them.
        let list: Vec<Value> = self
            .block_devices()
            .into_iter()
            .chain(self.unattached())
            .flat_map(|bd| {
                let Some(b) = bd.backend.clone() else {
                    return Vec::new();
                };
                if bd.lone_file {
                    return vec![node_info(&bd, &b, true)];
                }
                vec![node_info(&bd, &b, false), node_info(&bd, &b, true)]
            })
            .collect();
        Value::Array(list)
    }

    fn snapshot_disks(&self) -> Vec<(String, actors::block::BlockHandle)> {
        self.block_devices()
            .into_iter()
            .filter_map(|bd| bd.backend.map(|b| (bd.drive.id.clone(), b.clone())))
            .collect()
    }

    fn query_blockstats(&self) -> Value {
        use std::sync::atomic::Ordering::Relaxed;
        let list: Vec<Value> = self
            .block_devices()
            .into_iter()
            .map(|bd| {
                let d = &bd.drive;
                let (rb, wb, ro, wo, fo, failed) = match bd.backend {
                    Some(b) => {
                        let s = &b.stats;
                        (
                            s.rd_bytes.load(Relaxed),
                            s.wr_bytes.load(Relaxed),
                            s.rd_ops.load(Relaxed),
                            s.wr_ops.load(Relaxed),
                            s.flush_ops.load(Relaxed),
                            s.failed_ops.load(Relaxed),
                        )
                    }
                    None => (0, 0, 0, 0, 0, 0),
                };
                json!({
                    "device": backend_name(d),
                    "qdev": bd.qdev,
                    "node-name": bd.node,
                    "stats": {
                        "unmap_operations": 0, "unmap_merged": 0, "flush_total_time_ns": 0,
                        "wr_highest_offset": 0, "wr_total_time_ns": 0, "failed_wr_operations": 0,
                        "failed_rd_operations": failed, "wr_merged": 0, "wr_bytes": wb,
                        "timed_stats": [], "failed_unmap_operations": 0,
                        "failed_flush_operations": 0, "account_invalid": true,
                        "rd_total_time_ns": 0, "invalid_unmap_operations": 0,
                        "flush_operations": fo, "wr_operations": wo, "unmap_bytes": 0,
                        "rd_merged": 0, "rd_bytes": rb, "unmap_total_time_ns": 0,
                        "invalid_flush_operations": 0, "account_failed": true,
                        "rd_operations": ro, "invalid_wr_operations": 0,
                        "invalid_rd_operations": 0,
                    },
                    "qdev": bd.qdev,
                })
            })
            .collect();
        Value::Array(list)
    }
}

impl ChipsetService for PcChipset {
    fn pic(&self) -> String {
        pic_text(&self.kvm)
    }

    fn irq(&self) -> String {
        actors::irq::irq_stats_text()
    }

    fn mtree(&self, flat: bool) -> String {
        let mut mem: Vec<(u64, u64, String, &str)> = self
            .kvm
            .slots()
            .into_iter()
            .map(|s| {
                let kind = if s.readonly { "rom" } else { "ram" };
                (s.gpa, s.size, format!("{} KVM", s.name), kind)
            })
            .collect();
        mem.extend(
            self.mmio
                .ranges()
                .into_iter()
                .map(|r| (r.base, r.len, r.name, "i/o")),
        );
        mem.sort_by_key(|e| e.0);
        let io: Vec<(u64, u64, String, &str)> = self
            .pio
            .ranges()
            .into_iter()
            .map(|r| (r.base, r.len, r.name, "i/o"))
            .collect();
        let line = |(base, len, name, kind): &(u64, u64, String, &str), indent: &str| {
            format!(
                "{indent}{base:016x}-{:016x} (prio 0, {kind}): {name}\n",
                base + len.saturating_sub(1)
            )
        };
        let mut s = String::new();
        if flat {
            s.push_str("FlatView #0\n AS \"memory\", root: system\n");
            for i in 0..self.vcpus {
                s.push_str(&format!(" AS \"cpu-memory-{i}\", root: system\n"));
            }
            s.push_str(" Root memory region: system\n");
            for e in &mem {
                s.push_str(&line(e, "  "));
            }
            s.push_str("\nFlatView #1\n AS \"I/O\", root: io\n Root memory region: io\n");
            for e in &io {
                s.push_str(&line(e, "  "));
            }
            s.push('\n');
        } else {
            s.push_str("address-space: memory\n  0000000000000000-ffffffffffffffff (prio 0, i/o): system\n");
            for e in &mem {
                s.push_str(&line(e, "    "));
            }
            s.push_str(
                "\naddress-space: I/O\n  0000000000000000-000000000000ffff (prio 0, i/o): io\n",
            );
            for e in &io {
                s.push_str(&line(e, "    "));
            }
            s.push('\n');
        }
        s
    }

    fn roms(&self) -> String {
        match &self.bios {
            Some(p) => {
                let size = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                format!(
                    "addr={:016x} size=0x{size:06x} mem=rom name=\"{name}\"\n",
                    (1u64 << 32) - size
                )
            }
            None => String::new(),
        }
    }

    fn query_chardev(&self) -> Value {
        let list = self.chardevs.lock().unwrap_or_else(|e| e.into_inner());
        Value::Array(
            list.iter()
                .map(|(label, filename)| {
                    json!({"frontend-open": true, "filename": filename, "label": label})
                })
                .collect(),
        )
    }
}

impl NetService for PcNet {
    fn network(&self, tree: &DeviceTree) -> String {
        let mut out = String::new();
        // The command line's NICs, then those `device_add` plugged.
        let hot: Vec<crate::platform::nic::Nic> = self.hot().hot_nics().cloned().collect();
        for (i, n) in self.nics.iter().chain(&hot).enumerate() {
            // The address in use: a virtio driver may have changed it (MAC_ADDR_SET).
            out.push_str(&format!(
                "{}: index=0,type=nic,model={},macaddr={}\n",
                n.name,
                n.model,
                fmt_mac(&n.mac())
            ));
            if n.has_peer() {
                out.push_str(&format!(" \\ {}: index={i},{}\n", n.netdev, n.backend));
            }
            if let Some(e) = &*n.error.lock().unwrap_or_else(|p| p.into_inner()) {
                out.push_str(&format!("    error: {e}\n"));
            } else if !n.link.load(std::sync::atomic::Ordering::Relaxed) {
                out.push_str("    link down\n");
            }
            // Not in QEMU's output: frames troupe had to drop (no receive buffer, link
            // down, a frame too big, a backend that refused one), shown once there are any.
            let (rx, tx) = n.dropped();
            if rx + tx > 0 {
                out.push_str(&format!("    dropped: rx {rx}, tx {tx}\n"));
            }
        }
        // QEMU lists a netdev no NIC uses on its own line (one never opened is not shown).
        for n in tree
            .backends(BackendKind::Netdev)
            .filter(|n| n.parent.is_none())
        {
            if let Some((_, desc)) = n.props.iter().find(|(k, _)| k == "desc") {
                out.push_str(&format!("{}: index=0,{desc}\n", n.name()));
            }
        }
        out
    }

    fn announce_self(&self, a: actors::monitor::Announce) -> Result<(), String> {
        let nics: Vec<crate::platform::nic::Nic> = self
            .nics
            .iter()
            .filter(|n| a.interfaces.as_ref().is_none_or(|l| l.contains(&n.name)))
            .cloned()
            .collect();
        if let Some(l) = &a.interfaces {
            if let Some(bad) = l.iter().find(|i| !self.nics.iter().any(|n| n.name == **i)) {
                return Err(format!("Invalid net client name: {bad}"));
            }
        }
        crate::platform::nic::announce_on_schedule(&self.registry, nics, &a)
            .map_err(|e| format!("announce-self: {e}"))
    }

    fn query_rx_filter(&self, name: Option<&str>) -> Result<Value, String> {
        if let Some(n) = name {
            match self.nics.iter().find(|c| c.name == n) {
                Some(c) if !matches!(c.kind, NicKind::Virtio { .. }) => {
                    return Err(format!(
                        "net client({n}) doesn't support rx-filter querying"
                    ))
                }
                Some(_) => {}
                None => {
                    return Err(if self.nics.iter().any(|c| c.netdev == n) {
                        format!("net client({n}) isn't a NIC")
                    } else {
                        format!("Invalid net client name: {n}")
                    })
                }
            }
        }
        let mode = |all: bool, none: bool| {
            if none {
                "none"
            } else if all {
                "all"
            } else {
                "normal"
            }
        };
        Ok(Value::Array(
            self.nics
                .iter()
                .filter(|c| name.is_none_or(|n| c.name == n))
                .filter_map(|c| match &c.kind {
                    NicKind::Virtio { filter, .. } => Some((c, filter)),
                    NicKind::E1000(_) => None,
                })
                .map(|(c, filter)| {
                    let f = devices::virtio::net::lock_filter(filter);
                    json!({
                        "name": c.name,
                        "promiscuous": f.promisc,
                        "multicast": mode(f.allmulti, f.nomulti),
                        "unicast": mode(f.alluni, f.nouni),
                        // No VLAN filtering is offered: every VLAN passes.
                        "vlan": "all",
                        "broadcast-allowed": !f.nobcast,
                        "multicast-overflow": f.multi_overflow,
                        "unicast-overflow": f.uni_overflow,
                        "main-mac": fmt_mac(&f.mac),
                        "vlan-table": [],
                        "unicast-table": f.unicast.iter().map(fmt_mac).collect::<Vec<_>>(),
                        "multicast-table": f.multicast.iter().map(fmt_mac).collect::<Vec<_>>(),
                    })
                })
                .collect(),
        ))
    }

    fn usernet(&self) -> String {
        // As QEMU: "Hub -1 (ID):" (no hub) and libslirp's own table.
        let mut out = String::new();
        for (netdev, (ctl, _)) in self.slirps() {
            out.push_str(&format!("Hub -1 ({netdev}):\n"));
            match ctl.connection_info() {
                Some(t) => out.push_str(&t),
                None => out.push_str("  (the user-mode backend is not answering)\n"),
            }
        }
        out
    }

    fn set_link(&self, name: &str, up: bool) -> Result<(), String> {
        let nic = self
            .nics
            .iter()
            .find(|n| n.name == name || (n.has_peer() && n.netdev == name))
            .ok_or_else(|| format!("Device '{name}' not found"))?;
        nic.set_link(up);
        Ok(())
    }

    fn hostfwd(&self, args: &[&str], add: bool) -> Result<String, String> {
        let (netdev, rule) = match args {
            [rule] => (None, *rule),
            [netdev, rule] => (Some(*netdev), *rule),
            _ => return Err("invalid format".into()),
        };
        let (_, (ctl, dhcpstart)) = self
            .slirps()
            .into_iter()
            .find(|(id, _)| netdev.is_none_or(|n| n == id))
            .ok_or_else(|| match netdev {
                Some(id) => format!("unknown netdev '{id}' (or not user-mode networking)"),
                None => "no user-mode network backend to forward to".into(),
            })?;
        if add {
            let f = crate::cli::netdev::parse_hostfwd(rule).map_err(|e| e.to_string())?;
            let guest = if f.guest_addr.is_unspecified() {
                dhcpstart
            } else {
                f.guest_addr
            };
            if ctl.add_hostfwd(f.udp, f.host_addr, f.host_port, guest, f.guest_port) {
                Ok(String::new())
            } else {
                Err(format!("could not set up host forwarding rule '{rule}'"))
            }
        } else {
            // [tcp|udp]:[hostaddr]:hostport
            let bad = || "invalid format".to_string();
            let (proto, rest) = rule.split_once(':').ok_or_else(bad)?;
            let udp = match proto {
                "" | "tcp" => false,
                "udp" => true,
                _ => return Err(bad()),
            };
            let (ha, hp) = rest.split_once(':').ok_or_else(bad)?;
            let ha: std::net::Ipv4Addr = if ha.is_empty() {
                std::net::Ipv4Addr::UNSPECIFIED
            } else {
                ha.parse().map_err(|_| bad())?
            };
            let hp: u16 = hp.parse().map_err(|_| bad())?;
            if ctl.remove_hostfwd(udp, ha, hp) {
                Ok(format!("host forwarding rule for {rule} removed\n"))
            } else {
                Err(format!("could not remove host forwarding rule {rule}"))
            }
        }
    }
}

impl MemoryService for PcMemory {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> bool {
        use vm_memory::{Bytes, GuestAddress};
        // Writes still queued for the VGA window land first.
        if let Some(r) = self.coalesced.get() {
            r.drain();
        }
        self.mmio.read(addr, buf) || self.mem.read_slice(buf, GuestAddress(addr)).is_ok()
    }

    fn dirty_log(&self, on: bool) -> Result<(), String> {
        self.kvm.set_ram_dirty_log(on).map_err(|e| e.to_string())?;
        if on {
            // Start troupe's own record afresh too.
            devices::memory::take_dirty(&self.mem);
        }
        Ok(())
    }

    fn dirty_pages(&self) -> Result<u64, String> {
        let regions = crate::vm::dirty_pages(&self.kvm, &self.mem).map_err(|e| e.to_string())?;
        Ok(regions
            .iter()
            .flat_map(|(_, w)| w.iter())
            .map(|w| u64::from(w.count_ones()))
            .sum())
    }
}

/// `info pic` for the in-kernel PICs and IOAPIC (QEMU's `pic_print_info` and
/// `ioapic_print_redtbl` formats).
fn pic_text(kvm: &KvmVm) -> String {
    use kvm_bindings::{
        kvm_irqchip, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    };
    let mut s = String::new();
    for (chip, n) in [(KVM_IRQCHIP_PIC_MASTER, 0), (KVM_IRQCHIP_PIC_SLAVE, 1)] {
        let mut c = kvm_irqchip {
            chip_id: chip,
            ..Default::default()
        };
        if kvm.vm.get_irqchip(&mut c).is_err() {
            return "Error: KVM_GET_IRQCHIP failed\n".into();
        }
        // SAFETY: chip_id selects the `pic` member of the union.
        let p = unsafe { c.chip.pic };
        s.push_str(&format!(
            "pic{n}: irr={:02x} imr={:02x} isr={:02x} hprio={} irq_base={:02x} rr_sel={} elcr={:02x} fnm={}\n",
            p.irr, p.imr, p.isr, p.priority_add, p.irq_base, p.read_reg_select, p.elcr,
            p.special_fully_nested_mode
        ));
    }
    let mut c = kvm_irqchip {
        chip_id: KVM_IRQCHIP_IOAPIC,
        ..Default::default()
    };
    if kvm.vm.get_irqchip(&mut c).is_err() {
        return s;
    }
    // SAFETY: chip_id selects the `ioapic` member of the union.
    let io = unsafe { c.chip.ioapic };
    s.push_str(&format!(
        "ioapic0: ver=0x11 id=0x{:02x} sel=0x{:02x}",
        io.id >> 24,
        io.ioregsel
    ));
    if io.ioregsel >= 0x10 {
        s.push_str(&format!(" (redir[{}])\n", (io.ioregsel - 0x10) >> 1));
    } else {
        s.push('\n');
    }
    const DELM: [&str; 8] = [
        "fixed", "lowest", "SMI", "...", "NMI", "INIT", "...", "extINT",
    ];
    let mut remote_irr = 0u32;
    for (i, e) in io.redirtbl.iter().enumerate() {
        // SAFETY: every bit pattern is a valid u64.
        let e = unsafe { e.bits };
        let logical = e & (1 << 11) != 0;
        let dest = (e >> 56) & if logical { 0xff } else { 0xf };
        s.push_str(&format!(
            "  pin {:<2} 0x{e:016x} dest={dest:x} vec={:<3} {} {:<5} {:<6} {:<6} {}\n",
            i,
            e & 0xff,
            if e & (1 << 13) != 0 {
                "active-lo"
            } else {
                "active-hi"
            },
            if e & (1 << 15) != 0 { "level" } else { "edge" },
            if e & (1 << 16) != 0 { "masked" } else { "" },
            DELM[((e >> 8) & 7) as usize],
            if logical { "logical" } else { "physical" }
        ));
        if e & (1 << 15) != 0 && e & (1 << 14) != 0 {
            remote_irr |= 1 << i;
        }
    }
    let dump = |name: &str, v: u32| {
        if v == 0 {
            format!("{name} (none)\n")
        } else {
            let pins: Vec<String> = (0..24)
                .filter(|i| v & (1 << i) != 0)
                .map(|i| i.to_string())
                .collect();
            format!("{name} {}\n", pins.join(" "))
        }
    };
    s.push_str(&dump("  IRR", io.irr));
    s.push_str(&dump("  Remote IRR", remote_irr));
    s
}

/// A MAC address as QEMU prints it (`52:54:00:12:34:56`).
fn fmt_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}
