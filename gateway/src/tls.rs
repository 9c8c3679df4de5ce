//! Optional TLS on the public listener (`[tls]` in `gateway.toml`).
//!
//! The certificate chain and key are read once at start (by
//! `stickyio_shared::config::sources`, which `check` uses too); a client gets
//! `limits.header_read_timeout` to finish its TLS handshake, the same bound a
//! plain client has to send its request head, so a slow handshake cannot hold
//! a connection open either. Websocket upgrades and long-polls then run over
//! the TLS stream exactly as over plain TCP.

use std::path::PathBuf;
use std::sync::Arc;

use stickyio_shared::config::sources::TlsFiles;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.cert_file {}: {reason}", .path.display())]
    Certificate { path: PathBuf, reason: String },
    #[error("tls.key_file {}: {reason}", .path.display())]
    Key { path: PathBuf, reason: String },
    #[error("tls: the certificate and key do not make a server config: {0}")]
    Config(#[source] tokio_rustls::rustls::Error),
}

/// A TLS acceptor from the PEM text of `[tls]`, offering HTTP/1.1 by ALPN.
pub fn acceptor(tls: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let cert_error = |reason: String| TlsError::Certificate {
        path: tls.cert_file.clone(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&tls.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no CERTIFICATE block found".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_slice(&tls.key_pem).map_err(|e| TlsError::Key {
        path: tls.key_file.clone(),
        reason: e.to_string(),
    })?;
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(cert_pem: &str, key_pem: &str) -> TlsFiles {
        TlsFiles {
            cert_file: PathBuf::from("/etc/cert.pem"),
            cert_pem: cert_pem.as_bytes().to_vec(),
            key_file: PathBuf::from("/etc/key.pem"),
            key_pem: key_pem.as_bytes().to_vec(),
        }
    }

    // A missing or empty file is refused before this, by name, where the
    // files are read (`sources`); here what they hold.
    #[test]
    fn garbage_files_are_named() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert_pem, key_pem) = (cert.cert.pem(), cert.key_pair.serialize_pem());
        let garbage = "not a pem file\n";

        let err = acceptor(&files(&cert_pem, garbage))
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("tls.key_file /etc/key.pem: "), "{err}");
        let err = acceptor(&files(garbage, &key_pem))
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            "tls.cert_file /etc/cert.pem: no CERTIFICATE block found"
        );
        assert!(acceptor(&files(&cert_pem, &key_pem)).is_ok());
    }
}
