//! Drives: `-drive`, `-hda`..`-hdd`, `-cdrom`, the positional image, `-blockdev` and
//! `-snapshot`.
//!
//! A `-drive` is parsed on its own into a [`DriveSpec`]; [`assign`] then walks all of them
//! in command-line order the way QEMU's `drive_new` does: it gives each IDE drive a free
//! bus/unit (index 0..3 = hda..hdd), each virtio/none drive a unit number, generates ids
//! (`ide0-hd0`, `ide1-cd0`, `virtio0`, `none0`), and checks every image file. `-blockdev`
//! node graphs are flattened in [`blockdev`].

use std::path::PathBuf;

mod blockdev;

use thiserror::Error;

use super::host::{check_readable, check_writable, FileError};
use super::options::{Opts, OptsError};
use crate::config::{AioMode, CacheMode, DriveConfig, DriveInterface, ImageFormat, Media};

pub use blockdev::{parse_blockdev, resolve_blockdevs, BlockNode, NodeKind, NodeRef};

/// IDE buses × units on the PIIX controller.
const IDE_SLOTS: u32 = 4;

/// Ways a drive can be wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DriveError {
    /// A malformed option string or value.
    #[error(transparent)]
    Opts(#[from] OptsError),
    /// `if=` other than ide/virtio/none.
    #[error("unsupported bus type '{0}' (troupe has if=ide, if=virtio and if=none)")]
    Interface(String),
    /// `format=` other than raw/qcow2.
    #[error("unsupported image format '{0}' (troupe reads raw and qcow2)")]
    Format(String),
    /// `aio=native` without O_DIRECT.
    #[error("aio=native requires cache=none or cache=directsync (O_DIRECT)")]
    AioNative,
    /// IDE `index=` beyond hdd.
    #[error("index {0} is out of range: if=ide has indexes 0-3 (hda..hdd)")]
    IndexRange(u64),
    /// `index=` together with `bus=`/`unit=`.
    #[error("index= cannot be used with bus= and unit=")]
    IndexWithBusUnit,
    /// `bus=`/`unit=` on a non-IDE drive.
    #[error("bus= and unit= only apply to if=ide")]
    BusUnitNotIde,
    /// Two IDE drives on one bus/unit.
    #[error("drive with bus={bus}, unit={unit} (index={index}) exists")]
    IdeSlotTaken {
        /// IDE bus.
        bus: u32,
        /// Unit on the bus.
        unit: u32,
        /// bus * 2 + unit.
        index: u32,
    },
    /// More than four IDE drives.
    #[error("no free IDE slot: the pc machine has 4 (hda..hdd)")]
    IdeFull,
    /// A disk without a file.
    #[error("a disk drive needs file= (only a CD-ROM drive may be empty)")]
    NeedsFile,
    /// A CD-ROM not on IDE.
    #[error("media=cdrom needs if=ide (troupe's CD-ROM is an ATAPI drive on IDE)")]
    CdromInterface,
    /// `readonly=on` on an IDE disk.
    #[error("an IDE hard disk cannot be read-only (use if=virtio, media=cdrom or snapshot=on)")]
    IdeReadonly,
    /// A 0-byte CD-ROM image.
    #[error("CD-ROM image is empty (0 bytes)")]
    EmptyIso,
    /// Two drives (or block nodes) with one name.
    #[error("duplicate drive id or node name '{0}'")]
    DuplicateId(String),
    /// The image can't be opened.
    #[error(transparent)]
    File(#[from] FileError),
    /// `-blockdev` without `node-name`.
    #[error("node-name is required for a -blockdev node")]
    NodeName,
    /// `-blockdev driver=` troupe lacks.
    #[error("block driver '{0}' is not supported by troupe (raw, qcow2, file)")]
    BlockDriver(String),
    /// A format node without a file.
    #[error("driver={0} needs file= (a node name, or file.driver=file,file.filename=PATH)")]
    BlockNeedsFile(&'static str),
    /// `file=NODE` naming nothing (or a format node).
    #[error("no file node named '{0}'")]
    NodeNotFound(String),
    /// A file node used by two format nodes.
    #[error("block node '{0}' is already used by another node")]
    NodeInUse(String),
    /// A writable node over a read-only one.
    #[error("node '{0}' is read-only, so the node using it must be read-only too")]
    ReadonlyChild(String),
    /// `cache.direct=on,cache.no-flush=on`.
    #[error("cache.direct=on together with cache.no-flush=on is not supported by troupe")]
    DirectNoFlush,
    /// `"backing": null` over a qcow2 image that names a backing file: troupe always opens
    /// the chain.
    #[error("\"backing\": null is not supported by troupe for an image with a backing file ({0})")]
    BackingNull(String),
}

/// One `-drive` as written, before indexes and ids are assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveSpec {
    /// `id=`.
    pub id: Option<String>,
    /// `file=`.
    pub file: Option<PathBuf>,
    /// `if=` (default ide).
    pub interface: DriveInterface,
    /// `media=` (default disk).
    pub media: Media,
    /// `format=`.
    pub format: Option<ImageFormat>,
    /// `index=`, or `bus=`/`unit=` folded into an IDE index.
    pub index: Option<u32>,
    /// `cache=`.
    pub cache: CacheMode,
    /// `aio=`.
    pub aio: AioMode,
    /// `readonly=`.
    pub readonly: bool,
    /// `snapshot=`.
    pub snapshot: bool,
    /// `discard=`.
    pub discard: bool,
    /// `serial=`.
    pub serial: Option<String>,
}

const CACHE_MODES: &[(&str, CacheMode)] = &[
    ("writeback", CacheMode::Writeback),
    ("none", CacheMode::None),
    ("writethrough", CacheMode::Writethrough),
    ("directsync", CacheMode::DirectSync),
    ("unsafe", CacheMode::Unsafe),
];

const AIO_MODES: &[(&str, AioMode)] = &[
    ("threads", AioMode::Threads),
    ("native", AioMode::Native),
    ("io_uring", AioMode::IoUring),
];

const DISCARD: &[(&str, bool)] = &[
    ("ignore", false),
    ("off", false),
    ("unmap", true),
    ("on", true),
];

fn parse_format(s: &str) -> Result<ImageFormat, DriveError> {
    match s {
        "raw" => Ok(ImageFormat::Raw),
        "qcow2" => Ok(ImageFormat::Qcow2),
        other => Err(DriveError::Format(other.to_string())),
    }
}

/// `-drive file=,if=,media=,index=,bus=,unit=,format=,cache=,aio=,readonly=,snapshot=,
/// discard=,id=,serial=`.
pub fn parse_drive(mut opts: Opts) -> Result<DriveSpec, DriveError> {
    let id = opts.id("id")?;
    let file = opts.str("file").map(PathBuf::from);
    let interface = match opts.str("if").as_deref() {
        None | Some("ide") => DriveInterface::Ide,
        Some("virtio") => DriveInterface::Virtio,
        Some("none") => DriveInterface::None,
        Some(other) => return Err(DriveError::Interface(other.to_string())),
    };
    let media = opts
        .choice("media", &[("disk", Media::Disk), ("cdrom", Media::Cdrom)])?
        .unwrap_or(Media::Disk);
    let format = opts.str("format").map(|f| parse_format(&f)).transpose()?;
    let index = opts.uint("index", 0, u64::from(u32::MAX))?;
    let bus = opts.uint("bus", 0, u64::from(u32::MAX))?;
    let unit = opts.uint("unit", 0, u64::from(u32::MAX))?;
    let cache = opts
        .choice("cache", CACHE_MODES)?
        .unwrap_or(CacheMode::Writeback);
    let aio = opts.choice("aio", AIO_MODES)?.unwrap_or(AioMode::IoUring);
    let readonly = opts.flag("readonly")?.unwrap_or(false);
    let snapshot = opts.flag("snapshot")?.unwrap_or(false);
    let discard = opts.choice("discard", DISCARD)?.unwrap_or(false);
    let serial = opts.str("serial");
    opts.finish()?;

    if aio == AioMode::Native && !matches!(cache, CacheMode::None | CacheMode::DirectSync) {
        return Err(DriveError::AioNative);
    }
    let index = match (index, bus, unit) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => return Err(DriveError::IndexWithBusUnit),
        (Some(i), None, None) => {
            if interface == DriveInterface::Ide && i >= u64::from(IDE_SLOTS) {
                return Err(DriveError::IndexRange(i));
            }
            Some(u32::try_from(i).unwrap_or(u32::MAX))
        }
        (None, None, None) => None,
        (None, bus, unit) => {
            if interface != DriveInterface::Ide {
                return Err(DriveError::BusUnitNotIde);
            }
            let i = bus
                .unwrap_or(0)
                .saturating_mul(2)
                .saturating_add(unit.unwrap_or(0));
            if bus.unwrap_or(0) > 1 || unit.unwrap_or(0) > 1 {
                return Err(DriveError::IndexRange(i));
            }
            Some(u32::try_from(i).unwrap_or(u32::MAX))
        }
    };
    if media == Media::Cdrom && interface != DriveInterface::Ide {
        return Err(DriveError::CdromInterface);
    }
    if media == Media::Disk
        && file
            .as_ref()
            .map(|f| f.as_os_str().is_empty())
            .unwrap_or(true)
    {
        return Err(DriveError::NeedsFile);
    }
    if interface == DriveInterface::Ide && media == Media::Disk && readonly {
        return Err(DriveError::IdeReadonly);
    }
    Ok(DriveSpec {
        id,
        file: file.filter(|f| !f.as_os_str().is_empty()),
        interface,
        media,
        format,
        index,
        cache,
        aio,
        readonly: readonly || media == Media::Cdrom,
        snapshot,
        discard,
        serial,
    })
}

