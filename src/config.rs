//! The typed, validated description of one VM: what the command line asked for.
//!
//! `cli::parse` turns QEMU-syntax arguments into a [`VmConfig`]; everything after that
//! (VM assembly, the supervisor, the actors) reads only this. A value in here has already
//! been checked: sizes are in range, files named exist where that matters, ids are unique,
//! every reference (`drive=`, `netdev=`, `chardev=`) names something that exists, and QEMU's
//! defaults have been filled in (default serial port, NIC, CD-ROM drive, MAC addresses, PCI
//! slots), so the consumer never has to re-derive them.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

/// Everything needed to build and run one VM.
#[derive(Debug, Clone, PartialEq)]
pub struct VmConfig {
    /// `-name NAME` (QEMU's `guest=`): shown by `info name`, the VNC desktop name and
    /// `query-name`.
    pub name: Option<String>,
    /// `-name ...,process=PNAME`: the host process name to set (prctl `PR_SET_NAME`).
    pub process_name: Option<String>,
    /// `-name ...,debug-threads=on`: vCPU threads get QEMU's names (`CPU 0/KVM`, ...) in
    /// place of troupe's `troupe-vcpu0` (every other thread already has a descriptive
    /// `troupe-<actor>` name whatever this says).
    pub debug_threads: bool,
    /// `-uuid`, normalised to lower-case `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    pub uuid: Option<String>,
    /// `-m`: guest RAM in bytes (always a multiple of 1 MiB, > 0, addressable by the host).
    pub memory: u64,
    /// `-m ...,slots=N`: DIMM slots for memory hotplug (0: none).
    pub memory_slots: u32,
    /// `-m ...,maxmem=MAX`: the most memory with DIMMs plugged (`memory` when not given;
    /// above it, the device-memory region exists).
    pub maxmem: u64,
    /// `-object memory-backend-*` that a `-device pc-dimm` maps (not the guest's RAM).
    pub dimm_backends: Vec<crate::cli::object::MemoryBackend>,
    /// `-device pc-dimm,...` as written (`key=value` form), plugged at start.
    pub dimms: Vec<String>,
    /// `-smp`, completed like QEMU.
    pub smp: SmpConfig,
    /// `-cpu MODEL[,+feat,-feat]`.
    pub cpu: CpuConfig,
    /// `-M/-machine` and `-accel` (only `pc`/`pc-i440fx-*` with KVM).
    pub machine: MachineConfig,
    /// How the guest starts: firmware (SeaBIOS) or direct kernel boot.
    pub boot: BootConfig,
    /// `-boot order=,once=,menu=,splash-time=,strict=,reboot-timeout=`.
    pub boot_order: BootOrder,
    /// `-vcpu-pin auto|none|0=2,1=3-4` (troupe's own; default `auto`).
    pub vcpu_pin: VcpuPin,
    /// Serial ports COM1..COM4 in order (`-serial`, or the default). Never holds
    /// [`CharBackend::None`]: `-serial none` creates no port at all.
    pub serials: Vec<CharBackend>,
    /// All `-chardev` definitions (and the chardevs created for `mon:BACKEND` and
    /// `guestfwd=...-BACKEND`), in creation order.
    pub chardevs: Vec<Chardev>,
    /// Monitors (`-monitor`, `-qmp`, `-mon`, `mon:` serials), including the `-nographic`
    /// default.
    pub monitors: Vec<MonitorConfig>,
    /// `-vnc` / `-display vnc=` (None: no VNC server).
    pub vnc: Option<VncConfig>,
    /// `-display none|vnc=...`, `-nographic`.
    pub display: DisplayKind,
    /// `-nographic` was given (serial and monitor multiplexed on stdio unless redirected).
    pub nographic: bool,
    /// `-vga std|none` (`none` also with `-nodefaults` and no `-vga`).
    pub vga: VgaKind,
    /// `-k LAYOUT` keymap for VNC keysym translation (default `en-us`).
    pub keymap: String,
    /// Drives from `-drive`, `-hda..-hdd`, `-cdrom`, `-blockdev`, the positional image and
    /// QEMU's default empty CD-ROM (`ide1-cd0`). `if=ide` drives are attached to the PIIX IDE
    /// controller at their `index`; `if=virtio` and `if=none` drives are attached by the
    /// `DeviceKind::VirtioBlk` entry in [`VmConfig::devices`] that names them.
    pub drives: Vec<DriveConfig>,
    /// `-snapshot`: every `-drive`-family drive got `snapshot=on`.
    pub snapshot: bool,
    /// `-netdev`, `-net TYPE`, `-nic` backends (and QEMU's default `user` backend).
    pub netdevs: Vec<NetdevConfig>,
    /// Devices in the order QEMU creates them, which is also the order PCI slots were
    /// given out: NICs from `-nic`, then NICs from `-net nic` (or QEMU's default NIC), then
    /// `-device` entries in command-line order, then a `virtio-blk-pci` for each
    /// `-drive if=virtio`.
    pub devices: Vec<DeviceConfig>,
    /// `-S`: start with the vCPUs paused.
    pub start_paused: bool,
    /// `-no-reboot`: a guest reset exits the process instead.
    pub no_reboot: bool,
    /// `-no-shutdown`: a guest power-off pauses the VM instead of exiting.
    pub no_shutdown: bool,
    /// `-daemonize`.
    pub daemonize: bool,
    /// `-pidfile PATH`.
    pub pidfile: Option<PathBuf>,
    /// `-D LOGFILE`.
    pub log_file: Option<PathBuf>,
    /// `-d ITEMS` (accepted log items, mapped onto tracing filters): any of
    /// `guest_errors`, `unimp`, `cpu_reset`.
    pub log_items: Vec<String>,
    /// `-incoming URI` (live migration target): `tcp:[HOST]:PORT`, `unix:PATH`, `exec:CMD`,
    /// `fd:N`, `file:PATH` or `defer`.
    pub incoming: Option<String>,
    /// `-loadvm TAG`: start from the snapshot TAG of the drives (as `loadvm` would).
    pub loadvm: Option<String>,
    /// `-dump-acpi DIR`: troupe's own option, writes the ACPI tables it built, then runs on.
    pub dump_acpi: Option<PathBuf>,
    /// `-sandbox` (filters on unless `-sandbox off`).
    pub sandbox: actors::sandbox::Policy,
    /// `-runas USER[:GROUP]` / `-run-with user=`: the credentials dropped to once the VM is
    /// built.
    pub runas: Option<crate::cli::sandbox::RunAs>,
    /// `-chroot DIR` / `-run-with chroot=`: the root entered once the VM is built.
    pub chroot: Option<PathBuf>,
    /// `-rtc base=utc|localtime|DATE,clock=host`.
    pub rtc: RtcConfig,
    /// `-msg timestamp=on`: messages on stderr start with an ISO 8601 UTC timestamp.
    pub msg_timestamp: bool,
    /// `id=` of a `-device VGA` (the VGA is `/machine/peripheral/ID` then).
    pub vga_id: Option<String>,
    /// `id=` of each COM port made by `-device isa-serial`, by index (`serials` order).
    pub serial_ids: Vec<Option<String>>,
    /// What QEMU would print as start-up warnings (a netdev with no NIC, a NIC with no
    /// backend, ...). The caller prints each as `troupe: warning: <text>`.
    pub warnings: Vec<String>,
}

