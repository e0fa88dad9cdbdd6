//! `-blockdev`: block node graphs (a `raw`/`qcow2` format node over a `file` node, named or
//! inline as `file.driver=file,file.filename=...`), flattened into one `if=none` drive per
//! root node so `-device virtio-blk-pci,drive=NODE` can use it.

use std::path::PathBuf;

use super::{check_image, parse_format, DriveError, AIO_MODES, DISCARD};
use crate::cli::options::{check_id, Opts};
use crate::config::{AioMode, CacheMode, DriveConfig, DriveInterface, ImageFormat, Media};

/// One `-blockdev` node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockNode {
    /// `node-name=`.
    pub name: String,
    /// What kind of node.
    pub kind: NodeKind,
    /// `read-only=`.
    pub readonly: bool,
    /// `cache.direct=`.
    pub direct: bool,
    /// `cache.no-flush=`.
    pub no_flush: bool,
    /// `discard=`.
    pub discard: bool,
    /// `"backing": null` on a qcow2 node.
    pub no_backing: bool,
}

/// A node's driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// `driver=file,filename=PATH[,aio=]`.
    File {
        /// The image.
        filename: PathBuf,
        /// `aio=`.
        aio: AioMode,
    },
    /// `driver=raw|qcow2` over another node.
    Format {
        /// Which format.
        format: ImageFormat,
        /// `file=NODE`, or an inline `file.*` node.
        file: NodeRef,
    },
}

/// How a format node names its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRef {
    /// `file=NODE`.
    Named(String),
    /// `file.driver=file,file.filename=...`.
    Inline(Box<BlockNode>),
}

/// `-blockdev driver=...,node-name=...,...` (keys with `file.` prefixes describe an inline
/// file node).
pub fn parse_blockdev(mut opts: Opts) -> Result<BlockNode, DriveError> {
    let name = opts.str("node-name").ok_or(DriveError::NodeName)?;
    check_id(&name)?;
    let node = parse_node(&mut opts, "", name)?;
    opts.finish()?;
    Ok(node)
}

fn parse_node(opts: &mut Opts, prefix: &str, name: String) -> Result<BlockNode, DriveError> {
    let key = |k: &str| format!("{prefix}{k}");
    let driver = opts.required(&key("driver"))?;
    let readonly = opts.flag(&key("read-only"))?.unwrap_or(false);
    let direct = opts.flag(&key("cache.direct"))?.unwrap_or(false);
    let no_flush = opts.flag(&key("cache.no-flush"))?.unwrap_or(false);
    let discard = opts.choice(&key("discard"), DISCARD)?.unwrap_or(false);
    // `auto-read-only=on` (libvirt sets it on every file node): open the file read-write
    // only if a writer needs it. troupe opens a file node with the access of the format
    // node over it, so `on` is how it always works; `off` is the same for a node with an
    // explicit `read-only=`.
    let _ = opts.flag(&key("auto-read-only"))?;
    let mut no_backing = false;
    let kind = match driver.as_str() {
        "file" => {
            let filename = opts.required(&key("filename"))?;
            let aio = opts
                .choice(&key("aio"), AIO_MODES)?
                .unwrap_or(AioMode::IoUring);
            NodeKind::File {
                filename: PathBuf::from(filename),
                aio,
            }
        }
        "raw" | "qcow2" => {
            let format = parse_format(&driver)?;
            let fmt_name: &'static str = if format == ImageFormat::Raw {
                "raw"
            } else {
                "qcow2"
            };
            // `"backing": null` (libvirt's JSON): open no backing file. troupe always opens
            // an image's backing chain, so null is honoured for an image without one and
            // refused for one with (checked when the graph is resolved); a backing node
            // reference is refused as an unknown key.
            no_backing = format == ImageFormat::Qcow2 && opts.null(&key("backing"));
            let file_key = key("file");
            let file = match opts.str(&file_key) {
                Some(named) => NodeRef::Named(named),
                None if opts.peek(&format!("{file_key}.driver")).is_some() => {
                    let inner_name = opts.str(&format!("{file_key}.node-name"));
                    if let Some(n) = &inner_name {
                        check_id(n)?;
                    }
                    let inner = parse_node(
                        opts,
                        &format!("{file_key}."),
                        inner_name.unwrap_or_default(),
                    )?;
                    if !matches!(inner.kind, NodeKind::File { .. }) {
                        return Err(DriveError::BlockNeedsFile(fmt_name));
                    }
                    NodeRef::Inline(Box::new(inner))
                }
                None => return Err(DriveError::BlockNeedsFile(fmt_name)),
            };
            NodeKind::Format { format, file }
        }
        other => return Err(DriveError::BlockDriver(other.to_string())),
    };
    if direct && no_flush {
        return Err(DriveError::DirectNoFlush);
    }
    Ok(BlockNode {
        name,
        kind,
        readonly,
        direct,
        no_flush,
        discard,
        no_backing,
    })
}

