//! The local certificate authority and the server certificate (leaf) it signs, kept under
//! `state_dir/tls`. Clients trust the CA once; the leaf is renewed before it expires or when a
//! listen address is added, without the clients noticing.
//!
//! The CA is never replaced behind the clients' backs: a CA whose key is missing or unusable
//! refuses start-up with the fix, and a new CA comes only from `coi-proxy cert rotate`
//! ([`rotate_ca`]). A rotation cross-signs the new CA with the old key for an overlap: during it
//! the listeners serve the new leaf with that cross-certificate, so clients that still trust only
//! the old CA accept it as well as clients that already trust the new one.
//!
//! A CA made by this version carries name constraints: it can vouch only for `localhost`, this
//! machine's host name, loopback and private addresses and the public listen addresses it was
//! made for, so its key is worth nothing against any other site. A name outside them (a new host
//! name, another public address) is left out of the leaf with a warning that names the fix
//! (`cert rotate`). CAs made before (no constraints) keep working unchanged.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DnType, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, PublicKeyData,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};
use tracing::warn;

use super::{TlsError, pem_error, read};
use crate::state;

/// Leaf lifetime; browsers' and Apple's limit for server certificates is 398 days.
const LEAF_DAYS: i64 = 397;
/// Renew the leaf this long before it expires.
const RENEW_BEFORE_DAYS: i64 = 30;
const CA_DAYS: i64 = 3650;
/// How long after `cert rotate` clients that trust only the previous CA still connect.
pub const DEFAULT_OVERLAP_DAYS: u32 = 30;

/// Private address ranges a CA of this version may always vouch for: a laptop's or home
/// server's addresses change with the network, and none of them names a site on the Internet.
const PRIVATE_RANGES: &[&str] = &[
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
];

/// Paths of the local certificate files under `state_dir`.
pub struct LocalCertPaths {
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    /// The names the CA may vouch for (`constraints=`); absent for a CA without constraints.
    pub ca_meta: PathBuf,
    /// During the overlap after a rotation: the new CA signed by the previous CA's key.
    pub ca_cross: PathBuf,
    /// The leaf and the chain to serve with it.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `not_after=`, `names=` of the current leaf, and `overlap_until=` after a rotation.
    pub meta: PathBuf,
}

impl LocalCertPaths {
    pub fn new(state_dir: &Path) -> LocalCertPaths {
        let dir = state_dir.join("tls");
        LocalCertPaths {
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca-key.pem"),
            ca_meta: dir.join("ca.meta"),
            ca_cross: dir.join("ca-cross.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            meta: dir.join("cert.meta"),
        }
    }

    fn dir(&self) -> &Path {
        self.cert.parent().expect("tls dir")
    }
}

/// What [`ensure_local_cert`] had to do, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum CertAction {
    Reused,
    Created,
    /// Renewed because it expires soon, lacked a listen address, or an overlap ended.
    Renewed(String),
}

impl std::fmt::Display for CertAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertAction::Reused => f.write_str("unchanged"),
            CertAction::Created => f.write_str("created"),
            CertAction::Renewed(why) => write!(f, "renewed ({why})"),
        }
    }
}

/// What `cert.meta` records about the leaf.
#[derive(Debug, Default)]
struct LeafMeta {
    not_after: i64,
    names: Vec<String>,
    /// Until when the cross-certificate of a rotation is served.
    overlap_until: Option<i64>,
}

impl LeafMeta {
    fn read(path: &Path) -> LeafMeta {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix('=')));
        LeafMeta {
            not_after: field("not_after").and_then(|v| v.parse().ok()).unwrap_or(0),
            names: field("names").unwrap_or("").split(',').filter(|n| !n.is_empty()).map(str::to_string).collect(),
            overlap_until: field("overlap_until").and_then(|v| v.parse().ok()),
        }
    }

    fn write(&self, path: &Path) -> Result<(), TlsError> {
        let mut text = format!("not_after={}\nnames={}\n", self.not_after, self.names.join(","));
        if let Some(until) = self.overlap_until {
            text.push_str(&format!("overlap_until={until}\n"));
        }
        Ok(state::write_private_atomic(path, text.as_bytes())?)
    }
}