/// `-smp [cpus=]n[,sockets=s][,dies=1][,cores=c][,threads=t][,maxcpus=m]`, completed the
/// way QEMU 7.2 completes missing values: for `pc-i440fx-6.2` and later (and `pc`) cores
/// are preferred over sockets, for `pc-i440fx-6.1` and older sockets over cores; threads
/// are computed last. Invariants: `sockets * cores * threads == maxcpus`,
/// `1 <= cpus <= maxcpus <= 255`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmpConfig {
    /// vCPUs present at start.
    pub cpus: u32,
    /// CPU packages.
    pub sockets: u32,
    /// Cores per socket (troupe supports only one die per socket).
    pub cores: u32,
    /// Hardware threads per core.
    pub threads: u32,
    /// sockets * cores * threads: the most vCPUs there can ever be (hotplug limit).
    pub maxcpus: u32,
}

/// `-cpu MODEL[,+feat|-feat|feat=on|off|prop=value]...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuConfig {
    /// The model as the user named it (`qemu64`, `Haswell-noTSX`, `EPYC-Rome-v2`, `host`);
    /// `vm::cpuid` resolves aliases and versions. The CLI accepts only names it knows.
    pub model: String,
    /// `feat=on|off` and bare `feat` settings in command-line order, names as QEMU spells
    /// them in `-cpu help` (`_` spellings normalised to `-`, `sse4_1` to `sse4.1`).
    pub features: Vec<(String, bool)>,
    /// `+feat` names: applied after `features`, as QEMU does.
    pub plus: Vec<String>,
    /// `-feat` names: applied last (they win over `+feat`), as QEMU does.
    pub minus: Vec<String>,
    /// The non-flag properties.
    pub props: CpuProps,
}

