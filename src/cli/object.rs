//! `-object` and `-audiodev`: the user-created objects libvirt puts on every command line.
//!
//! - `secret` (libvirt's `masterKey0`): loaded and checked as QEMU loads it (`data=` or
//!   `file=`, `format=raw|base64`). Nothing in troupe takes a secret yet (no encrypted
//!   images, no TLS, no passwords by secret: every option that would name one is refused by
//!   its own parser), so a secret is defined and never read again.
//! - `memory-backend-ram|file|memfd`: the guest's RAM when `-machine memory-backend=ID`
//!   names it (anonymous memory, a file in or at `mem-path=`, or a memfd, with `share=`,
//!   `prealloc=`, `merge=`, `dump=`, memfd `hugetlb=`/`hugetlbsize=`). Its size must match
//!   `-m`. A backend nothing uses is refused: troupe has no NUMA nodes or memory devices
//!   that could take one; so are `host-nodes=` and a `policy=` other than `default`.
//! - `-audiodev driver=none`: an audio backend that discards. troupe has no sound card, so
//!   no audio exists to play or capture; other drivers are refused.

use thiserror::Error;

use super::options::{is_help, Opts, OptsError};
use crate::config::RamSource;

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
    /// `-mem-path` and `-machine memory-backend=` together.
    #[error("'-mem-path' can't be used together with '-machine memory-backend'")]
    MemPathWithBackend,
    /// A memory backend nothing uses.
    #[error("memory backend '{0}' is not used by -machine memory-backend= or a -device pc-dimm (troupe has no NUMA nodes to take it)")]
    BackendUnused(String),
    /// `-vnc audiodev=` naming no `-audiodev`.
    #[error("audiodev '{0}' not found")]
    AudiodevNotFound(String),
    /// A QOM type troupe does not create.
    #[error("object type '{0}' is not supported by troupe (secret, memory-backend-ram, memory-backend-file, memory-backend-memfd, tls-creds-x509)")]
    Type(String),
    /// TLS credentials for a client: troupe only serves.
    #[error("tls-creds-x509 '{id}': endpoint '{endpoint}' is not supported by troupe (only endpoint=server: troupe's TLS is its VNC server's)")]
    TlsEndpoint { id: String, endpoint: String },
    /// A TLS property troupe cannot honour.
    #[error("tls-creds-x509 '{id}': {key}={value} is not supported by troupe")]
    TlsProperty {
        id: String,
        key: &'static str,
        value: String,
    },
    /// A credentials file missing.
    #[error("tls-creds-x509 '{id}': cannot read '{path}': {reason}")]
    TlsFile {
        id: String,
        path: String,
        reason: String,
    },
    /// `-vnc tls-creds=` naming no credentials.
    #[error("TLS credentials '{0}' not found (create them with -object tls-creds-x509,id={0},dir=...,endpoint=server)")]
    TlsCredsNotFound(String),
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
    /// A memory backend property troupe cannot honour.
    #[error("memory backend '{id}': {key}={value} is not supported by troupe ({why})")]
    BackendProperty {
        /// The backend.
        id: String,
        /// The property.
        key: &'static str,
        /// Its value.
        value: String,
        /// Why not.
        why: &'static str,
    },
    /// `hugetlbsize=` without `hugetlb=on`.
    #[error("memory backend '{0}': hugetlbsize= needs hugetlb=on")]
    HugetlbSize(String),
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
    /// `memory-backend-ram|file|memfd,id=ID,size=SIZE,...`.
    MemoryBackend(MemoryBackend),
    /// `tls-creds-x509,id=ID,dir=DIR,endpoint=server[,verify-peer=on|off]`, its files checked.
    TlsCreds(crate::config::TlsCreds),
}

/// A `-object memory-backend-*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryBackend {
    /// `id=`.
    pub id: String,
    /// `size=` in bytes.
    pub size: u64,
    /// The memory itself.
    pub source: RamSource,
    /// `share=` (default off).
    pub share: bool,
    /// `prealloc=` (default: `-mem-prealloc`).
    pub prealloc: Option<bool>,
    /// `merge=` (default: `-machine mem-merge=`).
    pub merge: Option<bool>,
    /// `dump=` (default: `-machine dump-guest-core=`).
    pub dump: Option<bool>,
}