/// The CA as loaded from (or just written to) `tls/`.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    /// `None`: made by an older version, no name constraints.
    constraints: Option<Vec<String>>,
}

/// Makes sure a CA and a leaf for `names` exist under `state_dir`, valid for at least 30 more
/// days; creates what is missing on a first start, renews the leaf when due. A CA whose key is
/// gone is an error, never a reason to make a new one (see the module doc).
pub fn ensure_local_cert(state_dir: &Path, names: &[String]) -> Result<CertAction, TlsError> {
    let paths = LocalCertPaths::new(state_dir);
    state::create_private_dir(paths.dir())?;
    let (ca, created) = match (paths.ca.exists(), paths.ca_key.exists()) {
        (false, false) => (create_ca(&paths, names)?, true),
        _ => (load_ca(&paths)?, false),
    };
    let meta = LeafMeta::read(&paths.meta);
    let reason = if created || !paths.cert.exists() || !paths.key.exists() {
        None
    } else {
        leaf_renewal_reason(&meta, &ca, names)
    };
    match (created || !paths.cert.exists() || !paths.key.exists(), reason) {
        (false, None) => Ok(CertAction::Reused),
        (true, _) => {
            write_leaf(&paths, &ca, names, None)?;
            Ok(CertAction::Created)
        }
        (false, Some(reason)) => {
            let overlap = meta.overlap_until.filter(|until| *until > now()).filter(|_| paths.ca_cross.exists());
            if overlap.is_none() {
                let _ = std::fs::remove_file(&paths.ca_cross);
            }
            write_leaf(&paths, &ca, names, overlap)?;
            Ok(CertAction::Renewed(reason))
        }
    }
}

/// What `cert rotate` did, for the person who ran it.
#[derive(Debug)]
pub struct Rotated {
    /// Until when clients that trust only the previous CA still connect; `None` when the
    /// previous CA's key was missing (no overlap is possible then).
    pub overlap_until: Option<OffsetDateTime>,
}

/// `coi-proxy cert rotate`: a new CA (with name constraints) and a new leaf under it. With the
/// previous CA's key at hand, the new CA is also signed by it and that certificate is served with
/// the leaf for `overlap_days`, so clients move over one by one (see the module doc).
pub fn rotate_ca(state_dir: &Path, names: &[String], overlap_days: u32) -> Result<Rotated, TlsError> {
    let paths = LocalCertPaths::new(state_dir);
    state::create_private_dir(paths.dir())?;
    let previous = match (paths.ca.exists(), paths.ca_key.exists()) {
        (true, true) => Some(load_ca(&paths)?),
        _ => None,
    };
    let (key, params) = ca_params(names)?;
    let overlap_until = match (&previous, overlap_days) {
        (Some(old), 1..) => {
            let until = OffsetDateTime::now_utc() + Duration::days(i64::from(overlap_days));
            let mut cross_params = params.clone();
            cross_params.not_after = until;
            let cross = cross_params.signed_by(&key, &old.issuer)?;
            state::write_private_atomic(&paths.ca_cross, cross.pem().as_bytes())?;
            Some(until)
        }
        _ => {
            let _ = std::fs::remove_file(&paths.ca_cross);
            None
        }
    };
    let ca = write_ca(&paths, key, params)?;
    write_leaf(&paths, &ca, names, overlap_until.map(OffsetDateTime::unix_timestamp))?;
    Ok(Rotated { overlap_until })
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Loads the CA; a missing or unusable half is an error that names the fix.
fn load_ca(paths: &LocalCertPaths) -> Result<Ca, TlsError> {
    let missing = |path: &Path| TlsError::CaMissing { missing: path.to_owned(), ca: paths.ca.clone() };
    if !paths.ca_key.exists() {
        return Err(missing(&paths.ca_key));
    }
    if !paths.ca.exists() {
        return Err(missing(&paths.ca));
    }
    let unusable = |path: &Path, reason: String| TlsError::CaUnusable { path: path.to_owned(), reason };
    let pem = read(&paths.ca)?;
    let key = KeyPair::from_pem(&read(&paths.ca_key)?).map_err(|e| unusable(&paths.ca_key, e.to_string()))?;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| unusable(&paths.ca, e.to_string()))?;
    // The certificate carries its subject's public key: a key from another CA would sign leaves
    // that no client accepts.
    let public = key.der_bytes();
    if !der.as_ref().windows(public.len()).any(|w| w == public) {
        return Err(unusable(&paths.ca_key, format!("it is not the key of {}", paths.ca.display())));
    }
    let issuer = Issuer::from_ca_cert_pem(&pem, key).map_err(|e| unusable(&paths.ca, e.to_string()))?;
    let constraints = std::fs::read_to_string(&paths.ca_meta).ok().and_then(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix("constraints="))
            .map(|v| v.split(',').filter(|c| !c.is_empty()).map(str::to_string).collect())
    });
    Ok(Ca { issuer, pem, constraints })
}