/// `-cpu` properties that are not feature flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuProps {
    pub model_id: Option<String>,
    /// 12 ASCII characters.
    pub vendor: Option<String>,
    pub family: Option<u32>,
    pub model: Option<u32>,
    pub stepping: Option<u32>,
    pub level: Option<u32>,
    pub xlevel: Option<u32>,
    /// Warn about features the host's KVM cannot give (QEMU's default: on).
    pub check: bool,
    /// Refuse to start when a requested feature is unavailable.
    pub enforce: bool,
}

impl Default for CpuProps {
    fn default() -> Self {
        Self {
            model_id: None,
            vendor: None,
            family: None,
            model: None,
            stepping: None,
            level: None,
            xlevel: None,
            check: true,
            enforce: false,
        }
    }
}

impl CpuConfig {
    /// `-cpu NAME` with no options.
    pub fn model(name: &str) -> Self {
        Self {
            model: name.to_string(),
            features: Vec::new(),
            plus: Vec::new(),
            minus: Vec::new(),
            props: CpuProps::default(),
        }
    }
}

impl Default for CpuConfig {
    /// QEMU's default CPU: `qemu64`.
    fn default() -> Self {
        Self::model("qemu64")
    }
}

/// `-M/-machine TYPE[,accel=kvm]...` and `-accel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineConfig {
    /// The canonical machine type: `pc` resolves to `pc-i440fx-7.2`; explicit
    /// `pc-i440fx-X.Y` versions are kept as given.
    pub kind: String,
    /// The accelerator (always KVM: troupe has no emulator).
    pub accel: Accel,
    /// `dump-guest-core=` (default on): guest RAM in the host's core dumps of troupe.
    pub dump_guest_core: bool,
    /// Where guest RAM comes from and how the host treats it (`mem-merge=`, `-mem-path`,
    /// `-mem-prealloc`, `-machine memory-backend=`, `-overcommit mem-lock=`).
    pub ram: RamBacking,
}

/// How the host backs guest RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamBacking {
    /// What the memory is.
    pub source: RamSource,
    /// `share=on`: a shared mapping (the file sees the guest's writes); default private.
    pub share: bool,
    /// `-mem-prealloc`/`prealloc=on`: every page is allocated before the guest starts, so
    /// running out (of huge pages) fails at start.
    pub prealloc: bool,
    /// `-machine mem-merge=`/`merge=` (default on): `MADV_MERGEABLE`, KSM may merge
    /// identical pages.
    pub merge: bool,
    /// `-overcommit mem-lock=on`: `mlockall` before the guest runs.
    pub mem_lock: bool,
}

impl Default for RamBacking {
    fn default() -> Self {
        Self {
            source: RamSource::Anonymous,
            share: false,
            prealloc: false,
            merge: true,
            mem_lock: false,
        }
    }
}

/// What guest RAM is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RamSource {
    /// Anonymous memory (the default, `memory-backend-ram`).
    Anonymous,
    /// `-mem-path PATH` / `memory-backend-file,mem-path=PATH`: a file in PATH when it is a
    /// directory (created and unlinked at once, as QEMU), else the file PATH itself.
    /// hugetlbfs paths give huge pages.
    File(PathBuf),
    /// `memory-backend-memfd`: an anonymous file (`memfd_create`), with
    /// `hugetlb=on` huge pages of `hugetlbsize` bytes (0: the host's default size).
    Memfd {
        /// `hugetlb=on`.
        hugetlb: bool,
        /// `hugetlbsize=` in bytes (0: default).
        hugetlbsize: u64,
    },
}

/// An accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Linux KVM.
    Kvm,
}

/// How the guest's first instruction is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootConfig {
    /// SeaBIOS (or `-bios PATH`) and then whatever `-boot order=` finds. The file exists,
    /// is readable, non-empty, a multiple of 64 KiB and at most 16 MiB.
    Firmware {
        /// The firmware image, mapped just below 4 GiB (and its last 128 KiB below 1 MiB).
        bios: PathBuf,
    },
    /// `-kernel` with optional `-initrd` and `-append`, loaded by troupe itself with no
    /// firmware (so `-bios` together with `-kernel` is refused). The loader detects
    /// bzImage, PVH ELF or multiboot from the file itself.
    Direct {
        /// The kernel image (readable).
        kernel: PathBuf,
        /// `-initrd` (readable).
        initrd: Option<PathBuf>,
        /// `-append` (empty when not given).
        cmdline: String,
    },
}

