//! The PIO and MMIO buses: address ranges mapped to device handlers.
//!
//! A vCPU exit looks up the handler for its address under a read lock, clones the `Arc`,
//! drops the lock and calls the handler on the vCPU thread: no cross-thread wake-up. A
//! handler owns its own lock (usually a `Mutex` around a `devices` model, see [`Locked`]),
//! so handlers may themselves remap ranges (a PCI BAR move) without deadlocking the bus.
//! Lock order: bus map (briefly) → one device. Overlapping ranges are refused.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use devices::BusDevice;

/// Something that answers accesses to a range. `base` is the start of the range it was
/// inserted at, `offset` the distance from there.
pub trait BusHandler: Send + Sync {
    fn read(&self, base: u64, offset: u64, data: &mut [u8]);
    fn write(&self, base: u64, offset: u64, data: &[u8]);
    /// The range was mapped at `base` (None: unmapped). PCI BARs move when the guest
    /// programs them; a handler with ioeventfds moves them along.
    fn mapped(&self, _base: Option<u64>) {}
}

/// A `devices` model behind its own mutex: the usual way a model sits on a bus.
pub struct Locked<T>(pub Arc<Mutex<T>>);

impl<T> Locked<T> {
    pub fn new(model: Arc<Mutex<T>>) -> Arc<Self> {
        Arc::new(Self(model))
    }
}

impl<T: BusDevice + Send> BusHandler for Locked<T> {
    fn read(&self, _base: u64, offset: u64, data: &mut [u8]) {
        lock(&self.0).read(offset, data);
    }
    fn write(&self, _base: u64, offset: u64, data: &[u8]) {
        lock(&self.0).write(offset, data);
    }
}

/// Lock a model, recovering from a poisoned mutex (a panic in another access must not
/// take the device away from the guest for good).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("{bus} range {base:#x}+{len:#x} ({name}) overlaps {other} at {other_base:#x}+{other_len:#x}")]
    Overlap {
        bus: &'static str,
        base: u64,
        len: u64,
        name: String,
        other: String,
        other_base: u64,
        other_len: u64,
    },
    #[error("{bus} range {base:#x}+{len:#x} is empty or wraps")]
    BadRange {
        bus: &'static str,
        base: u64,
        len: u64,
    },
    #[error("{bus}: nothing mapped at {base:#x}")]
    NotMapped { bus: &'static str, base: u64 },
}

#[derive(Clone)]
struct Entry {
    len: u64,
    name: String,
    handler: Arc<dyn BusHandler>,
}

/// One bus (the I/O port space or the MMIO space).
pub struct Bus {
    kind: &'static str,
    map: RwLock<BTreeMap<u64, Entry>>,
}

/// A mapped range, for `info mtree`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedRange {
    pub base: u64,
    pub len: u64,
    pub name: String,
}

impl Bus {
    pub fn new(kind: &'static str) -> Self {
        Self {
            kind,
            map: RwLock::new(BTreeMap::new()),
        }
    }

