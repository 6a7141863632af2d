//! Break-glass emergency access (HIPAA §164.312(a)(2)(ii)): a time-limited exception to the
//! allow-lists for one user or one program.
//!
//! - `phiguard break-glass` ([`command`]) validates the request ([`grant`]) and writes a grant
//!   file into a root-only directory ([`store`]); `--list` and `--revoke ID` read and change it.
//! - The running agent reads that directory every second ([`BreakGlass::refresh`]; a plain
//!   scan of a handful of files, which also notices grants that expired or were revoked without
//!   inotify's edge cases) and mirrors the grants in force into the kernel's pinned
//!   `BREAK_GLASS` map ([`GrantMap`]). The kernel checks each grant's expiry itself
//!   (`CLOCK_BOOTTIME`), so a grant ends on time whether or not an agent runs, and holds while
//!   the agent restarts (the map is pinned with the other enforcing state).
//! - Decisions that would refuse an access and find a grant allow it instead, with layer
//!   `BREAK_GLASS` and the grant's slot; the event names the grant (id and reason).
//! - The grant, its expiry and its revocation are `BreakGlass` events; the collector raises an
//!   alert for each grant.

pub mod command;
pub mod grant;
pub mod store;

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    os::fd::{AsFd as _, OwnedFd},
};

use phiguard_common::maps::{GrantKey, GrantValue, MAX_GRANTS};
use phiguard_proto::v1;
use tracing::{info, warn};

use self::{
    grant::{Grant, Scope},
    store::{boot_id, boot_ns, Store},
};
use crate::kernel::bpf_sys;

/// How long before a grant's expiry the fanotify layer stops honouring it: an open it allows
/// must complete before the kernel's own check (at the open's exit) sees the grant expired and
/// would kill the process.
pub const FANOTIFY_MARGIN_NS: u64 = 100_000_000;

fn key_bytes(key: &GrantKey) -> [u8; size_of::<GrantKey>()] {
    // SAFETY: `GrantKey` is plain `repr(C)` integers without padding.
    unsafe { std::mem::transmute_copy(key) }
}

/// The kernel's `BREAK_GLASS` map, through a descriptor of its own (usable from any thread).
#[derive(Debug)]
pub struct GrantMap {
    map: OwnedFd,
}

impl GrantMap {
    /// Wraps a descriptor of the map.
    pub fn new(map: OwnedFd) -> GrantMap {
        GrantMap { map }
    }

    /// A second handle on the same map.
    pub fn try_clone(&self) -> io::Result<GrantMap> {
        Ok(GrantMap {
            map: self.map.try_clone()?,
        })
    }

    /// The value under `key`.
    pub fn get(&self, key: &GrantKey) -> Option<GrantValue> {
        let mut value = [0u8; size_of::<GrantValue>()];
        if !bpf_sys::map_lookup(self.map.as_fd(), &key_bytes(key), &mut value).ok()? {
            return None;
        }
        // SAFETY: `GrantValue` is plain `repr(C)` integers; any bytes are a valid value.
        Some(unsafe { std::ptr::read_unaligned(value.as_ptr().cast()) })
    }

    fn set(&self, key: &GrantKey, value: &GrantValue) -> io::Result<()> {
        // SAFETY: as in `key_bytes`.
        let value: [u8; size_of::<GrantValue>()] = unsafe { std::mem::transmute_copy(value) };
        bpf_sys::map_update(self.map.as_fd(), &key_bytes(key), &value)
    }

    fn delete(&self, key: &GrantKey) {
        let _ = bpf_sys::map_delete(self.map.as_fd(), &key_bytes(key));
    }

    fn keys(&self) -> Vec<GrantKey> {
        let mut keys = Vec::new();
        let mut next = [0u8; size_of::<GrantKey>()];
        let mut current: Option<[u8; size_of::<GrantKey>()]> = None;
        while keys.len() <= MAX_GRANTS as usize
            && bpf_sys::map_next_key(
                self.map.as_fd(),
                current.as_ref().map(|k| &k[..]),
                &mut next,
            )
            .unwrap_or(false)
        {
            // SAFETY: as in `get`.
            keys.push(unsafe { std::ptr::read_unaligned(next.as_ptr().cast()) });
            current = Some(next);
        }
        keys
    }

