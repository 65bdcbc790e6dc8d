//! TLS for `wss://` endpoints: rustls with the ring provider, trusting the
//! Mozilla root certificates (webpki-roots) plus any the config adds.
//! Built once per client and reused for every reconnect.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use tokio_tungstenite::Connector;

use crate::config::ClientConfig;
use crate::error::ConnectError;

pub(crate) fn connector(config: &ClientConfig) -> Result<Connector, ConnectError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for der in &config.tls_roots {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| ConnectError::Tls(format!("invalid root certificate: {e}")))?;
    }
    // An explicit provider, so nothing depends on which rustls crypto
    // backend other crates in the build happen to enable.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Connector::Rustls(Arc::new(tls)))
}
