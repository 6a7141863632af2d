//! uid/gid → name, cached for a minute so renamed or added accounts are picked up.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use nix::unistd::{Gid, Group, Uid, User};

/// How long a looked-up name is trusted.
const TTL: Duration = Duration::from_secs(60);
/// Entries kept per map before it is cleared.
const MAX_ENTRIES: usize = 4096;

/// Cached account names.
#[derive(Debug, Default)]
pub struct UserNames {
    users: HashMap<u32, (Option<String>, Instant)>,
    groups: HashMap<u32, (Option<String>, Instant)>,
}

fn cached(
    map: &mut HashMap<u32, (Option<String>, Instant)>,
    id: u32,
    look_up: impl FnOnce() -> Option<String>,
) -> Option<String> {
    if let Some((name, at)) = map.get(&id) {
        if at.elapsed() < TTL {
            return name.clone();
        }
    }
    if map.len() >= MAX_ENTRIES {
        map.clear();
    }
    let name = look_up();
    map.insert(id, (name.clone(), Instant::now()));
    name
}

impl UserNames {
    /// The name of user `uid`, if it has one.
    pub fn user_name(&mut self, uid: u32) -> Option<String> {
        cached(&mut self.users, uid, || {
            User::from_uid(Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|u| u.name)
        })
    }

    /// The name of group `gid`, if it has one.
    pub fn group_name(&mut self, gid: u32) -> Option<String> {
        cached(&mut self.groups, gid, || {
            Group::from_gid(Gid::from_raw(gid))
                .ok()
                .flatten()
                .map(|g| g.name)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_unknown() {
        let mut names = UserNames::default();
        assert_eq!(names.user_name(0).as_deref(), Some("root"));
        assert_eq!(names.group_name(0).as_deref(), Some("root"));
        assert_eq!(names.user_name(3_999_999_999), None);
        assert_eq!(names.user_name(0).as_deref(), Some("root"), "cached");
    }
}
