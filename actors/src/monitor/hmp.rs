//! HMP: parse a command line, run it through the shared command model
//! ([`super::commands`]) or the vCPU/supervisor messages, and print what QEMU prints.
//! Output uses `\n`; the session turns it into `\r\n` on the wire, as QEMU does.

use serde_json::{json, Map, Value};

use super::commands::{self, execute, CmdError, KeyValue};
use super::memdump::{self, DumpFormat};
use super::{MediaOp, MediaTarget, MonitorContext};
use crate::display::keycodes::KeyCode;
use crate::runtime::{ActorState, Placement};
use crate::vcpu::{VcpuHandle, VcpuRegisters};

/// Per-session HMP state.
#[derive(Debug, Clone)]
pub struct HmpSession {
    /// The current CPU (`cpu N`), for `info registers`, `x`, `gva2gpa`.
    pub cpu: u32,
    /// `x`/`xp` remember the last format, like QEMU.
    last_fmt: DumpFormat,
}

impl Default for HmpSession {
    fn default() -> Self {
        Self::new()
    }
}

impl HmpSession {
    pub fn new() -> Self {
        Self {
            cpu: 0,
            last_fmt: DumpFormat::default(),
        }
    }
}

/// What a command line produced.
#[derive(Debug, Default)]
pub struct HmpReply {
    pub text: String,
    /// `change vnc password` without a password: read one at a `Password: ` prompt.
    pub password_prompt: bool,
}

impl HmpReply {
    fn text(t: impl Into<String>) -> Self {
        Self {
            text: t.into(),
            password_prompt: false,
        }
    }
}

/// (names, args help, help text). Names separated by `|` are aliases.
const COMMANDS: &[(&str, &str, &str)] = &[
    (
        "announce_self",
        "[interfaces] [id]",
        "Trigger GARP/RARP announcements",
    ),
    (
        "balloon",
        "target",
        "request VM to change its memory allocation (in MB)",
    ),
    ("c|cont", "", "resume emulation"),
    (
        "change",
        "device [-f] filename [format [read-only-mode]]",
        "change a removable medium, optional format, use -f to force the operation",
    ),
    ("cpu", "index", "set the default CPU"),
    (
        "device_add",
        "driver[,prop=value][,...]",
        "add device, like -device on the command line",
    ),
    ("delvm", "tag", "delete a VM snapshot from its tag"),
    (
        "loadvm",
        "tag",
        "restore a VM snapshot from its tag",
    ),
    (
        "savevm",
        "[tag]",
        "save a VM snapshot. If no tag is provided, a new snapshot is created",
    ),
    ("device_del", "device", "remove device"),
    (
        "drive_add",
        "[-n] [[<domain>:]<bus>:]<slot>\n[file=file][,if=type][,bus=n]\n[,unit=m][,media=d][,index=i]\n[,snapshot=on|off][,cache=on|off]\n[,readonly=on|off][,copy-on-read=on|off]",
        "add drive to PCI storage controller",
    ),
    ("drive_del", "device", "remove host block device"),
    (
        "object_add",
        "[qom-type=]type,id=str[,prop=value][,...]",
        "create QOM object",
    ),
    ("object_del", "id", "destroy QOM object"),
    ("eject", "[-f] device", "eject a removable medium (use -f to force it)"),
    (
        "expire_password",
        "protocol time [-d display]",
        "set spice/vnc password expire-time",
    ),
    (
        "gva2gpa",
        "addr",
        "print the guest physical address corresponding to a guest virtual address",
    ),
    ("help|?", "[cmd]", "show the help"),
    (
        "hostfwd_add",
        "[netdev_id] [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport",
        "redirect TCP or UDP connections from host to guest (requires -net user)",
    ),
    (
        "hostfwd_remove",
        "[netdev_id] [tcp|udp]:[hostaddr]:hostport",
        "remove host-to-guest TCP or UDP redirection",
    ),
    (
        "calc_dirty_rate",
        "[-r] [-b] second [sample_pages_per_GB]",
        "start a round of guest dirty rate measurement (using -r to\n\t\t\t specify dirty ring as the method of calculation and\n\t\t\t -b to specify dirty bitmap as method of calculation)",
    ),
    (
        "info",
        "[subcommand]",
        "show various information about the system state",
    ),
    ("log", "item1[,...]", "activate logging of the specified items"),
    (
        "migrate",
        "[-d] [-b] [-i] [-r] uri",
        "migrate to URI (using -d to not wait for completion)\n\t\t\t -b for migration without shared storage with full copy of disk\n\t\t\t -i for migration without shared storage with incremental copy of disk (base image shared between src and destination)\n\t\t\t -r to resume a paused migration",
    ),
    ("migrate_cancel", "", "cancel the current VM migration"),
    (
        "migrate_incoming",
        "uri",
        "Continue an incoming migration from an -incoming defer",
    ),
    (
        "migrate_set_capability",
        "capability state",
        "Enable/Disable the usage of a capability for migration",
    ),
    (
        "migrate_set_parameter",
        "parameter value",
        "Set the parameter for migration",
    ),
    (
        "mouse_button",
        "state",
        "change mouse button state (1=L, 2=M, 4=R)",
    ),
    ("mouse_move", "dx dy [dz]", "send mouse move events"),
    ("netdev_add", "type,id=str[,prop=value][,...]", "add host network device"),
    ("netdev_del", "id", "remove host network device"),
    ("q|quit", "", "quit the emulator"),
    (
        "screendump",
        "filename [-f format] [device [head]]",
        "save screen from head 'head' of display device 'device'in specified format 'format' as image 'filename'.Currently only 'png' and 'ppm' formats are supported.",
    ),
    (
        "sendkey",
        "keys [hold_ms]",
        "send keys to the VM (e.g. 'sendkey ctrl-alt-f1', default hold time=100 ms)",
    ),
    (
        "set_link",
        "name on|off",
        "change the link status of a network adapter",
    ),
    (
        "set_password",
        "protocol password [-d display] [action-if-connected]",
        "set spice/vnc password",
    ),
    ("s|stop", "", "stop emulation"),
    ("system_powerdown", "", "send system power down event"),
    ("system_reset", "", "reset the system"),
    (
        "trace-event",
        "name on|off [vcpu]",
        "changes status of a specific trace event (vcpu: vCPU to set, default is all)",
    ),
    (
        "vcpu_pin",
        "index cores",
        "pin a vCPU's thread to host cores (e.g. 'vcpu_pin 0 2-3'; 'none' unpins) [troupe]",
    ),
    ("x", "/fmt addr", "virtual memory dump starting at 'addr'"),
    ("xp", "/fmt addr", "physical memory dump starting at 'addr'"),
];

