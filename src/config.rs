//! The typed, validated description of one VM: what the command line asked for.
//!
//! `cli::parse` turns QEMU-syntax arguments into a [`VmConfig`]; everything after that
//! (VM assembly, the supervisor, the actors) reads only this. A value in here has already
//! been checked: sizes are in range, files named exist where that matters, ids are unique.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything needed to build and run one VM.
#[derive(Debug, Clone, PartialEq)]
pub struct VmConfig {
    /// `-name NAME[,process=...]`.
    pub name: Option<String>,
    /// `-uuid`.
    pub uuid: Option<String>,
    /// `-m`: guest RAM in bytes (always a multiple of 1 MiB, > 0).
    pub memory: u64,
    /// `-smp`.
    pub smp: SmpConfig,
    /// `-cpu MODEL[,+feat,-feat]`.
    pub cpu: CpuConfig,
    /// `-M/-machine` (only `pc` for now; `q35`/`microvm` are refused with a clear error).
    pub machine: MachineConfig,
    /// How the guest starts: firmware (SeaBIOS) or direct kernel boot.
    pub boot: BootConfig,
    /// `-boot order=,once=,menu=,splash-time=,strict=,reboot-timeout=`.
    pub boot_order: BootOrder,
    /// `-vcpu-pin auto|none|0=2,1=3-4`.
    pub vcpu_pin: VcpuPin,
    /// Serial ports COM1..COM4 in order (`-serial`, or the default).
    pub serials: Vec<CharBackend>,
    /// All `-chardev` definitions, by id.
    pub chardevs: Vec<Chardev>,
    /// Monitors (`-monitor`, `-qmp`, `-mon`), including the `-nographic` default.
    pub monitors: Vec<MonitorConfig>,
    /// `-vnc` / `-display vnc=` (None: no VNC server).
    pub vnc: Option<VncConfig>,
    /// `-display none|vnc=...`, `-nographic`.
    pub display: DisplayKind,
    /// `-nographic` was given (serial and monitor multiplexed on stdio).
    pub nographic: bool,
    /// `-vga std|none`.
    pub vga: VgaKind,
    /// `-k LAYOUT` keymap for VNC keysym translation (default `en-us`).
    pub keymap: String,
    /// Drives from `-drive`, `-hda..-hdd`, `-cdrom`, `-blockdev`, positional image.
    pub drives: Vec<DriveConfig>,
    /// `-snapshot`: every drive gets `snapshot=on`.
    pub snapshot: bool,
    /// `-netdev`, `-net TYPE`, `-nic` backends.
    pub netdevs: Vec<NetdevConfig>,
    /// `-device` entries (and NICs from `-net nic`/`-nic`), in command-line order.
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
    /// `-d ITEMS` (accepted log items, mapped onto tracing filters).
    pub log_items: Vec<String>,
    /// `-incoming URI` (live migration target).
    pub incoming: Option<String>,
    /// `-dump-acpi DIR`: troupe's own option, writes the ACPI tables it built, then runs on.
    pub dump_acpi: Option<PathBuf>,
    /// `-rtc base=utc|localtime|DATE,clock=host|vm`.
    pub rtc: RtcConfig,
}

