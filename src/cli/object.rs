//! `-object` and `-audiodev`: the user-created objects libvirt puts on every command line.
//!
//! - `secret` (libvirt's `masterKey0`): loaded and checked as QEMU loads it (`data=` or
//!   `file=`, `format=raw|base64`). Nothing in troupe takes a secret yet (no encrypted
//!   images, no TLS, no passwords by secret: every option that would name one is refused by
//!   its own parser), so a secret is defined and never read again.
//! - `memory-backend-ram`: the guest's RAM when `-machine memory-backend=ID` names it, which
//!   is what troupe's RAM always is (private anonymous memory). Its size must match `-m`.
//!   A backend nothing uses is refused: troupe has no NUMA nodes or memory devices that
//!   could take one.
//! - `-audiodev driver=none`: an audio backend that discards. troupe has no sound card, so
//!   no audio exists to play or capture; other drivers are refused.

use thiserror::Error;

use super::options::{is_help, Opts, OptsError};

/// Ways `-object`/`-audiodev` can be wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ObjectError {
    /// A malformed option string or value.
    #[error(transparent)]
    Opts(#[from] OptsError),
    /// Two objects (or two audiodevs) with one id.
    #[error("duplicate ID '{0}'")]
    DuplicateId(String),
    /// `-machine memory-backend=` naming no memory backend.
    #[error("memory backend '{0}' not found (create it with -object memory-backend-ram,id={0},size=...)")]
    BackendNotFound(String),
    /// `-m` and the memory backend disagree.
    #[error("memory backend '{id}' has {backend} bytes but -m asks for {memory}")]
    BackendMismatch {
        /// The backend.
        id: String,
        /// Its size.
        backend: u64,
        /// `-m` in bytes.
        memory: u64,
    },
    /// A memory backend nothing uses.
    #[error("memory backend '{0}' is not used by -machine memory-backend= (troupe has no NUMA nodes or memory devices to take it)")]
    BackendUnused(String),
    /// `-vnc audiodev=` naming no `-audiodev`.
    #[error("audiodev '{0}' not found")]
    AudiodevNotFound(String),
    /// A QOM type troupe does not create.
    #[error("object type '{0}' is not supported by troupe (secret, memory-backend-ram)")]
    Type(String),
    /// A secret with both or neither of `data=` and `file=`.
    #[error("secret '{0}': exactly one of data= and file= is required")]
    SecretSource(String),
    /// A secret file that cannot be read.
    #[error("secret '{id}': cannot read '{path}': {reason}")]
    SecretFile {
        /// The secret's id.
        id: String,
        /// The file.
        path: String,
        /// The OS error text.
        reason: String,
    },
    /// `format=base64` data that is not base64.
    #[error("secret '{0}': data is not valid base64")]
    SecretBase64(String),
    /// An encrypted secret (`keyid=`, `iv=`).
    #[error("secret '{0}': encrypted secrets (keyid=, iv=) are not supported by troupe")]
    SecretEncrypted(String),
    /// A memory backend size of zero.
    #[error("memory backend '{0}': size must be greater than zero")]
    BackendSize(String),
    /// `-audiodev` with a driver that would play sound.
    #[error(
        "audio driver '{0}' is not supported by troupe (it has no sound card; only driver=none)"
    )]
    AudioDriver(String),
}

/// One `-object`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectSpec {
    /// `secret,id=ID,...`, checked.
    Secret {
        /// `id=`.
        id: String,
    },
    /// `memory-backend-ram,id=ID,size=SIZE`.
    MemoryBackendRam {
        /// `id=`.
        id: String,
        /// `size=` in bytes.
        size: u64,
    },
}

impl ObjectSpec {
    /// The object's `id=`.
    pub fn id(&self) -> &str {
        match self {
            Self::Secret { id } | Self::MemoryBackendRam { id, .. } => id,
        }
    }
}

/// `-object help` (or `-object TYPE,help`).
pub fn object_help() -> String {
    "List of user creatable objects:\n  memory-backend-ram\n  secret\n".to_string()
}

/// `-object [qom-type=]TYPE,id=ID,...` (or its JSON form).
pub fn parse_object(mut opts: Opts) -> Result<ObjectSpec, ObjectError> {
    let ty = opts.required("qom-type")?;
    let id = opts
        .id("id")?
        .ok_or_else(|| OptsError::Missing("id".into()))?;
    let spec = match ty.as_str() {
        "secret" => {
            if opts.str("keyid").is_some() || opts.str("iv").is_some() {
                return Err(ObjectError::SecretEncrypted(id));
            }
            let base64 = opts
                .choice("format", &[("raw", false), ("base64", true)])?
                .unwrap_or(false);
            let data = match (opts.str("data"), opts.str("file")) {
                (Some(d), None) => d.into_bytes(),
                (None, Some(path)) => {
                    std::fs::read(&path).map_err(|e| ObjectError::SecretFile {
                        id: id.clone(),
                        reason: super::host::os_error_text(&e),
                        path,
                    })?
                }
                _ => return Err(ObjectError::SecretSource(id)),
            };
            if base64 && !is_base64(&data) {
                return Err(ObjectError::SecretBase64(id));
            }
            ObjectSpec::Secret { id }
        }
        "memory-backend-ram" => {
            let size = opts.required("size")?;
            let size = super::options::parse_size(&size, 1).map_err(|_| OptsError::NotNumber {
                key: "size".into(),
                value: size.clone(),
            })?;
            if size == 0 {
                return Err(ObjectError::BackendSize(id));
            }
            ObjectSpec::MemoryBackendRam { id, size }
        }
        other => return Err(ObjectError::Type(other.to_string())),
    };
    opts.finish()?;
    Ok(spec)
}

