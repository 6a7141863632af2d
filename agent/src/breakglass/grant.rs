//! One break-glass grant: what `phiguard break-glass` validates and writes, and what the agent
//! reads back. Pure parsing and validation (unit-tested); files and clocks are in
//! [`super::store`].

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use phiguard_common::maps::{grant_kind, GrantKey};
use serde::{Deserialize, Serialize};

use crate::paths::{kernel_dev, FileId};

/// Longest reason, in bytes.
pub const MAX_REASON_BYTES: usize = 500;
/// Longest grant: a day. Emergency access is for an emergency; a longer need is a policy change.
pub const MAX_DURATION_SECS: u64 = 24 * 3600;

/// A value given to `phiguard break-glass` that cannot be used; the message names the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct InvalidField {
    /// The flag, without dashes (`reason`, `for`, `user`, `exe`).
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> InvalidField {
    InvalidField {
        field,
        message: message.into(),
    }
}

/// Whom a grant covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Scope {
    /// Every process whose real uid is `uid`.
    User {
        /// Real uid.
        uid: u32,
        /// Its name when granted (empty when it has none).
        name: String,
    },
    /// Every process running this program (by the kernel's record of its exec: device and
    /// inode, as `exe` subjects are matched).
    Exe {
        /// The path given, resolved (symlinks followed).
        path: PathBuf,
        /// Kernel `dev_t` of the file.
        dev: u32,
        /// Its inode.
        ino: u64,
    },
}

impl Scope {
    /// The grant's key in the kernel's `BREAK_GLASS` map.
    pub fn key(&self) -> GrantKey {
        match self {
            Scope::User { uid, .. } => GrantKey {
                kind: grant_kind::USER,
                dev: 0,
                id: u64::from(*uid),
            },
            Scope::Exe { dev, ino, .. } => GrantKey {
                kind: grant_kind::EXE,
                dev: *dev,
                id: *ino,
            },
        }
    }

    /// In words, for the log and `--list`.
    pub fn describe(&self) -> String {
        match self {
            Scope::User { uid, name } if name.is_empty() => format!("user {uid}"),
            Scope::User { uid, name } => format!("user {name} ({uid})"),
            Scope::Exe { path, .. } => format!("exe {}", path.display()),
        }
    }
}

/// A revocation (`phiguard break-glass --revoke`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// Login uid of whoever revoked it (`u32::MAX`: unset).
    pub by_loginuid: u32,
    /// When, milliseconds since the epoch.
    pub at_ms: u64,
}

/// A grant as stored in its file (`<id>.json` in the break-glass directory).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// `bg-` and 12 hex digits.
    pub id: String,
    /// Below `MAX_GRANTS`, unique among the grant files: decisions it allows carry it.
    pub slot: u32,
    /// Unique among the grants ever written to the directory (slots are reused): decisions it
    /// allows carry it beside the slot, so a late record names this grant and not a later one
    /// in the same slot. 0 in grant files written before generations existed.
    #[serde(default)]
    pub generation: u32,
    /// Why.
    pub reason: String,
    /// Whom it covers.
    pub scope: Scope,
    /// Login uid of the person who granted it (`u32::MAX`: unset, e.g. a service).
    pub granted_by_loginuid: u32,
    /// When, milliseconds since the epoch.
    pub granted_at_ms: u64,
    /// How long, seconds.
    pub duration_secs: u64,
    /// When it ends, milliseconds since the epoch (for people; the kernel uses the next two).
    pub expires_at_ms: u64,
    /// `/proc/sys/kernel/random/boot_id` when granted: from another boot it has expired.
    pub boot_id: String,
    /// `CLOCK_BOOTTIME` nanoseconds at which it ends (what the kernel compares).
    pub expires_boot_ns: u64,
    /// Set once an agent has reported the grant (its `GRANTED` event is in the event stream).
    #[serde(default)]
    pub announced: bool,
    /// Set by `--revoke`; the agent then ends it.
    #[serde(default)]
    pub revoked: Option<Revocation>,
}

