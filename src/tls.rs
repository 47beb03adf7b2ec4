//! TLS on both sides: the local certificate clients connect to, and verification of providers.
//!
//! The local side is a small private CA plus a leaf certificate signed by it, both kept under
//! `state_dir`. A user trusts the CA once (`coi-proxy cert export`); the leaf can then be renewed
//! (or gain a new host name) without the client noticing.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::{Duration, OffsetDateTime};

/// Leaf lifetime; browsers' and Apple's limit for server certificates is 398 days.
const LEAF_DAYS: i64 = 397;
/// Renew the leaf this long before it expires.
const RENEW_BEFORE_DAYS: i64 = 30;
const CA_DAYS: i64 = 3650;

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
}

/// Paths of the local certificate files under `state_dir`.
pub struct LocalCertPaths {
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `not_after=<unix seconds>` and `names=<comma list>` of the current leaf.
    pub meta: PathBuf,
}

impl LocalCertPaths {
    pub fn new(state_dir: &Path) -> LocalCertPaths {
        let dir = state_dir.join("tls");
        LocalCertPaths {
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca-key.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            meta: dir.join("cert.meta"),
        }
    }
}

/// What [`ensure_local_cert`] had to do, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum CertAction {
    Reused,
    Created,
    /// Renewed because it expires soon or lacked a host name.
    Renewed(String),
}

/// Makes sure a CA and a leaf for `names` exist under `state_dir`, valid for at least 30 more
/// days; creates or renews what is missing.
pub fn ensure_local_cert(state_dir: &Path, names: &[String]) -> Result<CertAction, TlsError> {
    let paths = LocalCertPaths::new(state_dir);
    let dir = paths.cert.parent().expect("tls dir");
    std::fs::create_dir_all(dir).map_err(|source| TlsError::File { path: dir.to_owned(), source })?;
    let (issuer, ca_pem, created_ca) = load_or_create_ca(&paths)?;
    let reason = if created_ca || !paths.cert.exists() || !paths.key.exists() {
        None
    } else {
        leaf_renewal_reason(&paths, names)
    };
    match (created_ca || !paths.cert.exists(), reason) {
        (false, None) => Ok(CertAction::Reused),
        (true, _) => {
            write_leaf(&paths, &issuer, &ca_pem, names)?;
            Ok(CertAction::Created)
        }
        (false, Some(reason)) => {
            write_leaf(&paths, &issuer, &ca_pem, names)?;
            Ok(CertAction::Renewed(reason))
        }
    }
}

fn load_or_create_ca(paths: &LocalCertPaths) -> Result<(Issuer<'static, KeyPair>, String, bool), TlsError> {
    if paths.ca.exists() && paths.ca_key.exists() {
        let ca_pem = read(&paths.ca)?;
        let key = KeyPair::from_pem(&read(&paths.ca_key)?).map_err(|e| pem_error(&paths.ca_key, e))?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key).map_err(|e| pem_error(&paths.ca, e))?;
        return Ok((issuer, ca_pem, false));
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let host = hostname();
    params.distinguished_name.push(DnType::CommonName, format!("coi-proxy local CA ({host})"));
    params.distinguished_name.push(DnType::OrganizationName, "coi-proxy");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(CA_DAYS);
    let cert = params.self_signed(&key)?;
    write_private(&paths.ca_key, key.serialize_pem().as_bytes())?;
    write_public(&paths.ca, cert.pem().as_bytes())?;
    Ok((Issuer::new(params, key), cert.pem(), true))
}

fn leaf_renewal_reason(paths: &LocalCertPaths, names: &[String]) -> Option<String> {
    let meta = std::fs::read_to_string(&paths.meta).unwrap_or_default();
    let field = |k: &str| meta.lines().find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix('=')));
    let not_after: i64 = field("not_after").and_then(|v| v.parse().ok()).unwrap_or(0);
    let have: Vec<&str> = field("names").unwrap_or("").split(',').collect();
    let renew_at = not_after - RENEW_BEFORE_DAYS * 86_400;
    if OffsetDateTime::now_utc().unix_timestamp() >= renew_at {
        let expiry = OffsetDateTime::from_unix_timestamp(not_after).map(|t| t.date().to_string()).unwrap_or_default();
        return Some(format!("it expires on {expiry}, within {RENEW_BEFORE_DAYS} days"));
    }
    names.iter().find(|n| !have.contains(&n.as_str())).map(|n| format!("it does not cover the listen address {n}"))
}

fn write_leaf(
    paths: &LocalCertPaths,
    issuer: &Issuer<'static, KeyPair>,
    ca_pem: &str,
    names: &[String],
) -> Result<(), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(DnType::CommonName, "coi-proxy");
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(LEAF_DAYS);
    let cert = params.signed_by(&key, issuer)?;
    write_private(&paths.key, key.serialize_pem().as_bytes())?;
    write_public(&paths.cert, format!("{}{}", cert.pem(), ca_pem).as_bytes())?;
    let meta = format!("not_after={}\nnames={}\n", params.not_after.unix_timestamp(), names.join(","));
    write_public(&paths.meta, meta.as_bytes())
}