/// Standard base64 (RFC 4648 §4) with `=` padding, surrounding whitespace allowed.
fn is_base64(data: &[u8]) -> bool {
    let text: Vec<u8> = data
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if !text.len().is_multiple_of(4) {
        return false;
    }
    let body_len = text.len() - text.iter().rev().take_while(|b| **b == b'=').count();
    text.len() - body_len <= 2
        && text[..body_len]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// `-audiodev [driver=]none,id=ID`: returns the id. `None` for `-audiodev help`.
pub fn parse_audiodev(mut opts: Opts) -> Result<Option<String>, ObjectError> {
    let driver = opts.required("driver")?;
    if is_help(&driver) {
        return Ok(None);
    }
    let id = opts
        .id("id")?
        .ok_or_else(|| OptsError::Missing("id".into()))?;
    if driver != "none" {
        return Err(ObjectError::AudioDriver(driver));
    }
    opts.finish()?;
    Ok(Some(id))
}

/// `-audiodev help`.
pub fn audiodev_help() -> String {
    "Available audio drivers:\nnone\n".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(s: &str) -> Result<ObjectSpec, String> {
        let o = if s.starts_with('{') {
            Opts::from_json(s)
        } else {
            Opts::parse(s, Some("qom-type"))
        }
        .unwrap();
        parse_object(o).map_err(|e| e.to_string())
    }

    #[test]
    fn objects_libvirt_writes() {
        let dir = std::env::temp_dir().join(format!("troupe-secret-{}", std::process::id()));
        std::fs::write(&dir, [7u8; 32]).unwrap();
        let json = format!(
            r#"{{"qom-type":"secret","id":"masterKey0","format":"raw","file":"{}"}}"#,
            dir.display()
        );
        assert_eq!(
            object(&json),
            Ok(ObjectSpec::Secret {
                id: "masterKey0".into()
            })
        );
        std::fs::remove_file(&dir).unwrap();
        assert!(object(&json).unwrap_err().starts_with(&format!(
            "secret 'masterKey0': cannot read '{}': No such file",
            dir.display()
        )));
        assert_eq!(
            object(r#"{"qom-type":"memory-backend-ram","id":"pc.ram","size":268435456}"#),
            Ok(ObjectSpec::MemoryBackendRam {
                id: "pc.ram".into(),
                size: 256 << 20
            })
        );
        assert_eq!(
            object("memory-backend-ram,id=m,size=1G"),
            Ok(ObjectSpec::MemoryBackendRam {
                id: "m".into(),
                size: 1 << 30
            })
        );
    }

    #[test]
    fn objects_troupe_cannot_honour_are_refused_by_name() {
        assert_eq!(
            object("secret,id=s,data=x,file=/y"),
            Err("secret 's': exactly one of data= and file= is required".into())
        );
        assert_eq!(
            object("secret,id=s,data=abc,format=base64"),
            Err("secret 's': data is not valid base64".into())
        );
        assert_eq!(
            object("secret,id=s,data=YWJj,format=base64").map(|_| ()),
            Ok(())
        );
        assert_eq!(
            object("secret,id=s,data=x,keyid=k,iv=i"),
            Err("secret 's': encrypted secrets (keyid=, iv=) are not supported by troupe".into())
        );
        assert_eq!(
            object("memory-backend-file,id=m,size=1G,mem-path=/dev/shm"),
            Err("object type 'memory-backend-file' is not supported by troupe (secret, memory-backend-ram)".into())
        );
        assert!(object("memory-backend-ram,id=m,size=1G,share=on")
            .unwrap_err()
            .starts_with("parameter 'share' is not supported"));
        assert_eq!(
            object("memory-backend-ram,id=m,size=0"),
            Err("memory backend 'm': size must be greater than zero".into())
        );
        let audio = |s: &str| {
            parse_audiodev(Opts::parse(s, Some("driver")).unwrap()).map_err(|e| e.to_string())
        };
        assert_eq!(audio("none,id=a1"), Ok(Some("a1".into())));
        assert_eq!(
            audio("pa,id=a1"),
            Err("audio driver 'pa' is not supported by troupe (it has no sound card; only driver=none)".into())
        );
        assert!(audio("none,id=a1,out.frequency=8000")
            .unwrap_err()
            .starts_with("parameter 'out.frequency' is not supported"));
    }
}