    /// Map `handler` at `[base, base + len)`.
    pub fn insert(
        &self,
        base: u64,
        len: u64,
        name: &str,
        handler: Arc<dyn BusHandler>,
    ) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len).is_none() {
            return Err(BusError::BadRange {
                bus: self.kind,
                base,
                len,
            });
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let clash = map
            .range(..base + len)
            .next_back()
            .filter(|(b, e)| **b + e.len > base);
        if let Some((b, e)) = clash {
            return Err(BusError::Overlap {
                bus: self.kind,
                base,
                len,
                name: name.to_string(),
                other: e.name.clone(),
                other_base: *b,
                other_len: e.len,
            });
        }
        map.insert(
            base,
            Entry {
                len,
                name: name.to_string(),
                handler,
            },
        );
        Ok(())
    }

    /// Unmap the range starting at `base`.
    pub fn remove(&self, base: u64) -> Result<(), BusError> {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.remove(&base).map(|_| ()).ok_or(BusError::NotMapped {
            bus: self.kind,
            base,
        })
    }

    /// Move a mapped range to a new base (a BAR reprogrammed by the guest). Moving onto an
    /// occupied range fails and leaves the old mapping in place.
    pub fn relocate(&self, old_base: u64, new_base: u64) -> Result<(), BusError> {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let entry = map.remove(&old_base).ok_or(BusError::NotMapped {
            bus: self.kind,
            base: old_base,
        })?;
        let clash = map
            .range(..new_base.saturating_add(entry.len))
            .next_back()
            .filter(|(b, e)| **b + e.len > new_base)
            .map(|(b, e)| (*b, e.clone()));
        if let Some((b, e)) = clash {
            let name = entry.name.clone();
            let len = entry.len;
            map.insert(old_base, entry);
            return Err(BusError::Overlap {
                bus: self.kind,
                base: new_base,
                len,
                name,
                other: e.name,
                other_base: b,
                other_len: e.len,
            });
        }
        map.insert(new_base, entry);
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, Arc<dyn BusHandler>)> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let (base, e) = map.range(..=addr).next_back()?;
        (addr - base < e.len).then(|| (*base, e.handler.clone()))
    }

    /// Dispatch a read. Returns false (and fills all-ones, like a floating bus) when
    /// nothing is mapped there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((base, h)) => {
                h.read(base, addr - base, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatch a write. Returns false when nothing is mapped there (the write is dropped).
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((base, h)) => {
                h.write(base, addr - base, data);
                true
            }
            None => false,
        }
    }

    /// Everything mapped, in address order.
    pub fn ranges(&self) -> Vec<MappedRange> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|(b, e)| MappedRange {
                base: *b,
                len: e.len,
                name: e.name.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Mutex<Vec<(u64, u64, Vec<u8>)>>);
    impl BusHandler for Echo {
        fn read(&self, base: u64, offset: u64, data: &mut [u8]) {
            data.fill((base + offset) as u8);
        }
        fn write(&self, base: u64, offset: u64, data: &[u8]) {
            self.0.lock().unwrap().push((base, offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_and_reports_unmapped() {
        let bus = Bus::new("pio");
        let dev = Arc::new(Echo(Mutex::new(vec![])));
        bus.insert(0x3f8, 8, "serial", dev.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b[0], 0xfd);
        assert!(bus.write(0x3f8, &[0x41]));
        assert_eq!(dev.0.lock().unwrap()[0], (0x3f8, 0, vec![0x41]));
        assert!(!bus.read(0x400, &mut b));
        assert_eq!(b[0], 0xff);
        assert!(!bus.read(0x3f7, &mut b));
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let bus = Bus::new("mmio");
        let dev = Arc::new(Echo(Mutex::new(vec![])));
        bus.insert(0x1000, 0x100, "a", dev.clone()).unwrap();
        assert!(matches!(
            bus.insert(0x10ff, 1, "b", dev.clone()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0xf00, 0x101, "c", dev.clone()),
            Err(BusError::Overlap { .. })
        ));
        bus.insert(0x1100, 1, "d", dev.clone()).unwrap();
        bus.insert(0xf00, 0x100, "e", dev).unwrap();
    }

    #[test]
    fn relocate_moves_or_keeps_old_mapping() {
        let bus = Bus::new("mmio");
        let dev = Arc::new(Echo(Mutex::new(vec![])));
        bus.insert(0x1000, 0x100, "bar0", dev.clone()).unwrap();
        bus.insert(0x3000, 0x100, "other", dev).unwrap();
        bus.relocate(0x1000, 0x2000).unwrap();
        let mut b = [0u8; 1];
        assert!(!bus.read(0x1000, &mut b));
        assert!(bus.read(0x2000, &mut b));
        assert!(bus.relocate(0x2000, 0x2f80).is_err());
        assert!(bus.read(0x2000, &mut b));
    }
}