impl Grant {
    /// Whether it has run out at boot time `now_boot_ns` of boot `boot_id`.
    pub fn expired(&self, boot_id: &str, now_boot_ns: u64) -> bool {
        self.boot_id != boot_id || now_boot_ns >= self.expires_boot_ns
    }
}

/// Checks a reason: not blank, at most [`MAX_REASON_BYTES`], no control characters (it goes
/// into logs and events verbatim: no line breaks, no terminal escapes).
pub fn parse_reason(reason: &str) -> Result<String, InvalidField> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(invalid("reason", "must say why (it is empty)"));
    }
    if reason.len() > MAX_REASON_BYTES {
        return Err(invalid(
            "reason",
            format!(
                "{} bytes, at most {MAX_REASON_BYTES} are allowed",
                reason.len()
            ),
        ));
    }
    if let Some(c) = reason.chars().find(|c| c.is_control()) {
        return Err(invalid(
            "reason",
            format!("contains the control character {c:?}"),
        ));
    }
    Ok(reason.to_owned())
}

/// Parses a duration: numbers with units `s`, `m`, `h` (`90s`, `15m`, `1h30m`); at least a
/// second, at most [`MAX_DURATION_SECS`]. A bare number is refused (minutes or seconds?).
pub fn parse_duration(text: &str) -> Result<u64, InvalidField> {
    let text = text.trim();
    if text.is_empty() {
        return Err(invalid("for", "empty; give e.g. 30m or 2h"));
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => {
                return Err(invalid(
                    "for",
                    format!("{text:?}: unknown unit {c:?} (use s, m or h, e.g. 1h30m)"),
                ))
            }
        };
        if number.is_empty() {
            return Err(invalid("for", format!("{text:?}: a unit without a number")));
        }
        let n: u64 = number
            .parse()
            .map_err(|_| invalid("for", format!("{text:?}: number too large")))?;
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| invalid("for", format!("{text:?}: too long")))?;
        number.clear();
    }
    if !number.is_empty() {
        return Err(invalid(
            "for",
            format!("{text:?}: a number without a unit (use s, m or h, e.g. 30m)"),
        ));
    }
    if total == 0 {
        return Err(invalid("for", "must be at least 1s"));
    }
    if total > MAX_DURATION_SECS {
        return Err(invalid(
            "for",
            format!("{text:?} is longer than the longest grant, 24h"),
        ));
    }
    Ok(total)
}

/// A user by name or numeric uid.
pub fn parse_user(user: &str) -> Result<Scope, InvalidField> {
    let user = user.trim();
    if user.is_empty() {
        return Err(invalid("user", "empty"));
    }
    if let Ok(uid) = user.parse::<u32>() {
        if uid == u32::MAX {
            return Err(invalid("user", "4294967295 is not a uid"));
        }
        let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_default();
        return Ok(Scope::User { uid, name });
    }
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => Ok(Scope::User {
            uid: u.uid.as_raw(),
            name: u.name,
        }),
        Ok(None) => Err(invalid("user", format!("no user named {user:?}"))),
        Err(e) => Err(invalid("user", format!("looking up {user:?}: {e}"))),
    }
}

/// A program by absolute path: resolved (symlinks followed) to the regular file it names,
/// identified by device and inode.
pub fn parse_exe(exe: &Path) -> Result<Scope, InvalidField> {
    if !exe.is_absolute() {
        return Err(invalid(
            "exe",
            format!("{}: must be an absolute path", exe.display()),
        ));
    }
    let path = std::fs::canonicalize(exe)
        .map_err(|e| invalid("exe", format!("{}: {e}", exe.display())))?;
    let meta =
        std::fs::metadata(&path).map_err(|e| invalid("exe", format!("{}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(invalid(
            "exe",
            format!("{}: not a regular file", path.display()),
        ));
    }
    let id = FileId {
        dev: kernel_dev(meta.dev()),
        ino: meta.ino(),
    };
    Ok(Scope::Exe {
        path,
        dev: id.dev,
        ino: id.ino,
    })
}