/// `-hda`..`-hdd` (index 0..3) and the positional image (index 0): a disk, file as written.
pub fn hd_spec(file: &str, index: u32) -> DriveSpec {
    DriveSpec {
        id: None,
        file: Some(PathBuf::from(file)),
        interface: DriveInterface::Ide,
        media: Media::Disk,
        format: None,
        index: Some(index),
        cache: CacheMode::Writeback,
        aio: AioMode::Threads,
        readonly: false,
        snapshot: false,
        discard: false,
        serial: None,
    }
}

/// `-cdrom FILE`: IDE index 2 (secondary master), read-only.
pub fn cdrom_spec(file: &str) -> DriveSpec {
    DriveSpec {
        media: Media::Cdrom,
        index: Some(2),
        readonly: true,
        ..hd_spec(file, 2)
    }
}

/// QEMU's id for a drive without `id=`.
fn generated_id(interface: DriveInterface, media: Media, index: u32) -> String {
    match interface {
        DriveInterface::Ide => {
            let kind = if media == Media::Cdrom { "cd" } else { "hd" };
            format!("ide{}-{kind}{}", index / 2, index % 2)
        }
        DriveInterface::Virtio => format!("virtio{index}"),
        DriveInterface::None => format!("none{index}"),
    }
}

/// Give every drive its index and id, in command-line order, and check its file.
/// `snapshot_all` is `-snapshot`. Errors carry the index of the offending spec.
pub fn assign(
    specs: &[DriveSpec],
    snapshot_all: bool,
) -> Result<Vec<DriveConfig>, (usize, DriveError)> {
    let mut drives: Vec<DriveConfig> = Vec::new();
    for (n, spec) in specs.iter().enumerate() {
        let fail = |e: DriveError| (n, e);
        let taken = |i: u32| {
            drives
                .iter()
                .any(|d| d.interface == spec.interface && d.index == Some(i))
        };
        let index = match spec.index {
            Some(i) => {
                if taken(i) {
                    return Err(fail(if spec.interface == DriveInterface::Ide {
                        DriveError::IdeSlotTaken {
                            bus: i / 2,
                            unit: i % 2,
                            index: i,
                        }
                    } else {
                        DriveError::DuplicateId(generated_id(spec.interface, spec.media, i))
                    }));
                }
                i
            }
            None => {
                let free = (0..).find(|&i| !taken(i)).unwrap_or(0);
                if spec.interface == DriveInterface::Ide && free >= IDE_SLOTS {
                    return Err(fail(DriveError::IdeFull));
                }
                free
            }
        };
        let id = spec
            .id
            .clone()
            .unwrap_or_else(|| generated_id(spec.interface, spec.media, index));
        if drives.iter().any(|d| d.id == id) {
            return Err(fail(DriveError::DuplicateId(id)));
        }
        let snapshot = spec.snapshot || snapshot_all;
        if let Some(file) = &spec.file {
            check_image(file, spec.media, spec.readonly || snapshot).map_err(fail)?;
        }
        drives.push(DriveConfig {
            id,
            file: spec.file.clone(),
            interface: spec.interface,
            media: spec.media,
            format: spec.format,
            index: Some(index),
            cache: spec.cache,
            aio: spec.aio,
            readonly: spec.readonly,
            snapshot,
            discard: spec.discard,
            serial: spec.serial.clone(),
            bootindex: None,
            node_names: None,
            device_id: None,
        });
    }
    Ok(drives)
}