/// The names a new CA may vouch for: `localhost`, the host name, loopback and private
/// addresses, and the public addresses among `names` (the listeners').
fn ca_constraints(names: &[String]) -> Vec<String> {
    let mut constraints = vec!["localhost".to_string()];
    let host = hostname();
    if !host.is_empty() && host.parse::<IpAddr>().is_err() {
        constraints.push(host);
    }
    constraints.extend(PRIVATE_RANGES.iter().map(|r| r.to_string()));
    for name in names {
        match name.parse::<IpAddr>() {
            Ok(ip) if !permits(&constraints, name) => {
                let prefix = if ip.is_ipv4() { 32 } else { 128 };
                constraints.push(format!("{ip}/{prefix}"));
            }
            Ok(_) => {}
            Err(_) if !permits(&constraints, name) => constraints.push(name.to_ascii_lowercase()),
            Err(_) => {}
        }
    }
    constraints
}

/// Whether a CA with `constraints` may vouch for `name` (RFC 5280 4.2.1.10: a DNS constraint
/// covers the name and its subdomains; an address one, its subnet).
fn permits(constraints: &[String], name: &str) -> bool {
    match name.parse::<IpAddr>() {
        Ok(ip) => constraints.iter().filter_map(|c| c.split_once('/')).any(|(net, prefix)| {
            let (Ok(net), Ok(prefix)) = (net.parse::<IpAddr>(), prefix.parse::<u32>()) else { return false };
            match (net, ip) {
                (IpAddr::V4(net), IpAddr::V4(ip)) if prefix <= 32 => {
                    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
                    u32::from(net) & mask == u32::from(ip) & mask
                }
                (IpAddr::V6(net), IpAddr::V6(ip)) if prefix <= 128 => {
                    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                    u128::from(net) & mask == u128::from(ip) & mask
                }
                _ => false,
            }
        }),
        Err(_) => {
            let name = name.to_ascii_lowercase();
            constraints
                .iter()
                .filter(|c| !c.contains('/'))
                .any(|c| name == *c || name.strip_suffix(c.as_str()).is_some_and(|rest| rest.ends_with('.')))
        }
    }
}

/// A new CA's key and parameters: its own name (unlike the CA it may replace), ten years, and
/// name constraints for `names` (see [`ca_constraints`]).
fn ca_params(names: &[String]) -> Result<(KeyPair, CertificateParams), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let now = OffsetDateTime::now_utc();
    let host = hostname();
    params.distinguished_name.push(DnType::CommonName, format!("coi-proxy local CA ({host}, {})", now.date()));
    params.distinguished_name.push(DnType::OrganizationName, "coi-proxy");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let mut permitted = Vec::new();
    for c in ca_constraints(names) {
        permitted.push(match c.parse::<CidrSubnet>() {
            Ok(subnet) => GeneralSubtree::IpAddress(subnet),
            Err(()) => GeneralSubtree::DnsName(c),
        });
    }
    params.name_constraints = Some(NameConstraints { permitted_subtrees: permitted, excluded_subtrees: Vec::new() });
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(CA_DAYS);
    Ok((key, params))
}

fn create_ca(paths: &LocalCertPaths, names: &[String]) -> Result<Ca, TlsError> {
    let (key, params) = ca_params(names)?;
    write_ca(paths, key, params)
}

