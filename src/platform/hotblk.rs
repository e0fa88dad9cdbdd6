//! Block nodes added while the VM runs: QMP `blockdev-add` (a `file`, `raw` or `qcow2`
//! node, parsed by the command line's `-blockdev` parser) and HMP `drive_add` (an
//! `if=none` drive, by the `-drive` parser), each one node of the device tree
//! (`/block/NAME`) whose teardown closes it (`blockdev-del`, `drive_del`).
//!
//! Data path: a root node (one no other node uses as its `file`) is flattened into a drive
//! of the VM's configuration, as the command line's `-blockdev` graph is, and its image
//! is opened at once (so a missing or locked file fails the add, as in QEMU) by a block
//! engine this module holds. `device_add virtio-blk-pci,drive=NAME` finds the drive in the
//! configuration, takes a handle on that engine ([`HotBlock::handle`]) and its node
//! `uses` the block node, which the tree then marks in use: `blockdev-del` is refused
//! until the device is gone. A format node over a named `file` node takes the file over:
//! the file node's own engine closes (the format node opens the image) and the file
//! node is in use by it; deleting the format node opens the file node again. A
//! `drive_add` drive goes with the device that used it (QEMU's rule for such drives).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use actors::block::BlockHandle;
use actors::runtime::Registry;
use actors::supervisor::{BackendKind, DeviceTree, Node, Teardown};

use super::hotnet::SharedNetdevs;
use crate::cli::hotplug::{
    parse_blockdev_add, parse_drive_add, resolve_blockdevs, BlockNode, DriveAddError, DriveError,
    NodeKind, NodeRef,
};
use crate::cli::FileError;
use crate::config::{DriveConfig, ImageFormat};