/// A grant id: `bg-` and 12 hex digits (random bits of a UUIDv7).
pub fn new_id() -> String {
    let uuid = uuid::Uuid::now_v7().simple().to_string();
    format!("bg-{}", &uuid[uuid.len() - 12..])
}

/// Whether `id` has the form of a grant id (it names a file: nothing else may pass).
pub fn valid_id(id: &str) -> bool {
    id.len() == 15
        && id.starts_with("bg-")
        && id[3..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_seconds_minutes_and_hours_up_to_a_day() {
        assert_eq!(parse_duration("5s"), Ok(5));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration(" 2h "), Ok(7200));
        assert_eq!(parse_duration("24h"), Ok(86_400));
        for bad in [
            "",
            "0s",
            "25h",
            "24h1s",
            "30",
            "m",
            "5d",
            "1.5h",
            "-5m",
            "99999999999999999999h",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert_eq!(e.field, "for", "{bad:?}");
            assert!(e.to_string().starts_with("for: "), "{e}");
        }
    }

    #[test]
    fn a_reason_must_be_given_short_and_printable() {
        assert_eq!(
            parse_reason("  EHR down, ticket 4711 "),
            Ok("EHR down, ticket 4711".to_owned())
        );
        for bad in [
            String::new(),
            "   ".to_owned(),
            "a\nb".to_owned(),
            "esc \u{1b}[2J".to_owned(),
            "x".repeat(MAX_REASON_BYTES + 1),
        ] {
            assert_eq!(parse_reason(&bad).unwrap_err().field, "reason", "{bad:?}");
        }
        assert!(parse_reason(&"x".repeat(MAX_REASON_BYTES)).is_ok());
    }

    #[test]
    fn users_by_name_or_uid() {
        assert_eq!(
            parse_user("root"),
            Ok(Scope::User {
                uid: 0,
                name: "root".into()
            })
        );
        assert!(matches!(parse_user("0"), Ok(Scope::User { uid: 0, .. })));
        assert!(matches!(
            parse_user("4000000"),
            Ok(Scope::User { uid: 4_000_000, .. })
        ));
        for bad in ["", "no-such-user-xyz", "4294967295"] {
            assert_eq!(parse_user(bad).unwrap_err().field, "user", "{bad:?}");
        }
    }

    #[test]
    fn programs_by_absolute_path_to_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tool");
        std::fs::write(&file, b"#!/bin/sh\n").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let Ok(Scope::Exe { path, ino, .. }) = parse_exe(&link) else {
            panic!("not resolved");
        };
        assert_eq!(path, std::fs::canonicalize(&file).unwrap());
        assert_eq!(ino, std::fs::metadata(&file).unwrap().ino());
        for bad in [Path::new("tool"), dir.path(), &dir.path().join("missing")] {
            assert_eq!(parse_exe(bad).unwrap_err().field, "exe", "{bad:?}");
        }
    }

    #[test]
    fn ids_are_checked_before_they_name_a_file() {
        let id = new_id();
        assert!(valid_id(&id), "{id}");
        assert_ne!(new_id(), id);
        for bad in [
            "",
            "bg-",
            "bg-../../etc/x",
            "bg-ABCDEF012345",
            "xx-0123456789ab",
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn a_grant_from_another_boot_or_past_its_time_has_expired() {
        let grant = Grant {
            id: new_id(),
            slot: 0,
            generation: 1,
            reason: "r".into(),
            scope: Scope::User {
                uid: 1,
                name: String::new(),
            },
            granted_by_loginuid: 1000,
            granted_at_ms: 0,
            duration_secs: 60,
            expires_at_ms: 60_000,
            boot_id: "boot-a".into(),
            expires_boot_ns: 1_000,
            announced: false,
            revoked: None,
        };
        assert!(!grant.expired("boot-a", 999));
        assert!(grant.expired("boot-a", 1_000));
        assert!(grant.expired("boot-b", 0));
    }
}