/// Writes a CA: the key first, so that a crash in between leaves a key without a certificate
/// (refused with the fix by [`load_ca`]), never a certificate that no key can sign for.
fn write_ca(paths: &LocalCertPaths, key: KeyPair, params: CertificateParams) -> Result<Ca, TlsError> {
    let cert = params.self_signed(&key)?;
    let constraints = ca_constraints_of(&params);
    state::write_private_atomic(&paths.ca_key, key.serialize_pem().as_bytes())?;
    state::write_private_atomic(&paths.ca_meta, format!("constraints={}\n", constraints.join(",")).as_bytes())?;
    state::write_private_atomic(&paths.ca, cert.pem().as_bytes())?;
    Ok(Ca { issuer: Issuer::new(params, key), pem: cert.pem(), constraints: Some(constraints) })
}

/// The constraints of `params` as `ca.meta` records them.
fn ca_constraints_of(params: &CertificateParams) -> Vec<String> {
    let Some(nc) = &params.name_constraints else { return Vec::new() };
    nc.permitted_subtrees
        .iter()
        .filter_map(|s| match s {
            GeneralSubtree::DnsName(name) => Some(name.clone()),
            GeneralSubtree::IpAddress(CidrSubnet::V4(addr, mask)) => {
                Some(format!("{}/{}", std::net::Ipv4Addr::from(*addr), u32::from_be_bytes(*mask).count_ones()))
            }
            GeneralSubtree::IpAddress(CidrSubnet::V6(addr, mask)) => {
                Some(format!("{}/{}", std::net::Ipv6Addr::from(*addr), u128::from_be_bytes(*mask).count_ones()))
            }
            _ => None,
        })
        .collect()
}

/// The names of `wanted` the CA may vouch for; the others are logged with the fix.
fn coverable(ca: &Ca, wanted: &[String]) -> Vec<String> {
    let Some(constraints) = &ca.constraints else { return wanted.to_vec() };
    wanted
        .iter()
        .filter(|name| {
            let ok = permits(constraints, name);
            if !ok {
                warn!(
                    "the local CA cannot vouch for {name} (its name constraints: {}); clients connecting by that name \
                     will be refused. `coi-proxy cert rotate` makes a CA that covers every listen address and this host's name",
                    constraints.join(", ")
                );
            }
            ok
        })
        .cloned()
        .collect()
}

fn leaf_renewal_reason(meta: &LeafMeta, ca: &Ca, names: &[String]) -> Option<String> {
    let renew_at = meta.not_after - RENEW_BEFORE_DAYS * 86_400;
    if now() >= renew_at {
        let expiry =
            OffsetDateTime::from_unix_timestamp(meta.not_after).map(|t| t.date().to_string()).unwrap_or_default();
        return Some(format!("it expires on {expiry}, within {RENEW_BEFORE_DAYS} days"));
    }
    if meta.overlap_until.is_some_and(|until| until <= now()) {
        return Some("the overlap after `coi-proxy cert rotate` ended; the previous CA is no longer served".into());
    }
    let uncovered: Vec<String> = names.iter().filter(|n| !meta.names.contains(n)).cloned().collect();
    // Only names the CA can vouch for are worth a new leaf (the others are warned about).
    let coverable = match &ca.constraints {
        Some(constraints) => uncovered.into_iter().filter(|n| permits(constraints, n)).collect(),
        None => uncovered,
    };
    coverable.first().map(|n| format!("it does not cover the listen address {n}"))
}

/// Writes a leaf for `names` under `ca`; the chain served with it is the CA, or during an
/// overlap the cross-certificate that leads to the previous CA.
fn write_leaf(paths: &LocalCertPaths, ca: &Ca, names: &[String], overlap_until: Option<i64>) -> Result<(), TlsError> {
    let names = coverable(ca, names);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.clone())?;
    params.distinguished_name.push(DnType::CommonName, "coi-proxy");
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(LEAF_DAYS);
    let cert = params.signed_by(&key, &ca.issuer)?;
    let chain = match overlap_until {
        Some(_) => read(&paths.ca_cross)?,
        None => ca.pem.clone(),
    };
    state::write_private_atomic(&paths.key, key.serialize_pem().as_bytes())?;
    state::write_private_atomic(&paths.cert, format!("{}{chain}", cert.pem()).as_bytes())?;
    LeafMeta { not_after: params.not_after.unix_timestamp(), names, overlap_until }.write(&paths.meta)
}