const INFO: &[(&str, &str, &str)] = &[
    ("actors", "", "show every actor: kind, state, mailbox depth, restarts, host core [troupe]"),
    ("balloon", "", "show balloon information"),
    ("block", "[-n] [-v] [device]", "show info of one block device or all block devices"),
    ("blockstats", "", "show block device statistics"),
    ("chardev", "", "show the character devices"),
    ("cpus", "", "show infos for each CPU"),
    ("dirty_rate", "", "show dirty rate information"),
    ("hotpluggable-cpus", "", "Show information about hotpluggable CPU objects"),
    ("memdev", "", "show memory backends"),
    ("memory-devices", "", "show memory devices"),
    ("memory_size_summary", "", "show the amount of initially allocated and present hotpluggable (if enabled) memory in bytes."),
    ("irq", "", "show the interrupts statistics (if available)"),
    ("kvm", "", "show KVM information"),
    ("lapic", "[apic-id]", "show local apic state (apic-id: local apic to read, default is which of current CPU)"),
    ("mem", "", "show the active virtual memory mappings"),
    ("mice", "", "show which guest mouse is receiving events"),
    ("migrate", "", "show migration status"),
    ("migrate_capabilities", "", "show current migration capabilities"),
    ("migrate_parameters", "", "show current migration parameters"),
    ("mtree", "[-f] [-d] [-o] [-D]", "show memory tree (-f: dump flat view for address spaces;-d: dump dispatch tree, valid with -f only);-o: dump region owners/parents;-D: dump disabled regions"),
    ("name", "", "show the current VM name"),
    ("network", "", "show the network state"),
    ("pci", "", "show PCI info"),
    ("pic", "", "show PIC state"),
    ("qtree", "", "show device tree"),
    ("registers", "[-a]", "show the cpu registers (-a: all - show register info for all cpus)"),
    ("roms", "", "show roms"),
    ("snapshots", "", "show the currently saved VM snapshots"),
    ("status", "", "show the current VM status (running|paused)"),
    ("tlb", "", "show virtual to physical memory mappings"),
    ("tree", "", "show every device and backend: parent, placement, actors [troupe]"),
    ("usb", "", "show guest USB devices"),
    ("usernet", "", "show user network stack connection states"),
    ("uuid", "", "show the current VM UUID"),
    ("version", "", "show the version of QEMU"),
    ("vnc", "", "show the vnc server status"),
];

fn names(entry: &str) -> impl Iterator<Item = &str> {
    entry.split('|')
}

/// Completion candidates for the line typed so far (command names, `info`/`help`
/// sub-commands, `sendkey` key names).
pub fn complete(line: &str) -> Vec<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let ends_space = line.ends_with(' ');
    let (prefix, nth) = if ends_space || words.is_empty() {
        ("", words.len())
    } else {
        (*words.last().unwrap_or(&""), words.len() - 1)
    };
    let mut out: Vec<String> = match (nth, words.first().copied()) {
        (0, _) => COMMANDS
            .iter()
            .flat_map(|c| names(c.0))
            .filter(|n| n.starts_with(prefix) && n.len() > 1)
            .map(str::to_string)
            .collect(),
        (1, Some("info")) => INFO
            .iter()
            .map(|i| i.0)
            .filter(|n| n.starts_with(prefix))
            .map(str::to_string)
            .collect(),
        (1, Some("help" | "?")) => COMMANDS
            .iter()
            .flat_map(|c| names(c.0))
            .filter(|n| n.starts_with(prefix))
            .map(str::to_string)
            .collect(),
        (1, Some("sendkey")) => {
            let (done, last) = match prefix.rfind('-') {
                Some(i) => (&prefix[..=i], &prefix[i + 1..]),
                None => ("", prefix),
            };
            KeyCode::all()
                .map(|k| k.qcode_name())
                .filter(|n| n.starts_with(last))
                .map(|n| format!("{done}{n}"))
                .collect()
        }
        _ => Vec::new(),
    };
    out.sort();
    out.dedup();
    out
}

