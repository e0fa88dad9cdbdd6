//! How the monitor reaches the machine: typed handles, each the address of an actor that
//! owns one side of the machine's state and answers messages, instead of one object with
//! a method for everything.
//!
//! - [`NetHandle`]: the NICs and their backends (`info network`, `set_link`,
//!   `hostfwd_*`, `info usernet`, `announce-self`, `query-rx-filter`).
//! - [`DrivesHandle`]: the drives (`query-block`, `query-blockstats`).
//! - [`ChipsetHandle`]: the board (`info pic`, `info irq`, `info mtree`, `info roms`,
//!   `query-chardev`).
//! - [`MemoryHandle`]: guest memory as the CPU sees it (`xp`, `x`) and the dirty log
//!   (`calc-dirty-rate` in dirty-bitmap mode).
//!
//! The binary implements each side's service trait (it knows the platform); the actor
//! owns the service and runs one request at a time on the runtime, restarted if it
//! panics. Device-tree reads (`info qtree`, `query-pci`) and changes (`netdev_add`) go to
//! the supervisor, which owns the tree.

use std::sync::Arc;

use serde_json::Value;

use super::Announce;
use crate::runtime::{
    mailbox, reply_channel, spawn_supervised, ActorError, Addr, MessageKind, Placement, Registry,
    Reply, Restart,
};
use crate::supervisor::DeviceTree;

/// Start actor `id` serving `service` with `serve`, one message at a time.
fn spawn_service<M, S>(
    rt: &tokio::runtime::Handle,
    registry: &Registry,
    id: &str,
    service: Arc<S>,
    serve: fn(&S, M),
) -> Addr<M>
where
    M: MessageKind + Send + 'static,
    S: ?Sized + Send + Sync + 'static,
{
    let (addr, mb) = mailbox::<M>(id, 32);
    let depth = addr.clone();
    let entry = registry.register(id, "machine", Placement::Runtime, move || depth.depth());
    spawn_supervised(
        rt,
        entry,
        Restart::Always,
        move || {
            let (mb, service) = (mb.clone(), service.clone());
            async move {
                let mut mb = mb.open().await;
                while let Some(m) = mb.recv().await {
                    let span = tracing::debug_span!("msg", kind = m.kind());
                    span.in_scope(|| serve(&service, m));
                }
            }
        },
        |_| {},
    );
    addr
}

async fn ask<M: Send + 'static, T>(
    addr: &Addr<M>,
    f: impl FnOnce(Reply<T>) -> M,
) -> Result<T, ActorError> {
    let (tx, rx) = reply_channel(addr.id());
    addr.send(f(tx)).await?;
    rx.recv().await
}

/// Text for an actor that did not answer, where the command shows text.
fn gone(e: ActorError) -> String {
    format!("Error: {e}\n")
}

// ---- network ----

/// The machine's NICs and network backends, as the binary provides them.
pub trait NetService: Send + Sync + 'static {
    /// `info network` text: each NIC with its backend, then each backend of `tree` (the
    /// supervisor's) that no NIC uses.
    fn network(&self, tree: &DeviceTree) -> String;
    /// `announce-self`: send each NIC's announcement (and ask virtio drivers that can to
    /// announce themselves) on `schedule`; returns at once.
    fn announce_self(&self, schedule: Announce) -> Result<(), String>;
    /// `query-rx-filter [name]`: each NIC's receive filter; Err is QEMU's message.
    fn query_rx_filter(&self, name: Option<&str>) -> Result<Value, String>;
    /// `info usernet` text: each user-mode backend's connections and forwardings.
    fn usernet(&self) -> String;
    /// `set_link NAME on|off` (a NIC or its netdev): Err is the message to show.
    fn set_link(&self, name: &str, up: bool) -> Result<(), String>;
    /// `hostfwd_add [netdev] RULE` / `hostfwd_remove [netdev] RULE`: Ok is the text to
    /// show, Err the error message.
    fn hostfwd(&self, args: &[&str], add: bool) -> Result<String, String>;
}