/// Test hook and renewal aid: rewrites the recorded expiry of the current leaf.
pub fn set_recorded_expiry(state_dir: &Path, not_after: OffsetDateTime) -> Result<(), TlsError> {
    let paths = LocalCertPaths::new(state_dir);
    let mut meta = LeafMeta::read(&paths.meta);
    meta.not_after = not_after.unix_timestamp();
    meta.write(&paths.meta)
}

/// What `check` says about the local certificate: the leaf's expiry and names, the CA's name
/// constraints and an overlap in progress; `None` if there is no CA.
pub fn describe(state_dir: &Path) -> Option<String> {
    let paths = LocalCertPaths::new(state_dir);
    if !paths.ca.exists() {
        return None;
    }
    let meta = LeafMeta::read(&paths.meta);
    let date = |t: i64| OffsetDateTime::from_unix_timestamp(t).map_or("unknown".to_string(), |t| t.date().to_string());
    let mut out = format!(
        "CA {} (trust this in clients); server certificate expires {} (renewed 30 days before), covers {}",
        paths.ca.display(),
        date(meta.not_after),
        meta.names.join(",")
    );
    match std::fs::read_to_string(&paths.ca_meta)
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("constraints=").map(str::to_string)))
    {
        Some(c) => out.push_str(&format!("; the CA may vouch only for {c}")),
        None => out.push_str("; the CA has no name constraints (made by an older version; `cert rotate` adds them)"),
    }
    if let Some(until) = meta.overlap_until.filter(|u| *u > now()) {
        out.push_str(&format!("; clients of the previous CA are still served until {}", date(until)));
    }
    Some(out)
}

/// The names the leaf must cover for the given listen addresses.
pub fn cert_names(listen_ips: &[IpAddr]) -> Vec<String> {
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
    let ips: Vec<IpAddr> = [l.imap, l.imaps, l.smtp, l.smtps].iter().flatten().map(|a| a.ip()).collect();
    cert_names(&ips)
}

/// The PEM a client must trust (the local CA).
pub fn export_pem(state_dir: &Path) -> Result<String, TlsError> {
    read(&LocalCertPaths::new(state_dir).ca)
}

pub(super) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Reads the chain `cert.pem` holds.
pub(super) fn read_chain(paths: &LocalCertPaths) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_file_iter(&paths.cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| pem_error(&paths.cert, e))
}

#[cfg(test)]
mod tests {
    use super::super::local_server_config;
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    #[test]
    fn creates_reuses_and_renews() {
        let dir = tempfile::tempdir().unwrap();
        let names = cert_names(&["127.0.0.1".parse().unwrap()]);
        assert_eq!(ensure_local_cert(dir.path(), &names).unwrap(), CertAction::Created);
        let paths = LocalCertPaths::new(dir.path());
        for file in [&paths.key, &paths.ca_key, &paths.ca, &paths.cert, &paths.meta, &paths.ca_meta] {
            assert_eq!(std::fs::metadata(file).unwrap().permissions().mode() & 0o777, 0o600, "{}", file.display());
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

        let more = cert_names(&["192.168.2.7".parse().unwrap()]);
        assert!(
            matches!(ensure_local_cert(dir.path(), &more).unwrap(), CertAction::Renewed(r) if r.contains("192.168.2.7"))
        );
        assert_eq!(CertAction::Renewed("why".into()).to_string(), "renewed (why)");
    }

    #[test]
    fn a_ca_without_its_key_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let names = cert_names(&[]);
        ensure_local_cert(dir.path(), &names).unwrap();
        let paths = LocalCertPaths::new(dir.path());
        let ca = std::fs::read(&paths.ca).unwrap();
        std::fs::remove_file(&paths.ca_key).unwrap();
        let err = ensure_local_cert(dir.path(), &names).unwrap_err().to_string();
        assert!(err.contains("ca-key.pem") && err.contains("cert rotate"), "{err}");
        assert_eq!(std::fs::read(&paths.ca).unwrap(), ca);
        // Another CA's key is refused too.
        let other = tempfile::tempdir().unwrap();
        ensure_local_cert(other.path(), &names).unwrap();
        std::fs::copy(LocalCertPaths::new(other.path()).ca_key, &paths.ca_key).unwrap();
        let err = ensure_local_cert(dir.path(), &names).unwrap_err().to_string();
        assert!(err.contains("not the key of"), "{err}");
    }