/// `-boot` options. Letters: a/b floppy, c first hard disk, d CD-ROM, n network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootOrder {
    /// Boot device letters in priority order, each at most once; QEMU's default is "cad".
    pub order: String,
    /// `once=LETTERS`: the order for the first boot only (then `order` after a reset).
    pub once: Option<String>,
    /// `menu=on`: let SeaBIOS show its boot menu (F12).
    pub menu: bool,
    /// `splash-time=MS`: how long SeaBIOS waits in the boot menu prompt (0..=65535).
    pub splash_time_ms: Option<u32>,
    /// `strict=on`: don't fall back to devices without a bootindex.
    pub strict: bool,
    /// `reboot-timeout=MS`: retry booting after this long when nothing booted;
    /// -1 = never retry (QEMU default). Range -1..=65535.
    pub reboot_timeout_ms: i64,
}

/// Where vCPU threads may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuPin {
    /// vCPU i on allowed core (i mod n), cores taken from the process's affinity mask in
    /// ascending order. The default.
    Auto,
    /// Leave scheduling to the host.
    None,
    /// Explicit: (vcpu index, host cores), sorted by vcpu index; every index is < `smp.cpus`,
    /// every core is in the process's affinity mask. vCPUs not named are left unpinned.
    Explicit(Vec<(u32, Vec<usize>)>),
}

/// A character device backend: where a serial port's (or monitor's) bytes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CharBackend {
    /// Discard output, never any input (`null`).
    Null,
    /// No device at all (`none`). The CLI never puts this in `serials` or `monitors`
    /// (`-serial none`/`-monitor none` simply create nothing); kept for callers that need
    /// to say "disconnected".
    None,
    /// The process's stdin/stdout (at most one stdio user per process; never with
    /// `-daemonize`).
    Stdio,
    /// Output written to a file, truncated when opened (`file:PATH`, `-chardev file,path=`).
    File(PathBuf),
    /// A new pseudo-terminal; its path is printed at start (`char device redirected to ...`).
    Pty,
    /// TCP socket, server or client; `telnet` adds the telnet negotiation.
    Tcp {
        /// Address to listen on (server; empty host = all addresses) or connect to.
        addr: SocketAddrSpec,
        /// Listen (`server=on`) instead of connecting.
        server: bool,
        /// Server only: block start-up until the first client connects (QEMU default
        /// `wait=on`); always false for clients.
        wait: bool,
        /// Speak telnet (RFC 854 negotiation, `telnet:` or `telnet=on`).
        telnet: bool,
        /// Set TCP_NODELAY (`nodelay`, `delay=off`).
        nodelay: bool,
    },
    /// Unix socket.
    Unix {
        /// Socket path.
        path: PathBuf,
        /// Listen instead of connecting.
        server: bool,
        /// Server only: block start-up until the first client connects.
        wait: bool,
    },
    /// `-chardev socket,fd=N,server=on`: a listening socket (unix or TCP) created by the
    /// process that started troupe (libvirt) and inherited as descriptor `N`.
    ListenerFd {
        /// The inherited descriptor.
        fd: i32,
        /// Block start-up until the first client connects.
        wait: bool,
    },
    /// `mon:stdio` / `-nographic`: the serial port multiplexed with a monitor on stdio
    /// (Ctrl-a c switches). The matching monitor has this backend too.
    MuxStdio,
    /// `chardev:ID` — a named `-chardev` (exists in `chardevs`).
    Named(String),
    /// A text console on the display (`vc`, `-chardev vc`; QEMU's default serial port and
    /// monitor when there is a display).
    Vc(VcSpec),
}

/// A text console: its size, and its place among the consoles (Ctrl+Alt+1 is the guest's
/// screen, then text consoles in the order QEMU creates them: `-chardev`s, monitors,
/// serial ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcSpec {
    /// 0 for the first text console; set once the command line is complete.
    pub index: usize,
    /// Columns (8 pixels each).
    pub cols: u32,
    /// Rows (16 pixels each).
    pub rows: u32,
}

/// A host:port as written (host may be empty = all addresses for servers, or a name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketAddrSpec {
    /// Host name or address literal (IPv6 without brackets), possibly empty.
    pub host: String,
    /// TCP port (0 = any free port, servers only).
    pub port: u16,
}

