//! A development PKI for phiguard: one CA, a collector (server) certificate for
//! `localhost`/`127.0.0.1`, a subscriber (SOC) certificate and one client certificate per
//! agent whose identity is the agent's host name. Used by `cargo xtask certs DIR` and by the
//! e2e tests, so both exercise the same certificates.
//!
//! Not for production: a real deployment issues certificates from its own CA. The private
//! keys written here are ECDSA P-256, PKCS#8 PEM, mode 0600.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// File names inside a certificate directory.
pub mod files {
    /// The CA certificate (give it to the collector and to every agent).
    pub const CA_CERT: &str = "ca.pem";
    /// The CA's private key (keep it away from servers).
    pub const CA_KEY: &str = "ca.key";
    /// The collector's server certificate.
    pub const COLLECTOR_CERT: &str = "collector.pem";
    /// The collector's private key.
    pub const COLLECTOR_KEY: &str = "collector.key";
    /// The subscriber (SOC) client certificate.
    pub const SUBSCRIBER_CERT: &str = "soc.pem";
    /// The subscriber's private key.
    pub const SUBSCRIBER_KEY: &str = "soc.key";
}

/// The identity of the subscriber certificate written by [`write_dir`].
pub const SUBSCRIBER_NAME: &str = "soc";

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters or could not sign.
    #[error("generating {what}: {source}")]
    Generate {
        /// Which certificate or key.
        what: String,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A name that cannot be a certificate identity.
    #[error("{0:?} is not a valid identity (letters, digits, '-', '.', '_'; 1 to 253 bytes)")]
    BadName(String),
}

/// Whether `name` can be a phiguard identity: the collector's rule, from one place.
pub use phiguard_support::identity::valid_identity;

/// What a leaf certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// TLS server (the collector).
    Server,
    /// TLS client (an agent or a subscriber).
    Client,
}

/// A leaf certificate to issue.
#[derive(Clone, Debug)]
pub struct Leaf {
    /// Common name; for clients, the identity.
    pub name: String,
    /// Subject alternative names (DNS names or IP addresses).
    pub subject_alt_names: Vec<String>,
    /// Server or client.
    pub role: Role,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl Leaf {
    fn new(name: &str, sans: Vec<String>, role: Role) -> Leaf {
        let now = OffsetDateTime::now_utc();
        Leaf {
            name: name.to_owned(),
            subject_alt_names: sans,
            role,
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(365),
        }
    }

    /// The collector's server certificate, valid for `localhost` and `127.0.0.1` plus `extra`
    /// names.
    pub fn collector(extra: &[String]) -> Leaf {
        let mut sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        sans.extend(extra.iter().cloned());
        Leaf::new("phiguard-collector", sans, Role::Server)
    }

    /// An agent's client certificate: its identity is `host` (common name and DNS name).
    pub fn agent(host: &str) -> Leaf {
        Leaf::new(host, vec![host.to_owned()], Role::Client)
    }

    /// A subscriber's client certificate.
    pub fn subscriber(name: &str) -> Leaf {
        Leaf::new(name, vec![name.to_owned()], Role::Client)
    }

    /// The same certificate, but expired yesterday (for tests).
    pub fn expired(mut self) -> Leaf {
        let now = OffsetDateTime::now_utc();
        self.not_before = now - Duration::days(30);
        self.not_after = now - Duration::days(1);
        self
    }
}

/// A certificate and its private key, PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The PKCS#8 private key.
    pub key_pem: String,
    /// The serial number (big-endian, positive), as a CRL names the certificate.
    pub serial: Vec<u8>,
}

/// A serial number unique in this process and across runs: time, a counter and the pid, 16
/// bytes, positive and minimally encoded in DER (first byte 0x40..=0x7f).
fn fresh_serial() -> Vec<u8> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut serial = Vec::with_capacity(16);
    serial.extend_from_slice(&nanos.to_be_bytes());
    serial.extend_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    serial.extend_from_slice(&std::process::id().to_be_bytes());
    serial[0] = 0x40 | (serial[0] & 0x3f);
    serial
}

/// A certificate authority that can issue leaves.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

fn generate(what: &str) -> impl FnOnce(rcgen::Error) -> CertError + '_ {
    move |source| CertError::Generate {
        what: what.to_owned(),
        source,
    }
}

