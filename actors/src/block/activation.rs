//! Who may write an image, across a migration: the source's drives are *active* (they
//! hold the image locks) until the switch-over, when they write everything back and let
//! go; the destination opens its drives *inactive* ([`super::open_inactive`]) and
//! activates them once the whole stream is in: it takes the locks and rereads the image's
//! metadata (a qcow2 image's tables changed under it while the source ran). A migration
//! that fails after the source let go activates the source's drives again. QEMU does the
//! same (`bdrv_inactivate_all` / `bdrv_activate_all`), so its locks and troupe's agree.

use std::path::PathBuf;
use std::sync::{Arc, Weak};

use super::lock::{ImageLock, LockError};
use super::qcow2_snapshot::SnapshotError;
use super::snapshot::{ask, SnapshotJob, SnapshotOp};
use super::BlockHandle;

/// Why a drive could not change hands.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("{path}: writing it back before letting it go: {source}")]
    Sync {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: rereading the image: {source}")]
    Reopen {
        path: PathBuf,
        #[source]
        source: SnapshotError,
    },
    #[error("Device '{0}': its block backend has stopped")]
    Gone(String),
}

/// The part of a drive that activates and inactivates it. It holds no request channel and
/// no strong reference to the image's file, so keeping it (in the device tree) never keeps
/// the drive's engine or image open: once the drive is gone (a CD-ROM's disc changed) there
/// is nothing to hand over.
#[derive(Clone)]
pub struct Activation {
    id: String,
    path: PathBuf,
    lock: Weak<ImageLock>,
    /// qcow2 images the guest writes: their cached metadata is written back and reread.
    snap: Option<crossbeam_channel::Sender<SnapshotJob>>,
    doorbell: Option<Arc<vmm_sys_util::eventfd::EventFd>>,
}

impl std::fmt::Debug for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Activation({}, active={})", self.id, self.is_active())
    }
}

impl Activation {
    pub fn is_active(&self) -> bool {
        self.lock.upgrade().is_some_and(|l| l.is_held())
    }

    /// The drive's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Close and reopen the image on its engine (metadata written back, then reread).
    async fn reopen(&self) -> Result<(), ActivationError> {
        let Some(tx) = &self.snap else {
            return Ok(());
        };
        match ask(tx, self.doorbell.as_deref(), &self.id, SnapshotOp::Reopen).await {
            None => Err(ActivationError::Gone(self.id.clone())),
            Some(Err(source)) => Err(ActivationError::Reopen {
                path: self.path.clone(),
                source,
            }),
            Some(Ok(_)) => Ok(()),
        }
    }

    /// Write everything back and let the image go (the VM must be paused, with no
    /// request in flight). Nothing to do if it is inactive already.
    pub async fn inactivate(&self) -> Result<(), ActivationError> {
        let Some(lock) = self.lock.upgrade().filter(|l| l.is_held()) else {
            return Ok(());
        };
        self.reopen().await?;
        lock.release().map_err(|source| ActivationError::Sync {
            path: self.path.clone(),
            source,
        })
    }

    /// Take the image (its locks) and reread what another process wrote to it. Nothing
    /// to do if it is active already.
    pub async fn activate(&self) -> Result<(), ActivationError> {
        let Some(lock) = self.lock.upgrade().filter(|l| !l.is_held()) else {
            return Ok(());
        };
        lock.acquire()?;
        if let Err(e) = self.reopen().await {
            let _ = lock.release();
            return Err(e);
        }
        Ok(())
    }
}

impl BlockHandle {
    /// How the supervisor hands this drive's image over in a migration.
    pub fn activation(&self) -> Activation {
        Activation {
            id: self.id.clone(),
            path: self.path.clone(),
            lock: Arc::downgrade(&self.lock),
            snap: self.snap.clone(),
            doorbell: self.doorbell.clone(),
        }
    }
}