/// Test hook and renewal aid: rewrites the recorded expiry of the current leaf.
pub fn set_recorded_expiry(state_dir: &Path, not_after: OffsetDateTime) -> Result<(), TlsError> {
    let paths = LocalCertPaths::new(state_dir);
    let meta = std::fs::read_to_string(&paths.meta).unwrap_or_default();
    let names = meta.lines().find_map(|l| l.strip_prefix("names=")).unwrap_or("");
    write_public(&paths.meta, format!("not_after={}\nnames={names}\n", not_after.unix_timestamp()).as_bytes())
}

/// The names the leaf must cover for the given listen addresses.
pub fn cert_names(listen_ips: &[std::net::IpAddr]) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    for ip in listen_ips {
        if ip.is_unspecified() {
            let host = hostname();
            if !host.is_empty() && !names.contains(&host) {
                names.push(host);
            }
        } else if !names.contains(&ip.to_string()) {
            names.push(ip.to_string());
        }
    }
    names
}

/// The names the leaf must cover for a configuration: every IMAP and SMTP listener's address.
pub fn cert_names_for(config: &crate::config::Config) -> Vec<String> {
    let l = &config.listen;
    let ips: Vec<std::net::IpAddr> = [l.imap, l.imaps, l.smtp, l.smtps].iter().flatten().map(|a| a.ip()).collect();
    cert_names(&ips)
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
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&paths.cert)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| pem_error(&paths.cert, e))?;
        let key = PrivateKeyDer::from_pem_file(&paths.key).map_err(|e| pem_error(&paths.key, e))?;
        Ok(Arc::new(CertifiedKey::from_der(certs, key, &provider())?))
    }

    /// Puts the files under `state_dir` in force (after [`ensure_local_cert`] renewed them).
    pub fn reload(&self, state_dir: &Path) -> Result<(), TlsError> {
        let fresh = LocalCert::read(state_dir)?;
        *self.current.write().expect("cert lock") = fresh;
        Ok(())
    }
}

impl ResolvesServerCert for LocalCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("cert lock").clone())
    }
}

/// The PEM a client must trust (the local CA).
pub fn export_pem(state_dir: &Path) -> Result<String, TlsError> {
    read(&LocalCertPaths::new(state_dir).ca)
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

/// The TLS setup of the proxy's HTTPS clients (push services, OAuth2 identity providers):
/// platform trust, and ALPN for HTTP/2 and HTTP/1.1.
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

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::File { path: path.to_owned(), source })
}

fn pem_error(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem { path: path.to_owned(), reason: e.to_string() }
}

/// Writes a private key readable by the owner only (0600), replacing the file atomically.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    write_atomic(path, bytes, 0o600)
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    write_atomic(path, bytes, 0o644)
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = path.with_extension("tmp");
    let err = |source| TlsError::File { path: path.to_owned(), source };
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(err)?;
    file.write_all(bytes).and_then(|_| file.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_reuses_and_renews() {
        let dir = tempfile::tempdir().unwrap();
        let names = cert_names(&["127.0.0.1".parse().unwrap()]);
        assert_eq!(ensure_local_cert(dir.path(), &names).unwrap(), CertAction::Created);
        let paths = LocalCertPaths::new(dir.path());
        for key in [&paths.key, &paths.ca_key] {
            assert_eq!(std::fs::metadata(key).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let first = std::fs::read(&paths.cert).unwrap();
        assert_eq!(ensure_local_cert(dir.path(), &names).unwrap(), CertAction::Reused);
        assert_eq!(std::fs::read(&paths.cert).unwrap(), first);
        let (_, live) = local_server_config(dir.path()).unwrap();
        let served = || live.current.read().unwrap().cert[0].clone();
        let before = served();

        set_recorded_expiry(dir.path(), OffsetDateTime::now_utc() + Duration::days(10)).unwrap();
        let ca_before = export_pem(dir.path()).unwrap();
        assert!(
            matches!(ensure_local_cert(dir.path(), &names).unwrap(), CertAction::Renewed(r) if r.contains("expires"))
        );
        assert_ne!(std::fs::read(&paths.cert).unwrap(), first);
        assert_eq!(served(), before, "the old leaf is served until reloaded");
        live.reload(dir.path()).unwrap();
        assert_ne!(served(), before, "the renewed leaf is served after reload");
        assert_eq!(export_pem(dir.path()).unwrap(), ca_before, "renewal keeps the CA the user trusts");

        let more = cert_names(&["192.0.2.7".parse().unwrap()]);
        assert!(
            matches!(ensure_local_cert(dir.path(), &more).unwrap(), CertAction::Renewed(r) if r.contains("192.0.2.7"))
        );
    }
}