/// Split a command line into words; double quotes group.
pub(crate) fn split_args(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err("unterminated string".into());
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

fn err_text(e: &CmdError) -> String {
    format!("Error: {}\n", e.desc())
}

async fn exec_text(
    ctx: &MonitorContext,
    name: &str,
    args: Value,
    f: impl FnOnce(&Value) -> String,
) -> String {
    let args = args.as_object().cloned().unwrap_or_default();
    match execute(ctx, name, &args).await {
        Ok(v) => f(&v),
        Err(e) => err_text(&e),
    }
}

/// Run one command line; returns what to print.
pub async fn run_line(ctx: &MonitorContext, s: &mut HmpSession, line: &str) -> HmpReply {
    let line = line.trim();
    if line.is_empty() {
        return HmpReply::default();
    }
    let args = match split_args(line) {
        Ok(a) => a,
        Err(e) => return HmpReply::text(format!("{e}\n")),
    };
    let cmd = args[0].as_str();
    let rest: Vec<&str> = args[1..].iter().map(String::as_str).collect();
    #[cfg(feature = "fault-injection")]
    if cmd == "inject-panic" {
        return HmpReply::text(inject_panic(ctx, &rest));
    }
    let Some(entry) = COMMANDS.iter().find(|c| names(c.0).any(|n| n == cmd)) else {
        return HmpReply::text(format!("unknown command: '{cmd}'\n"));
    };
    let canonical = names(entry.0).max_by_key(|n| n.len()).unwrap_or(cmd);
    let max_args = entry.1.split_whitespace().count()
        + usize::from(matches!(canonical, "sendkey" | "set_password" | "change"));
    // Arguments outside any [...] are required.
    let mut depth = 0i32;
    let mut required = 0;
    for tok in entry.1.split_whitespace() {
        if depth == 0 && !tok.starts_with('[') {
            required += 1;
        }
        depth += tok.matches('[').count() as i32 - tok.matches(']').count() as i32;
    }
    if rest.len() < required {
        return HmpReply::text(format!("{canonical}: missing argument\n"));
    }
    if rest.len() > max_args.max(required) && !matches!(canonical, "help" | "info") {
        // QEMU names the command as its table does, the long name first (`stop|s`).
        let mut all: Vec<&str> = names(entry.0).collect();
        all.sort_by_key(|n| std::cmp::Reverse(n.len()));
        return HmpReply::text(format!(
            "{}: extraneous characters at the end of line\nTry \"help {canonical}\" for more information\n",
            all.join("|")
        ));
    }
    let simple = |name: &'static str| async move {
        exec_text(ctx, name, json!({}), |_| String::new()).await
    };
    let text = match canonical {
        "help" => help(rest.first().copied()),
        "info" => return HmpReply::text(info(ctx, s, &rest).await),
        "stop" => simple("stop").await,
        "cont" => simple("cont").await,
        "system_reset" => simple("system_reset").await,
        "system_powerdown" => simple("system_powerdown").await,
        "quit" => simple("quit").await,
        "sendkey" => sendkey(ctx, &rest).await,
        "screendump" => screendump(ctx, &rest).await,
        "x" | "xp" => dump_memory(ctx, s, canonical == "xp", &rest).await,
        "gva2gpa" => gva2gpa(ctx, s, rest[0]).await,
        "calc_dirty_rate" => calc_dirty_rate(ctx, &rest).await,
        "cpu" => match rest[0].parse::<u32>() {
            Ok(n) if (n as usize) < ctx.topology.len() => {
                s.cpu = n;
                String::new()
            }
            _ => "invalid CPU index\n".into(),
        },
        "change" => {
            if rest[0] == "vnc" && rest.get(1) == Some(&"password") {
                match rest.get(2) {
                    Some(p) => match commands::set_password(ctx, "vnc", p) {
                        Ok(_) => String::new(),
                        Err(e) => err_text(&e),
                    },
                    None => {
                        return HmpReply {
                            text: String::new(),
                            password_prompt: true,
                        }
                    }
                }
            } else if rest[0] == "vnc" {
                "Error: changing the VNC listen address at run time is not available yet in troupe\n".into()
            } else {
                change_medium(ctx, &rest).await
            }
        }
        "eject" => eject(ctx, &rest).await,
        "set_password" => match commands::set_password(ctx, rest[0], rest[1]) {
            Ok(_) => String::new(),
            Err(e) => err_text(&e),
        },
        "expire_password" => match commands::expire_password(ctx, rest[0], rest[1]) {
            Ok(_) => String::new(),
            Err(e) => err_text(&e),
        },
        "mouse_move" => {
            let nums: Result<Vec<i32>, _> = rest.iter().map(|a| parse_int(a)).collect();
            match nums {
                Ok(n) => {
                    match commands::mouse_move(ctx, n[0], n[1], n.get(2).copied().unwrap_or(0)) {
                        Ok(_) => String::new(),
                        Err(e) => err_text(&e),
                    }
                }
                Err(e) => format!("{e}\n"),
            }
        }
        "mouse_button" => match parse_int(rest[0]) {
            Ok(b) => match commands::mouse_button(ctx, b as u8) {
                Ok(_) => String::new(),
                Err(e) => err_text(&e),
            },
            Err(e) => format!("{e}\n"),
        },
        "savevm" => super::migrate::savevm(ctx, rest.first().copied()).await,
        "loadvm" => super::migrate::loadvm(ctx, rest[0]).await,
        "delvm" => {
            let disks = ctx.drives.snapshot_disks().await;
            match crate::block::snapshot::delete_snapshot_on_all_disks(&disks, rest[0]).await {
                Ok(()) => String::new(),
                Err(e) => format!("Error: {}\n", crate::supervisor::error_chain(&e)),
            }
        }
        "log" => log(ctx, &rest),
        "trace-event" => trace_event(ctx, &rest),
        "vcpu_pin" => vcpu_pin(ctx, rest[0], rest[1]).await,
        "device_add" => {
            let spec = rest.first().copied().unwrap_or_default().to_string();
            match crate::monitor::commands::device_add(ctx, spec).await {
                Ok(()) => String::new(),
                Err(e) => format!("Error: {e}\n"),
            }
        }
        "object_add" => {
            let spec = rest.first().copied().unwrap_or_default().to_string();
            match super::memdev::object_add(ctx, spec).await {
                Ok(()) => String::new(),
                Err(e) => err_text(&e),
            }
        }
        "object_del" => {
            match super::memdev::object_del(ctx, rest.first().copied().unwrap_or_default()).await {
                Ok(()) => String::new(),
                Err(e) => err_text(&e),
            }
        }
        "device_del" => {
            match crate::monitor::commands::device_del(
                ctx,
                rest.first().copied().unwrap_or_default(),
            )
            .await
            {
                Ok(()) => String::new(),
                Err(e) => format!("Error: {e}\n"),
            }
        }
        "migrate"
        | "migrate_cancel"
        | "migrate_incoming"
        | "migrate_set_parameter"
        | "migrate_set_capability" => super::migrate::hmp(ctx, canonical, &rest)
            .await
            .unwrap_or_default(),
        "balloon" => {
            // The target in MiB, or with a K/M/G/T suffix (QEMU's 'M' argument).
            let bytes = rest.first().and_then(|v| {
                let (num, unit) = match v.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
                    Some((i, _)) => v.split_at(i),
                    None => (*v, "M"),
                };
                let shift = match unit.to_ascii_uppercase().as_str() {
                    "K" => 10,
                    "M" => 20,
                    "G" => 30,
                    "T" => 40,
                    _ => return None,
                };
                num.parse::<i64>().ok()?.checked_shl(shift)
            });
            match bytes {
                Some(b) => {
                    exec_text(ctx, "balloon", json!({ "value": b }), |_| String::new()).await
                }
                None => "Error: Parameter 'target' expects a size\n".into(),
            }
        }
        "announce_self" => {
            let mut args = serde_json::Map::new();
            if let Some(list) = rest.first() {
                args.insert(
                    "interfaces".into(),
                    json!(list.split(',').collect::<Vec<_>>()),
                );
            }
            match crate::monitor::commands::execute(ctx, "announce-self", &args).await {
                Ok(_) => String::new(),
                Err(e) => format!("Error: {}\n", e.desc()),
            }
        }
        "set_link" => match rest.get(1).copied() {
            Some(state @ ("on" | "off")) => match ctx.net.set_link(rest[0], state == "on").await {
                Ok(()) => String::new(),
                Err(e) => format!("Error: {e}\n"),
            },
            _ => "Error: Invalid parameter 'up'\n".into(),
        },
        "hostfwd_add" | "hostfwd_remove" => {
            match ctx.net.hostfwd(&rest, canonical == "hostfwd_add").await {
                Ok(t) => t,
                Err(e) => format!("{e}\n"),
            }
        }
        "drive_add" => {
            // QEMU's PCI address argument is a placeholder on the PC (the drive is
            // if=none and a later device_add places it); `-n` is accepted the same.
            let args: Vec<&str> = rest.iter().copied().filter(|a| *a != "-n").collect();
            match args.as_slice() {
                [_addr, opts] => {
                    match crate::monitor::commands::drive_change(ctx, true, opts.to_string()).await
                    {
                        Ok(()) => "OK\n".into(),
                        Err(e) => format!("{e}\n"),
                    }
                }
                _ => "drive_add: string expected\nTry \"help drive_add\" for more information\n"
                    .into(),
            }
        }
        "drive_del" => {
            let arg = rest.first().copied().unwrap_or_default().to_string();
            match crate::monitor::commands::drive_change(ctx, false, arg).await {
                Ok(()) => String::new(),
                Err(e) => format!("{e}\n"),
            }
        }
        "netdev_add" | "netdev_del" => {
            let arg = rest.first().copied().unwrap_or_default().to_string();
            let add = canonical == "netdev_add";
            match crate::monitor::commands::netdev_change(ctx, add, arg).await {
                Ok(()) => String::new(),
                Err(e) => format!("Error: {e}\n"),
            }
        }
        other => format!("unknown command: '{other}'\n"),
    };
    HmpReply::text(text)
}

/// `eject [-f] device`.
async fn eject(ctx: &MonitorContext, rest: &[&str]) -> String {
    let (force, rest) = match rest.split_first() {
        Some((&"-f", r)) => (true, r),
        _ => (false, rest),
    };
    let [device] = rest else {
        return "eject: block device name expected\nTry \"help eject\" for more information\n"
            .into();
    };
    let target = MediaTarget {
        device: Some(device.to_string()),
        id: None,
    };
    match commands::media(ctx, target, MediaOp::Eject { force }).await {
        Ok(()) => String::new(),
        Err(e) => err_text(&e),
    }
}