impl ObjectSpec {
    /// The object's `id=`.
    pub fn id(&self) -> &str {
        match self {
            Self::Secret { id } => id,
            Self::MemoryBackend(m) => &m.id,
            Self::TlsCreds(t) => &t.id,
        }
    }
}

/// `-object help` (or `-object TYPE,help`).
pub fn object_help() -> String {
    "List of user creatable objects:\n  memory-backend-file\n  memory-backend-memfd\n  memory-backend-ram\n  secret\n  tls-creds-x509\n"
        .to_string()
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
        "memory-backend-ram" | "memory-backend-file" | "memory-backend-memfd" => {
            ObjectSpec::MemoryBackend(parse_memory_backend(&ty, id, &mut opts)?)
        }
        "tls-creds-x509" => ObjectSpec::TlsCreds(parse_tls_creds(id, &mut opts)?),
        other => return Err(ObjectError::Type(other.to_string())),
    };
    opts.finish()?;
    Ok(spec)
}

/// The files a server's x509 credentials are in (QEMU's names), all required.
const TLS_FILES: [&str; 3] = ["ca-cert.pem", "server-cert.pem", "server-key.pem"];

/// `tls-creds-x509`: a server's credentials in `dir=` (troupe is never a TLS client).
fn parse_tls_creds(id: String, opts: &mut Opts) -> Result<crate::config::TlsCreds, ObjectError> {
    let endpoint = opts.str("endpoint").unwrap_or_else(|| "client".into());
    if endpoint != "server" {
        return Err(ObjectError::TlsEndpoint { id, endpoint });
    }
    let dir = std::path::PathBuf::from(opts.required("dir")?);
    let verify_peer = opts.flag("verify-peer")?.unwrap_or(true);
    for key in ["priority", "sanity-check", "loaded", "passwordid"] {
        if let Some(value) = opts.str(key) {
            return Err(ObjectError::TlsProperty { id, key, value });
        }
    }
    for f in TLS_FILES {
        let path = dir.join(f);
        if let Err(e) = std::fs::metadata(&path) {
            return Err(ObjectError::TlsFile {
                id,
                path: path.display().to_string(),
                reason: super::host::os_error_text(&e),
            });
        }
    }
    Ok(crate::config::TlsCreds {
        id,
        dir,
        verify_peer,
    })
}