impl Ca {
    /// A new self-signed CA named `name`, valid ten years.
    pub fn generate(name: &str) -> Result<Ca, CertError> {
        let key = KeyPair::generate().map_err(generate("the CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let cert = params.self_signed(&key).map_err(generate("the CA"))?;
        Ok(Ca {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        })
    }

    /// A CA from its certificate and key (PEM).
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, CertError> {
        let key = KeyPair::from_pem(key_pem).map_err(generate("the CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(generate("the CA"))?;
        Ok(Ca {
            issuer,
            cert_pem: cert_pem.to_owned(),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PEM.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues `leaf` with a fresh key.
    pub fn issue(&self, leaf: &Leaf) -> Result<Issued, CertError> {
        let what = format!("certificate {}", leaf.name);
        let key = KeyPair::generate().map_err(generate(&what))?;
        let mut params =
            CertificateParams::new(leaf.subject_alt_names.clone()).map_err(generate(&what))?;
        params
            .distinguished_name
            .push(DnType::CommonName, &leaf.name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match leaf.role {
            Role::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Role::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        params.not_before = leaf.not_before;
        params.not_after = leaf.not_after;
        let serial = fresh_serial();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generate(&what))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        })
    }

    /// A certificate revocation list (PEM), numbered `number`, valid a week, revoking the
    /// certificates `revoked` (issued by this CA).
    pub fn crl(&self, number: u64, revoked: &[&Issued]) -> Result<String, CertError> {
        let now = OffsetDateTime::now_utc();
        let mut revoked_certs = Vec::new();
        for issued in revoked {
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&issued.serial),
                revocation_time: now - Duration::minutes(1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(1),
            next_update: now + Duration::days(7),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.issuer)
            .map_err(generate("the CRL"))?;
        crl.pem().map_err(generate("the CRL"))
    }
}

/// Writes `contents` to `path` readable by its owner only (0600), replacing any file there.
pub fn write_private(path: &Path, contents: &str) -> Result<(), CertError> {
    let io_err = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err)?;
    file.write_all(contents.as_bytes()).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    fs::rename(&tmp, path).map_err(io_err)
}

/// Writes a public file (certificate), mode 0644.
fn write_public(path: &Path, contents: &str) -> Result<(), CertError> {
    fs::write(path, contents).map_err(|source| CertError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes `issued` as `dir/NAME.pem` and `dir/NAME.key` (0600).
pub fn write_issued(dir: &Path, name: &str, issued: &Issued) -> Result<(), CertError> {
    write_public(&dir.join(format!("{name}.pem")), &issued.cert_pem)?;
    write_private(&dir.join(format!("{name}.key")), &issued.key_pem)
}

/// The certificate file of agent `host` in a directory made by [`write_dir`].
pub fn agent_cert_file(host: &str) -> String {
    format!("agent-{host}.pem")
}

/// The key file of agent `host` in a directory made by [`write_dir`].
pub fn agent_key_file(host: &str) -> String {
    format!("agent-{host}.key")
}

/// What [`write_dir`] did.
#[derive(Clone, Debug, Default)]
pub struct Written {
    /// The CA was created (false: an existing `ca.pem`/`ca.key` was reused).
    pub new_ca: bool,
    /// Every file written.
    pub files: Vec<PathBuf>,
}

/// Makes (or completes) a development PKI in `dir`: reuses `ca.pem`/`ca.key` when both
/// exist, else creates them; then (re)issues the collector certificate (for `localhost`,
/// `127.0.0.1` and `collector_names`), the subscriber certificate `soc` and one certificate
/// per agent host.
pub fn write_dir(
    dir: &Path,
    agents: &[String],
    collector_names: &[String],
) -> Result<Written, CertError> {
    for name in agents {
        if !valid_identity(name) {
            return Err(CertError::BadName(name.clone()));
        }
    }
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| CertError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut written = Written::default();
    let (ca_cert, ca_key) = (dir.join(files::CA_CERT), dir.join(files::CA_KEY));
    let ca = if ca_cert.exists() && ca_key.exists() {
        let cert = fs::read_to_string(&ca_cert).map_err(io_err(&ca_cert))?;
        let key = fs::read_to_string(&ca_key).map_err(io_err(&ca_key))?;
        Ca::load(&cert, &key)?
    } else {
        let ca = Ca::generate("phiguard development CA")?;
        write_public(&ca_cert, ca.cert_pem())?;
        write_private(&ca_key, &ca.key_pem())?;
        written.new_ca = true;
        written.files.extend([ca_cert, ca_key]);
        ca
    };
    let mut leaves = vec![
        ("collector".to_owned(), Leaf::collector(collector_names)),
        (
            SUBSCRIBER_NAME.to_owned(),
            Leaf::subscriber(SUBSCRIBER_NAME),
        ),
    ];
    for host in agents {
        leaves.push((format!("agent-{host}"), Leaf::agent(host)));
    }
    for (file, leaf) in leaves {
        write_issued(dir, &file, &ca.issue(&leaf)?)?;
        written.files.push(dir.join(format!("{file}.pem")));
        written.files.push(dir.join(format!("{file}.key")));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use x509_parser::{extensions::GeneralName, pem::parse_x509_pem};

    use super::*;

    #[test]
    fn writes_a_pki_with_private_keys_0600() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_dir(dir.path(), &["ehr-db-1".into()], &[]).unwrap();
        assert!(written.new_ca);
        for name in ["ca.key", "collector.key", "soc.key", "agent-ehr-db-1.key"] {
            let mode = fs::metadata(dir.path().join(name)).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}");
        }
        let pem = fs::read(dir.path().join("agent-ehr-db-1.pem")).unwrap();
        let (_, pem) = parse_x509_pem(&pem).unwrap();
        let cert = pem.parse_x509().unwrap();
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(sans, ["ehr-db-1"]);
        assert!(cert.validity().is_valid());
        // A second run reuses the CA.
        let again = write_dir(dir.path(), &["other".into()], &[]).unwrap();
        assert!(!again.new_ca);
        assert!(dir.path().join("agent-other.pem").exists());
    }

    #[test]
    fn expired_leaf_is_expired_and_bad_names_are_refused() {
        let ca = Ca::generate("t").unwrap();
        let issued = ca.issue(&Leaf::agent("a").expired()).unwrap();
        let (_, pem) = parse_x509_pem(issued.cert_pem.as_bytes()).unwrap();
        assert!(!pem.parse_x509().unwrap().validity().is_valid());
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            write_dir(dir.path(), &["../etc".into()], &[]),
            Err(CertError::BadName(_))
        ));
        assert!(valid_identity("ehr-db-1.example.org"));
        assert!(!valid_identity(".hidden") && !valid_identity("a/b") && !valid_identity(""));
    }
}