impl SocketAddrSpec {
    /// Resolve for binding/connecting. Empty host means 0.0.0.0.
    pub fn resolve(&self) -> std::io::Result<SocketAddr> {
        use std::net::ToSocketAddrs;
        let host = if self.host.is_empty() {
            "0.0.0.0"
        } else {
            &self.host
        };
        (host, self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("cannot resolve {host}")))
    }
}

/// `-chardev BACKEND,id=ID,...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chardev {
    /// `id=` (unique among chardevs). Chardevs troupe creates itself for `mon:BACKEND` are
    /// named `serialN` like QEMU's; those for `guestfwd=` `#guestfwdN`.
    pub id: String,
    /// Where the bytes go (never `Named`, `MuxStdio` or `None`).
    pub backend: CharBackend,
    /// `mux=on`: shared between several frontends (serial port and monitor).
    pub mux: bool,
    /// stdio only: Ctrl-C etc. raise signals (`signal=on`, the default).
    pub signal: bool,
    /// `logfile=PATH`: also copy all output there.
    pub logfile: Option<PathBuf>,
}

/// One monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorConfig {
    /// HMP or QMP.
    pub mode: MonitorMode,
    /// Where it talks.
    pub backend: CharBackend,
    /// `pretty=on` / `-qmp-pretty`: indent QMP replies.
    pub pretty: bool,
}

/// The monitor protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonitorMode {
    /// HMP (`mode=readline`, `-monitor`).
    Readline,
    /// QMP (`mode=control`, `-qmp`).
    Control,
}

/// `-vnc [HOST]:N[,...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VncConfig {
    /// Address to listen on; port already includes 5900 + display.
    pub listen: SocketAddrSpec,
    /// The display number as written (`:1` → 1).
    pub display: u16,
    /// `password=on`: VNC authentication; the password is set later by the monitor.
    pub password: bool,
    /// `share=`: what a new client's shared flag means.
    pub share: VncShare,
    /// `websocket=PORT` or `websocket=on` (= 5700 + display): RFB over WebSocket.
    pub websocket: Option<u16>,
    /// `to=N`: try displays up to N (ports up to 5900+N) if the port is busy.
    pub to: Option<u16>,
    /// `lossy=on`: allow lossy encodings (Tight gradient/JPEG).
    pub lossy: bool,
    /// `audiodev=ID`: the `-audiodev` whose sound VNC clients could ask for (QEMU's audio
    /// extension). troupe has no sound card and allows only `driver=none` audiodevs, so
    /// there is never audio to send: the id is checked and clients are not offered audio.
    pub audiodev: Option<String>,
    /// QEMU's default display (no `-display`, `-vnc` or `-nographic`): announced on stderr
    /// as `VNC server running on HOST:PORT`.
    pub announce: bool,
    /// `tls-creds=ID`: the id, then (once the CLI resolved it) the credentials.
    pub tls_creds: Option<String>,
    pub tls: Option<TlsCreds>,
}

/// A `-object tls-creds-x509,endpoint=server`: `ca-cert.pem`, `server-cert.pem` and
/// `server-key.pem` in `dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsCreds {
    pub id: String,
    pub dir: std::path::PathBuf,
    /// `verify-peer=` (QEMU's default: on): clients must show a certificate the CA signed.
    pub verify_peer: bool,
}

/// `-vnc ...,share=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VncShare {
    /// The default: a client asking for exclusive access disconnects the others.
    AllowExclusive,
    /// Every client is shared, whatever it asks.
    ForceShared,
    /// The client's shared flag is ignored (everyone shares).
    Ignore,
}

/// What kind of display the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisplayKind {
    /// No display (`-display none`, `-nographic`); `-vnc` may still be given.
    None,
    /// `-display vnc=...`.
    Vnc,
    /// `-display curses`, `-curses`: the consoles as text in troupe's terminal.
    Curses,
    /// Nothing said: as QEMU built without a GUI, a VNC server on localhost display 0 (or
    /// the next free one) unless `-vnc` is given.
    Default,
}

/// `-vga`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VgaKind {
    /// Bochs/QEMU standard VGA at PCI slot 2 (the default).
    Std,
    /// No VGA device.
    None,
}

/// `-rtc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtcConfig {
    /// `base=utc` (default) or `localtime`, or a fixed start `2006-06-17T16:01:21`.
    pub base: RtcBase,
}

