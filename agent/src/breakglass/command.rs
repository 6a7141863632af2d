//! `phiguard break-glass`: grant, list and revoke.

use std::path::Path;

use super::{
    grant::{self, Grant, InvalidField, Revocation, Scope},
    store::{boot_id, boot_ns, now_ms, own_loginuid, Store, StoreError},
};

/// What `phiguard break-glass` was asked to do, validated.
#[derive(Debug)]
pub enum Request {
    /// A new grant.
    Grant {
        /// Why.
        reason: String,
        /// Seconds.
        duration_secs: u64,
        /// Whom.
        scope: Scope,
    },
    /// Print the grants.
    List,
    /// End grant `id` now.
    Revoke(String),
}

/// Why `phiguard break-glass` did nothing.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Not root.
    #[error("break-glass must be run as root (it lifts the allow-lists)")]
    NotRoot,
    /// A flag's value is unusable.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// The directory.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A live grant covers the same user or program.
    #[error("{scope} already has grant {id} in force (revoke it first: phiguard break-glass --revoke {id})")]
    Duplicate {
        /// Whom.
        scope: String,
        /// The grant in force.
        id: String,
    },
    /// No such grant.
    #[error("no grant {0} (phiguard break-glass --list shows them)")]
    NoSuchGrant(String),
}

/// Validates the flags: `list`, else `revoke`, else a grant with `reason`, `duration` and
/// exactly one of `user` and `exe` (clap already enforces the combinations).
pub fn parse(
    list: bool,
    revoke: Option<&str>,
    reason: Option<&str>,
    duration: Option<&str>,
    user: Option<&str>,
    exe: Option<&Path>,
) -> Result<Request, InvalidField> {
    if list {
        return Ok(Request::List);
    }
    if let Some(id) = revoke {
        if !grant::valid_id(id) {
            return Err(InvalidField {
                field: "revoke",
                message: format!("{id:?} is not a grant id (bg- and 12 hex digits)"),
            });
        }
        return Ok(Request::Revoke(id.to_owned()));
    }
    let missing = |field| InvalidField {
        field,
        message: "required".into(),
    };
    let reason = grant::parse_reason(reason.ok_or_else(|| missing("reason"))?)?;
    let duration_secs = grant::parse_duration(duration.ok_or_else(|| missing("for"))?)?;
    let scope = match (user, exe) {
        (Some(user), None) => grant::parse_user(user)?,
        (None, Some(exe)) => grant::parse_exe(exe)?,
        _ => {
            return Err(InvalidField {
                field: "user",
                message: "give exactly one of --user and --exe".into(),
            })
        }
    };
    Ok(Request::Grant {
        reason,
        duration_secs,
        scope,
    })
}

