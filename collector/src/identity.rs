//! Who is on the other end of a connection: the identity in a verified client certificate.
//!
//! The identity is the certificate's first DNS subject alternative name, else its common
//! name, lower-cased. It names the agent's chain in the store (a directory), so it must be a
//! plain DNS-like name: letters, digits, `-`, `.`, `_`, not starting with `.`.

use std::{net::SocketAddr, sync::Arc};

use x509_parser::{extensions::GeneralName, prelude::FromDer as _};

/// A certificate that yields no usable identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Not a parsable X.509 certificate.
    #[error("unparsable client certificate: {0}")]
    Parse(String),
    /// Neither a DNS name nor a common name.
    #[error("client certificate names no identity (no DNS name, no common name)")]
    Missing,
    /// A name that cannot be an identity.
    #[error("client certificate identity {0:?} is not a valid name")]
    Invalid(String),
}

/// Whether `name` can be an identity (and so a directory name in the store): the rule the
/// development PKI issues by too.
pub use phiguard_support::identity::valid_identity;

/// The identity named by a DER certificate (already verified by TLS).
pub fn identity_from_cert(der: &[u8]) -> Result<String, IdentityError> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| IdentityError::Parse(e.to_string()))?;
    let dns = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Parse(e.to_string()))?
        .and_then(|san| {
            san.value.general_names.iter().find_map(|name| match name {
                GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
        });
    let name = match dns {
        Some(name) => name,
        None => cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned)
            .ok_or(IdentityError::Missing)?,
    };
    let name = name.to_ascii_lowercase();
    if valid_identity(&name) {
        Ok(name)
    } else {
        Err(IdentityError::Invalid(name))
    }
}

/// The authenticated peer of a connection (a request extension on every call).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The identity from its certificate.
    pub identity: Arc<str>,
    /// Its address.
    pub addr: SocketAddr,
    /// Its certificate, as the deny list names certificates.
    pub credential: crate::revocation::Credential,
}

#[cfg(test)]
mod tests {
    use phiguard_devcerts::{Ca, Leaf};
    use x509_parser::pem::parse_x509_pem;

    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        parse_x509_pem(pem.as_bytes()).unwrap().1.contents
    }

    #[test]
    fn identity_is_the_dns_name() {
        let ca = Ca::generate("t").unwrap();
        let cert = ca.issue(&Leaf::agent("EHR-db-1")).unwrap();
        assert_eq!(
            identity_from_cert(&der(&cert.cert_pem)).unwrap(),
            "ehr-db-1"
        );
        let mut odd = Leaf::agent("x");
        odd.subject_alt_names = vec!["127.0.0.1".into()];
        odd.name = "cn-only".into();
        let cert = ca.issue(&odd).unwrap();
        assert_eq!(identity_from_cert(&der(&cert.cert_pem)).unwrap(), "cn-only");
        assert!(identity_from_cert(b"garbage").is_err());
    }

    #[test]
    fn names_that_could_escape_the_store_are_invalid() {
        for bad in ["", "..", "../x", "a/b", ".x", "a b", "a\0b"] {
            assert!(!valid_identity(bad), "{bad:?}");
        }
        assert!(valid_identity("ehr-db-1.example.org"));
    }
}