/// Where the CMOS clock starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcBase {
    /// Host time in UTC.
    Utc,
    /// Host time in the host's local time zone.
    LocalTime,
    /// Seconds since the Unix epoch at VM start (the date was read as UTC).
    Fixed(i64),
}

/// One drive (`-drive`, `-hda`, `-cdrom`, `-blockdev`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveConfig {
    /// `id=` (or `-blockdev node-name=`); generated like QEMU when absent (`ide0-hd0`,
    /// `ide1-cd0`, `virtio0`, `none0`, ...). Unique among drives.
    pub id: String,
    /// None = an empty CD-ROM drive (`-drive if=ide,media=cdrom` with no file). The file
    /// could be opened for reading (and for writing when the drive is writable).
    pub file: Option<PathBuf>,
    /// Which controller it hangs off.
    pub interface: DriveInterface,
    /// Disk or CD-ROM (CD-ROMs are IDE only and always read-only).
    pub media: Media,
    /// None = probe (raw guessed ⇒ warning, and writes to sector 0 are restricted).
    pub format: Option<ImageFormat>,
    /// IDE: 0..=3 = hda..hdd (bus * 2 + unit). `-drive if=virtio|none`: the unit number
    /// used in the generated id. Always set, except None for `-blockdev` drives.
    pub index: Option<u32>,
    /// `cache=`.
    pub cache: CacheMode,
    /// `aio=`.
    pub aio: AioMode,
    /// `readonly=on` (and every CD-ROM).
    pub readonly: bool,
    /// `snapshot=on` or `-snapshot`: writes go to a temporary overlay, the image is untouched.
    pub snapshot: bool,
    /// `discard=unmap`: pass guest discards (TRIM) to the image.
    pub discard: bool,
    /// `serial=` (virtio GET_ID / IDE IDENTIFY); a device's `serial=` overrides it.
    pub serial: Option<String>,
    /// `bootindex=` given on a `-device` using this drive.
    pub bootindex: Option<u32>,
    /// A `-blockdev` drive's node names: the top node (also the drive's id) and its file
    /// node, if named. `query-named-block-nodes` lists them (libvirt finds its disks by
    /// them); other drives' nodes get QEMU-style generated names.
    pub node_names: Option<(String, Option<String>)>,
    /// `id=` of the `-device ide-cd|ide-hd` that put this drive on the IDE controller
    /// (its `qdev` name in `query-block`).
    pub device_id: Option<String>,
}

/// `-drive if=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveInterface {
    /// The PIIX IDE controller (default).
    Ide,
    /// A virtio-blk-pci device of its own (present in `devices`).
    Virtio,
    /// `if=none`: attached by a `-device ...,drive=ID` (or unused).
    None,
}

/// `-drive media=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    /// A hard disk.
    Disk,
    /// An ATAPI CD-ROM.
    Cdrom,
}

/// Image file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// Plain bytes.
    Raw,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
}

/// `cache=` (or `-blockdev cache.direct=,cache.no-flush=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// O_DIRECT, flushes honoured (QEMU `none`).
    None,
    /// Host page cache, flushes honoured (QEMU default).
    Writeback,
    /// Every write is synced.
    Writethrough,
    /// O_DIRECT and every write synced.
    DirectSync,
    /// Flushes ignored.
    Unsafe,
}

/// `aio=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AioMode {
    /// A thread pool (QEMU's default).
    Threads,
    /// io_uring (troupe's default, for raw images; qcow2 and `snapshot=on` use the
    /// thread pool).
    IoUring,
    /// Linux AIO: served by io_uring here (same semantics for O_DIRECT). Only with
    /// `cache=none|directsync`, as in QEMU.
    Native,
}

/// One network backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetdevConfig {
    /// `id=`; unique among netdevs. Backends created by `-nic` are `__org.qemu.nicN`, by
    /// `-net` (and QEMU's default network) `#netN`: names a user can't write.
    pub id: String,
    /// The backend and its settings.
    pub kind: NetdevKind,
}