/// `change device [-f] filename [format [read-only-mode]]` (QEMU takes `-f` right after
/// the device).
async fn change_medium(ctx: &MonitorContext, rest: &[&str]) -> String {
    let (device, rest) = (rest[0], &rest[1..]);
    let (force, rest) = match rest.split_first() {
        Some((&"-f", r)) => (true, r),
        _ => (false, rest),
    };
    let Some((filename, rest)) = rest.split_first() else {
        return "change: filename expected\nTry \"help change\" for more information\n".into();
    };
    let read_only_mode = rest.get(1).map(|m| m.to_string());
    if let Some(m) = &read_only_mode {
        if !matches!(m.as_str(), "retain" | "read-only" | "read-write") {
            return format!("Error: invalid parameter value: {m}\n");
        }
    }
    let op = MediaOp::Change {
        filename: filename.to_string(),
        format: rest.first().map(|f| f.to_string()),
        read_only_mode,
        force,
    };
    let target = MediaTarget {
        device: Some(device.to_string()),
        id: None,
    };
    match commands::media(ctx, target, op).await {
        Ok(()) => String::new(),
        Err(e) => err_text(&e),
    }
}

fn parse_int(a: &str) -> Result<i32, String> {
    let (neg, a2) = match a.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, a),
    };
    let v = if let Some(h) = a2.strip_prefix("0x") {
        i64::from_str_radix(h, 16)
    } else {
        a2.parse::<i64>()
    }
    .map_err(|_| format!("invalid number: '{a}'"))?;
    Ok((if neg { -v } else { v }) as i32)
}

fn help(cmd: Option<&str>) -> String {
    let line = |(n, a, h): &(&str, &str, &str)| format!("{n} {a} -- {h}\n");
    match cmd {
        None => COMMANDS.iter().map(line).collect(),
        Some("info") => INFO
            .iter()
            .map(|(n, a, h)| format!("info {n} {a} -- {h}\n"))
            .collect(),
        Some(c) => match COMMANDS.iter().find(|e| names(e.0).any(|n| n == c)) {
            Some(e) => line(e),
            None => format!("unknown command: '{c}'\n"),
        },
    }
}

async fn vcpu(ctx: &MonitorContext, index: u32) -> Result<VcpuHandle, String> {
    let vcpus = ctx
        .supervisor
        .vcpus()
        .await
        .map_err(|e| format!("Error: {e}\n"))?;
    vcpus
        .into_iter()
        .find(|v| v.index() == index)
        .ok_or_else(|| "No CPU available\n".to_string())
}

async fn registers(ctx: &MonitorContext, index: u32) -> Result<VcpuRegisters, String> {
    vcpu(ctx, index)
        .await?
        .registers()
        .await
        .map_err(|e| format!("Error: {e}\n"))
}

/// `calc_dirty_rate [-r] [-b] second [sample_pages_per_GB]`.
async fn calc_dirty_rate(ctx: &MonitorContext, args: &[&str]) -> String {
    use super::dirty::Mode;
    let mut mode = Mode::PageSampling;
    let mut rest = Vec::new();
    for a in args {
        match *a {
            "-r" => mode = Mode::DirtyRing,
            "-b" => mode = Mode::DirtyBitmap,
            other => rest.push(other),
        }
    }
    let Some(secs) = rest.first().and_then(|s| s.parse::<i64>().ok()) else {
        return "calc_dirty_rate: missing argument\n".into();
    };
    if secs <= 0 {
        return "Incorrect period length specified!\n".into();
    }
    let mut a = json!({"calc-time": secs, "mode": match mode {
        Mode::PageSampling => "page-sampling",
        Mode::DirtyBitmap => "dirty-bitmap",
        Mode::DirtyRing => "dirty-ring",
    }});
    // QEMU passes sample pages on only in page-sampling mode.
    if let (Mode::PageSampling, Some(n)) = (mode, rest.get(1)) {
        match n.parse::<u64>() {
            Ok(n) => a["sample-pages"] = json!(n),
            Err(_) => return format!("calc_dirty_rate: invalid number '{n}'\n"),
        }
    }
    exec_text(ctx, "calc-dirty-rate", a, |_| {
        format!(
            "Starting dirty rate measurement with period {secs} seconds\n[Please use 'info dirty_rate' to check results]\n"
        )
    })
    .await
}