/// Requests to the network actor.
pub enum NetMsg {
    Network(DeviceTree, Reply<String>),
    AnnounceSelf(Announce, Reply<Result<(), String>>),
    RxFilter(Option<String>, Reply<Result<Value, String>>),
    Usernet(Reply<String>),
    SetLink {
        name: String,
        up: bool,
        reply: Reply<Result<(), String>>,
    },
    Hostfwd {
        args: Vec<String>,
        add: bool,
        reply: Reply<Result<String, String>>,
    },
}

impl MessageKind for NetMsg {
    fn kind(&self) -> &'static str {
        match self {
            Self::Network(..) => "network",
            Self::AnnounceSelf(..) => "announce-self",
            Self::RxFilter(..) => "rx-filter",
            Self::Usernet(_) => "usernet",
            Self::SetLink { .. } => "set-link",
            Self::Hostfwd { .. } => "hostfwd",
        }
    }
}

fn serve_net(s: &dyn NetService, m: NetMsg) {
    match m {
        NetMsg::Network(tree, r) => r.send(s.network(&tree)),
        NetMsg::AnnounceSelf(a, r) => r.send(s.announce_self(a)),
        NetMsg::RxFilter(name, r) => r.send(s.query_rx_filter(name.as_deref())),
        NetMsg::Usernet(r) => r.send(s.usernet()),
        NetMsg::SetLink { name, up, reply } => reply.send(s.set_link(&name, up)),
        NetMsg::Hostfwd { args, add, reply } => {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            reply.send(s.hostfwd(&args, add))
        }
    }
}

/// The network actor's address.
#[derive(Clone)]
pub struct NetHandle {
    addr: Addr<NetMsg>,
}

impl NetHandle {
    /// Start the network actor (`net`) over `service`.
    pub fn spawn(
        rt: &tokio::runtime::Handle,
        registry: &Registry,
        service: Arc<dyn NetService>,
    ) -> Self {
        Self {
            addr: spawn_service(rt, registry, "net", service, serve_net),
        }
    }

    pub async fn network(&self, tree: DeviceTree) -> String {
        ask(&self.addr, |r| NetMsg::Network(tree, r))
            .await
            .unwrap_or_else(gone)
    }

    pub async fn announce_self(&self, a: Announce) -> Result<(), String> {
        ask(&self.addr, |r| NetMsg::AnnounceSelf(a, r))
            .await
            .map_err(|e| e.to_string())?
    }

    pub async fn query_rx_filter(&self, name: Option<&str>) -> Result<Value, String> {
        let name = name.map(str::to_string);
        ask(&self.addr, |r| NetMsg::RxFilter(name, r))
            .await
            .map_err(|e| e.to_string())?
    }

    pub async fn usernet(&self) -> String {
        ask(&self.addr, NetMsg::Usernet).await.unwrap_or_else(gone)
    }

    pub async fn set_link(&self, name: &str, up: bool) -> Result<(), String> {
        let name = name.to_string();
        ask(&self.addr, |reply| NetMsg::SetLink { name, up, reply })
            .await
            .map_err(|e| e.to_string())?
    }

    pub async fn hostfwd(&self, args: &[&str], add: bool) -> Result<String, String> {
        let args = args.iter().map(|a| a.to_string()).collect();
        ask(&self.addr, |reply| NetMsg::Hostfwd { args, add, reply })
            .await
            .map_err(|e| e.to_string())?
    }
}

// ---- drives ----