/// Network backend kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetdevKind {
    /// User-mode networking (slirp).
    User(UserNetConfig),
    /// A host tap interface.
    Tap {
        /// `ifname=`; None = let the kernel pick `tapN`.
        ifname: Option<String>,
        /// `fd=`: an already open tap fd inherited from the caller (then no ifname/scripts).
        fd: Option<i32>,
        /// `script=`: run with the interface name after creating it. QEMU's default
        /// `/etc/qemu-ifup` is filled in; `script=no` (or empty) gives None.
        script: Option<PathBuf>,
        /// `downscript=`: run before closing; default `/etc/qemu-ifdown`, `no` gives None.
        downscript: Option<PathBuf>,
        /// `vnet_hdr=on|off`; None = use it when the kernel supports it.
        vnet_hdr: Option<bool>,
        /// `queues=` (multiqueue tap), >= 1.
        queues: u32,
    },
    /// A tap created by the setuid bridge helper and added to a bridge.
    Bridge {
        /// `br=` (default `br0`).
        br: String,
        /// `helper=` (default `/usr/lib/qemu/qemu-bridge-helper`, filled in).
        helper: PathBuf,
    },
    /// Ethernet frames over a TCP connection to another VMM (QEMU's `-netdev socket`).
    /// Exactly one of the two is set.
    Socket {
        /// `listen=[HOST]:PORT`.
        listen: Option<SocketAddrSpec>,
        /// `connect=HOST:PORT`.
        connect: Option<SocketAddrSpec>,
    },
    /// A port on hub `hubid`: every frame is repeated to the other ports of that hub.
    Hubport {
        /// The hub number.
        hubid: u32,
    },
}

/// virtio-net-pci's `mq=on|off` (default off, as QEMU: one queue pair whatever the tap
/// has) and `vectors=` (MSI-X vectors; default two per queue pair of the backend, plus
/// two).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NicQueues {
    pub mq: bool,
    pub vectors: Option<u16>,
}

/// User-mode IPv6 (QEMU's defaults: fec0::/64, the host at ::2, DNS at ::3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIpv6 {
    /// `ipv6-net=PREFIX/LEN` (LEN 0..=126).
    pub net: (std::net::Ipv6Addr, u8),
    /// `ipv6-host=`: the host/router address (default prefix + 2).
    pub host: std::net::Ipv6Addr,
    /// `ipv6-dns=`: the DNS forwarder (default prefix + 3).
    pub dns: std::net::Ipv6Addr,
}

impl Default for UserIpv6 {
    fn default() -> Self {
        let at = |last: u16| std::net::Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, last);
        Self {
            net: (at(0), 64),
            host: at(2),
            dns: at(3),
        }
    }
}

/// `-netdev user,...` with QEMU's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNetConfig {
    /// `net=10.0.2.0/24`: (network address with host bits cleared, prefix length 4..=32).
    pub net: (Ipv4Addr, u8),
    /// `host=`: the gateway/host address in the guest's network (default net + 2).
    pub host: Ipv4Addr,
    /// `dhcpstart=`: first address handed out by DHCP (default net + 15).
    pub dhcpstart: Ipv4Addr,
    /// `dns=`: the built-in DNS forwarder's address (default net + 3).
    pub dns: Ipv4Addr,
    /// `ipv6=on` (the default): the IPv6 side, with `ipv6-net=`, `ipv6-host=`, `ipv6-dns=`.
    pub ipv6: Option<UserIpv6>,
    /// `hostname=`: sent to the guest by DHCP.
    pub hostname: Option<String>,
    /// `domainname=`: sent to the guest by DHCP.
    pub domainname: Option<String>,
    /// `restrict=on`: the guest can't reach the host network (only forwards work).
    pub restrict: bool,
    /// `tftp=DIR`: serve this directory over TFTP.
    pub tftp: Option<PathBuf>,
    /// `bootfile=`: the DHCP boot file name (for PXE).
    pub bootfile: Option<String>,
    /// `hostfwd=` rules, in order.
    pub hostfwd: Vec<HostFwd>,
    /// `guestfwd=tcp:[IP]:PORT-chardev:ID` (or `-BACKEND`, which got its own chardev):
    /// (guest ip, guest port, chardev id). An omitted IP is filled in as net + 4, slirp's
    /// default.
    pub guestfwd: Vec<(Ipv4Addr, u16, String)>,
}

/// `hostfwd=tcp|udp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFwd {
    /// UDP instead of TCP.
    pub udp: bool,
    /// Host address to bind (0.0.0.0 = all).
    pub host_addr: Ipv4Addr,
    /// Host port (0 = any free port).
    pub host_port: u16,
    /// Unspecified (0.0.0.0) = the first DHCP address.
    pub guest_addr: Ipv4Addr,
    /// Guest port (1..=65535).
    pub guest_port: u16,
}