/// Flatten the node graph: every root node (not used as another's `file=`) becomes an
/// `if=none` drive named after it. `taken` are the ids already used by `-drive`.
/// Errors carry the index of the offending node.
pub fn resolve_blockdevs(
    nodes: &[BlockNode],
    taken: &[String],
) -> Result<Vec<DriveConfig>, (usize, DriveError)> {
    let mut names: Vec<&str> = taken.iter().map(String::as_str).collect();
    for (n, node) in nodes.iter().enumerate() {
        let inline = match &node.kind {
            NodeKind::Format {
                file: NodeRef::Inline(inner),
                ..
            } if !inner.name.is_empty() => Some(inner.name.as_str()),
            _ => None,
        };
        for name in std::iter::once(node.name.as_str()).chain(inline) {
            if names.contains(&name) {
                return Err((n, DriveError::DuplicateId(name.to_string())));
            }
            names.push(name);
        }
    }
    // Which named file nodes are used, and by whom.
    let mut used: Vec<&str> = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        if let NodeKind::Format {
            file: NodeRef::Named(child),
            ..
        } = &node.kind
        {
            let target = nodes.iter().find(|c| c.name == *child);
            match target {
                Some(c) if matches!(c.kind, NodeKind::File { .. }) => {}
                _ => return Err((n, DriveError::NodeNotFound(child.clone()))),
            }
            if used.contains(&child.as_str()) {
                return Err((n, DriveError::NodeInUse(child.clone())));
            }
            used.push(child);
        }
    }
    let mut drives = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        if used.contains(&node.name.as_str()) {
            continue;
        }
        let fail = |e| (n, e);
        let (format, file_node) = match &node.kind {
            NodeKind::File { .. } => (ImageFormat::Raw, node),
            NodeKind::Format { format, file } => {
                let child = match file {
                    NodeRef::Inline(inner) => inner.as_ref(),
                    NodeRef::Named(name) => nodes
                        .iter()
                        .find(|c| c.name == *name)
                        .ok_or_else(|| fail(DriveError::NodeNotFound(name.clone())))?,
                };
                (*format, child)
            }
        };
        let NodeKind::File { filename, aio } = &file_node.kind else {
            return Err(fail(DriveError::BlockNeedsFile("raw")));
        };
        if file_node.readonly && !node.readonly {
            return Err(fail(DriveError::ReadonlyChild(file_node.name.clone())));
        }
        let direct = node.direct || file_node.direct;
        let no_flush = node.no_flush || file_node.no_flush;
        let cache = match (direct, no_flush) {
            (false, false) => CacheMode::Writeback,
            (true, false) => CacheMode::None,
            (false, true) => CacheMode::Unsafe,
            (true, true) => return Err(fail(DriveError::DirectNoFlush)),
        };
        if *aio == AioMode::Native && !direct {
            return Err(fail(DriveError::AioNative));
        }
        check_image(filename, Media::Disk, node.readonly).map_err(fail)?;
        if node.no_backing && qcow2_has_backing(filename) {
            return Err(fail(DriveError::BackingNull(
                filename.display().to_string(),
            )));
        }
        drives.push(DriveConfig {
            id: node.name.clone(),
            file: Some(filename.clone()),
            interface: DriveInterface::None,
            media: Media::Disk,
            format: Some(format),
            index: None,
            cache,
            aio: *aio,
            readonly: node.readonly,
            snapshot: false,
            discard: node.discard || file_node.discard,
            serial: None,
            bootindex: None,
            node_names: Some((
                node.name.clone(),
                (!std::ptr::eq(file_node, node) && !file_node.name.is_empty())
                    .then(|| file_node.name.clone()),
            )),
            device_id: None,
        });
    }
    Ok(drives)
}