/// The machine's drives, as the binary provides them.
pub trait DrivesService: Send + Sync + 'static {
    /// `query-block` return value.
    fn query_block(&self) -> Value;
    /// `query-blockstats` return value.
    fn query_blockstats(&self) -> Value;
    /// `query-named-block-nodes` return value: every block node, format and file (flat:
    /// troupe's images have no backing nodes to nest).
    fn query_named_block_nodes(&self) -> Value;
    /// Every drive with a medium: (device id, backend), in `info block` order; what
    /// `info snapshots`, `delvm`, `savevm` and `loadvm` work on.
    fn snapshot_disks(&self) -> Vec<(String, crate::block::BlockHandle)>;
    /// A removable-media operation on `target` (may open an image). Err is QEMU's
    /// error, class and message.
    fn media(
        &self,
        target: &super::MediaTarget,
        op: super::MediaOp,
    ) -> Result<(), super::commands::CmdError>;
}

/// Requests to the drives actor.
pub enum DrivesMsg {
    QueryBlock(Reply<Value>),
    QueryBlockstats(Reply<Value>),
    QueryNamedBlockNodes(Reply<Value>),
    SnapshotDisks(Reply<Vec<(String, crate::block::BlockHandle)>>),
    Media(
        super::MediaTarget,
        super::MediaOp,
        Reply<Result<(), super::commands::CmdError>>,
    ),
}

impl MessageKind for DrivesMsg {
    fn kind(&self) -> &'static str {
        match self {
            Self::QueryBlock(_) => "query-block",
            Self::QueryBlockstats(_) => "query-blockstats",
            Self::QueryNamedBlockNodes(_) => "query-named-block-nodes",
            Self::SnapshotDisks(_) => "snapshot-disks",
            Self::Media(..) => "media",
        }
    }
}

fn serve_drives(s: &dyn DrivesService, m: DrivesMsg) {
    match m {
        DrivesMsg::QueryBlock(r) => r.send(s.query_block()),
        DrivesMsg::QueryBlockstats(r) => r.send(s.query_blockstats()),
        DrivesMsg::QueryNamedBlockNodes(r) => r.send(s.query_named_block_nodes()),
        DrivesMsg::SnapshotDisks(r) => r.send(s.snapshot_disks()),
        DrivesMsg::Media(t, op, r) => r.send(s.media(&t, op)),
    }
}

/// The drives actor's address.
#[derive(Clone)]
pub struct DrivesHandle {
    addr: Addr<DrivesMsg>,
}

impl DrivesHandle {
    /// Start the drives actor (`drives`) over `service`.
    pub fn spawn(
        rt: &tokio::runtime::Handle,
        registry: &Registry,
        service: Arc<dyn DrivesService>,
    ) -> Self {
        Self {
            addr: spawn_service(rt, registry, "drives", service, serve_drives),
        }
    }

    pub async fn query_block(&self) -> Result<Value, ActorError> {
        ask(&self.addr, DrivesMsg::QueryBlock).await
    }

    pub async fn query_blockstats(&self) -> Result<Value, ActorError> {
        ask(&self.addr, DrivesMsg::QueryBlockstats).await
    }

    pub async fn query_named_block_nodes(&self) -> Result<Value, ActorError> {
        ask(&self.addr, DrivesMsg::QueryNamedBlockNodes).await
    }

    /// The drives snapshots are taken on (empty if the actor is gone).
    pub async fn snapshot_disks(&self) -> Vec<(String, crate::block::BlockHandle)> {
        ask(&self.addr, DrivesMsg::SnapshotDisks)
            .await
            .unwrap_or_default()
    }

    /// A removable-media operation.
    pub async fn media(
        &self,
        target: super::MediaTarget,
        op: super::MediaOp,
    ) -> Result<(), super::commands::CmdError> {
        ask(&self.addr, |r| DrivesMsg::Media(target, op, r))
            .await
            .map_err(|e| super::commands::CmdError::Generic(e.to_string()))?
    }
}

// ---- chipset ----

/// The board: interrupt controllers, memory map, ROMs and chardevs, as the binary
/// provides them.
pub trait ChipsetService: Send + Sync + 'static {
    /// `info pic` text (the in-kernel PICs and IOAPIC).
    fn pic(&self) -> String;
    /// `info irq` text (interrupts raised per line).
    fn irq(&self) -> String;
    /// `info mtree [-f]` text.
    fn mtree(&self, flat: bool) -> String;
    /// `info roms` text.
    fn roms(&self) -> String;
    /// `query-chardev` return value.
    fn query_chardev(&self) -> Value;
}