async fn info(ctx: &MonitorContext, s: &mut HmpSession, args: &[&str]) -> String {
    let Some(sub) = args.first() else {
        return help(Some("info"));
    };
    let extra = &args[1..];
    // More words than the subcommand takes (QEMU's words).
    if let Some((_, params, _)) = INFO.iter().find(|(n, ..)| n == sub) {
        if extra.len() > params.split_whitespace().count() {
            return format!(
                "{sub}: extraneous characters at the end of line\nTry \"help info {sub}\" for more information\n"
            );
        }
    }
    match *sub {
        "dirty_rate" => super::dirty::hmp_text(&ctx.dirty_rate),
        "version" => exec_text(ctx, "query-version", json!({}), |v| {
            let q = &v["qemu"];
            format!(
                "{}.{}.{}{}\n",
                q["major"], q["minor"], q["micro"],
                v["package"].as_str().unwrap_or_default()
            )
        })
        .await,
        "status" => exec_text(ctx, "query-status", json!({}), |v| {
            let st = match v["status"].as_str().unwrap_or_default() {
                "running" => "running".to_string(),
                "paused" => "paused".to_string(),
                other => format!("paused ({other})"),
            };
            format!("VM status: {st}\n")
        })
        .await,
        "kvm" => exec_text(ctx, "query-kvm", json!({}), |v| {
            if v["enabled"] == true {
                "kvm support: enabled\n".into()
            } else {
                "kvm support: disabled\n".into()
            }
        })
        .await,
        "name" => exec_text(ctx, "query-name", json!({}), |v| match v["name"].as_str() {
            Some(n) => format!("{n}\n"),
            None => String::new(),
        })
        .await,
        "uuid" => exec_text(ctx, "query-uuid", json!({}), |v| {
            format!("{}\n", v["UUID"].as_str().unwrap_or_default())
        })
        .await,
        "cpus" => {
            let cur = s.cpu;
            exec_text(ctx, "query-cpus-fast", json!({}), |v| {
                let mut out = String::new();
                for c in v.as_array().into_iter().flatten() {
                    let idx = c["cpu-index"].as_u64().unwrap_or(0);
                    out.push_str(&format!(
                        "{} CPU #{}: thread_id={}\n",
                        if idx == u64::from(cur) { '*' } else { ' ' },
                        idx,
                        c["thread-id"]
                    ));
                }
                out
            })
            .await
        }
        "registers" => {
            let all = extra.first() == Some(&"-a");
            let indices: Vec<u32> = if all {
                (0..ctx.topology.len() as u32).collect()
            } else {
                vec![s.cpu]
            };
            let mut out = String::new();
            for i in indices {
                match registers(ctx, i).await {
                    Ok(r) => out.push_str(&format!("\nCPU#{i}\n{}", r.dump(true))),
                    Err(e) => out.push_str(&e),
                }
            }
            out
        }
        "pci" => exec_text(ctx, "query-pci", json!({}), pci_text).await,
        "usb" => usb_text(ctx),
        "block" => {
            // `info block [-n] [-v] [device]`: one device's entry when named.
            let device = extra.iter().copied().find(|a| !a.starts_with('-'));
            exec_text(ctx, "query-block", json!({}), |v| match device {
                None => block_text(v),
                Some(d) => block_text(&Value::Array(
                    v.as_array()
                        .into_iter()
                        .flatten()
                        .filter(|b| b["device"] == d)
                        .cloned()
                        .collect(),
                )),
            })
            .await
        }
        "blockstats" => exec_text(ctx, "query-blockstats", json!({}), blockstats_text).await,
        "chardev" => exec_text(ctx, "query-chardev", json!({}), |v| {
            v.as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    format!(
                        "{}: filename={}\n",
                        c["label"].as_str().unwrap_or_default(),
                        c["filename"].as_str().unwrap_or_default()
                    )
                })
                .collect()
        })
        .await,
        "vnc" => match &ctx.vnc {
            Some(v) => v.info().to_hmp(),
            None => "Error: no VNC server is configured (start with -vnc)\n".into(),
        },
        "mtree" => ctx.chipset.mtree(extra.contains(&"-f")).await,
        "qtree" => match ctx.supervisor.tree().await {
            Ok(t) => super::tree_view::qtree(&t),
            Err(e) => format!("Error: {e}\n"),
        },
        "tree" => match ctx.supervisor.tree().await {
            Ok(t) => super::tree_view::tree_text(&t),
            Err(e) => format!("Error: {e}\n"),
        },
        "roms" => ctx.chipset.roms().await,
        "snapshots" => {
            crate::block::snapshot::info_snapshots_text(&ctx.drives.snapshot_disks().await).await
        }
        "pic" => ctx.chipset.pic().await,
        "irq" => ctx.chipset.irq().await,
        "network" => {
            ctx.net
                .network(ctx.supervisor.tree().await.unwrap_or_default())
                .await
        }
        "usernet" => ctx.net.usernet().await,
        "balloon" => {
            exec_text(ctx, "query-balloon", json!({}), |v| {
                format!(
                    "balloon: actual={}\n",
                    v["actual"].as_u64().unwrap_or_default() >> 20
                )
            })
            .await
        }
        "migrate" | "migrate_parameters" | "migrate_capabilities" => {
            super::migrate::info(ctx, sub).await.unwrap_or_default()
        }
        "mice" => exec_text(ctx, "query-mice", json!({}), |v| {
            v.as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    format!(
                        "{} Mouse #{}: {}{}\n",
                        if m["current"] == true { '*' } else { ' ' },
                        m["index"],
                        m["name"].as_str().unwrap_or_default(),
                        if m["absolute"] == true { " (absolute)" } else { "" }
                    )
                })
                .collect()
        })
        .await,
        "memory-devices" => {
            exec_text(ctx, "query-memory-devices", json!({}), super::memdev::hmp_memory_devices)
                .await
        }
        "memdev" => exec_text(ctx, "query-memdev", json!({}), super::memdev::hmp_memdev).await,
        "memory_size_summary" => {
            exec_text(
                ctx,
                "query-memory-size-summary",
                json!({}),
                super::memdev::hmp_size_summary,
            )
            .await
        }
        "hotpluggable-cpus" => exec_text(ctx, "query-hotpluggable-cpus", json!({}), |v| {
            let mut out = String::from("Hotpluggable CPUs:\n");
            for c in v.as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "  type: {}\n  vcpus_count: \"{}\"\n",
                    c["type"], c["vcpus-count"]
                ));
                // A free slot has no qom_path line.
                if let Some(p) = c.get("qom-path") {
                    out.push_str(&format!("  qom_path: {p}\n"));
                }
                out.push_str(&format!(
                    "  CPUInstance Properties:\n    socket-id: \"{}\"\n    core-id: \"{}\"\n    thread-id: \"{}\"\n",
                    c["props"]["socket-id"], c["props"]["core-id"], c["props"]["thread-id"]
                ));
            }
            out
        })
        .await,
        "lapic" => {
            let target = match extra.first() {
                Some(a) => match parse_int(a) {
                    Ok(apic) => Some(apic as u32),
                    Err(e) => return format!("{e}\n"),
                },
                None => None,
            };
            let vcpus = match ctx.supervisor.vcpus().await {
                Ok(v) => v,
                Err(e) => return format!("Error: {e}\n"),
            };
            let found = vcpus.into_iter().find(|v| match target {
                Some(apic) => v.apic_id() == apic,
                None => v.index() == s.cpu,
            });
            match found {
                Some(v) => match v.lapic().await {
                    Ok(l) => lapic_text(v.index(), &l),
                    Err(e) => format!("Error: {e}\n"),
                },
                None => "No CPU available\n".into(),
            }
        }
        "mem" | "tlb" => match registers(ctx, s.cpu).await {
            Ok(r) => match memdump::walk(&ctx.mem, &r) {
                None => "PG disabled\n".into(),
                Some(maps) if *sub == "mem" => memdump::mem_text(&maps),
                Some(maps) => memdump::tlb_text(&maps),
            },
            Err(e) => e,
        },
        "actors" => actors_text(ctx).await,
        other => format!("unknown command: 'info {other}'\n"),
    }
}

fn pci_text(v: &Value) -> String {
    let mut out = String::new();
    for bus in v.as_array().into_iter().flatten() {
        for d in bus["devices"].as_array().into_iter().flatten() {
            let n = |k: &str| d[k].as_u64().unwrap_or(0);
            out.push_str(&format!(
                "  Bus {:2}, device {:3}, function {}:\n",
                n("bus"),
                n("slot"),
                n("function")
            ));
            let ci = &d["class_info"];
            match ci["desc"].as_str() {
                Some(desc) => out.push_str(&format!("    {desc}")),
                None => out.push_str(&format!(
                    "    Class {:04}",
                    ci["class"].as_u64().unwrap_or(0)
                )),
            }
            let id = &d["id"];
            let h = |k: &str| id[k].as_u64().unwrap_or(0);
            out.push_str(&format!(
                ": PCI device {:04x}:{:04x}\n      PCI subsystem {:04x}:{:04x}\n",
                h("vendor"),
                h("device"),
                h("subsystem-vendor"),
                h("subsystem")
            ));
            if let Some(irq) = d.get("irq").and_then(Value::as_u64) {
                let pin = (b'A' + (n("irq_pin") as u8).saturating_sub(1)) as char;
                out.push_str(&format!("      IRQ {irq}, pin {pin}\n"));
            }
            for r in d["regions"].as_array().into_iter().flatten() {
                let addr = r["address"]
                    .as_u64()
                    .or_else(|| r["address"].as_i64().map(|a| a as u64))
                    .unwrap_or(0);
                let size = r["size"].as_u64().unwrap_or(0);
                let end = addr.wrapping_add(size).wrapping_sub(1);
                out.push_str(&format!("      BAR{}: ", r["bar"]));
                if r["type"] == "io" {
                    out.push_str(&format!("I/O at 0x{addr:04x} [0x{end:04x}].\n"));
                } else {
                    out.push_str(&format!(
                        "{} bit{} memory at 0x{addr:08x} [0x{end:08x}].\n",
                        if r["mem_type_64"] == true { 64 } else { 32 },
                        if r["prefetch"] == true {
                            " prefetchable"
                        } else {
                            ""
                        }
                    ));
                }
            }
            out.push_str(&format!(
                "      id \"{}\"\n",
                d["qdev_id"].as_str().unwrap_or_default()
            ));
        }
    }
    out
}

