//! VNC over TLS, as QEMU's `-vnc ...,tls-creds=ID` with `-object tls-creds-x509`: the
//! VeNCrypt security type (RFB security type 19, version 0.2) with the x509 subtypes. The
//! server's certificate and key (and the CA that signs clients' certificates, when
//! `verify-peer=on`) are read from QEMU's file names in the credentials' directory.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// RFB security type VeNCrypt.
pub const VENCRYPT: u8 = 19;
/// VeNCrypt subtypes: TLS with x509 certificates, then no authentication / VNC's.
pub const X509_NONE: u32 = 260;
pub const X509_VNC: u32 = 261;

/// Ways loading the credentials can fail.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error("{path}: no certificate in it")]
    NoCertificate { path: String },
    #[error("TLS credentials in {dir}: {why}")]
    Config { dir: String, why: String },
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file = |why: String| TlsError::File {
        path: path.display().to_string(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

/// The server's TLS configuration from `dir` (`ca-cert.pem`, `server-cert.pem`,
/// `server-key.pem`); with `verify_peer`, clients must present a certificate the CA signed.
pub fn server_config(dir: &Path, verify_peer: bool) -> Result<Arc<ServerConfig>, TlsError> {
    // ring, not aws-lc-rs (whose build needs cmake): rustls 0.23.48 deprecates it for its
    // lack of post-quantum key exchange, which VNC viewers do not offer anyway.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = |why: String| TlsError::Config {
        dir: dir.display().to_string(),
        why,
    };
    let ca = certs(&dir.join("ca-cert.pem"))?;
    let chain = certs(&dir.join("server-cert.pem"))?;
    let key_path = dir.join("server-key.pem");
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| TlsError::File {
        path: key_path.display().to_string(),
        why: e.to_string(),
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| config(e.to_string()))?;
    let builder = if verify_peer {
        let mut roots = RootCertStore::empty();
        for c in ca {
            roots
                .add(c)
                .map_err(|e| config(format!("ca-cert.pem: {e}")))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| config(e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| config(format!("server-cert.pem and server-key.pem: {e}")))?;
    // No TLS 1.3 session tickets (VNC viewers do not resume sessions): TigerVNC 1.12 reads
    // the tickets and the security result behind them in one go and then waits forever
    // for data its TLS library already holds.
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}
