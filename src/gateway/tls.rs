//! TLS for the gateway (rustls, the ring provider): on when `gateway.tls_cert_file` and
//! `gateway.tls_key_file` are both set; plain HTTP otherwise.

use crate::config::GatewayConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("gateway.tls_cert_file and gateway.tls_key_file go together: set both or neither")]
    Half,
    #[error("{key} {path}: cannot read a PEM {what} from it")]
    Pem {
        key: &'static str,
        path: String,
        what: &'static str,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("the TLS certificate and key do not make a server configuration")]
    Config(#[source] rustls::Error),
}

/// The acceptor the configuration asks for, or `None` for plain HTTP.
pub fn acceptor(config: &GatewayConfig) -> Result<Option<TlsAcceptor>, TlsError> {
    let (cert, key) = match (&config.tls_cert_file, &config.tls_key_file) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        _ => return Err(TlsError::Half),
    };
    let pem = |key: &'static str, path: &std::path::Path, what: &'static str| {
        let path = path.display().to_string();
        move |source| TlsError::Pem {
            key,
            path,
            what,
            source,
        }
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(pem("gateway.tls_cert_file", cert, "certificate"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem("gateway.tls_cert_file", cert, "certificate"))?;
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(pem(
        "gateway.tls_key_file",
        key,
        "private key",
    ))?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(TlsError::Config)?
    .with_no_client_auth()
    .with_single_cert(certs, private_key)
    .map_err(TlsError::Config)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}
