//! Parsing and validating policy files. Unknown fields, wrong types and bad values are errors
//! that name the file, line, column and field; a directory is accepted only as a whole.

use std::{
    collections::HashSet,
    fmt, fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::model::{
    Access, Endpoint, ExecAllowList, FileResource, Mode, Policy, PolicySet, Principal, Resources,
    Rule, ScriptRef, Subject,
};
use crate::paths;

/// Most rules across a policy set (the kernel's subject masks are sized by it).
pub const MAX_RULES: usize = 256;
/// Most subjects in one rule (one bit each in a 64-bit mask).
pub const MAX_SUBJECTS: usize = 64;

/// A policy that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A problem at a place in a file.
    #[error("{}:{line}:{column}: {field}{message}", file.display(), field = if field.is_empty() { String::new() } else { format!("{field}: ") })]
    At {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: u64,
        /// 1-based column.
        column: u64,
        /// The field, as `rules[2].files[0].path` (empty for syntax errors).
        field: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    mode: Spanned<String>,
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    files: Option<Vec<RawFile>>,
    database: Option<Vec<RawEndpoint>>,
    exec: Option<RawExec>,
    #[serde(default)]
    allow: Vec<RawSubject>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    path: Spanned<String>,
    access: Spanned<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    port: Option<Spanned<u16>>,
    address: Option<Spanned<String>>,
    unix: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExec {
    allow: Spanned<Vec<String>>,
    cgroup: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubject {
    exe: Option<Spanned<String>>,
    sha256: Option<Spanned<String>>,
    user: Option<Spanned<NameOrId>>,
    group: Option<Spanned<NameOrId>>,
    parent: Option<Spanned<String>>,
    script: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NameOrId {
    Id(u32),
    Name(String),
}

/// Builds located errors for one file.
struct Locator<'a> {
    file: &'a Path,
}

impl Locator<'_> {
    fn at<T>(
        &self,
        spanned: &Spanned<T>,
        field: impl fmt::Display,
        message: impl fmt::Display,
    ) -> PolicyError {
        PolicyError::At {
            file: self.file.to_owned(),
            line: spanned.referenced.line(),
            column: spanned.referenced.column(),
            field: field.to_string(),
            message: message.to_string(),
        }
    }
}

fn absolute(
    loc: &Locator<'_>,
    value: &Spanned<String>,
    field: &str,
) -> Result<PathBuf, PolicyError> {
    let path = Path::new(&value.value);
    if !path.is_absolute() {
        return Err(loc.at(
            value,
            field,
            format!("{} is not an absolute path", value.value),
        ));
    }
    Ok(paths::normalize(path))
}

fn principal(value: &Spanned<NameOrId>) -> Principal {
    match &value.value {
        NameOrId::Id(id) => Principal::Id(*id),
        NameOrId::Name(name) => match name.parse() {
            Ok(id) => Principal::Id(id),
            Err(_) => Principal::Name(name.clone()),
        },
    }
}

fn access(
    loc: &Locator<'_>,
    value: &Spanned<Vec<String>>,
    field: &str,
) -> Result<Access, PolicyError> {
    let mut access = Access::default();
    for word in &value.value {
        match word.as_str() {
            "read" => access.read = true,
            "write" => access.write = true,
            other => {
                return Err(loc.at(
                    value,
                    field,
                    format!("unknown access `{other}` (read, write)"),
                ))
            }
        }
    }
    if !access.read && !access.write {
        return Err(loc.at(value, field, "empty: give read, write or both"));
    }
    Ok(access)
}

fn file_resource(
    loc: &Locator<'_>,
    raw: &RawFile,
    field: &str,
) -> Result<FileResource, PolicyError> {
    let text = &raw.path.value;
    let (base, recursive) = match text.strip_suffix("/**") {
        Some(dir) => (dir, true),
        None => (text.as_str(), false),
    };
    if base.contains(['*', '?', '[']) {
        return Err(loc.at(
            &raw.path,
            format!("{field}.path"),
            format!("unsupported pattern `{text}`: use DIR/** for everything below a directory, or an exact path"),
        ));
    }
    let spanned = Spanned {
        value: base.to_owned(),
        referenced: raw.path.referenced,
        defined: raw.path.defined,
    };
    let path = absolute(loc, &spanned, &format!("{field}.path"))?;
    let access = access(loc, &raw.access, &format!("{field}.access"))?;
    Ok(FileResource {
        path,
        recursive,
        access,
    })
}

fn endpoint(loc: &Locator<'_>, raw: &RawEndpoint, field: &str) -> Result<Endpoint, PolicyError> {
    match (&raw.port, &raw.unix) {
        (Some(port), None) => {
            if port.value == 0 {
                return Err(loc.at(
                    port,
                    format!("{field}.port"),
                    "port 0 is not a port (1..=65535)",
                ));
            }
            let address = match &raw.address {
                Some(a) => Some(a.value.parse::<IpAddr>().map_err(|e| {
                    loc.at(a, format!("{field}.address"), format!("`{}`: {e}", a.value))
                })?),
                None => None,
            };
            Ok(Endpoint::Tcp {
                port: port.value,
                address,
            })
        }
        (None, Some(unix)) => {
            if let Some(a) = &raw.address {
                return Err(loc.at(
                    a,
                    format!("{field}.address"),
                    "an address goes with a port, not a unix socket",
                ));
            }
            Ok(Endpoint::Unix {
                path: absolute(loc, unix, &format!("{field}.unix"))?,
            })
        }
        (Some(port), Some(_)) => Err(loc.at(port, field, "give either `port` or `unix`, not both")),
        (None, None) => match &raw.address {
            Some(a) => Err(loc.at(a, field, "an endpoint needs `port` or `unix`")),
            None => Err(PolicyError::At {
                file: loc.file.to_owned(),
                line: 0,
                column: 0,
                field: field.to_owned(),
                message: "an endpoint needs `port` or `unix`".into(),
            }),
        },
    }
}

fn subject(loc: &Locator<'_>, raw: &RawSubject, field: &str) -> Result<Subject, PolicyError> {
    let exe = raw
        .exe
        .as_ref()
        .map(|e| absolute(loc, e, &format!("{field}.exe")))
        .transpose()?;
    let parent = raw
        .parent
        .as_ref()
        .map(|p| absolute(loc, p, &format!("{field}.parent")))
        .transpose()?;
    let script = raw
        .script
        .as_ref()
        .map(|s| -> Result<ScriptRef, PolicyError> {
            let field = format!("{field}.script");
            Ok(ScriptRef {
                path: absolute(loc, s, &field)?,
                at: format!(
                    "{}:{}:{}: {field}",
                    loc.file.display(),
                    s.referenced.line(),
                    s.referenced.column()
                ),
            })
        })
        .transpose()?;
    if let Some(hash) = &raw.sha256 {
        if exe.is_none() {
            return Err(loc.at(
                hash,
                format!("{field}.sha256"),
                "a sha256 pins an `exe`: give the exe too",
            ));
        }
        if hash.value.len() != 64 || !hash.value.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(loc.at(
                hash,
                format!("{field}.sha256"),
                "expected 64 hexadecimal digits",
            ));
        }
    }
    let subject = Subject {
        exe,
        sha256: raw.sha256.as_ref().map(|h| h.value.to_ascii_lowercase()),
        user: raw.user.as_ref().map(principal),
        group: raw.group.as_ref().map(principal),
        parent,
        script,
    };
    if subject == Subject::default() {
        return Err(PolicyError::At {
            file: loc.file.to_owned(),
            line: 0,
            column: 0,
            field: field.to_owned(),
            message:
                "an empty subject would allow everyone: give exe, script, user, group or parent"
                    .into(),
        });
    }
    Ok(subject)
}

fn rule(loc: &Locator<'_>, raw: &RawRule, field: &str) -> Result<Rule, PolicyError> {
    let resources = match (&raw.files, &raw.database, &raw.exec) {
        (Some(files), None, None) => {
            let files = files
                .iter()
                .enumerate()
                .map(|(i, f)| file_resource(loc, f, &format!("{field}.files[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            if files.is_empty() {
                return Err(loc.at(
                    &raw.name,
                    format!("{field}.files"),
                    "empty: list at least one path",
                ));
            }
            Resources::Files(files)
        }
        (None, Some(endpoints), None) => {
            let endpoints = endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| endpoint(loc, e, &format!("{field}.database[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            if endpoints.is_empty() {
                return Err(loc.at(
                    &raw.name,
                    format!("{field}.database"),
                    "empty: list at least one endpoint",
                ));
            }
            Resources::Database(endpoints)
        }
        (None, None, Some(exec)) => {
            if !raw.allow.is_empty() {
                return Err(loc.at(
                    &raw.name,
                    format!("{field}.allow"),
                    "an exec rule lists allowed binaries in `exec.allow`, not subjects",
                ));
            }
            let allow = exec
                .allow
                .value
                .iter()
                .map(|p| {
                    let spanned = Spanned {
                        value: p.clone(),
                        referenced: exec.allow.referenced,
                        defined: exec.allow.defined,
                    };
                    absolute(loc, &spanned, &format!("{field}.exec.allow"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if allow.is_empty() {
                return Err(loc.at(
                    &exec.allow,
                    format!("{field}.exec.allow"),
                    "empty: nothing could run",
                ));
            }
            let cgroup = exec
                .cgroup
                .as_ref()
                .map(|c| absolute(loc, c, &format!("{field}.exec.cgroup")))
                .transpose()?;
            Resources::Exec(ExecAllowList { allow, cgroup })
        }
        _ => {
            return Err(loc.at(
                &raw.name,
                field,
                "a rule protects exactly one of `files`, `database` or `exec`",
            ))
        }
    };
    if !matches!(resources, Resources::Exec(_)) && raw.allow.is_empty() {
        return Err(loc.at(
            &raw.name,
            format!("{field}.allow"),
            "no subject allowed: list at least one (or use mode: audit to observe first)",
        ));
    }
    if raw.allow.len() > MAX_SUBJECTS {
        return Err(loc.at(
            &raw.name,
            format!("{field}.allow"),
            format!("{} subjects; at most {MAX_SUBJECTS}", raw.allow.len()),
        ));
    }
    let allow = raw
        .allow
        .iter()
        .enumerate()
        .map(|(i, s)| subject(loc, s, &format!("{field}.allow[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Rule {
        name: raw.name.value.clone(),
        resources,
        allow,
    })
}

/// Parses and validates one policy from `text`, reporting errors against `file`.
pub fn parse_policy(text: &str, file: &Path) -> Result<Policy, PolicyError> {
    let raw: RawPolicy = serde_saphyr::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        let message = e.to_string();
        // The crate's message may carry its own "line X column Y" prefix; keep the first line.
        let message = message.lines().next().unwrap_or_default().to_owned();
        PolicyError::At {
            file: file.to_owned(),
            line,
            column,
            field: String::new(),
            message,
        }
    })?;
    let loc = Locator { file };
    let mode = match raw.mode.value.as_str() {
        "enforce" => Mode::Enforce,
        "audit" => Mode::Audit,
        other => {
            return Err(loc.at(
                &raw.mode,
                "mode",
                format!("`{other}`: expected enforce or audit"),
            ))
        }
    };
    if raw.name.value.trim().is_empty() {
        return Err(loc.at(&raw.name, "name", "empty"));
    }
    if raw.rules.is_empty() {
        return Err(loc.at(&raw.name, "rules", "no rules: a policy protects something"));
    }
    let mut names = HashSet::new();
    let mut rules = Vec::new();
    for (i, r) in raw.rules.iter().enumerate() {
        if !names.insert(r.name.value.clone()) {
            return Err(loc.at(
                &r.name,
                format!("rules[{i}].name"),
                format!("`{}` is used twice", r.name.value),
            ));
        }
        rules.push(rule(&loc, r, &format!("rules[{i}]"))?);
    }
    Ok(Policy {
        name: raw.name.value,
        description: raw.description,
        mode,
        rules,
        source: file.to_owned(),
    })
}

/// Loads every `*.yaml`/`*.yml` file in `dir` (in name order). Any error rejects the whole set.
pub fn load_dir(dir: &Path) -> Result<PolicySet, PolicyError> {
    let read_err = |source| PolicyError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut set = PolicySet::default();
    let mut rule_count = 0;
    for file in files {
        let text = fs::read_to_string(&file).map_err(|source| PolicyError::Read {
            path: file.clone(),
            source,
        })?;
        let policy = parse_policy(&text, &file)?;
        if let Some(other) = set.policies.iter().find(|p| p.name == policy.name) {
            return Err(PolicyError::At {
                file: file.clone(),
                line: 1,
                column: 1,
                field: "name".into(),
                message: format!(
                    "policy `{}` is also defined in {}",
                    policy.name,
                    other.source.display()
                ),
            });
        }
        rule_count += policy.rules.len();
        if rule_count > MAX_RULES {
            return Err(PolicyError::At {
                file,
                line: 1,
                column: 1,
                field: "rules".into(),
                message: format!("more than {MAX_RULES} rules in the set"),
            });
        }
        set.policies.push(policy);
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        parse_policy(text, Path::new("ehr.yaml"))
    }

    const EHR: &str = "\
name: ehr
description: EHR server and its database
mode: enforce
rules:
  - name: records
    files:
      - path: /srv/ephi/**
        access: [read, write]
      - path: /etc/ehr/secret.key
        access: [read]
    allow:
      - exe: /opt/ehr/bin/ehr-server
        sha256: ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789
        user: ehr
        group: 1001
        parent: /usr/lib/systemd/systemd
  - name: db
    database:
      - port: 5432
        address: 10.0.0.5
      - unix: /var/run/postgresql/.s.PGSQL.5432
    allow:
      - exe: /opt/ehr/bin/ehr-server
  - name: lockdown
    exec:
      allow: [/usr/bin, /opt/ehr/bin]
      cgroup: /system.slice/ehr.service
";

    #[test]
    fn full_policy() {
        let p = parse(EHR).unwrap();
        assert_eq!(
            (p.name.as_str(), p.mode, p.rules.len()),
            ("ehr", Mode::Enforce, 3)
        );
        let Resources::Files(files) = &p.rules[0].resources else {
            panic!()
        };
        assert_eq!(
            files[0],
            FileResource {
                path: "/srv/ephi".into(),
                recursive: true,
                access: Access {
                    read: true,
                    write: true
                }
            }
        );
        assert!(!files[1].recursive);
        let s = &p.rules[0].allow[0];
        assert_eq!(s.user, Some(Principal::Name("ehr".into())));
        assert_eq!(s.group, Some(Principal::Id(1001)));
        assert_eq!(
            s.sha256.as_deref(),
            Some("abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789")
        );
        let Resources::Database(endpoints) = &p.rules[1].resources else {
            panic!()
        };
        assert_eq!(
            endpoints[0],
            Endpoint::Tcp {
                port: 5432,
                address: Some("10.0.0.5".parse().unwrap())
            }
        );
        assert_eq!(
            endpoints[1],
            Endpoint::Unix {
                path: "/var/run/postgresql/.s.PGSQL.5432".into()
            }
        );
        let Resources::Exec(exec) = &p.rules[2].resources else {
            panic!()
        };
        assert_eq!(
            exec.cgroup.as_deref(),
            Some(Path::new("/system.slice/ehr.service"))
        );
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn unknown_field_is_located() {
        let e = error("name: x\nmode: enforce\nrules:\n  - name: r\n    filez: []\n");
        assert!(e.starts_with("ehr.yaml:5:"), "{e}");
        assert!(e.contains("filez"), "{e}");
    }

    #[test]
    fn bad_yaml_is_located() {
        let e = error("name: x\nmode: [enforce\n");
        assert!(e.starts_with("ehr.yaml:"), "{e}");
        assert!(!e.starts_with("ehr.yaml:0:"), "{e}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let rule = |body: &str| format!("name: x\nmode: enforce\nrules:\n  - name: r\n{body}");
        let e = error(&rule("    files:\n      - path: /srv/*.txt\n        access: [read]\n    allow:\n      - user: root\n"));
        assert_eq!(e, "ehr.yaml:6:15: rules[0].files[0].path: unsupported pattern `/srv/*.txt`: use DIR/** for everything below a directory, or an exact path");
        let e = error(&rule("    files:\n      - path: srv/**\n        access: [read]\n    allow:\n      - user: root\n"));
        assert!(
            e.starts_with("ehr.yaml:6:15: rules[0].files[0].path: srv is not an absolute path"),
            "{e}"
        );
        let e = error(&rule("    files:\n      - path: /srv/**\n        access: [exec]\n    allow:\n      - user: root\n"));
        assert!(
            e.contains("rules[0].files[0].access: unknown access `exec`"),
            "{e}"
        );
        let e = error(&rule("    database:\n      - port: 5432\n        address: not-an-ip\n    allow:\n      - user: root\n"));
        assert!(
            e.starts_with("ehr.yaml:7:18: rules[0].database[0].address"),
            "{e}"
        );
        let e = error(&rule("    files:\n      - path: /srv/**\n        access: [read]\n    allow:\n      - exe: /bin/cat\n        sha256: xyz\n"));
        assert!(
            e.contains("rules[0].allow[0].sha256: expected 64 hexadecimal digits"),
            "{e}"
        );
        let e = error(&rule(
            "    files:\n      - path: /srv/**\n        access: [read]\n",
        ));
        assert!(e.contains("rules[0].allow: no subject allowed"), "{e}");
        let e = error("name: x\nmode: enforcing\nrules: []\n");
        assert_eq!(
            e,
            "ehr.yaml:2:7: mode: `enforcing`: expected enforce or audit"
        );
    }

    #[test]
    fn a_rule_protects_one_kind_of_resource() {
        let e = error("name: x\nmode: audit\nrules:\n  - name: r\n    files: [{path: /a, access: [read]}]\n    exec: {allow: [/usr/bin]}\n");
        assert!(
            e.contains("rules[0]: a rule protects exactly one of"),
            "{e}"
        );
    }

    #[test]
    fn directory_is_loaded_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.yaml"), EHR).unwrap();
        fs::write(dir.path().join("notes.txt"), "not a policy").unwrap();
        assert_eq!(load_dir(dir.path()).unwrap().policies.len(), 1);
        fs::write(dir.path().join("b.yaml"), EHR).unwrap();
        let e = load_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("policy `ehr` is also defined in"), "{e}");
    }

    #[test]
    fn repository_policies_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let set = load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(set.policies.len() >= 3);
    }
}
