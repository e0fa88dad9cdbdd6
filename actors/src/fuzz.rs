//! Fuzz targets for the doors of this crate that take bytes from outside the guest: a
//! qcow2 image opened and read through the block layer ([`crate::block::open`], as a
//! `-drive` is), the monitor's telnet decoding and line editor with HMP's argument
//! splitting, QMP's framing and request parsing, and the destination side of a
//! migration stream ([`crate::migration::dest::receive`]). The RFB server's target is
//! in `vnc/fuzz.rs` (it needs the session internals).
//!
//! Each target is a `fn(&[u8])` in cargo-fuzz's shape; the tests run each for a fixed
//! time with [`troupe_fuzz::fuzz`] (`TROUPE_FUZZ_MS`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use troupe_fuzz::Cursor;

use crate::block::{self, Aio, BlockJob, BlockOptions, Format};
use crate::chardev::telnet::{escape_iac, TelnetFilter};
use crate::migration::dest::receive;
use crate::migration::stream::{MachineDesc, MAGIC, VERSION};
use crate::migration::transport::Incoming;
use crate::migration::DeviceRam;
use crate::monitor::readline::{Event, Readline};
use crate::monitor::{commands, hmp, qmp};
use crate::runtime::Registry;
use devices::block::{BlockOp, BlockRequest};
use devices::memory::GuestMemoryMmap;

// ---------------------------------------------------------------------------------------
// qcow2 through the block layer