/// Runs `request` against the directory `dir` and, for a revocation, the kernel's pinned
/// grants under `pin_root`; returns what to print.
pub fn run(request: Request, dir: &Path, pin_root: &Path) -> Result<String, CommandError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(CommandError::NotRoot);
    }
    let store = Store::new(dir);
    match request {
        Request::List => {
            if !dir.exists() {
                return Ok("no break-glass grants\n".into());
            }
            store.check()?;
            let (grants, bad) = store.list()?;
            let mut out = String::new();
            let (id, now) = (boot_id(), boot_ns());
            for g in &grants {
                let state = if g.revoked.is_some() {
                    "revoked (ends at the agent's next look)"
                } else if g.expired(&id, now) {
                    "expired"
                } else {
                    "in force"
                };
                out.push_str(&format!(
                    "{}  {}  {} until {} ({}s left)  granted by loginuid {}  reason: {}\n",
                    g.id,
                    state,
                    g.scope.describe(),
                    rfc3339(g.expires_at_ms),
                    if g.boot_id == id {
                        g.expires_boot_ns.saturating_sub(now) / 1_000_000_000
                    } else {
                        0
                    },
                    loginuid_text(g.granted_by_loginuid),
                    g.reason
                ));
            }
            for e in bad {
                out.push_str(&format!("unreadable: {e}\n"));
            }
            if grants.is_empty() {
                out.push_str("no break-glass grants\n");
            }
            Ok(out)
        }
        Request::Revoke(id) => {
            store.check()?;
            let _lock = store.lock()?;
            let mut grant = match store.read(&id) {
                Ok(g) => g,
                Err(StoreError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    return Err(CommandError::NoSuchGrant(id))
                }
                Err(e) => return Err(e.into()),
            };
            if grant.revoked.is_none() {
                grant.revoked = Some(Revocation {
                    by_loginuid: own_loginuid(),
                    at_ms: now_ms(),
                });
                store.write(&grant)?;
            }
            let ended = end_in_kernel(&grant, pin_root);
            Ok(format!(
                "revoked {id} ({}); {}; a running agent reports it within a second, else the next one does\n",
                grant.scope.describe(),
                match ended {
                    Ok(true) => "the kernel no longer honours it",
                    Ok(false) => "the kernel did not hold it",
                    Err(_) => "no pinned grants to remove it from (no enforcement in force)",
                }
            ))
        }
        Request::Grant {
            reason,
            duration_secs,
            scope,
        } => {
            store.ensure()?;
            let _lock = store.lock()?;
            let (grants, _) = store.list()?;
            let (boot, now) = (boot_id(), boot_ns());
            if let Some(live) = grants.iter().find(|g| {
                g.scope.key() == scope.key() && g.revoked.is_none() && !g.expired(&boot, now)
            }) {
                return Err(CommandError::Duplicate {
                    scope: scope.describe(),
                    id: live.id.clone(),
                });
            }
            let granted_at_ms = now_ms();
            let grant = Grant {
                id: grant::new_id(),
                slot: Store::free_slot(&grants)?,
                generation: store.next_generation(&grants)?,
                reason,
                scope,
                granted_by_loginuid: own_loginuid(),
                granted_at_ms,
                duration_secs,
                expires_at_ms: granted_at_ms + duration_secs * 1000,
                boot_id: boot,
                expires_boot_ns: now + duration_secs * 1_000_000_000,
                announced: false,
                revoked: None,
            };
            store.write(&grant)?;
            Ok(format!(
                "{}\ngranted to {} for {}s, until {}; a running agent applies it within a second and reports it\n",
                grant.id,
                grant.scope.describe(),
                grant.duration_secs,
                rfc3339(grant.expires_at_ms)
            ))
        }
    }
}

/// Removes `grant`'s entry from the kernel's pinned `BREAK_GLASS` map under `pin_root` at
/// once, so a revocation takes effect whether or not an agent runs (the pinned programs keep
/// enforcing without one). Only the entry this grant wrote goes (same key, same slot and
/// generation): a newer grant for the same user or program stays. Returns whether an entry was
/// removed.
fn end_in_kernel(grant: &Grant, pin_root: &Path) -> std::io::Result<bool> {
    let map = super::GrantMap::new(crate::kernel::bpf_sys::obj_get(
        &crate::kernel::pins::break_glass_path(pin_root),
    )?);
    let key = grant.scope.key();
    match map.get(&key) {
        Some(value) if value.slot == grant.slot && value.generation == grant.generation => {
            map.delete(&key);
            Ok(true)
        }
        _ => Ok(false),
    }
}

fn loginuid_text(uid: u32) -> String {
    if uid == u32::MAX {
        "unset".into()
    } else {
        uid.to_string()
    }
}

/// `ms` since the epoch as an RFC 3339 UTC time (seconds).
fn rfc3339(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_400_000_000), "2026-12-04T16:00:00Z");
    }

    #[test]
    fn a_grant_needs_a_reason_a_duration_and_exactly_one_subject() {
        let ok = parse(
            false,
            None,
            Some("EHR down"),
            Some("5m"),
            Some("root"),
            None,
        )
        .unwrap();
        assert!(matches!(
            ok,
            Request::Grant {
                duration_secs: 300,
                ..
            }
        ));
        let field = |r: Result<Request, InvalidField>| r.unwrap_err().field;
        assert_eq!(
            field(parse(false, None, None, Some("5m"), Some("root"), None)),
            "reason"
        );
        assert_eq!(
            field(parse(false, None, Some("x"), None, Some("root"), None)),
            "for"
        );
        assert_eq!(
            field(parse(false, None, Some("x"), Some("5m"), None, None)),
            "user"
        );
        assert_eq!(
            field(parse(
                false,
                None,
                Some("x"),
                Some("5m"),
                Some("root"),
                Some(Path::new("/bin/sh"))
            )),
            "user"
        );
        assert_eq!(
            field(parse(false, Some("../x"), None, None, None, None)),
            "revoke"
        );
        assert!(matches!(
            parse(false, Some("bg-0123456789ab"), None, None, None, None),
            Ok(Request::Revoke(_))
        ));
        assert!(matches!(
            parse(true, None, None, None, None, None),
            Ok(Request::List)
        ));
    }
}