fn block_text(v: &Value) -> String {
    let mut parts = Vec::new();
    for b in v.as_array().into_iter().flatten() {
        let dev = b["device"].as_str().unwrap_or_default();
        let node = b["inserted"]["node-name"].as_str();
        // As QEMU: a drive with no name (a `-blockdev` node) goes by its node name, else
        // by its device's id.
        let name = match (dev, node) {
            ("", Some(n)) => n.to_string(),
            ("", None) => b["qdev"].as_str().unwrap_or("<anonymous>").to_string(),
            (d, Some(n)) => format!("{d} ({n})"),
            (d, None) => d.to_string(),
        };
        let mut s = match b.get("inserted") {
            Some(ins) => format!(
                "{name}: {} ({}{})\n",
                ins["file"].as_str().unwrap_or_default(),
                ins["drv"].as_str().unwrap_or_default(),
                if ins["ro"] == true { ", read-only" } else { "" }
            ),
            None => format!("{name}: [not inserted]\n"),
        };
        if let Some(q) = b["qdev"].as_str() {
            s.push_str(&format!("    Attached to:      {q}\n"));
        }
        if b["removable"] == true {
            s.push_str(&format!(
                "    Removable device: {}locked, tray {}\n",
                if b["locked"] == true { "" } else { "not " },
                if b["tray_open"] == true {
                    "open"
                } else {
                    "closed"
                }
            ));
        }
        if let Some(ins) = b.get("inserted") {
            let c = &ins["cache"];
            let mode = match (
                c["writeback"] == true,
                c["direct"] == true,
                c["no-flush"] == true,
            ) {
                (_, _, true) => "writeback, ignore flushes",
                (true, true, _) => "writeback, direct",
                (true, false, _) => "writeback",
                (false, true, _) => "writethrough, direct",
                (false, false, _) => "writethrough",
            };
            s.push_str(&format!("    Cache mode:       {mode}\n"));
        }
        parts.push(s);
    }
    parts.join("\n")
}

fn blockstats_text(v: &Value) -> String {
    let mut out = String::new();
    for b in v.as_array().into_iter().flatten() {
        let st = &b["stats"];
        let n = |k: &str| st[k].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "{}: rd_bytes={} wr_bytes={} rd_operations={} wr_operations={} flush_operations={} wr_total_time_ns={} rd_total_time_ns={} flush_total_time_ns={} rd_merged={} wr_merged={} idle_time_ns={}\n",
            b["device"].as_str().unwrap_or_default(),
            n("rd_bytes"), n("wr_bytes"), n("rd_operations"), n("wr_operations"),
            n("flush_operations"), n("wr_total_time_ns"), n("rd_total_time_ns"),
            n("flush_total_time_ns"), n("rd_merged"), n("wr_merged"), n("idle_time_ns")
        ));
    }
    out
}

/// `info actors`: every actor in the registry, then every other thread of the process (by
/// its kernel thread id, from /proc/self/task): threads the kernel made in the process
/// (io_uring, KVM workers) as such, anything else as `unregistered` (a thread started
/// around the runtime's helper).
async fn actors_text(ctx: &MonitorContext) -> String {
    let line = |id: &str, kind: &str, state: &str, depth: usize, restarts: u32, place: &str| {
        format!(
            "{id:<28} {kind:<16} {state:<10} {depth:>7} {restarts:>8}  {}\n",
            place.trim_end()
        )
    };
    let mut out = format!(
        "{:<28} {:<16} {:<10} {:>7} {:>8}  {}\n",
        "actor", "kind", "state", "mailbox", "restarts", "runs on"
    );
    let vm_running = matches!(
        ctx.supervisor.status().await,
        Ok(crate::supervisor::RunState::Running)
    );
    let mut registered = std::collections::HashSet::new();
    for a in ctx.registry.snapshot() {
        let place = match &a.placement {
            Placement::Runtime => "runtime".to_string(),
            Placement::Thread { tid, cores } => {
                registered.insert(*tid);
                format!("thread {tid} {}", cores_text(cores.as_deref()))
            }
        };
        // A vCPU thread runs the guest only while the VM does.
        let state = match (a.kind, a.state) {
            ("vcpu", ActorState::Running) if !vm_running => "paused",
            (_, s) => s.as_str(),
        };
        out.push_str(&line(
            &a.id,
            a.kind,
            state,
            a.mailbox_depth,
            a.restarts,
            &place,
        ));
    }
    match crate::runtime::process_threads() {
        Ok(threads) => {
            for (tid, comm) in threads {
                if registered.contains(&tid) {
                    continue;
                }
                let kind = crate::runtime::kernel_thread_kind(&comm).unwrap_or("unregistered");
                out.push_str(&line(&comm, kind, "-", 0, 0, &format!("thread {tid}")));
            }
        }
        Err(e) => out.push_str(&format!("(cannot list the process's threads: {e})\n")),
    }
    // Which node of the tree (device or backend) each actor runs, by actor id (model-only
    // control mailboxes such as the chipset's are not actors and are not listed).
    if let Ok(tree) = ctx.supervisor.tree().await {
        let live: std::collections::HashSet<String> =
            ctx.registry.snapshot().into_iter().map(|e| e.id).collect();
        let mut owned: Vec<(&str, &crate::supervisor::Node)> = tree
            .iter()
            .flat_map(|n| n.actors.iter().map(move |a| (a.as_str(), n)))
            .filter(|(a, _)| live.contains(*a))
            .collect();
        owned.sort_by_key(|(a, _)| *a);
        if !owned.is_empty() {
            out.push_str("device of each device actor:\n");
        }
        for (a, n) in owned {
            out.push_str(&format!("  {a} -> {} ({})\n", n.id, n.driver));
        }
    }
    out
}

/// `inject-panic ACTOR-ID` (test builds only): make the actor panic at its next turn.
#[cfg(feature = "fault-injection")]
fn inject_panic(ctx: &MonitorContext, args: &[&str]) -> String {
    match args {
        [id] => match ctx.registry.inject_panic(id) {
            Ok(()) => String::new(),
            Err(e) => format!("Error: {e}\n"),
        },
        _ => "inject-panic: usage: inject-panic ACTOR-ID\n".into(),
    }
}