    /// The slot and generation of an unexpired grant covering a process with real uid `uid`
    /// running `exe`, `margin_ns` before its expiry at the latest: the kernel's rule
    /// (`agent-ebpf/src/policy.rs`, `break_glass_grant`), for the fanotify layer.
    pub fn slot_for(
        &self,
        uid: u32,
        exe: Option<crate::paths::FileId>,
        margin_ns: u64,
    ) -> Option<(u8, u32)> {
        let by_user = Scope::User {
            uid,
            name: String::new(),
        }
        .key();
        let grant = self.get(&by_user).or_else(|| {
            let exe = exe?;
            self.get(&GrantKey {
                kind: phiguard_common::maps::grant_kind::EXE,
                dev: exe.dev,
                id: exe.ino,
            })
        })?;
        (boot_ns().saturating_add(margin_ns) < grant.expires_boot_ns && grant.slot < MAX_GRANTS)
            .then_some((grant.slot as u8, grant.generation))
    }
}

/// What a decision's event says of the grant behind it.
pub fn grant_use(grant: &Grant) -> v1::BreakGlassUse {
    v1::BreakGlassUse {
        grant_id: grant.id.clone(),
        reason: grant.reason.clone(),
    }
}

fn timestamp(ms: u64) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn user(uid: u32) -> Option<v1::User> {
    (uid != u32::MAX).then(|| v1::User {
        id: Some(uid),
        name: nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_default(),
    })
}

/// The event body for `action` on `grant`.
pub fn event(grant: &Grant, action: v1::BreakGlassAction) -> v1::BreakGlass {
    let (covered, exe) = match &grant.scope {
        Scope::User { uid, name } => (
            Some(v1::User {
                id: Some(*uid),
                name: name.clone(),
            }),
            String::new(),
        ),
        Scope::Exe { path, .. } => (None, path.display().to_string()),
    };
    let revoked = grant
        .revoked
        .as_ref()
        .filter(|_| action == v1::BreakGlassAction::Revoked);
    v1::BreakGlass {
        action: action as i32,
        grant_id: grant.id.clone(),
        reason: grant.reason.clone(),
        user: covered,
        exe,
        granted_by: user(grant.granted_by_loginuid),
        granted_at: Some(timestamp(grant.granted_at_ms)),
        expires_at: Some(timestamp(grant.expires_at_ms)),
        duration_seconds: grant.duration_secs,
        revoked_by: revoked.and_then(|r| user(r.by_loginuid)),
        revoked_at: revoked.map(|r| timestamp(r.at_ms)),
    }
}

/// The agent's side: the grants in force, kept equal to the directory and the kernel map.
pub struct BreakGlass {
    store: Store,
    map: GrantMap,
    boot_id: String,
    /// Grants in force (in the kernel map), by id.
    in_force: BTreeMap<String, Grant>,
    /// Files already reported as unreadable (reported once).
    reported_bad: BTreeSet<String>,
    /// Grants this agent reported granted (so a file it could not mark is not reported again).
    announced: BTreeSet<String>,
    /// Grants this agent reported ended whose files it could not remove (reported once).
    ended: BTreeSet<String>,
}

impl BreakGlass {
    /// The grants of `store`, mirrored into `map`. The directory is created (0700) if missing.
    pub fn new(store: Store, map: GrantMap) -> BreakGlass {
        if let Err(e) = store.ensure() {
            warn!("break-glass directory: {e}; no grant is honoured until it is usable");
        }
        BreakGlass {
            store,
            map,
            boot_id: boot_id(),
            in_force: BTreeMap::new(),
            reported_bad: BTreeSet::new(),
            announced: BTreeSet::new(),
            ended: BTreeSet::new(),
        }
    }

    /// The grants in force (in the kernel map), by id.
    pub fn in_force(&self) -> impl Iterator<Item = &Grant> {
        self.in_force.values()
    }

