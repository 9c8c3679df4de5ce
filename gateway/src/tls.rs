//! Optional TLS on the public listener (`[tls]` in `gateway.toml`).
//!
//! The certificate chain and key are read once at start; a client gets
//! `limits.header_read_timeout` to finish its TLS handshake, the same bound a
//! plain client has to send its request head, so a slow handshake cannot hold
//! a connection open either. Websocket upgrades and long-polls then run over
//! the TLS stream exactly as over plain TCP.

use std::path::PathBuf;
use std::sync::Arc;

use stickyio_shared::config::gateway::TlsConfig;
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

/// A TLS acceptor from the PEM files of `tls`, offering HTTP/1.1 by ALPN.
pub fn acceptor(tls: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let cert_error = |reason: String| TlsError::Certificate {
        path: tls.cert_file.clone(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(&tls.cert_file)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no CERTIFICATE block found".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| TlsError::Key {
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

    fn dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("stickyio-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn missing_and_garbage_files_are_named() {
        let dir = dir();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a pem file\n").unwrap();
        let tls = TlsConfig {
            cert_file: dir.join("absent.pem"),
            key_file: garbage.clone(),
        };
        let err = acceptor(&tls).err().unwrap().to_string();
        assert!(err.starts_with("tls.cert_file "), "{err}");
        assert!(err.contains("absent.pem"), "{err}");

        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert_file = dir.join("cert.pem");
        std::fs::write(&cert_file, cert.cert.pem()).unwrap();
        let tls = TlsConfig {
            cert_file: cert_file.clone(),
            key_file: garbage,
        };
        let err = acceptor(&tls).err().unwrap().to_string();
        assert!(err.starts_with("tls.key_file "), "{err}");

        let tls = TlsConfig {
            cert_file: dir.join("garbage.pem"),
            key_file: cert_file,
        };
        let err = acceptor(&tls).err().unwrap().to_string();
        assert!(err.contains("no CERTIFICATE block found"), "{err}");

        let key_file = dir.join("key.pem");
        std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
        let tls = TlsConfig {
            cert_file: dir.join("cert.pem"),
            key_file,
        };
        assert!(acceptor(&tls).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