fn cores_text(cores: Option<&[usize]>) -> String {
    match cores {
        None => "(unpinned)".into(),
        Some(c) => format!(
            "(core {})",
            c.iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

async fn sendkey(ctx: &MonitorContext, args: &[&str]) -> String {
    let mut keys = Vec::new();
    for name in args[0].split('-').filter(|n| !n.is_empty()) {
        let k = if let Some(h) = name.strip_prefix("0x") {
            u16::from_str_radix(h, 16).ok().map(KeyValue::Number)
        } else {
            KeyCode::from_qcode_name(name).map(KeyValue::Key)
        };
        match k {
            Some(k) => keys.push(k),
            None => return format!("invalid parameter: {name}\n"),
        }
    }
    if keys.is_empty() {
        return "invalid parameter: \n".into();
    }
    let hold = match args.get(1) {
        Some(h) => match h.parse::<u64>() {
            Ok(h) => h,
            Err(_) => return format!("invalid parameter: {h}\n"),
        },
        None => 100,
    };
    match commands::send_keys(ctx, keys, hold).await {
        Ok(_) => String::new(),
        Err(e) => err_text(&e),
    }
}

async fn screendump(ctx: &MonitorContext, args: &[&str]) -> String {
    let mut file = None;
    let mut format = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if *a == "-f" {
            format = it.next().copied();
            if format.is_none() {
                return "screendump: missing argument\n".into();
            }
        } else if file.is_none() {
            file = Some(*a);
        } else {
            return format!("Error: Device '{a}' not found\n");
        }
    }
    let mut a = Map::new();
    a.insert("filename".into(), json!(file.unwrap_or_default()));
    if let Some(f) = format {
        a.insert("format".into(), json!(f));
    }
    exec_text(ctx, "screendump", Value::Object(a), |_| String::new()).await
}

/// The end of the widest physical address space x86 has (MAXPHYADDR 52).
const MAX_PHYS_END: u64 = 1 << 52;

async fn dump_memory(
    ctx: &MonitorContext,
    s: &mut HmpSession,
    phys: bool,
    args: &[&str],
) -> String {
    let (fmt_arg, addr_parts) = match args.first() {
        Some(f) if f.starts_with('/') => (Some(*f), &args[1..]),
        _ => (None, args),
    };
    let fmt = match memdump::parse_format(fmt_arg.unwrap_or(""), s.last_fmt) {
        Ok(f) => f,
        Err(e) => return format!("{e}\n"),
    };
    s.last_fmt = fmt;
    let expr = addr_parts.join(" ");
    let regs = if expr.contains('$') || !phys {
        match registers(ctx, s.cpu).await {
            Ok(r) => Some(r),
            Err(e) => return e,
        }
    } else {
        None
    };
    let addr = match memdump::eval_expr(&expr, regs.as_ref()) {
        Ok(a) => a,
        Err(e) => return format!("{e}\n"),
    };
    if phys {
        // Nothing is beyond x86's widest physical address (52 bits), and nothing wraps
        // round to address 0 past 2^64 (as QEMU): read what is below that at once.
        let total = fmt.count.saturating_mul(fmt.size as u64);
        let end = addr.saturating_add(total).min(MAX_PHYS_END);
        let bytes = if end > addr {
            memdump::read_phys(ctx, addr, (end - addr) as usize).await
        } else {
            Vec::new()
        };
        return memdump::dump(fmt, addr, |a, buf| {
            if a.checked_add(buf.len() as u64)
                .is_none_or(|end| end > MAX_PHYS_END)
            {
                return false;
            }
            let Some(from) = a.checked_sub(addr).map(|o| o as usize) else {
                return false;
            };
            match bytes.get(from..from + buf.len()) {
                Some(b) => {
                    buf.copy_from_slice(b);
                    true
                }
                None => false,
            }
        });
    }
    // Virtual: translate each page through the current vCPU.
    let Ok(v) = vcpu(ctx, s.cpu).await else {
        return "No CPU available\n".into();
    };
    let len = fmt.count * fmt.size as u64;
    let mut bytes = Vec::with_capacity(len as usize);
    let mut ok_until = len;
    let mut a = addr;
    while (bytes.len() as u64) < len {
        let page_left = 4096 - (a & 0xfff);
        let n = page_left.min(len - bytes.len() as u64) as usize;
        if a.checked_add(n as u64).is_none() {
            // The dump would run past 2^64: no wrap round to address 0 (as QEMU).
            ok_until = bytes.len() as u64;
            bytes.resize(len as usize, 0);
            break;
        }
        match v.translate_gva(a).await {
            Ok(Some(pa)) => {
                bytes.extend_from_slice(&memdump::read_phys(ctx, pa, n).await);
            }
            _ => {
                ok_until = bytes.len() as u64;
                bytes.resize(len as usize, 0);
                break;
            }
        }
        a = a.wrapping_add(n as u64);
    }
    memdump::dump(fmt, addr, |a, buf| {
        let off = a.wrapping_sub(addr);
        if a.checked_add(buf.len() as u64).is_none() || off + buf.len() as u64 > ok_until {
            return false;
        }
        buf.copy_from_slice(&bytes[off as usize..off as usize + buf.len()]);
        true
    })
}

async fn gva2gpa(ctx: &MonitorContext, s: &HmpSession, arg: &str) -> String {
    let regs = match registers(ctx, s.cpu).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let addr = match memdump::eval_expr(arg, Some(&regs)) {
        Ok(a) => a,
        Err(e) => return format!("{e}\n"),
    };
    let v = match vcpu(ctx, s.cpu).await {
        Ok(v) => v,
        Err(e) => return e,
    };
    match v.translate_gva(addr).await {
        Ok(Some(pa)) => format!("gpa: {pa:#x}\n"),
        Ok(None) => "Unmapped\n".into(),
        Err(e) => format!("Error: {e}\n"),
    }
}

/// What `log` can turn on: the items of `-d` that mean something under KVM, each a
/// tracing target.
const LOG_ITEMS: &[(&str, &str)] = &[
    (
        "guest_errors",
        "log when the guest OS does something invalid (eg accessing a non-existent register)",
    ),
    ("unimp", "log unimplemented functionality"),
    ("cpu_reset", "show CPU state before CPU resets"),
];

fn log(ctx: &MonitorContext, args: &[&str]) -> String {
    let Some(set) = &ctx.log else {
        return "Error: logging cannot be changed in this process\n".into();
    };
    let items = args.first().copied().unwrap_or("");
    // As QEMU: an unknown item lists the known ones and changes nothing.
    if items == "help"
        || items.is_empty()
        || (items != "none"
            && items
                .split(',')
                .any(|i| !LOG_ITEMS.iter().any(|(n, _)| *n == i)))
    {
        let mut out =
            String::from("Log items (comma separated):\nnone            remove all logs\n");
        for (name, desc) in LOG_ITEMS {
            out.push_str(&format!("{name:<15} {desc}\n"));
        }
        return out;
    }
    let directives = if items == "none" {
        String::new()
    } else {
        items
            .split(',')
            .filter(|i| !i.is_empty())
            .map(|i| format!("{i}=debug"))
            .collect::<Vec<_>>()
            .join(",")
    };
    match set(&directives) {
        Ok(()) => String::new(),
        Err(e) => format!("Error: {e}\n"),
    }
}

fn trace_event(ctx: &MonitorContext, args: &[&str]) -> String {
    let Some(set) = &ctx.log else {
        return "Error: tracing cannot be changed in this process\n".into();
    };
    let level = match args[1] {
        "on" => "trace",
        "off" => "off",
        other => return format!("Error: invalid value '{other}', expected on or off\n"),
    };
    let name = args[0];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-:*".contains(c))
    {
        return format!("Error: Invalid trace event name '{name}'\n");
    }
    let target = name.trim_end_matches('*');
    match set(&format!("+{target}={level}")) {
        Ok(()) => String::new(),
        Err(e) => format!("Error: {e}\n"),
    }
}

async fn vcpu_pin(ctx: &MonitorContext, index: &str, cores: &str) -> String {
    let Ok(i) = index.parse::<u32>() else {
        return format!("Error: invalid vCPU index '{index}'\n");
    };
    let list = if cores == "none" {
        Vec::new()
    } else {
        match parse_cores(cores) {
            Ok(l) => l,
            Err(e) => return format!("Error: {e}\n"),
        }
    };
    match vcpu(ctx, i).await {
        Ok(v) => match v.set_affinity(list).await {
            Ok(()) => String::new(),
            Err(e) => format!("Error: {e}\n"),
        },
        Err(_) => format!("Error: no vCPU {i}\n"),
    }
}

fn parse_cores(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let bad = || format!("invalid core list '{s}' (expected e.g. 2 or 2-3,5)");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b || b > 4095 {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(out)
}

fn lapic_text(cpu: u32, l: &kvm_bindings::kvm_lapic_state) -> String {
    let reg = |off: usize| -> u32 {
        let b = &l.regs[off..off + 4];
        u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
    };
    let mut out = format!("dumping local APIC state for CPU {cpu:<2}\n\n");
    let lvt = |name: &str, v: u32, timer: bool| {
        let mode = match (v >> 8) & 7 {
            0 => "Fixed",
            2 => "SMI",
            4 => "NMI",
            5 => "INIT",
            7 => "ExtINT",
            _ => "(rsvd)",
        };
        let tmode = if timer {
            match (v >> 17) & 3 {
                0 => " one-shot",
                1 => " periodic",
                2 => " tsc-deadline",
                _ => "",
            }
        } else {
            ""
        };
        format!(
            "{name}\t 0x{v:08x} {} {} {}{}{} (vec {})\n",
            if v & (1 << 13) != 0 {
                "active-lo"
            } else {
                "active-hi"
            },
            if v & (1 << 15) != 0 { "level" } else { "edge " },
            if v & (1 << 16) != 0 { "masked " } else { "" },
            mode,
            tmode,
            v & 0xff
        )
    };
    out.push_str(&lvt("LVT0", reg(0x350), false));
    out.push_str(&lvt("LVT1", reg(0x360), false));
    out.push_str(&lvt("LVTPC", reg(0x340), false));
    out.push_str(&lvt("LVTERR", reg(0x370), false));
    out.push_str(&lvt("LVTTHMR", reg(0x330), false));
    out.push_str(&lvt("LVTT", reg(0x320), true));
    let dcr = reg(0x3e0);
    let div = ((dcr & 3) | ((dcr >> 1) & 4)) as u8;
    let divider = if div == 7 { 1 } else { 2u32 << div };
    out.push_str(&format!(
        "Timer\t DCR=0x{dcr:x} (divide by {divider}) initial_count = {} current_count = {}\n",
        reg(0x380),
        reg(0x390)
    ));
    let spiv = reg(0xf0);
    out.push_str(&format!(
        "SPIV\t 0x{spiv:08x} APIC {}, focus={}, spurious vec {}\n",
        if spiv & 0x100 != 0 {
            "enabled"
        } else {
            "disabled"
        },
        if spiv & 0x200 != 0 { "off" } else { "on" },
        spiv & 0xff
    ));
    out.push_str(&format!(
        "ICR\t 0x{:08x}\nICR2\t 0x{:08x}\n",
        reg(0x300),
        reg(0x310)
    ));
    out.push_str(&format!("ESR\t 0x{:08x}\n", reg(0x280)));
    let bits = |base: usize| -> String {
        let mut v = Vec::new();
        for i in 0..8 {
            let w = reg(base + i * 0x10);
            for b in 0..32 {
                if w & (1 << b) != 0 {
                    v.push(format!("{}", i * 32 + b));
                }
            }
        }
        if v.is_empty() {
            "(none)".into()
        } else {
            v.join(" ")
        }
    };
    out.push_str(&format!("ISR\t {}\n", bits(0x100)));
    out.push_str(&format!("IRR\t {}\n", bits(0x200)));
    out.push_str(&format!(
        "\nAPR 0x{:02x} TPR 0x{:02x} DFR 0x{:02x} LDR 0x{:02x} PPR 0x{:02x}\n",
        reg(0x90) & 0xff,
        reg(0x80) & 0xff,
        reg(0xe0) >> 28,
        reg(0xd0) >> 24,
        reg(0xa0) & 0xff
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_with_quotes() {
        assert_eq!(
            split_args(r#"screendump "/tmp/a b.ppm" -f png"#).unwrap(),
            vec!["screendump", "/tmp/a b.ppm", "-f", "png"]
        );
        assert!(split_args("x \"open").is_err());
    }

    #[test]
    fn completion_of_commands_and_info() {
        assert_eq!(complete("system_r"), vec!["system_reset"]);
        assert!(complete("info ").contains(&"registers".to_string()));
        assert_eq!(complete("info reg"), vec!["registers"]);
        assert_eq!(complete("sendkey ctrl-alt-del"), vec!["ctrl-alt-delete"]);
        assert!(complete("zzz").is_empty());
    }

    #[test]
    fn help_lines_have_qemu_shape() {
        let h = help(None);
        assert!(h.contains("c|cont  -- resume emulation\n"));
        assert!(h.contains("x /fmt addr -- virtual memory dump starting at 'addr'\n"));
        assert!(help(Some("info"))
            .contains("info status  -- show the current VM status (running|paused)\n"));
    }

    #[test]
    fn core_lists() {
        assert_eq!(parse_cores("0,2-3").unwrap(), vec![0, 2, 3]);
        assert!(parse_cores("3-1").is_err());
        assert!(parse_cores("x").is_err());
    }

    #[test]
    fn pci_text_matches_reference_layout() {
        let v = json!([{"bus": 0, "devices": [
            {"bus": 0, "slot": 1, "function": 1, "irq_pin": 0, "qdev_id": "",
             "class_info": {"class": 257, "desc": "IDE controller"},
             "id": {"vendor": 0x8086, "device": 0x7010, "subsystem-vendor": 0x1af4, "subsystem": 0x1100},
             "regions": [{"bar": 4, "size": 16, "address": 0xc040, "type": "io"}]},
            {"bus": 0, "slot": 2, "function": 0, "irq_pin": 1, "irq": 11, "qdev_id": "",
             "class_info": {"class": 768, "desc": "VGA controller"},
             "id": {"vendor": 0x1234, "device": 0x1111, "subsystem-vendor": 0x1af4, "subsystem": 0x1100},
             "regions": [{"bar": 6, "size": 65536, "address": -1, "type": "memory", "prefetch": false, "mem_type_64": false}]}
        ]}]);
        assert_eq!(
            pci_text(&v),
            "  Bus  0, device   1, function 1:\n    IDE controller: PCI device 8086:7010\n      PCI subsystem 1af4:1100\n      BAR4: I/O at 0xc040 [0xc04f].\n      id \"\"\n\
             \x20 Bus  0, device   2, function 0:\n    VGA controller: PCI device 1234:1111\n      PCI subsystem 1af4:1100\n      IRQ 11, pin A\n      BAR6: 32 bit memory at 0xffffffffffffffff [0x0000fffe].\n      id \"\"\n"
        );
    }
}

/// `info usb`: each device on the UHCI controller's bus 0, as QEMU lists them.
fn usb_text(ctx: &MonitorContext) -> String {
    let Some(usb) = &ctx.usb else {
        return "USB support not enabled\n".to_string();
    };
    usb.devices()
        .iter()
        .map(|d| {
            format!(
                "  Device 0.{}, Port {}, Speed 12 Mb/s, Product {}{}\n",
                d.address,
                d.port,
                d.kind.product(),
                d.id.as_ref()
                    .map(|i| format!(", ID: {i}"))
                    .unwrap_or_default()
            )
        })
        .collect()
}