    /// Verifies `chain` for `name` the way a client that trusts only `ca` does.
    fn verify(ca: &str, chain: &[CertificateDer<'static>], name: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap()).unwrap();
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), super::super::provider())
                .build()
                .unwrap();
        let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        verifier.verify_server_cert(&chain[0], &chain[1..], &name, &[], rustls::pki_types::UnixTime::now()).map(|_| ())
    }

    #[test]
    fn the_ca_vouches_only_for_local_names() {
        let dir = tempfile::tempdir().unwrap();
        let names = cert_names(&["192.0.2.7".parse().unwrap()]);
        ensure_local_cert(dir.path(), &names).unwrap();
        let paths = LocalCertPaths::new(dir.path());
        let ca_pem = export_pem(dir.path()).unwrap();
        let chain = read_chain(&paths).unwrap();
        for name in ["localhost", "127.0.0.1", "192.0.2.7"] {
            verify(&ca_pem, &chain, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        // A leaf for somebody else's site, signed with the CA's key, is refused by clients.
        let ca = load_ca(&paths).unwrap();
        let key = KeyPair::generate().unwrap();
        for foreign in ["bank.example", "8.8.8.8"] {
            let leaf = CertificateParams::new(vec![foreign.to_string()]).unwrap().signed_by(&key, &ca.issuer).unwrap();
            let err = verify(&ca_pem, &[leaf.der().clone()], foreign).unwrap_err().to_string();
            assert!(err.to_lowercase().contains("constraint"), "{foreign}: {err}");
        }
        assert!(permits(&ca_constraints(&[]), "10.1.2.3") && permits(&ca_constraints(&[]), "LOCALHOST"));
        assert!(!permits(&ca_constraints(&[]), "evil-localhost") && !permits(&ca_constraints(&[]), "192.0.2.7"));
        // A public address added later is left out of the leaf (with a warning), not a failure.
        let later = cert_names(&["198.51.100.1".parse().unwrap()]);
        assert_eq!(ensure_local_cert(dir.path(), &later).unwrap(), CertAction::Reused);
    }

    #[test]
    fn rotation_serves_a_leaf_both_cas_accept_for_the_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let names = cert_names(&[]);
        ensure_local_cert(dir.path(), &names).unwrap();
        let paths = LocalCertPaths::new(dir.path());
        let old = export_pem(dir.path()).unwrap();
        let rotated = rotate_ca(dir.path(), &names, 30).unwrap();
        assert!(rotated.overlap_until.is_some());
        let new = export_pem(dir.path()).unwrap();
        assert_ne!(old, new);
        let chain = read_chain(&paths).unwrap();
        verify(&old, &chain, "localhost").expect("a client of the previous CA");
        verify(&new, &chain, "localhost").expect("a client of the new CA");
        assert_eq!(ensure_local_cert(dir.path(), &names).unwrap(), CertAction::Reused);

        // The overlap ends: the cross-certificate is no longer served.
        let mut meta = LeafMeta::read(&paths.meta);
        meta.overlap_until = Some(now() - 1);
        meta.write(&paths.meta).unwrap();
        assert!(
            matches!(ensure_local_cert(dir.path(), &names).unwrap(), CertAction::Renewed(r) if r.contains("overlap"))
        );
        let chain = read_chain(&paths).unwrap();
        assert!(verify(&old, &chain, "localhost").is_err());
        verify(&new, &chain, "localhost").unwrap();
        assert!(!paths.ca_cross.exists());

        // Without the previous key there is nothing to cross-sign with: no overlap.
        std::fs::remove_file(&paths.ca_key).unwrap();
        assert!(rotate_ca(dir.path(), &names, 30).unwrap().overlap_until.is_none());
        assert_eq!(ensure_local_cert(dir.path(), &names).unwrap(), CertAction::Reused);
    }
}
