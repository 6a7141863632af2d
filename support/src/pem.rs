//! Certificates and private keys from PEM files. Errors name the file and never include
//! its contents.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use rustls::RootCertStore;
use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};

/// A PEM file that could not be read or holds nothing usable.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct PemError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong (never the file's contents).
    pub message: String,
}

fn pem_err(path: &Path, message: impl ToString) -> PemError {
    PemError {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// Reads every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e))?;
    if certs.is_empty() {
        return Err(pem_err(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// Reads a private key (PKCS#8, SEC1 or PKCS#1) from a PEM file, warning once when the file
/// is readable by anyone but its owner.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    warn_if_readable_by_others(path);
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::Io(io) => pem_err(path, io),
        _ => pem_err(path, "no usable private key in the file"),
    })
}

/// A root store holding the CA file's certificates.
pub fn load_roots(path: &Path) -> Result<RootCertStore, PemError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| pem_err(path, format!("unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(key = %path.display(), mode = format!("{mode:o}"), "private key is readable by group or others; chmod 600 it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_not_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, "secret material, not PEM").unwrap();
        let err = load_key(&path).unwrap_err().to_string();
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        assert!(!err.contains("secret"), "{err}");
        let err = load_certs(&path).unwrap_err().to_string();
        assert!(err.contains("no certificate"), "{err}");
        let missing = dir.path().join("missing.pem");
        assert!(load_roots(&missing)
            .unwrap_err()
            .to_string()
            .contains("missing.pem"));
    }
}
