//! Certificate revocation lists (`[server] crl`): the CA's own revocations, as a PEM file of
//! one or more `X509 CRL` blocks, read at start and again on SIGHUP.
//!
//! The lists are used twice. rustls checks every new client certificate against them during
//! the handshake (`WebPkiClientVerifier` with the CRLs: the CRL's signature must verify under
//! the certificate's issuer, and a certificate whose issuer has no CRL in the file is refused
//! — a CRL file that covers the wrong CA refuses everyone rather than no one). And each
//! revoked (issuer, serial) joins the deny list in force, so a connection already open with a
//! certificate revoked at a reload is cut, as with `[server] revoked`.

use std::{
    fs,
    path::{Path, PathBuf},
};

use rustls_pki_types::{pem::PemObject as _, CertificateRevocationListDer};
use tracing::warn;
use x509_parser::{prelude::FromDer as _, revocation_list::CertificateRevocationList};

use crate::revocation::Entry;

/// A CRL file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct CrlError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

/// The CRLs of one file: for rustls, and as deny-list entries.
#[derive(Clone, Debug, Default)]
pub struct Crls {
    /// The lists, DER.
    pub ders: Vec<CertificateRevocationListDer<'static>>,
    /// One entry per revoked certificate.
    pub entries: Vec<Entry>,
}

/// Reads the CRLs in the PEM file at `path` (at least one).
pub fn load(path: &Path) -> Result<Crls, CrlError> {
    let fail = |message: String| CrlError {
        path: path.to_owned(),
        message,
    };
    let text = fs::read(path).map_err(|e| fail(e.to_string()))?;
    let ders = CertificateRevocationListDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("not a PEM CRL file: {e}")))?;
    if ders.is_empty() {
        return Err(fail("no `X509 CRL` block in the file".into()));
    }
    let mut entries = Vec::new();
    for (i, der) in ders.iter().enumerate() {
        let (_, crl) = CertificateRevocationList::from_der(der.as_ref())
            .map_err(|e| fail(format!("CRL {}: unparsable: {e}", i + 1)))?;
        let issuer = crl.issuer().as_raw().to_vec();
        if let Some(next) = crl.next_update() {
            if next.timestamp() < now() {
                warn!(crl = %path.display(), issuer = %crl.issuer(), next_update = %next, "CRL is past its next update: fetch a fresh one from the CA (it is still applied)");
            }
        }
        for revoked in crl.iter_revoked_certificates() {
            entries.push(Entry::Crl {
                issuer: issuer.clone(),
                serial: crate::revocation::normal_serial(&hex::encode(revoked.raw_serial())),
            });
        }
    }
    Ok(Crls { ders, entries })
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use phiguard_devcerts::{Ca, Leaf};

    use super::*;
    use crate::revocation::{Credential, DenyList};

    fn der(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents
    }

    #[test]
    fn a_crl_revokes_its_certificates_of_its_issuer_only() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, other) = (Ca::generate("a").unwrap(), Ca::generate("b").unwrap());
        let stolen = ca.issue(&Leaf::agent("ehr-a")).unwrap();
        let kept = ca.issue(&Leaf::agent("ehr-a")).unwrap();
        let path = dir.path().join("crl.pem");
        fs::write(&path, ca.crl(1, &[&stolen]).unwrap()).unwrap();
        let crls = load(&path).unwrap();
        assert_eq!((crls.ders.len(), crls.entries.len()), (1, 1));
        let list = DenyList::new(crls.entries);
        let stolen_cred = Credential::from_der(&der(&stolen.cert_pem)).unwrap();
        assert!(list.denies(&stolen_cred).is_some());
        assert!(list
            .denies(&Credential::from_der(&der(&kept.cert_pem)).unwrap())
            .is_none());
        // The same serial from another CA is another certificate.
        let foreign = Credential {
            issuer: Credential::from_der(&der(&other.issue(&Leaf::agent("x")).unwrap().cert_pem))
                .unwrap()
                .issuer,
            ..stolen_cred
        };
        assert!(list.denies(&foreign).is_none());
        fs::write(&path, "not a crl").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}: ", path.display())), "{err}");
    }
}