/// A fresh file for each image (an image's lock outlives its handle by a moment).
fn scratch_path() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    dir.join(format!(
        "troupe-fuzz-{}-{}.qcow2",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The bytes are an image file, opened as a `-drive file=...,format=qcow2` is (format
/// checks, locking, imago, the drive's backend thread): read at its start, middle and end,
/// and, when the input's length is even, opened writable and written to. Inputs whose
/// length is a multiple of 4 go through the io_uring engine, the others the thread pool.
pub fn qcow2(data: &[u8]) {
    let path = scratch_path();
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let writable = data.len().is_multiple_of(2);
    let opts = BlockOptions {
        read_only: !writable,
        format: Some(Format::Qcow2),
        aio: if data.len().is_multiple_of(4) {
            Aio::IoUring
        } else {
            Aio::Threads
        },
        ..BlockOptions::raw(path.clone())
    };
    if let Ok(h) = block::open(&Registry::new(), "fuzzq2", opts) {
        let size = h.info.size;
        let mut ops = Vec::new();
        for at in [0, size / 2, size.saturating_sub(4096)] {
            let at = at & !511;
            let len = 4096.min(size - at) as usize;
            ops.push(BlockOp::Read { offset: at, len });
        }
        if writable {
            ops.push(BlockOp::Write {
                offset: (size / 3) & !511,
                data: vec![0x5a; 512.min(size as usize)],
            });
            ops.push(BlockOp::WriteZeroes {
                offset: 0,
                len: 1024.min(size),
            });
            ops.push(BlockOp::Read {
                offset: (size / 3) & !511,
                len: 512.min(size as usize),
            });
            ops.push(BlockOp::Flush);
        }
        for (id, op) in ops.into_iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::channel();
            h.submit(BlockJob {
                request: BlockRequest { id: id as u64, op },
                done: Box::new(move |c| {
                    let _ = tx.send(c);
                }),
            });
            // A backend thread that died drops the job: the channel closes.
            if rx.recv().is_err() {
                break;
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// A small valid qcow2 image: 512-byte clusters, 64 KiB virtual size, one data cluster
/// mapped at guest offset 0 (and, in v3, one zero cluster at 512).
fn qcow2_image(version: u32, backing: Option<&str>) -> Vec<u8> {
    const C: usize = 512;
    let mut img = vec![0u8; 6 * C];
    let be32 =
        |img: &mut Vec<u8>, at: usize, v: u32| img[at..at + 4].copy_from_slice(&v.to_be_bytes());
    let be64 =
        |img: &mut Vec<u8>, at: usize, v: u64| img[at..at + 8].copy_from_slice(&v.to_be_bytes());
    img[..4].copy_from_slice(b"QFI\xfb");
    be32(&mut img, 4, version);
    be32(&mut img, 20, 9); // cluster_bits
    be64(&mut img, 24, 64 << 10); // size
    be32(&mut img, 36, 2); // l1_size
    be64(&mut img, 40, C as u64); // l1_table_offset
    be64(&mut img, 48, 2 * C as u64); // refcount_table_offset
    be32(&mut img, 56, 1); // refcount_table_clusters
    let header_len = if version >= 3 {
        be32(&mut img, 96, 4); // refcount_order
        be32(&mut img, 100, 104); // header_length
        104
    } else {
        72
    };
    // Header extensions: end marker (8 zero bytes), then the backing file name.
    if let Some(b) = backing {
        let at = header_len + 8;
        img[at..at + b.len()].copy_from_slice(b.as_bytes());
        be64(&mut img, 8, at as u64);
        be32(&mut img, 16, b.len() as u32);
    }
    const COPIED: u64 = 1 << 63;
    be64(&mut img, C, (4 * C as u64) | COPIED); // L1[0] -> L2 at cluster 4
    be64(&mut img, 2 * C, 3 * C as u64); // refcount table -> block at cluster 3
    for i in 0..6 {
        img[3 * C + 2 * i + 1] = 1; // 16-bit refcounts of clusters 0..5
    }
    be64(&mut img, 4 * C, (5 * C as u64) | COPIED); // L2[0] -> data at cluster 5
    if version >= 3 {
        be64(&mut img, 4 * C + 8, 1); // L2[1]: reads as zeros
    }
    for (i, b) in img[5 * C..].iter_mut().enumerate() {
        *b = i as u8;
    }
    img
}

/// Valid inputs to start from (a corpus for cargo-fuzz too).
pub fn qcow2_seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![
        qcow2_image(3, None),
        qcow2_image(2, None),
        qcow2_image(3, Some("/nonexistent/troupe-fuzz-backing.img")),
    ];
    // The same images one byte longer: the other engine and read-only.
    let longer: Vec<Vec<u8>> = seeds
        .iter()
        .map(|s| {
            let mut s = s.clone();
            s.push(0);
            s
        })
        .collect();
    seeds.extend(longer);
    seeds
}

// ---------------------------------------------------------------------------------------
// HMP: telnet, line editing, argument splitting

/// Bytes from a `-monitor telnet:...` client: telnet negotiation stripped, keys through
/// the line editor (history, escapes, Tab completion against HMP's commands), each line
/// split into words as HMP does, with the monitor's `change vnc password` prompt, and
/// the output escaped for telnet. The same bytes also go to a raw-socket monitor.
pub fn hmp_line(data: &[u8]) {
    for telnet in [true, false] {
        let mut filter = TelnetFilter::default();
        let mut rl = Readline::new("(qemu) ");
        let mut out = Vec::new();
        rl.start("(qemu) ", false, &mut out);
        let (bytes, reply) = if telnet {
            filter.feed(data)
        } else {
            (data.to_vec(), Vec::new())
        };
        out.extend(reply);
        let complete = |line: &str| hmp::complete(line);
        for b in bytes {
            if let Some(Event::Line(line)) = rl.feed(b, &complete, &mut out) {
                let _ = hmp::split_args(&line);
                let password = line.trim() == "change vnc password";
                rl.start(
                    if password { "Password: " } else { "(qemu) " },
                    password,
                    &mut out,
                );
            }
        }
        let _ = escape_iac(&out);
    }
}

/// Valid inputs to start from (a corpus for cargo-fuzz too).
pub fn hmp_seeds() -> Vec<Vec<u8>> {
    vec![
        b"info status\r\ninfo pci\r\n".to_vec(),
        // Telnet negotiation (IAC DO/WILL, a subnegotiation), CR NUL, an escaped IAC.
        b"\xff\xfd\x01\xff\xfb\x03\xff\xfa\x18\x00xterm\xff\xf0info kvm\r\x00a\xff\xffb\r\n".to_vec(),
        // Editing: arrows, Home/End, Delete, Ctrl-a/e/k/u/w, history, Tab.
        b"info ver\x1b[D\x1b[D\x1b[3~\x1b[H\x1b[F\x01\x05\x0b\x15x\x17\r\x1b[A\x1b[B\x10\x0e\tinf\t\t\r"
            .to_vec(),
        b"change vnc password\rsecret\rsendkey \"ctrl-alt-delete\" 100\r".to_vec(),
        b"\x1b[1;5D\x1bOH\x1b[99999999999~\x7f\x08\r".to_vec(),
    ]
}

// ---------------------------------------------------------------------------------------
// QMP

/// Bytes from a QMP client: split into JSON texts by the framer (fed in two reads, as
/// they may arrive), each checked as a request envelope and its arguments against the
/// command table, and the reply serialised as the server would send it.
pub fn qmp_stream(data: &[u8]) {
    let mut framer = qmp::Framer::default();
    let mut frames = Vec::new();
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    framer.feed(&data[..cut], &mut frames);
    framer.feed(&data[cut..], &mut frames);
    framer.finish(&mut frames);
    for f in frames {
        let reply = match f {
            qmp::Frame::Error(e) => qmp::error_reply(None, &commands::CmdError::Generic(e)),
            qmp::Frame::Message(m) => match qmp::parse_request(&m) {
                Err((id, e)) => qmp::error_reply(id.as_ref(), &e),
                Ok(req) => match commands::check_args(&req.command, &req.args) {
                    Ok(()) => qmp::return_reply(req.id.as_ref(), serde_json::json!({})),
                    Err(e) => qmp::error_reply(req.id.as_ref(), &e),
                },
            },
        };
        let _ = qmp::to_wire(&reply, data.len().is_multiple_of(2));
    }
}

/// Valid inputs to start from (a corpus for cargo-fuzz too).
pub fn qmp_seeds() -> Vec<Vec<u8>> {
    vec![
        br#" {"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}"#.to_vec(),
        br#"{"execute":"query-status","id":1}{"execute":"stop"} {"exec-oob":"migrate-pause","id":"x"}"#
            .to_vec(),
        br#"
{"execute": "human-monitor-command", "arguments": {"command-line": "info pci", "cpu-index": 0}, "id": [1, {"a": null}]}
{"execute": "device_add", "arguments": {"driver": "e1000", "id": "n1", "bus": "pci.0", "addr": "0x5"}}
{"execute": "send-key", "arguments": {"keys": [{"type": "qcode", "data": "ctrl"}], "hold-time": 100}}
"#
        .to_vec(),
        br#"{"execute":"x","arguments":{"s":"\ud83d\ude00 \u00e9 \"q\" \\","n":-1.5e300,"t":true}}junk ["#.to_vec(),
        br#"{"execute": "migrate", "arguments": {"uri": "tcp:127.0.0.1:4444"}, "id": 18446744073709551615}"#
            .to_vec(),
    ]
}

// ---------------------------------------------------------------------------------------
// Migration stream (destination)

/// Device memory like the VGA's video RAM, with the same clamping of accesses.
struct FakeVram(std::sync::Mutex<Vec<u8>>);

impl DeviceRam for FakeVram {
    fn name(&self) -> String {
        "vga.vram".into()
    }
    fn len(&self) -> usize {
        self.0.lock().map_or(0, |v| v.len())
    }
    fn read(&self, offset: usize, buf: &mut [u8]) {
        let v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let end = offset.saturating_add(buf.len()).min(v.len());
        if offset < end {
            buf[..end - offset].copy_from_slice(&v[offset..end]);
        }
    }
    fn write(&self, offset: usize, data: &[u8]) {
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let end = offset.saturating_add(data.len()).min(v.len());
        if offset < end {
            v[offset..end].copy_from_slice(&data[..end - offset]);
        }
    }
}

fn machine() -> MachineDesc {
    MachineDesc {
        ram: vec![(0, 64 << 10)],
        blocks: vec![("vga.vram".into(), 64 << 10)],
        vcpus: 1,
        cpu: "qemu64".into(),
        devices: vec![("serial0".into(), "isa-serial".into())],
    }
}

fn frame(out: &mut Vec<u8>, tag: u8, payload: &[u8], good_crc: bool) {
    let mut head = vec![tag];
    head.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&head);
    h.update(payload);
    let crc = h.finalize() ^ u32::from(!good_crc);
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// An incoming migration (or `loadvm` state) into a 64 KiB machine with 64 KiB of video
/// memory. So that mutations get past the checksums, the input describes frames and the
/// target encodes them: byte 0 is flags (bit 0: the rest is the raw stream as is; bit 1:
/// the version is not this build's; bit 2: the machine description comes from the input
/// too; bit 3: a bad checksum on the last frame), then frames as tag byte (an index into
/// the frame tags, or itself when 0x80 or more), payload length (u16), payload.
pub fn migration_stream(data: &[u8]) {
    let _ = migrate_into(data);
}

/// [`migration_stream`]'s work: the outcome, and the RAM and video memory after it.
fn migrate_into(data: &[u8]) -> (Result<usize, String>, Vec<u8>, Vec<u8>) {
    let mut c = Cursor::new(data);
    let flags = c.u8();
    let stream = if flags & 1 != 0 {
        c.remaining().to_vec()
    } else {
        let mut s = MAGIC.to_vec();
        let version = if flags & 2 != 0 { c.u32() } else { VERSION };
        s.extend_from_slice(&version.to_le_bytes());
        if flags & 4 == 0 {
            let desc = serde_json::to_vec(&machine()).unwrap_or_default();
            frame(&mut s, b'M', &desc, true);
        }
        while !c.is_empty() {
            let t = c.u8();
            let tag = if t >= 0x80 {
                t
            } else {
                b"MRZVWSE"[usize::from(t) % 7]
            };
            let len = usize::from(c.u16());
            let payload = c.bytes(len);
            frame(&mut s, tag, payload, !(c.is_empty() && flags & 8 != 0));
        }
        s
    };
    let Ok(ram) = GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 64 << 10)]) else {
        return (Err("no RAM".into()), Vec::new(), Vec::new());
    };
    let vram = Arc::new(FakeVram(std::sync::Mutex::new(vec![0; 64 << 10])));
    let blocks: [Arc<dyn DeviceRam>; 1] = [vram.clone()];
    let res = receive(Incoming::from_bytes(stream), &ram, &blocks, &machine());
    let mut mem = vec![0u8; 64 << 10];
    let _ = vm_memory::Bytes::read_slice(&ram, &mut mem, vm_memory::GuestAddress(0));
    let video = vram.0.lock().map(|v| v.clone()).unwrap_or_default();
    (res.map(|l| l.sections.len()), mem, video)
}

/// Valid inputs to start from (a corpus for cargo-fuzz too).
pub fn migration_seeds() -> Vec<Vec<u8>> {
    let f = |tag: u8, payload: &[u8]| {
        let mut v = vec![tag];
        v.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        v.extend_from_slice(payload);
        v
    };
    let mut pages = 0x1000u64.to_le_bytes().to_vec();
    pages.extend((0..4096u32).map(|i| i as u8));
    let mut zeros = 0x2000u64.to_le_bytes().to_vec();
    zeros.extend_from_slice(&3u32.to_le_bytes());
    let mut vpages = 0u32.to_le_bytes().to_vec();
    vpages.extend_from_slice(&0x1000u64.to_le_bytes());
    vpages.extend(vec![7u8; 4096]);
    let mut vzeros = 0u32.to_le_bytes().to_vec();
    vzeros.extend_from_slice(&0x8000u64.to_le_bytes());
    vzeros.extend_from_slice(&2u32.to_le_bytes());
    let section = br#"{"id":"serial0","kind":"serial","version":1,"state":{"ier":1,"lcr":3}}"#;
    let whole = [
        vec![0],
        f(1, &pages),
        f(2, &zeros),
        f(3, &vpages),
        f(4, &vzeros),
        f(5, section),
        f(6, &[]),
    ]
    .concat();
    let mut desc_from_input = vec![4];
    desc_from_input.extend(f(0, &serde_json::to_vec(&machine()).unwrap_or_default()));
    desc_from_input.extend(f(6, &[]));
    let mut raw = vec![1];
    raw.extend_from_slice(MAGIC);
    raw.extend_from_slice(&VERSION.to_le_bytes());
    vec![whole, desc_from_input, raw, vec![2, 9, 0, 0, 0]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_fuzz::{fuzz, Target};

    /// Found by the qcow2 target: an image whose reference count table has no block for
    /// the header's cluster (here: the table lies past the end of a truncated file, or
    /// its first entry is 0) made imago's allocator recurse on the first write until the
    /// drive's thread overflowed its stack, aborting troupe. A writable open is refused
    /// with the reason; read-only, the image still reads.
    #[test]
    fn a_qcow2_image_without_a_refcount_block_for_its_header_is_refused_for_writing() {
        let mut truncated = qcow2_image(2, None);
        truncated.truncate(286);
        let mut zeroed = qcow2_image(3, None);
        zeroed[1024..1032].fill(0);
        for (img, aio) in [(truncated, Aio::Threads), (zeroed.clone(), Aio::IoUring)] {
            let path = scratch_path();
            std::fs::write(&path, &img).unwrap();
            let opts = BlockOptions {
                format: Some(Format::Qcow2),
                aio,
                ..BlockOptions::raw(path.clone())
            };
            let err = block::open(&Registry::new(), "q2regress", opts)
                .err()
                .map(|e| e.to_string());
            std::fs::remove_file(&path).unwrap();
            let err = err.expect("a writable open is refused");
            assert!(
                err.contains("the reference count table has no block"),
                "{err}"
            );
            assert!(err.contains("refcount_table_offset 0x400"), "{err}");
        }
        let path = scratch_path();
        std::fs::write(&path, &zeroed).unwrap();
        let opts = BlockOptions {
            read_only: true,
            format: Some(Format::Qcow2),
            ..BlockOptions::raw(path.clone())
        };
        let h = block::open(&Registry::new(), "q2regress", opts).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        h.submit(BlockJob {
            request: BlockRequest {
                id: 1,
                op: BlockOp::Read { offset: 0, len: 16 },
            },
            done: Box::new(move |c| {
                let _ = tx.send(c);
            }),
        });
        let got = rx.recv().unwrap().result.unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(got, (0..16).collect::<Vec<u8>>());
    }

    /// Found by the migration target: a device-memory frame whose offset plus length
    /// wraps past 2^64 passed the bounds check (a panic in debug builds; in release, a
    /// `W` frame of many pages then allocated their zeros before writing nothing).
    #[test]
    fn a_device_memory_frame_that_wraps_around_is_refused() {
        for (tag, payload) in [
            (
                b'W',
                [
                    &0u32.to_le_bytes()[..],
                    &(u64::MAX - 4095).to_le_bytes(),
                    &1u32.to_le_bytes(),
                ]
                .concat(),
            ),
            (
                b'V',
                [
                    &0u32.to_le_bytes()[..],
                    &(u64::MAX - 4095).to_le_bytes(),
                    &[7; 4096],
                ]
                .concat(),
            ),
        ] {
            let mut s = MAGIC.to_vec();
            s.extend_from_slice(&VERSION.to_le_bytes());
            frame(&mut s, b'M', &serde_json::to_vec(&machine()).unwrap(), true);
            frame(&mut s, tag, &payload, true);
            frame(&mut s, b'E', &[], true);
            let ram =
                GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 64 << 10)]).unwrap();
            let vram: Arc<dyn DeviceRam> =
                Arc::new(FakeVram(std::sync::Mutex::new(vec![0; 64 << 10])));
            let err = receive(Incoming::from_bytes(s), &ram, &[vram], &machine()).err();
            assert_eq!(
                err.as_deref(),
                Some("4096 bytes at 0xfffffffffffff000 lie outside device memory 'vga.vram'"),
                "frame {}",
                tag as char
            );
        }
    }

    /// The first seed is a whole, valid stream: pages land in RAM and video memory, the
    /// device section is collected.
    #[test]
    fn the_migration_seed_is_a_stream_the_destination_loads() {
        let (res, mem, video) = migrate_into(&migration_seeds()[0]);
        assert_eq!(res, Ok(1));
        assert_eq!(mem[0x1000..0x1010], (0..16).collect::<Vec<u8>>()[..]);
        assert_eq!(video[0x1000..0x2000], [7; 4096]);
    }

    /// The qcow2 seeds open through the block layer, writable and read-only, on both
    /// engines, and read back their data cluster; the one naming a missing backing file
    /// is refused for it.
    #[test]
    fn the_qcow2_seeds_open_and_read() {
        for (i, img) in qcow2_seeds().iter().enumerate() {
            let path = scratch_path();
            std::fs::write(&path, img).unwrap();
            let opts = BlockOptions {
                read_only: i >= 3,
                format: Some(Format::Qcow2),
                aio: if i % 2 == 0 {
                    Aio::IoUring
                } else {
                    Aio::Threads
                },
                ..BlockOptions::raw(path.clone())
            };
            let opened = block::open(&Registry::new(), "q2seed", opts);
            let got = opened.map(|h| {
                let (tx, rx) = std::sync::mpsc::channel();
                h.submit(BlockJob {
                    request: BlockRequest {
                        id: 1,
                        op: BlockOp::Read { offset: 0, len: 16 },
                    },
                    done: Box::new(move |c| {
                        let _ = tx.send(c);
                    }),
                });
                rx.recv().unwrap().result
            });
            std::fs::remove_file(&path).unwrap();
            match i % 3 {
                2 => assert!(got.is_err(), "seed {i} opened"),
                _ => assert_eq!(
                    got.unwrap().unwrap(),
                    (0..16).collect::<Vec<u8>>(),
                    "seed {i}"
                ),
            }
        }
    }

    #[test]
    fn fuzz_qcow2_through_the_block_layer() {
        fuzz(Target {
            name: "qcow2",
            run: qcow2,
            seeds: qcow2_seeds(),
            dict: vec![
                b"QFI\xfb".to_vec(),
                vec![0, 0, 0, 3],
                vec![0, 0, 0, 9],
                vec![0, 0, 0, 16],
                vec![0x80, 0, 0, 0, 0, 0, 0x0a, 0],
                vec![0x40, 0, 0, 0, 0, 0, 0, 0],
                vec![0xe2, 0x79, 0x2a, 0xca],
                vec![0x68, 0x53, 0x7f, 0x38],
            ],
            max_len: 8192,
            threads: vec!["fuzzq2"],
        });
    }

    #[test]
    fn fuzz_hmp_telnet_readline() {
        fuzz(Target {
            name: "hmp",
            run: hmp_line,
            seeds: hmp_seeds(),
            dict: vec![
                b"\x1b[".to_vec(),
                b"\xff\xfa".to_vec(),
                b"\xff\xf0".to_vec(),
                b"\r\n".to_vec(),
                b"\t".to_vec(),
                b"\"".to_vec(),
                b"\\".to_vec(),
                "é".as_bytes().to_vec(),
                b"info ".to_vec(),
            ],
            max_len: 4096,
            threads: vec![],
        });
    }

    #[test]
    fn fuzz_qmp_framing_and_json() {
        fuzz(Target {
            name: "qmp",
            run: qmp_stream,
            seeds: qmp_seeds(),
            dict: [
                "{",
                "}",
                "[",
                "]",
                "\"",
                "\\u",
                "\\ud800",
                ":",
                ",",
                "\"execute\"",
                "\"arguments\"",
                "\"id\"",
                "\"exec-oob\"",
                "null",
                "1e999",
                "-0",
                "\"qmp_capabilities\"",
            ]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect(),
            max_len: 8192,
            threads: vec![],
        });
    }

    #[test]
    fn fuzz_migration_stream() {
        fuzz(Target {
            name: "migration",
            run: migration_stream,
            seeds: migration_seeds(),
            dict: vec![
                vec![0xff; 8],
                vec![0, 0x10, 0, 0, 0, 0, 0, 0],
                vec![0xff, 0xff, 0xff, 0xff],
                b"\"state\"".to_vec(),
            ],
            max_len: 16384,
            threads: vec![],
        });
    }
}
