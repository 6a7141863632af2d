//! The one rule for what may be a phiguard identity (an agent's or a subscriber's name in its
//! client certificate). The collector checks certificates and its configuration against it,
//! and names each agent's chain directory after it; the development PKI refuses to issue a
//! certificate for a name that breaks it. One definition, so the two cannot drift apart.

/// Whether `name` can be a phiguard identity: a DNS-like name (letters, digits, `-`, `.`, `_`;
/// 1 to 253 bytes) that is also safe as a file name (no `/`, no leading `.`).
pub fn valid_identity(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::valid_identity;

    #[test]
    fn identities_are_dns_like_names_safe_as_directory_names() {
        assert!(valid_identity("ehr-db-1.example.org"));
        assert!(valid_identity("agent_7"));
        for bad in ["", ".hidden", "a/b", "..", "a b", "ünï", &"a".repeat(254)] {
            assert!(!valid_identity(bad), "{bad:?}");
        }
    }
}