    /// Reads the directory and brings the kernel map in line: new grants come into force,
    /// expired and revoked ones end (their files are removed), anything else in the map is
    /// removed. Returns the events to report (grants that ended before this agent saw them —
    /// while no agent ran — are reported granted, then ended), and every grant seen (for the
    /// decisions' names).
    pub fn refresh(&mut self) -> (Vec<v1::BreakGlass>, Vec<Grant>) {
        let mut events = Vec::new();
        // The writers' lock: a `--revoke` (which removes the kernel entry itself) cannot land
        // between this look at the files and the map update below, which would put the entry
        // back for up to a second. Without the directory there is nothing to lock.
        let _lock = self.store.lock().ok();
        let grants = match self.store.check().and_then(|()| self.store.list()) {
            Ok((grants, bad)) => {
                for e in bad {
                    if self.reported_bad.insert(e.to_string()) {
                        warn!("break-glass: {e}; ignored");
                    }
                }
                grants
            }
            Err(e) => {
                if self.reported_bad.insert(e.to_string()) {
                    warn!("break-glass directory: {e}; grants in force stay until they expire");
                }
                // Keep what is in force: the kernel ends it on time by itself.
                return (events, self.in_force.values().cloned().collect());
            }
        };
        let now = boot_ns();
        let mut live = BTreeMap::new();
        for mut grant in grants.iter().cloned() {
            let ended = if grant.revoked.is_some() {
                Some(v1::BreakGlassAction::Revoked)
            } else if grant.expired(&self.boot_id, now) {
                Some(v1::BreakGlassAction::Expired)
            } else {
                None
            };
            if self.ended.contains(&grant.id) {
                let _ = self.store.remove(&grant.id);
                continue;
            }
            if !grant.announced && self.announced.insert(grant.id.clone()) {
                info!(
                    grant = %grant.id,
                    scope = %grant.scope.describe(),
                    reason = %grant.reason,
                    duration_secs = grant.duration_secs,
                    granted_by_loginuid = grant.granted_by_loginuid,
                    "BREAK-GLASS grant: the allow-lists do not refuse this {} until it expires",
                    grant.scope.describe()
                );
                events.push(event(&grant, v1::BreakGlassAction::Granted));
                grant.announced = true;
                if ended.is_none() {
                    if let Err(e) = self.store.write(&grant) {
                        warn!("break-glass: recording that {} was reported: {e}", grant.id);
                    }
                }
            }
            match ended {
                Some(action) => {
                    self.map.delete(&grant.scope.key());
                    self.in_force.remove(&grant.id);
                    info!(grant = %grant.id, scope = %grant.scope.describe(), "break-glass grant ended: {}", action.as_str_name());
                    events.push(event(&grant, action));
                    self.announced.remove(&grant.id);
                    if let Err(e) = self.store.remove(&grant.id) {
                        warn!("break-glass: {e}");
                        self.ended.insert(grant.id.clone());
                    }
                }
                None => {
                    let value = GrantValue {
                        expires_boot_ns: grant.expires_boot_ns,
                        slot: grant.slot,
                        generation: grant.generation,
                    };
                    let key = grant.scope.key();
                    if self.map.get(&key) != Some(value) {
                        if let Err(e) = self.map.set(&key, &value) {
                            warn!(grant = %grant.id, "break-glass: writing the kernel map: {e}; the grant is not in force");
                            continue;
                        }
                    }
                    live.insert(key_bytes(&key), grant.id.clone());
                    self.in_force.insert(grant.id.clone(), grant);
                }
            }
        }
        // A grant in force whose file is gone (removed by hand): it ends as revoked.
        let gone: Vec<String> = self
            .in_force
            .keys()
            .filter(|id| !live.values().any(|l| l == *id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(grant) = self.in_force.remove(&id) {
                self.map.delete(&grant.scope.key());
                warn!(grant = %id, "break-glass grant file removed: the grant ends");
                events.push(event(&grant, v1::BreakGlassAction::Revoked));
            }
        }
        // Anything else in the kernel map was not written from a grant file.
        for key in self.map.keys() {
            if !live.contains_key(&key_bytes(&key)) {
                warn!(?key, "break-glass map entry without a grant: removed");
                self.map.delete(&key);
            }
        }
        (events, grants)
    }
}