/// Requests to the chipset actor.
pub enum ChipsetMsg {
    Pic(Reply<String>),
    Irq(Reply<String>),
    Mtree(bool, Reply<String>),
    Roms(Reply<String>),
    QueryChardev(Reply<Value>),
}

impl MessageKind for ChipsetMsg {
    fn kind(&self) -> &'static str {
        match self {
            Self::Pic(_) => "pic",
            Self::Irq(_) => "irq",
            Self::Mtree(..) => "mtree",
            Self::Roms(_) => "roms",
            Self::QueryChardev(_) => "query-chardev",
        }
    }
}

fn serve_chipset(s: &dyn ChipsetService, m: ChipsetMsg) {
    match m {
        ChipsetMsg::Pic(r) => r.send(s.pic()),
        ChipsetMsg::Irq(r) => r.send(s.irq()),
        ChipsetMsg::Mtree(flat, r) => r.send(s.mtree(flat)),
        ChipsetMsg::Roms(r) => r.send(s.roms()),
        ChipsetMsg::QueryChardev(r) => r.send(s.query_chardev()),
    }
}

/// The chipset actor's address.
#[derive(Clone)]
pub struct ChipsetHandle {
    addr: Addr<ChipsetMsg>,
}

impl ChipsetHandle {
    /// Start the chipset actor (`chipset`) over `service`.
    pub fn spawn(
        rt: &tokio::runtime::Handle,
        registry: &Registry,
        service: Arc<dyn ChipsetService>,
    ) -> Self {
        Self {
            addr: spawn_service(rt, registry, "chipset", service, serve_chipset),
        }
    }

    pub async fn pic(&self) -> String {
        ask(&self.addr, ChipsetMsg::Pic).await.unwrap_or_else(gone)
    }

    pub async fn irq(&self) -> String {
        ask(&self.addr, ChipsetMsg::Irq).await.unwrap_or_else(gone)
    }

    pub async fn mtree(&self, flat: bool) -> String {
        ask(&self.addr, |r| ChipsetMsg::Mtree(flat, r))
            .await
            .unwrap_or_else(gone)
    }

    pub async fn roms(&self) -> String {
        ask(&self.addr, ChipsetMsg::Roms).await.unwrap_or_else(gone)
    }

    pub async fn query_chardev(&self) -> Result<Value, ActorError> {
        ask(&self.addr, ChipsetMsg::QueryChardev).await
    }
}

// ---- memory ----

/// Guest memory, as the binary provides it.
pub trait MemoryService: Send + Sync + 'static {
    /// Read guest-physical memory as the CPU would see it: device windows such as the
    /// VGA's through their models, RAM directly; false when `addr` is neither.
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> bool;
    /// Turn KVM's dirty log for guest RAM on (clearing it) or off.
    fn dirty_log(&self, on: bool) -> Result<(), String>;
    /// Guest RAM pages written since the dirty log was turned on or last read.
    fn dirty_pages(&self) -> Result<u64, String>;
}

/// Requests to the memory actor.
pub enum MemoryMsg {
    /// `len` bytes from guest-physical `addr`, byte by byte (a read may straddle
    /// regions), all-ones where nothing is mapped (as QEMU reads unassigned memory).
    ReadPhys {
        addr: u64,
        len: usize,
        reply: Reply<Vec<u8>>,
    },
    DirtyLog(bool, Reply<Result<(), String>>),
    DirtyPages(Reply<Result<u64, String>>),
}

impl MessageKind for MemoryMsg {
    fn kind(&self) -> &'static str {
        match self {
            Self::ReadPhys { .. } => "read-phys",
            Self::DirtyLog(..) => "dirty-log",
            Self::DirtyPages(_) => "dirty-pages",
        }
    }
}

