//! Certificate revocation: a deny list of certificate SHA-256 fingerprints and serial
//! numbers (`[server] revoked` in collector.toml), read again on SIGHUP.
//!
//! A denied certificate is refused right after its TLS handshake (before any call), and a
//! connection already open with it is cut at the reload: a live subscription ends with
//! `PERMISSION_DENIED`, an agent's stream likewise. Each refusal is logged with the identity,
//! the entry that matched and the peer's address. The list names certificates, not
//! identities: a host whose certificate was stolen gets a new one and keeps sending.

use std::{collections::BTreeSet, fmt, sync::Arc};

use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use x509_parser::prelude::FromDer as _;

/// What identifies one certificate for revocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    /// SHA-256 of the DER certificate.
    pub fingerprint: [u8; 32],
    /// The serial number, lower-case hex without leading zeros.
    pub serial: String,
    /// The issuer's name (DER), which a CRL's serials belong to.
    pub issuer: Vec<u8>,
}

impl Credential {
    /// The credential of a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Credential, String> {
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
            .map_err(|e| format!("unparsable certificate: {e}"))?;
        Ok(Credential {
            fingerprint: Sha256::digest(der).into(),
            serial: normal_serial(&hex::encode(cert.raw_serial())),
            issuer: cert.issuer().as_raw().to_vec(),
        })
    }
}

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sha256:{} serial:{}",
            hex::encode(self.fingerprint),
            self.serial
        )
    }
}

/// A serial number as the deny list compares them: lower-case hex without leading zeros.
pub fn normal_serial(hex_text: &str) -> String {
    let trimmed = hex_text.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed.to_owned()
    }
}

/// One deny-list entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Entry {
    /// `sha256:` and 64 hex digits (colons allowed, as `openssl x509 -fingerprint -sha256`
    /// prints them).
    Fingerprint([u8; 32]),
    /// `serial:` and hex digits (colons allowed).
    Serial(String),
    /// Revoked by a CRL (`[server] crl`): a serial of one issuer.
    Crl {
        /// The issuer's name (DER).
        issuer: Vec<u8>,
        /// The serial, as [`normal_serial`] writes it.
        serial: String,
    },
}

impl Entry {
    /// Parses `sha256:HEX` or `serial:HEX`.
    pub fn parse(text: &str) -> Result<Entry, String> {
        let text = text.trim();
        let hex_of = |rest: &str| -> Result<String, String> {
            let digits: String = rest.chars().filter(|c| *c != ':').collect();
            if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!("{text:?}: not hex digits"));
            }
            Ok(digits.to_ascii_lowercase())
        };
        let lower = text.to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix("sha256:") {
            let digits = hex_of(rest)?;
            let mut fingerprint = [0u8; 32];
            hex::decode_to_slice(&digits, &mut fingerprint)
                .map_err(|_| format!("{text:?}: a SHA-256 fingerprint is 64 hex digits"))?;
            Ok(Entry::Fingerprint(fingerprint))
        } else if let Some(rest) = lower.strip_prefix("serial:") {
            Ok(Entry::Serial(normal_serial(&hex_of(rest)?)))
        } else {
            Err(format!(
                "{text:?}: give sha256:FINGERPRINT or serial:HEX (`openssl x509 -noout -fingerprint -sha256 -serial -in CERT`)"
            ))
        }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Fingerprint(fp) => write!(f, "sha256:{}", hex::encode(fp)),
            Entry::Serial(serial) => write!(f, "serial:{serial}"),
            Entry::Crl { serial, .. } => write!(f, "CRL serial:{serial}"),
        }
    }
}

/// The revoked certificates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DenyList {
    entries: BTreeSet<Entry>,
}

impl DenyList {
    /// The same list with `more` entries (a CRL's).
    pub fn with(mut self, more: impl IntoIterator<Item = Entry>) -> DenyList {
        self.entries.extend(more);
        self
    }

    /// A list of `entries`.
    pub fn new(entries: impl IntoIterator<Item = Entry>) -> DenyList {
        DenyList {
            entries: entries.into_iter().collect(),
        }
    }

    /// Entries listed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry that revokes `credential`, if any.
    pub fn denies(&self, credential: &Credential) -> Option<&Entry> {
        self.entries.iter().find(|e| match e {
            Entry::Fingerprint(fp) => *fp == credential.fingerprint,
            Entry::Serial(serial) => *serial == credential.serial,
            Entry::Crl { issuer, serial } => {
                *serial == credential.serial && *issuer == credential.issuer
            }
        })
    }
}

/// The deny list in force, shared by the handshakes and the open streams.
#[derive(Debug)]
pub struct Revocation {
    list: watch::Sender<Arc<DenyList>>,
}

impl Revocation {
    /// `list` in force.
    pub fn new(list: DenyList) -> Revocation {
        Revocation {
            list: watch::channel(Arc::new(list)).0,
        }
    }

    /// Puts `list` in force (open streams are told).
    pub fn set(&self, list: DenyList) {
        self.list.send_replace(Arc::new(list));
    }

    /// The list in force.
    pub fn current(&self) -> Arc<DenyList> {
        self.list.borrow().clone()
    }

    /// Told of every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<DenyList>> {
        self.list.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_and_match() {
        let cred = Credential {
            fingerprint: [0xab; 32],
            serial: "1f00".into(),
            issuer: Vec::new(),
        };
        let by_fp = Entry::parse(&format!("SHA256:{}", ["AB"; 32].join(":"))).unwrap();
        let by_serial = Entry::parse("serial:00:1F:00").unwrap();
        assert_eq!(by_serial, Entry::Serial("1f00".into()));
        assert!(DenyList::new([by_fp]).denies(&cred).is_some());
        assert!(DenyList::new([by_serial]).denies(&cred).is_some());
        assert!(DenyList::new([Entry::Serial("1f01".into())])
            .denies(&cred)
            .is_none());
        for bad in ["ab", "sha256:abc", "serial:", "serial:xyz", "md5:00"] {
            assert!(Entry::parse(bad).is_err(), "{bad}");
        }
    }
}