/// The properties of `memory-backend-TYPE` (`ty` is one of the three).
fn parse_memory_backend(
    ty: &str,
    id: String,
    opts: &mut Opts,
) -> Result<MemoryBackend, ObjectError> {
    let size = opts.required("size")?;
    let size = super::options::parse_size(&size, 1).map_err(|_| OptsError::NotNumber {
        key: "size".into(),
        value: size.clone(),
    })?;
    if size == 0 {
        return Err(ObjectError::BackendSize(id));
    }
    let refuse = |id: &str, key: &'static str, value: String, why: &'static str| {
        ObjectError::BackendProperty {
            id: id.to_string(),
            key,
            value,
            why,
        }
    };
    // NUMA binding: troupe has no NUMA support to honour it.
    if let Some(v) = opts.str("host-nodes") {
        return Err(refuse(
            &id,
            "host-nodes",
            v,
            "troupe does not bind guest RAM to host NUMA nodes",
        ));
    }
    if let Some(v) = opts.str("policy") {
        if v != "default" {
            return Err(refuse(
                &id,
                "policy",
                v,
                "troupe does not bind guest RAM to host NUMA nodes; only policy=default",
            ));
        }
    }
    // Threads that preallocate: troupe preallocates on one thread; the count changes nothing
    // the guest sees.
    let _ = opts.uint("prealloc-threads", 1, u64::from(u32::MAX))?;
    // Only names the RAM block in QEMU's migration stream.
    let _ = opts.flag("x-use-canonical-path-for-ramblock-id")?;
    let share = opts.flag("share")?.unwrap_or(false);
    let prealloc = opts.flag("prealloc")?;
    let merge = opts.flag("merge")?;
    let dump = opts.flag("dump")?;
    let source = match ty {
        "memory-backend-file" => {
            let path = opts.required("mem-path")?;
            for key in ["pmem", "readonly", "discard-data"] {
                if opts.flag(key)? == Some(true) {
                    return Err(refuse(
                        &id,
                        key,
                        "on".into(),
                        "guest RAM is a plain read-write file mapping",
                    ));
                }
            }
            let _ = opts.uint("align", 1, u64::MAX)?;
            RamSource::File(path.into())
        }
        "memory-backend-memfd" => {
            let hugetlb = opts.flag("hugetlb")?.unwrap_or(false);
            let hugetlbsize = match opts.str("hugetlbsize") {
                None => 0,
                Some(v) => super::options::parse_size(&v, 1).map_err(|_| OptsError::NotNumber {
                    key: "hugetlbsize".into(),
                    value: v.clone(),
                })?,
            };
            if hugetlbsize != 0 && !hugetlb {
                return Err(ObjectError::HugetlbSize(id));
            }
            // Sealing (default on) keeps the file's size fixed; troupe always seals.
            let _ = opts.flag("seal")?;
            RamSource::Memfd {
                hugetlb,
                hugetlbsize,
            }
        }
        _ => RamSource::Anonymous,
    };
    Ok(MemoryBackend {
        id,
        size,
        source,
        share,
        prealloc,
        merge,
        dump,
    })
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
            Ok(ObjectSpec::MemoryBackend(MemoryBackend {
                id: "pc.ram".into(),
                size: 256 << 20,
                source: RamSource::Anonymous,
                share: false,
                prealloc: None,
                merge: None,
                dump: None,
            }))
        );
        assert_eq!(
            object("memory-backend-ram,id=m,size=1G"),
            Ok(ObjectSpec::MemoryBackend(MemoryBackend {
                id: "m".into(),
                size: 1 << 30,
                source: RamSource::Anonymous,
                share: false,
                prealloc: None,
                merge: None,
                dump: None,
            }))
        );
        assert_eq!(
            object("memory-backend-file,id=m,size=1G,mem-path=/dev/hugepages,share=on,prealloc=on,merge=off,dump=off"),
            Ok(ObjectSpec::MemoryBackend(MemoryBackend {
                id: "m".into(),
                size: 1 << 30,
                source: RamSource::File("/dev/hugepages".into()),
                share: true,
                prealloc: Some(true),
                merge: Some(false),
                dump: Some(false),
            }))
        );
        assert_eq!(
            object("memory-backend-memfd,id=m,size=1G,hugetlb=on,hugetlbsize=2M,seal=on"),
            Ok(ObjectSpec::MemoryBackend(MemoryBackend {
                id: "m".into(),
                size: 1 << 30,
                source: RamSource::Memfd {
                    hugetlb: true,
                    hugetlbsize: 2 << 20
                },
                share: false,
                prealloc: None,
                merge: None,
                dump: None,
            }))
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
            object("memory-backend-epc,id=m,size=1G"),
            Err("object type 'memory-backend-epc' is not supported by troupe (secret, memory-backend-ram, memory-backend-file, memory-backend-memfd, tls-creds-x509)".into())
        );
        assert_eq!(
            object("memory-backend-ram,id=m,size=1G,host-nodes=0-1,policy=bind"),
            Err("memory backend 'm': host-nodes=0-1 is not supported by troupe (troupe does not bind guest RAM to host NUMA nodes)".into())
        );
        assert_eq!(
            object("memory-backend-ram,id=m,size=1G,policy=preferred"),
            Err("memory backend 'm': policy=preferred is not supported by troupe (troupe does not bind guest RAM to host NUMA nodes; only policy=default)".into())
        );
        assert_eq!(
            object("memory-backend-file,id=m,size=1G,mem-path=/x,pmem=on"),
            Err("memory backend 'm': pmem=on is not supported by troupe (guest RAM is a plain read-write file mapping)".into())
        );
        assert_eq!(
            object("memory-backend-memfd,id=m,size=1G,hugetlbsize=2M"),
            Err("memory backend 'm': hugetlbsize= needs hugetlb=on".into())
        );
        assert!(object("memory-backend-ram,id=m,size=1G,hugetlb=on")
            .unwrap_err()
            .starts_with("parameter 'hugetlb' is not supported"));
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