/// `-device DRIVER,prop=value,...`, typed per driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// `id=` (unique among devices).
    pub id: Option<String>,
    /// What it is.
    pub kind: DeviceKind,
    /// PCI devices: (slot, function) on bus 0, always set — `addr=` when given, else the
    /// first free slot in creation order like QEMU (0 host bridge, 1 PIIX, 2 VGA are taken).
    /// None for devices that are not on PCI (`isa-debug-exit`, `virtconsole`).
    pub addr: Option<(u8, u8)>,
}

/// The device models `-device` knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceKind {
    /// QEMU's `isa-debug-exit`: a write of V to `iobase` exits with status (V << 1) | 1.
    IsaDebugExit {
        /// First I/O port (default 0x501).
        iobase: u16,
        /// Number of ports (default 2); `iobase + iosize <= 0x10000`.
        iosize: u16,
    },
    /// `virtio-blk-pci`.
    VirtioBlk {
        /// The drive id it serves (an `if=none`/`if=virtio` drive or a `-blockdev` node).
        drive: String,
        /// `num-queues=` (default: the number of vCPUs, as QEMU 7.2), 1..=1024.
        num_queues: u16,
        /// `serial=` (else the drive's).
        serial: Option<String>,
        /// `bootindex=`.
        bootindex: Option<u32>,
    },
    /// A network card.
    Nic {
        /// Which card.
        model: NicModel,
        /// The backend (`netdev=`), None = not connected (cable unplugged).
        netdev: Option<String>,
        /// `mac=`, or the next free `52:54:00:12:34:XX` like QEMU.
        mac: [u8; 6],
        /// None = the model's default ROM; Some("") = no ROM.
        romfile: Option<String>,
        /// `bootindex=`.
        bootindex: Option<u32>,
        /// virtio-net's `mq=` and `vectors=`.
        queues: NicQueues,
    },
    /// `virtio-rng-pci` (entropy from the host's getrandom).
    VirtioRng,
    /// `virtio-serial-pci`: a controller for `virtconsole` ports.
    VirtioSerial,
    /// `virtconsole`: a console port on a virtio-serial controller.
    VirtConsole {
        /// The chardev it talks to.
        chardev: String,
        /// Index in [`VmConfig::devices`] of its `VirtioSerial` controller (`bus=ID.0`, or
        /// the first controller created before it).
        controller: usize,
    },
    /// `virtio-balloon-pci`.
    VirtioBalloon {
        /// `deflate-on-oom=on`: offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM.
        deflate_on_oom: bool,
    },
    /// `virtio-tablet-pci` (absolute pointer).
    VirtioTablet,
    /// `virtio-keyboard-pci`.
    VirtioKeyboard,
    /// `piix3-usb-uhci` (also `-usb`, `-machine usb=on`: at 01.2): the USB controller.
    Uhci,
    /// `usb-tablet`, `usb-mouse`, `usb-kbd` (and `-usbdevice`) on the UHCI's root port.
    UsbHid {
        kind: devices::usb::hid::HidKind,
        /// Root port, 1 or 2.
        port: u8,
    },
}

impl DeviceKind {
    /// The `-device` driver name (QEMU's).
    /// `bootindex=`, for the devices that take one.
    pub fn bootindex(&self) -> Option<u32> {
        match self {
            DeviceKind::VirtioBlk { bootindex, .. } | DeviceKind::Nic { bootindex, .. } => {
                *bootindex
            }
            _ => None,
        }
    }

    pub fn driver(&self) -> &'static str {
        match self {
            DeviceKind::IsaDebugExit { .. } => "isa-debug-exit",
            DeviceKind::VirtioBlk { .. } => "virtio-blk-pci",
            DeviceKind::Nic {
                model: NicModel::E1000,
                ..
            } => "e1000",
            DeviceKind::Nic {
                model: NicModel::VirtioNet,
                ..
            } => "virtio-net-pci",
            DeviceKind::VirtioRng => "virtio-rng-pci",
            DeviceKind::VirtioSerial => "virtio-serial-pci",
            DeviceKind::VirtConsole { .. } => "virtconsole",
            DeviceKind::VirtioBalloon { .. } => "virtio-balloon-pci",
            DeviceKind::VirtioTablet => "virtio-tablet-pci",
            DeviceKind::VirtioKeyboard => "virtio-keyboard-pci",
            DeviceKind::Uhci => "piix3-usb-uhci",
            DeviceKind::UsbHid { kind, .. } => kind.driver(),
        }
    }
}

/// NIC models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicModel {
    /// `virtio-net-pci` (`-net nic,model=virtio`).
    VirtioNet,
    /// Intel 82540EM, `e1000` (QEMU's default NIC on `pc`).
    E1000,
}