/// Whether a qcow2 image's header names a backing file (qcow2 spec: `backing_file_offset`,
/// big-endian u64 at byte 8, is 0 without one). A header that cannot be read says no here;
/// opening the image reports it.
fn qcow2_has_backing(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut header = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .is_ok()
        && header[8..16] != [0; 8]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::host::testing::TempFile;

    fn node(s: &str) -> Result<BlockNode, String> {
        parse_blockdev(Opts::parse(s, None).unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn blockdev_inline_and_named_files() {
        let img = TempFile::new(1 << 20);
        let inline = node(&format!(
            "driver=qcow2,node-name=disk0,file.driver=file,file.filename={},cache.direct=on,file.aio=native",
            img.s()
        ))
        .unwrap();
        let ds = resolve_blockdevs(&[inline], &[]).unwrap();
        assert_eq!(ds.len(), 1);
        assert_eq!(ds[0].id, "disk0");
        assert_eq!(ds[0].format, Some(ImageFormat::Qcow2));
        assert_eq!(ds[0].file.as_deref(), Some(img.path()));
        assert_eq!(ds[0].cache, CacheMode::None);
        assert_eq!(ds[0].aio, AioMode::Native);
        assert_eq!(ds[0].interface, DriveInterface::None);

        let f = node(&format!("driver=file,node-name=f0,filename={}", img.s())).unwrap();
        let r = node("driver=raw,node-name=r0,file=f0,read-only=on").unwrap();
        let ds = resolve_blockdevs(&[f.clone(), r], &[]).unwrap();
        assert_eq!(ds.len(), 1);
        assert_eq!(
            (ds[0].id.as_str(), ds[0].format, ds[0].readonly),
            ("r0", Some(ImageFormat::Raw), true)
        );
        // A lone file node is a raw drive of its own.
        let ds = resolve_blockdevs(&[f], &[]).unwrap();
        assert_eq!(
            (ds[0].id.as_str(), ds[0].format),
            ("f0", Some(ImageFormat::Raw))
        );
    }

    #[test]
    fn blockdev_errors() {
        let img = TempFile::new(1 << 20);
        assert_eq!(
            node("driver=raw"),
            Err("node-name is required for a -blockdev node".into())
        );
        assert_eq!(
            node("driver=vmdk,node-name=a"),
            Err("block driver 'vmdk' is not supported by troupe (raw, qcow2, file)".into())
        );
        assert_eq!(
            node("driver=qcow2,node-name=a"),
            Err(
                "driver=qcow2 needs file= (a node name, or file.driver=file,file.filename=PATH)"
                    .into()
            )
        );
        assert_eq!(
            node("driver=file,node-name=a"),
            Err("parameter 'filename' is missing".into())
        );
        assert_eq!(
            node("driver=file,node-name=a,filename=x,cache.direct=on,cache.no-flush=on"),
            Err(
                "cache.direct=on together with cache.no-flush=on is not supported by troupe".into()
            )
        );
        assert!(node("driver=file,node-name=a,filename=x,locking=off")
            .unwrap_err()
            .starts_with("parameter 'locking' is not supported"));
        let resolve = |specs: &[&str], taken: &[String]| {
            let nodes: Vec<_> = specs.iter().map(|s| node(s).unwrap()).collect();
            resolve_blockdevs(&nodes, taken)
                .map(|_| ())
                .map_err(|(n, e)| (n, e.to_string()))
        };
        let file = format!("driver=file,node-name=f0,filename={}", img.s());
        assert_eq!(
            resolve(&["driver=raw,node-name=r,file=zz"], &[]),
            Err((0, "no file node named 'zz'".into()))
        );
        assert_eq!(
            resolve(
                &[
                    &file,
                    "driver=raw,node-name=a,file=f0",
                    "driver=raw,node-name=b,file=f0"
                ],
                &[]
            ),
            Err((2, "block node 'f0' is already used by another node".into()))
        );
        assert_eq!(
            resolve(&[&file, &file], &[]),
            Err((1, "duplicate drive id or node name 'f0'".into()))
        );
        assert_eq!(
            resolve(&[&file], &["f0".to_string()]),
            Err((0, "duplicate drive id or node name 'f0'".into()))
        );
        assert_eq!(
            resolve(
                &[
                    &format!("{file},read-only=on"),
                    "driver=raw,node-name=r,file=f0"
                ],
                &[]
            ),
            Err((
                1,
                "node 'f0' is read-only, so the node using it must be read-only too".into()
            ))
        );
        assert_eq!(
            resolve(&["driver=file,node-name=f,filename=/nope"], &[]),
            Err((0, "could not open: No such file or directory".into()))
        );
        assert_eq!(
            resolve(&[&format!("{file},aio=native")], &[]),
            Err((
                0,
                "aio=native requires cache=none or cache=directsync (O_DIRECT)".into()
            ))
        );
    }
}