/// `-smp [cpus=]n[,sockets=s][,dies=1][,cores=c][,threads=t][,maxcpus=m]`, completed the
/// way QEMU completes missing values (prefer sockets, then cores, then threads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmpConfig {
    /// vCPUs present at start.
    pub cpus: u32,
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
    /// sockets * cores * threads; `cpus <= maxcpus`.
    pub maxcpus: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuConfig {
    pub model: CpuModel,
    /// `+aes` / `aes=on` → ("aes", true); `-x2apic` / `x2apic=off` → ("x2apic", false).
    pub features: Vec<(String, bool)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuModel {
    /// Pass through what KVM supports (default for troupe, like `-cpu host`).
    Host,
    /// Everything KVM supports (same as host for KVM).
    Max,
    /// QEMU's conservative 64-bit model.
    Qemu64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineConfig {
    /// Always "pc" for now.
    pub kind: String,
    /// `-M ...,usb=on` etc. are refused; kept for `info qtree`-style reporting only.
    pub accel: Accel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootConfig {
    /// SeaBIOS (or `-bios PATH`) and then whatever `-boot order=` finds.
    Firmware { bios: PathBuf },
    /// `-kernel` with optional `-initrd` and `-append`. The loader detects bzImage, PVH ELF
    /// or multiboot from the file itself. `bios` is kept for reset-to-firmware paths.
    Direct {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
}

/// `-boot` options. Letters: a/b floppy, c first hard disk, d CD-ROM, n network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootOrder {
    /// Default "cad"-like order; QEMU's default is "cad" → we keep the letters given.
    pub order: String,
    pub once: Option<String>,
    pub menu: bool,
    pub splash_time_ms: Option<u32>,
    pub strict: bool,
    /// -1 = never retry (QEMU default).
    pub reboot_timeout_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuPin {
    /// vCPU i on allowed core (i mod n).
    Auto,
    /// Leave scheduling to the host.
    None,
    /// Explicit: (vcpu index, host cores). vCPUs not named are left unpinned.
    Explicit(Vec<(u32, Vec<usize>)>),
}

/// A character device backend: where a serial port's (or monitor's) bytes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CharBackend {
    /// Discard output, never any input (`null`).
    Null,
    /// No device at all (`none`): the port is not created.
    None,
    /// The process's stdin/stdout.
    Stdio,
    /// Append/truncate to a file.
    File(PathBuf),
    /// A new pseudo-terminal; its path is printed at start (`char device redirected to ...`).
    Pty,
    /// TCP socket, server or client; `telnet` adds the telnet negotiation.
    Tcp {
        addr: SocketAddrSpec,
        server: bool,
        wait: bool,
        telnet: bool,
        nodelay: bool,
    },
    /// Unix socket.
    Unix {
        path: PathBuf,
        server: bool,
        wait: bool,
    },
    /// `mon:stdio` / `-nographic`: the serial port multiplexed with a monitor on stdio.
    MuxStdio,
    /// `chardev:ID` — a named `-chardev`.
    Named(String),
}

/// A host:port as written (host may be empty = all addresses for servers, or a name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketAddrSpec {
    pub host: String,
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
    pub id: String,
    pub backend: CharBackend,
    /// `mux=on`: shared between a serial port and a monitor.
    pub mux: bool,
    /// `signal=off` for stdio.
    pub signal: bool,
    /// `logfile=PATH`.
    pub logfile: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorConfig {
    pub mode: MonitorMode,
    pub backend: CharBackend,
    /// `pretty=on` for QMP.
    pub pretty: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonitorMode {
    /// HMP (`mode=readline`, `-monitor`).
    Readline,
    /// QMP (`mode=control`, `-qmp`).
    Control,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VncConfig {
    /// Address to listen on; port already includes 5900 + display.
    pub listen: SocketAddrSpec,
    /// The display number as written (`:1` → 1).
    pub display: u16,
    pub password: bool,
    pub share: VncShare,
    /// `websocket=PORT` (RFB over WebSocket).
    pub websocket: Option<u16>,
    /// `to=N`: try ports up to 5900+N if busy.
    pub to: Option<u16>,
    pub lossy: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VncShare {
    AllowExclusive,
    ForceShared,
    Ignore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisplayKind {
    /// No display (`-display none`, `-nographic`).
    None,
    /// VNC only (`-vnc`, `-display vnc=`).
    Vnc,
    /// troupe's default when nothing is said: like QEMU's default of a GUI, we have none,
    /// so VGA exists and nobody looks unless `-vnc` is given.
    Default,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VgaKind {
    Std,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtcConfig {
    /// `base=utc` (default) or `localtime`, or a fixed start `2006-06-17T16:01:21`.
    pub base: RtcBase,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcBase {
    Utc,
    LocalTime,
    /// Seconds since the Unix epoch at VM start.
    Fixed(i64),
}

/// One drive (`-drive`, `-hda`, `-cdrom`, `-blockdev`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveConfig {
    /// `id=`; generated like QEMU when absent (`ide0-hd0`, `ide1-cd0`, `virtio0`, ...).
    pub id: String,
    /// None = an empty CD-ROM drive (`-drive if=ide,media=cdrom` with no file).
    pub file: Option<PathBuf>,
    pub interface: DriveInterface,
    pub media: Media,
    /// None = probe (raw guessed ⇒ warning, and writes to sector 0 are restricted).
    pub format: Option<ImageFormat>,
    /// `index=` (IDE: 0..3 = hda..hdd).
    pub index: Option<u32>,
    pub cache: CacheMode,
    pub aio: AioMode,
    pub readonly: bool,
    pub snapshot: bool,
    pub discard: bool,
    /// `serial=` (virtio GET_ID / IDE IDENTIFY).
    pub serial: Option<String>,
    /// `bootindex=` given on a `-device` using this drive.
    pub bootindex: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveInterface {
    Ide,
    Virtio,
    /// `if=none`: attached by a `-device ...,drive=ID`.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    Disk,
    Cdrom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AioMode {
    Threads,
    IoUring,
    /// Linux AIO: served by io_uring here (same semantics for O_DIRECT).
    Native,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetdevConfig {
    pub id: String,
    pub kind: NetdevKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetdevKind {
    User(UserNetConfig),
    Tap {
        ifname: Option<String>,
        fd: Option<i32>,
        script: Option<PathBuf>,
        downscript: Option<PathBuf>,
        vnet_hdr: Option<bool>,
        queues: u32,
    },
    Bridge {
        br: String,
        helper: Option<PathBuf>,
    },
    Socket {
        listen: Option<SocketAddrSpec>,
        connect: Option<SocketAddrSpec>,
    },
    Hubport {
        hubid: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNetConfig {
    /// `net=10.0.2.0/24`: (address, prefix length).
    pub net: (std::net::Ipv4Addr, u8),
    pub host: std::net::Ipv4Addr,
    pub dhcpstart: std::net::Ipv4Addr,
    pub dns: std::net::Ipv4Addr,
    pub ipv6: bool,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub restrict: bool,
    pub tftp: Option<PathBuf>,
    pub bootfile: Option<String>,
    pub hostfwd: Vec<HostFwd>,
    /// `guestfwd=tcp:IP:PORT-chardev:ID` (or `-cmd:`): (guest ip, guest port, chardev id).
    pub guestfwd: Vec<(std::net::Ipv4Addr, u16, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFwd {
    pub udp: bool,
    pub host_addr: std::net::Ipv4Addr,
    pub host_port: u16,
    /// Unspecified (0.0.0.0) = the first DHCP address.
    pub guest_addr: std::net::Ipv4Addr,
    pub guest_port: u16,
}

/// `-device DRIVER,prop=value,...`, typed per driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// `id=`.
    pub id: Option<String>,
    pub kind: DeviceKind,
    /// `bus=`, `addr=` (PCI slot.fn) when given.
    pub addr: Option<(u8, u8)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceKind {
    IsaDebugExit {
        iobase: u16,
        iosize: u16,
    },
    VirtioBlk {
        drive: String,
        num_queues: u16,
        serial: Option<String>,
        bootindex: Option<u32>,
    },
    Nic {
        model: NicModel,
        netdev: Option<String>,
        mac: Option<[u8; 6]>,
        /// None = the model's default ROM; Some("") = no ROM.
        romfile: Option<String>,
        bootindex: Option<u32>,
    },
    VirtioRng,
    VirtioSerial,
    VirtConsole {
        chardev: String,
    },
    VirtioBalloon,
    VirtioTablet,
    VirtioKeyboard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicModel {
    VirtioNet,
    E1000,
}
