//! TLS for the Postgres door: a rustls acceptor built from `[server.tls]`
//! (PEM certificate chain and private key). Clients ask with SSLRequest; the
//! door answers `S` and handshakes when TLS is configured, `N` otherwise.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("read TLS certificate {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("read TLS key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

pub fn acceptor(cfg: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert { path: cfg.cert_path.display().to_string(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Cert { path: cfg.cert_path.display().to_string(), reason: "no certificate".into() });
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key_path)
        .map_err(|e| TlsError::Key { path: cfg.key_path.display().to_string(), reason: e.to_string() })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