/// Why a block node could not be added; the texts are QEMU's where QEMU has one.
#[derive(Debug, thiserror::Error)]
pub enum HotBlockError {
    /// The command line's parser refused it.
    #[error(transparent)]
    Parse(#[from] DriveError),
    #[error(transparent)]
    DriveAdd(#[from] DriveAddError),
    #[error("Duplicate nodes with node-name='{0}'")]
    DuplicateNode(String),
    #[error("Cannot find device='{0}' nor node-name='{0}'")]
    NoSuchNode(String),
    #[error("Could not open '{path}': {why}")]
    Open { path: String, why: String },
    #[error("'file' driver requires '{0}' to be a regular file")]
    NotAFile(String),
    #[error("Image is not in qcow2 format")]
    NotQcow2,
    /// A format node over a `file=` node another node or a device already uses.
    #[error("Permission conflict on node '{node}': it is already used by '{user}'")]
    InUse { node: String, user: String },
    /// Only `file` nodes can be another node's `file=`.
    #[error("node '{0}' is not a file node: troupe opens a format node over a file node only")]
    NotFileNode(String),
    /// The block engine could not open the image (QEMU's texts).
    #[error(transparent)]
    Engine(#[from] actors::block::OpenError),
}

/// How long an engine whose last handle is gone may take to close its image (it writes
/// back what it caches first).
const HANDOVER: std::time::Duration = std::time::Duration::from_secs(10);

/// One node added at run time.
struct Added {
    /// The parsed node (`blockdev-add`), or None for a `drive_add` drive.
    node: Option<BlockNode>,
    /// Its drive as a root node (flattened as the command line's `-blockdev` are). A file
    /// node under a format node keeps it, out of the configuration, for when it is a root
    /// again.
    drive: Option<DriveConfig>,
    /// The open image, while it is a root node.
    handle: Option<BlockHandle>,
}

/// The block nodes added at run time and the virtio-blk devices plugged at run time.
#[derive(Default)]
pub struct HotBlock {
    added: Vec<Added>,
    /// virtio-blk devices `device_add` plugged: (drive id, qdev path, backend).
    disks: Vec<(String, String, BlockHandle)>,
}

/// The hot block state, shared by the hotplug path, the teardowns and the drives actor.
pub type SharedBlock = Arc<Mutex<HotBlock>>;

fn lock(b: &SharedBlock) -> std::sync::MutexGuard<'_, HotBlock> {
    b.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock_net(n: &SharedNetdevs) -> std::sync::MutexGuard<'_, super::hotnet::HotNetdevs> {
    n.lock().unwrap_or_else(|e| e.into_inner())
}

/// QEMU's message for an image `path` that could not be checked.
fn file_error(path: &std::path::Path, e: DriveError) -> HotBlockError {
    let path = path.display().to_string();
    match e {
        DriveError::File(FileError::Open(why) | FileError::OpenWrite(why)) => {
            HotBlockError::Open { path, why }
        }
        DriveError::File(FileError::Directory) => HotBlockError::NotAFile(path),
        other => HotBlockError::Parse(other),
    }
}

/// The image a drive opens (a flattened root node always has one).
fn drive_file(d: &DriveConfig) -> PathBuf {
    d.file.clone().unwrap_or_default()
}

/// Open drive `d`'s image, as the command line's drives are opened.
fn open(registry: &Registry, d: &DriveConfig) -> Result<BlockHandle, HotBlockError> {
    let path = drive_file(d);
    if d.format == Some(ImageFormat::Qcow2) && !actors::block::is_qcow2(&path) {
        return Err(HotBlockError::NotQcow2);
    }
    Ok(actors::block::open(
        registry,
        &d.id,
        super::drive_options(d, path),
    )?)
}

/// Let image `h` go and wait (up to [`HANDOVER`]) until its engine has closed it (what
/// it caches written back, its locks gone), as QEMU has closed an image when
/// `blockdev-del` returns: the same image may be opened again at once.
fn close(h: BlockHandle) {
    let image = h.activation();
    drop(h);
    let deadline = std::time::Instant::now() + HANDOVER;
    while image.is_active() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A node's QEMU driver name.
fn driver_name(n: &BlockNode) -> &'static str {
    match &n.kind {
        NodeKind::File { .. } => "file",
        NodeKind::Format {
            format: ImageFormat::Qcow2,
            ..
        } => "qcow2",
        NodeKind::Format { .. } => "raw",
    }
}

impl HotBlock {
    pub fn new() -> SharedBlock {
        Arc::new(Mutex::new(Self::default()))
    }

    /// The open image of drive `id` if this module holds it (a node added at run time),
    /// for a device that `device_add` plugs on it.
    pub fn handle(&self, id: &str) -> Option<BlockHandle> {
        self.added
            .iter()
            .find(|a| a.drive.as_ref().is_some_and(|d| d.id == id))
            .and_then(|a| a.handle.clone())
    }

    /// A virtio-blk device `device_add` plugged on drive `drive` (for `query-block`).
    pub fn disk_added(&mut self, drive: &str, qdev: &str, b: BlockHandle) {
        self.disks.push((drive.into(), qdev.into(), b));
    }

    /// The virtio-blk device `qdev` is gone.
    pub fn disk_removed(&mut self, qdev: &str) {
        self.disks.retain(|(_, q, _)| q != qdev);
    }

    /// The drive of a node added at run time, by id.
    pub fn drive(&self, id: &str) -> Option<DriveConfig> {
        self.added
            .iter()
            .filter_map(|a| a.drive.as_ref())
            .find(|d| d.id == id)
            .cloned()
    }

    /// virtio-blk devices plugged at run time: (drive id, qdev path, backend).
    pub fn disks(&self) -> Vec<(String, String, BlockHandle)> {
        self.disks.clone()
    }

    /// Root nodes added at run time that no device uses: (drive, image, whether it is a
    /// lone `file` node: one node, no format node over it).
    pub fn unattached(&self) -> Vec<(DriveConfig, BlockHandle, bool)> {
        self.added
            .iter()
            .filter_map(|a| {
                let lone = a
                    .node
                    .as_ref()
                    .is_some_and(|n| matches!(n.kind, NodeKind::File { .. }));
                Some((a.drive.clone()?, a.handle.clone()?, lone))
            })
            .filter(|(d, _, _)| !self.disks.iter().any(|(id, _, _)| *id == d.id))
            .collect()
    }

    /// Every name a block node or drive has now: the configuration's drive ids and
    /// node names and the nodes added here (file nodes under format nodes too).
    fn taken(&self, netdevs: &SharedNetdevs) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for d in &lock_net(netdevs).config().drives {
            names.push(d.id.clone());
            if let Some((top, file)) = &d.node_names {
                names.push(top.clone());
                names.extend(file.clone());
            }
        }
        for a in &self.added {
            if let Some(n) = &a.node {
                names.push(n.name.clone());
                if let NodeKind::Format {
                    file: NodeRef::Inline(inner),
                    ..
                } = &n.kind
                {
                    names.push(inner.name.clone());
                }
            }
            if let Some(d) = &a.drive {
                names.push(d.id.clone());
            }
        }
        names.retain(|n| !n.is_empty());
        names
    }

    /// The added node named `name`.
    fn find(&self, name: &str) -> Option<usize> {
        self.added
            .iter()
            .position(|a| a.node.as_ref().is_some_and(|n| n.name == name))
    }
}

/// `blockdev-add ARGS` (a JSON object): parse, check and open the node, put its drive in
/// the configuration and return its tree node.
pub fn blockdev_add(
    json: &str,
    tree: &DeviceTree,
    block: &SharedBlock,
    netdevs: &SharedNetdevs,
    registry: &Registry,
) -> Result<Node, HotBlockError> {
    let node = parse_blockdev_add(json)?;
    let mut hot = lock(block);
    let taken = hot.taken(netdevs);
    let inline = match &node.kind {
        NodeKind::Format {
            file: NodeRef::Inline(inner),
            ..
        } => Some(inner.name.clone()).filter(|n| !n.is_empty()),
        _ => None,
    };
    if let Some(dup) = std::iter::once(&node.name)
        .chain(inline.as_ref())
        .find(|n| taken.contains(n))
    {
        return Err(HotBlockError::DuplicateNode(dup.clone()));
    }
    // A named file node: one added here, a file node no one uses yet.
    let child = match &node.kind {
        NodeKind::Format {
            file: NodeRef::Named(c),
            ..
        } => {
            let (i, cn) = hot
                .find(c)
                .and_then(|i| Some((i, hot.added[i].node.clone()?)))
                .ok_or_else(|| HotBlockError::NoSuchNode(c.clone()))?;
            if !matches!(cn.kind, NodeKind::File { .. }) {
                return Err(HotBlockError::NotFileNode(c.clone()));
            }
            if let Some(user) = tree
                .get(&BackendKind::Block.id(c))
                .and_then(|n| n.parent.clone())
            {
                return Err(HotBlockError::InUse {
                    node: c.clone(),
                    user,
                });
            }
            Some((i, cn))
        }
        _ => None,
    };
    let mut nodes: Vec<BlockNode> = child.iter().map(|(_, c)| c.clone()).collect();
    nodes.push(node.clone());
    let drive = resolve_blockdevs(&nodes, &[])
        .map_err(|(_, e)| {
            let image = nodes.iter().find_map(image_file).unwrap_or_default();
            file_error(&image, e)
        })?
        .pop()
        .ok_or_else(|| HotBlockError::NoSuchNode(node.name.clone()))?;
    // The format node opens the image its file node had open: that one closes first
    // (an image is locked by one engine at a time), and opens again if this one fails.
    if let Some(h) = child
        .as_ref()
        .and_then(|(i, _)| hot.added[*i].handle.take())
    {
        close(h);
    }
    let handle = match open(registry, &drive) {
        Ok(h) => h,
        Err(e) => {
            if let Some((i, _)) = &child {
                let reopened = hot.added[*i].drive.as_ref().map(|d| open(registry, d));
                if let Some(Ok(h)) = reopened {
                    hot.added[*i].handle = Some(h);
                }
            }
            return Err(e);
        }
    };
    let mut tree_node = Node::backend(BackendKind::Block, &node.name, driver_name(&node))
        .prop("file", format!("\"{}\"", handle.path.display()))
        .actor(&format!("blk-{}", drive.id))
        .image(handle.activation());
    {
        let mut net = lock_net(netdevs);
        if let Some((i, _)) = &child {
            // The file node is no drive of its own while the format node uses it.
            if let Some(d) = &hot.added[*i].drive {
                net.drive_removed(&d.id);
            }
            tree_node = tree_node.uses(BackendKind::Block.id(&nodes[0].name));
        }
        net.drive_added(drive.clone());
    }
    hot.added.push(Added {
        node: Some(node.clone()),
        drive: Some(drive),
        handle: Some(handle),
    });
    let (block, netdevs, registry) = (block.clone(), netdevs.clone(), registry.clone());
    let name = node.name.clone();
    let child_name = child.map(|(_, c)| c.name);
    Ok(tree_node.teardown(Teardown::new(move || {
        remove(&block, &netdevs, &registry, &name, child_name.as_deref())
    })))
}

/// The image file a node names itself (a file node's, or its inline file node's).
fn image_file(n: &BlockNode) -> Option<PathBuf> {
    match &n.kind {
        NodeKind::File { filename, .. } => Some(filename.clone()),
        NodeKind::Format {
            file: NodeRef::Inline(inner),
            ..
        } => image_file(inner),
        NodeKind::Format { .. } => None,
    }
}

/// Close node `name` (its image, its drive); the file node `child` it used becomes a
/// drive of its own again, open as before.
fn remove(
    block: &SharedBlock,
    netdevs: &SharedNetdevs,
    registry: &Registry,
    name: &str,
    child: Option<&str>,
) -> Result<(), String> {
    let mut hot = lock(block);
    let Some(i) = hot.find(name).or_else(|| {
        hot.added
            .iter()
            .position(|a| a.node.is_none() && a.drive.as_ref().is_some_and(|d| d.id == name))
    }) else {
        return Ok(());
    };
    let gone = hot.added.remove(i);
    if let Some(d) = &gone.drive {
        lock_net(netdevs).drive_removed(&d.id);
    }
    if let Some(h) = gone.handle {
        close(h);
    }
    if let Some(i) = child.and_then(|c| hot.find(c)) {
        let Some(d) = hot.added[i].drive.clone() else {
            return Ok(());
        };
        let h = open(registry, &d).map_err(|e| e.to_string())?;
        hot.added[i].handle = Some(h);
        lock_net(netdevs).drive_added(d);
    }
    Ok(())
}

/// HMP `drive_add ADDR OPTS`: an `if=none` drive, opened now; its node goes with the
/// device that uses it.
pub fn drive_add(
    spec: &str,
    block: &SharedBlock,
    netdevs: &SharedNetdevs,
    registry: &Registry,
) -> Result<Node, HotBlockError> {
    let mut hot = lock(block);
    let taken = hot.taken(netdevs);
    let drive = parse_drive_add(spec, &taken).map_err(|e| match e {
        DriveAddError::Drive(e) => {
            let path = crate::cli::hotplug::drive_add_file(spec);
            file_error(&path, e)
        }
        other => HotBlockError::DriveAdd(other),
    })?;
    let handle = open(registry, &drive)?;
    let node = Node::backend(BackendKind::Block, &drive.id, handle.format.name())
        .prop("file", format!("\"{}\"", handle.path.display()))
        .actor(&format!("blk-{}", drive.id))
        .image(handle.activation())
        .auto_del();
    lock_net(netdevs).drive_added(drive.clone());
    let id = drive.id.clone();
    hot.added.push(Added {
        node: None,
        drive: Some(drive),
        handle: Some(handle),
    });
    let (block, netdevs, registry) = (block.clone(), netdevs.clone(), registry.clone());
    Ok(node.teardown(Teardown::new(move || {
        remove(&block, &netdevs, &registry, &id, None)
    })))
}
