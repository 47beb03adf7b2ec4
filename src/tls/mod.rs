//! TLS on both sides: the local certificate clients connect to (made and kept by `local`,
//! served here by [`LocalCert`]), and verification of providers ([`UpstreamTls`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

mod local;
pub use local::{
    CertAction, DEFAULT_OVERLAP_DAYS, LocalCertPaths, Rotated, cert_names, cert_names_for, describe, ensure_local_cert,
    export_pem, rotate_ca, set_recorded_expiry,
};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("cannot create the local certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: not a usable PEM certificate or key ({reason})")]
    Pem { path: PathBuf, reason: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// Half of the local CA is gone; making a new one would break every client that trusts it.
    #[error(
        "{missing} is missing, so the local certificate authority in {} cannot sign certificates; coi-proxy does not \
         replace it on its own, as every mail client that trusts it would then refuse the connection. Restore the file \
         from a backup, or run `coi-proxy cert rotate` to make a new CA (then every client must trust the new one: \
         `coi-proxy cert export`, `coi-proxy cert install`)", ca.parent().unwrap_or(ca).display()
    )]
    CaMissing { missing: PathBuf, ca: PathBuf },
    #[error(
        "the local certificate authority cannot be used: {path}: {reason}; restore its files from a backup, or run \
         `coi-proxy cert rotate` to make a new CA (then every client must trust the new one)"
    )]
    CaUnusable { path: PathBuf, reason: String },
}

/// The server-side TLS configuration from the files under `state_dir`.
pub fn server_config(state_dir: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    local_server_config(state_dir).map(|(config, _)| config)
}

/// The server-side TLS configuration and the handle that swaps its certificate after a renewal.
pub fn local_server_config(state_dir: &Path) -> Result<(Arc<rustls::ServerConfig>, Arc<LocalCert>), TlsError> {
    let cert = Arc::new(LocalCert { current: RwLock::new(LocalCert::read(state_dir)?) });
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert.clone());
    config.alpn_protocols = vec![b"imap".to_vec(), b"smtp".to_vec()];
    Ok((Arc::new(config), cert))
}

/// The certificate the listeners present. A renewal while the daemon runs swaps it here, so
/// every listener serves the new one from the next handshake on, without a restart.
#[derive(Debug)]
pub struct LocalCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl LocalCert {
    fn read(state_dir: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
        let paths = LocalCertPaths::new(state_dir);
        let certs = local::read_chain(&paths)?;
        let key = PrivateKeyDer::from_pem_file(&paths.key).map_err(|e| pem_error(&paths.key, e))?;
        Ok(Arc::new(CertifiedKey::from_der(certs, key, &provider())?))
    }

    /// Puts the files under `state_dir` in force (after [`ensure_local_cert`] renewed them, or
    /// `cert rotate` replaced them); whether the chain served changed.
    pub fn reload(&self, state_dir: &Path) -> Result<bool, TlsError> {
        let fresh = LocalCert::read(state_dir)?;
        let mut current = self.current.write().expect("cert lock");
        let changed = current.cert != fresh.cert;
        *current = fresh;
        Ok(changed)
    }
}

impl ResolvesServerCert for LocalCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("cert lock").clone())
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Client configurations for providers, one per extra trust anchor, built once: loading the
/// platform's roots is too slow to do per connection.
#[derive(Default)]
pub struct UpstreamTls {
    configs: Mutex<HashMap<Option<PathBuf>, Arc<rustls::ClientConfig>>>,
}

/// The TLS setup of the proxy's HTTPS clients (push services, OAuth2 identity providers,
/// autoconfig): platform trust, and ALPN for HTTP/2 and HTTP/1.1.
pub fn https_client_config() -> Result<rustls::ClientConfig, TlsError> {
    let mut config = (*UpstreamTls::default().config(None)?).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

impl UpstreamTls {
    /// Forgets the built configurations, so a reload re-reads every `ca_file`.
    pub fn clear(&self) {
        self.configs.lock().expect("tls cache").clear();
    }

    pub fn config(&self, ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let key = ca_file.map(Path::to_path_buf);
        if let Some(config) = self.configs.lock().expect("tls cache").get(&key) {
            return Ok(config.clone());
        }
        let extra: Vec<CertificateDer<'static>> = match ca_file {
            Some(path) => CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| pem_error(path, e))?,
            None => Vec::new(),
        };
        // A self-hosted provider's self-signed certificate is its own anchor; webpki refuses such
        // a certificate as an end entity (it is marked as a CA), so it is matched exactly instead.
        let pinned = extra.clone();
        let platform = rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider())?;
        let verifier = PinnedOrPlatform { pinned, platform };
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let config = Arc::new(config);
        self.configs.lock().expect("tls cache").insert(key, config.clone());
        Ok(config)
    }
}

/// Accepts a server certificate that is exactly one of the configured `ca_file` certificates
/// (if it is valid for the name), else asks the platform verifier. Handshake signatures are
/// always checked, so only the holder of the pinned certificate's key gets through.
#[derive(Debug)]
struct PinnedOrPlatform {
    pinned: Vec<CertificateDer<'static>>,
    platform: rustls_platform_verifier::Verifier,
}

impl ServerCertVerifier for PinnedOrPlatform {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.pinned.iter().any(|p| p.as_ref() == end_entity.as_ref()) {
            let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_name(&parsed, server_name)?;
            return Ok(ServerCertVerified::assertion());
        }
        self.platform.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.platform.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.platform.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.platform.supported_verify_schemes()
    }
}

/// Whether a configured `ca_file` holds at least one PEM certificate: the problem, in words.
pub fn check_ca_file(path: &Path) -> Result<usize, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    let certs: Vec<_> =
        CertificateDer::pem_slice_iter(&text).collect::<Result<_, _>>().map_err(|e| format!("not a PEM file: {e}"))?;
    match certs.len() {
        0 => Err("no PEM certificate in it (-----BEGIN CERTIFICATE-----)".into()),
        n => Ok(n),
    }
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::File { path: path.to_owned(), source })
}

fn pem_error(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem { path: path.to_owned(), reason: e.to_string() }
}