/// The image must open for reading (and writing unless read-only); a CD-ROM image must
/// not be empty.
fn check_image(file: &std::path::Path, media: Media, readonly: bool) -> Result<(), DriveError> {
    let size = check_readable(file)?;
    if media == Media::Cdrom && size == 0 {
        return Err(DriveError::EmptyIso);
    }
    if !readonly {
        check_writable(file)?;
    }
    Ok(())
}

/// QEMU's default empty CD-ROM drive on the secondary IDE master.
pub fn default_cdrom() -> DriveConfig {
    DriveConfig {
        id: generated_id(DriveInterface::Ide, Media::Cdrom, 2),
        file: None,
        interface: DriveInterface::Ide,
        media: Media::Cdrom,
        format: None,
        index: Some(2),
        cache: CacheMode::Writeback,
        aio: AioMode::Threads,
        readonly: true,
        snapshot: false,
        discard: false,
        serial: None,
        bootindex: None,
        node_names: None,
        device_id: None,
    }
}

/// `format=help` / `-drive help`.
pub fn drive_help() -> String {
    "Supported image formats: raw qcow2\nSupported interfaces: ide virtio none\n".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::host::testing::TempFile;

    fn spec(s: &str) -> Result<DriveSpec, String> {
        parse_drive(Opts::parse(s, None).unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn drive_options_parse() {
        let d = spec(
            "file=a,,b.img,if=virtio,format=qcow2,cache=none,aio=native,readonly=on,\
             snapshot=on,discard=unmap,id=d0,serial=SN1,index=1",
        )
        .unwrap();
        assert_eq!(
            d,
            DriveSpec {
                id: Some("d0".into()),
                file: Some("a,b.img".into()),
                interface: DriveInterface::Virtio,
                media: Media::Disk,
                format: Some(ImageFormat::Qcow2),
                index: Some(1),
                cache: CacheMode::None,
                aio: AioMode::Native,
                readonly: true,
                snapshot: true,
                discard: true,
                serial: Some("SN1".into()),
            }
        );
        let d = spec("file=x.img").unwrap();
        assert_eq!(
            (d.interface, d.media, d.index, d.format),
            (DriveInterface::Ide, Media::Disk, None, None)
        );
        assert_eq!(spec("file=x,bus=1,unit=1").unwrap().index, Some(3));
        assert_eq!(spec("file=x,unit=1").unwrap().index, Some(1));
        let cd = spec("if=ide,media=cdrom").unwrap();
        assert_eq!((cd.file, cd.readonly), (None, true));
        assert!(spec("file=x,aio=io_uring,cache=directsync").is_ok());
    }

    #[test]
    fn drive_errors() {
        assert_eq!(
            spec("file=x,if=scsi"),
            Err("unsupported bus type 'scsi' (troupe has if=ide, if=virtio and if=none)".into())
        );
        assert_eq!(
            spec("file=x,format=vmdk"),
            Err("unsupported image format 'vmdk' (troupe reads raw and qcow2)".into())
        );
        assert_eq!(
            spec("file=x,media=foo"),
            Err("parameter 'media' does not accept value 'foo' (expected disk, cdrom)".into())
        );
        assert_eq!(
            spec("file=x,cache=foo"),
            Err("parameter 'cache' does not accept value 'foo' (expected writeback, none, writethrough, directsync, unsafe)".into())
        );
        assert_eq!(
            spec("file=x,aio=foo"),
            Err(
                "parameter 'aio' does not accept value 'foo' (expected threads, native, io_uring)"
                    .into()
            )
        );
        assert_eq!(
            spec("file=x,discard=foo"),
            Err(
                "parameter 'discard' does not accept value 'foo' (expected ignore, off, unmap, on)"
                    .into()
            )
        );
        assert_eq!(
            spec("file=x,aio=native"),
            Err("aio=native requires cache=none or cache=directsync (O_DIRECT)".into())
        );
        assert_eq!(
            spec("file=x,index=4"),
            Err("index 4 is out of range: if=ide has indexes 0-3 (hda..hdd)".into())
        );
        assert_eq!(
            spec("file=x,bus=2"),
            Err("index 4 is out of range: if=ide has indexes 0-3 (hda..hdd)".into())
        );
        assert_eq!(
            spec("file=x,index=1,unit=1"),
            Err("index= cannot be used with bus= and unit=".into())
        );
        assert_eq!(
            spec("file=x,if=virtio,unit=1"),
            Err("bus= and unit= only apply to if=ide".into())
        );
        assert_eq!(
            spec("if=ide,media=disk"),
            Err("a disk drive needs file= (only a CD-ROM drive may be empty)".into())
        );
        assert_eq!(
            spec("file="),
            Err("a disk drive needs file= (only a CD-ROM drive may be empty)".into())
        );
        assert_eq!(
            spec("file=x,if=virtio,media=cdrom"),
            Err("media=cdrom needs if=ide (troupe's CD-ROM is an ATAPI drive on IDE)".into())
        );
        assert_eq!(
            spec("file=x,readonly=on"),
            Err(
                "an IDE hard disk cannot be read-only (use if=virtio, media=cdrom or snapshot=on)"
                    .into()
            )
        );
        assert!(spec("file=x,id=1a")
            .unwrap_err()
            .starts_with("invalid id '1a'"));
        assert!(spec("file=x,werror=stop")
            .unwrap_err()
            .starts_with("parameter 'werror' is not supported"));
    }

    type Assigned = Result<Vec<(String, Option<u32>)>, (usize, String)>;

    fn assign_str(specs: &[DriveSpec]) -> Assigned {
        assign(specs, false)
            .map(|ds| ds.into_iter().map(|d| (d.id, d.index)).collect())
            .map_err(|(n, e)| (n, e.to_string()))
    }

    #[test]
    fn ide_indexes_and_ids_are_assigned_like_qemu() {
        let img = TempFile::new(1 << 20);
        let iso = TempFile::new(2048);
        let free = |s: &str| {
            parse_drive(Opts::parse(&format!("file={},{s}", img.s()), None).unwrap()).unwrap()
        };
        // -drive (auto) , -cdrom, -drive (auto), -drive (auto) → 0, 2, 1, 3
        let specs = vec![
            free("if=ide"),
            cdrom_spec(&iso.s()),
            free("if=ide"),
            free("if=ide"),
        ];
        assert_eq!(
            assign_str(&specs),
            Ok(vec![
                ("ide0-hd0".into(), Some(0)),
                ("ide1-cd0".into(), Some(2)),
                ("ide0-hd1".into(), Some(1)),
                ("ide1-hd1".into(), Some(3)),
            ])
        );
        // A fifth IDE drive has nowhere to go.
        let mut five = specs.clone();
        five.push(free("if=ide"));
        assert_eq!(
            assign_str(&five),
            Err((
                4,
                "no free IDE slot: the pc machine has 4 (hda..hdd)".into()
            ))
        );
        // -hdc and -cdrom collide.
        let specs = vec![hd_spec(&img.s(), 2), cdrom_spec(&iso.s())];
        assert_eq!(
            assign_str(&specs),
            Err((1, "drive with bus=1, unit=0 (index=2) exists".into()))
        );
        // virtio and none get their own unit numbers.
        let specs = vec![
            free("if=virtio"),
            free("if=none"),
            free("if=virtio"),
            free("if=none,id=mine"),
        ];
        assert_eq!(
            assign_str(&specs),
            Ok(vec![
                ("virtio0".into(), Some(0)),
                ("none0".into(), Some(0)),
                ("virtio1".into(), Some(1)),
                ("mine".into(), Some(1)),
            ])
        );
        let specs = vec![free("if=none,id=a"), free("if=virtio,id=a")];
        assert_eq!(
            assign_str(&specs),
            Err((1, "duplicate drive id or node name 'a'".into()))
        );
    }

    #[test]
    fn snapshot_applies_to_every_drive() {
        let img = TempFile::new(512);
        let ds = assign(&[hd_spec(&img.s(), 0)], true).unwrap();
        assert!(ds[0].snapshot);
        assert_eq!(ds[0].cache, CacheMode::Writeback);
    }

    #[test]
    fn image_files_are_checked() {
        let empty = TempFile::new(0);
        assert_eq!(
            assign_str(&[hd_spec("/nope.img", 0)]),
            Err((0, "could not open: No such file or directory".into()))
        );
        assert_eq!(
            assign_str(&[cdrom_spec(&empty.s())]),
            Err((0, "CD-ROM image is empty (0 bytes)".into()))
        );
        // A 0-byte disk image is fine, as in QEMU.
        assert!(assign_str(&[hd_spec(&empty.s(), 0)]).is_ok());
        // An empty CD-ROM drive has no file to check.
        let cd = parse_drive(Opts::parse("if=ide,media=cdrom", None).unwrap()).unwrap();
        assert_eq!(assign_str(&[cd]), Ok(vec![("ide0-cd0".into(), Some(0))]));
    }

    #[test]
    fn default_cdrom_is_secondary_master() {
        let d = default_cdrom();
        assert_eq!(
            (d.id.as_str(), d.index, d.file, d.media),
            ("ide1-cd0", Some(2), None, Media::Cdrom)
        );
    }
}