fn serve_memory(s: &dyn MemoryService, m: MemoryMsg) {
    match m {
        MemoryMsg::ReadPhys { addr, len, reply } => {
            let mut out = vec![0xffu8; len];
            for (i, b) in out.iter_mut().enumerate() {
                let mut one = [0xffu8];
                if s.read_phys(addr.wrapping_add(i as u64), &mut one) {
                    *b = one[0];
                }
            }
            reply.send(out)
        }
        MemoryMsg::DirtyLog(on, r) => r.send(s.dirty_log(on)),
        MemoryMsg::DirtyPages(r) => r.send(s.dirty_pages()),
    }
}

/// The memory actor's address.
#[derive(Clone)]
pub struct MemoryHandle {
    addr: Addr<MemoryMsg>,
}

impl MemoryHandle {
    /// Start the memory actor (`memory`) over `service`.
    pub fn spawn(
        rt: &tokio::runtime::Handle,
        registry: &Registry,
        service: Arc<dyn MemoryService>,
    ) -> Self {
        Self {
            addr: spawn_service(rt, registry, "memory", service, serve_memory),
        }
    }

    /// `len` bytes from guest-physical `addr` (all-ones where nothing is mapped, or if
    /// the actor does not answer).
    pub async fn read_phys(&self, addr: u64, len: usize) -> Vec<u8> {
        ask(&self.addr, |reply| MemoryMsg::ReadPhys { addr, len, reply })
            .await
            .unwrap_or_else(|_| vec![0xff; len])
    }

    pub async fn dirty_log(&self, on: bool) -> Result<(), String> {
        ask(&self.addr, |r| MemoryMsg::DirtyLog(on, r))
            .await
            .map_err(|e| e.to_string())?
    }

    pub async fn dirty_pages(&self) -> Result<u64, String> {
        ask(&self.addr, MemoryMsg::DirtyPages)
            .await
            .map_err(|e| e.to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Links(std::sync::Mutex<Vec<(String, bool)>>);

    impl NetService for Links {
        fn network(&self, tree: &DeviceTree) -> String {
            format!("{} nodes\n", tree.len())
        }
        fn announce_self(&self, _: Announce) -> Result<(), String> {
            Ok(())
        }
        fn query_rx_filter(&self, name: Option<&str>) -> Result<Value, String> {
            Err(format!("Invalid net client name: {}", name.unwrap_or("")))
        }
        fn usernet(&self) -> String {
            panic!("usernet broke")
        }
        fn set_link(&self, name: &str, up: bool) -> Result<(), String> {
            self.0.lock().unwrap().push((name.into(), up));
            Ok(())
        }
        fn hostfwd(&self, args: &[&str], add: bool) -> Result<String, String> {
            Ok(format!("{add} {}", args.join(" ")))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_network_actor_answers_each_request_and_survives_a_panic() {
        let registry = Registry::new();
        let links = Arc::new(Links(Default::default()));
        let h = NetHandle::spawn(&tokio::runtime::Handle::current(), &registry, links.clone());
        h.set_link("nic0", false).await.unwrap();
        assert_eq!(*links.0.lock().unwrap(), [("nic0".to_string(), false)]);
        assert_eq!(
            h.hostfwd(&["u0", "tcp::1-:2"], true).await,
            Ok("true u0 tcp::1-:2".into())
        );
        assert_eq!(
            h.query_rx_filter(Some("x")).await,
            Err("Invalid net client name: x".into())
        );
        assert_eq!(h.network(DeviceTree::new()).await, "0 nodes\n");
        // A panic answers nothing (the caller sees the actor's error) and the actor is
        // restarted for the next request.
        assert!(h.usernet().await.starts_with("Error: "));
        assert_eq!(h.network(DeviceTree::new()).await, "0 nodes\n");
        assert!(registry.snapshot().iter().any(|e| e.id == "net"));
    }
}
