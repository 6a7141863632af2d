//! Minimum necessary for command lines: the SQL and secrets that database clients take as
//! arguments.
//!
//! `psql -c "… WHERE ssn = '123-45-6789'"` or `mariadb -e …` put patient data into the
//! client's argv, which every event of that process (and of the wrapper that started it)
//! carries. Known clients are recognised by the basename of their executable, `argv[0]`, or
//! `argv[1]` (a script run by an interpreter);
//! their statement arguments get the same literal redaction as captured statements, and
//! passwords given on the command line are replaced by `***`:
//!
//! | client | statement options | secrets |
//! | --- | --- | --- |
//! | `psql` | `-c SQL`, `-cSQL`, `--command SQL`, `--command=SQL` | `password=…` in a conninfo, the password of a `postgres(ql)://user:pw@…` URI |
//! | `mysql`, `mariadb` | `-e SQL`, `-eSQL`, `--execute SQL`, `--execute=SQL` | `-pPW`, `--password=PW` |
//!
//! Not recognised: a statement option inside a cluster of short flags (`-Xc SQL`), and
//! other clients.

use super::sql::{self, Dialect};

/// What replaces a password.
const HIDDEN: &str = "***";

/// A database client this module knows the options of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    Psql,
    MySql,
}

impl Client {
    fn of(name: &str) -> Option<Client> {
        let base = name.rsplit('/').next().unwrap_or(name);
        match base {
            "psql" => Some(Client::Psql),
            "mysql" | "mariadb" => Some(Client::MySql),
            _ => None,
        }
    }

    fn dialect(self) -> Dialect {
        match self {
            Client::Psql => Dialect::Postgres,
            Client::MySql => Dialect::MySql,
        }
    }

    /// The short and long statement options.
    fn statement_options(self) -> (&'static str, &'static str) {
        match self {
            Client::Psql => ("-c", "--command"),
            Client::MySql => ("-e", "--execute"),
        }
    }
}

/// `argv` with SQL literals in statement arguments redacted and command-line passwords
/// hidden, when `exe`, `argv[0]` or (for an interpreter) `argv[1]` is a known database client; `None` (nothing to change, nothing
/// copied) for every other program.
pub fn redact(exe: &str, argv: &[String]) -> Option<Vec<String>> {
    // The client itself, or a script run by an interpreter (Debian's `psql` is a Perl
    // wrapper: `argv` is `perl /usr/bin/psql …`).
    let (client, first) = match Client::of(exe) {
        Some(c) => (c, 1),
        None => argv
            .iter()
            .take(2)
            .enumerate()
            .find_map(|(i, a)| Client::of(a).map(|c| (c, i + 1)))?,
    };
    let (short, long) = client.statement_options();
    let long_eq = format!("{long}=");
    let mut out = Vec::with_capacity(argv.len());
    let mut next_is_sql = false;
    for (i, arg) in argv.iter().enumerate() {
        if i < first {
            out.push(arg.clone());
            continue;
        }
        if next_is_sql {
            next_is_sql = false;
            out.push(sql::redact(arg, client.dialect()));
        } else if arg == short || arg == long {
            next_is_sql = true;
            out.push(arg.clone());
        } else if let Some(text) = arg.strip_prefix(&long_eq) {
            out.push(format!("{long_eq}{}", sql::redact(text, client.dialect())));
        } else if let Some(text) = arg.strip_prefix(short).filter(|t| !t.is_empty()) {
            out.push(format!("{short}{}", sql::redact(text, client.dialect())));
        } else {
            out.push(hide_secret(client, arg));
        }
    }
    Some(out)
}

/// One argument with a password in it hidden.
fn hide_secret(client: Client, arg: &str) -> String {
    match client {
        Client::MySql => {
            if arg.starts_with("--password=") {
                format!("--password={HIDDEN}")
            } else if arg.len() > 2 && arg.starts_with("-p") {
                format!("-p{HIDDEN}")
            } else {
                arg.to_owned()
            }
        }
        Client::Psql => hide_uri_password(&hide_conninfo_password(arg)),
    }
}

/// `password=…` in a libpq conninfo string (`host=db password=x user=y`, or quoted).
fn hide_conninfo_password(arg: &str) -> String {
    let Some(at) = find_word(arg, "password") else {
        return arg.to_owned();
    };
    let rest = arg[at + "password".len()..].trim_start();
    let Some(value) = rest.strip_prefix('=') else {
        return arg.to_owned();
    };
    let value = value.trim_start();
    let end = if let Some(quoted) = value.strip_prefix('\'') {
        // Up to the closing quote (backslash escapes the next character).
        let mut chars = quoted.char_indices();
        let mut close = quoted.len();
        while let Some((i, c)) = chars.next() {
            if c == '\\' {
                chars.next();
            } else if c == '\'' {
                close = i + 1;
                break;
            }
        }
        1 + close
    } else {
        value.find(char::is_whitespace).unwrap_or(value.len())
    };
    let start = arg.len() - value.len();
    format!(
        "{}{HIDDEN}{}",
        &arg[..start],
        hide_conninfo_password(&arg[start + end.min(value.len())..])
    )
}

/// Byte offset of `word` where it starts a conninfo keyword (at the start or after a space).
fn find_word(arg: &str, word: &str) -> Option<usize> {
    arg.match_indices(word)
        .map(|(i, _)| i)
        .find(|&i| i == 0 || arg.as_bytes()[i - 1].is_ascii_whitespace())
}

/// The password of a `postgres://` or `postgresql://` URI (`user:pw@host`).
fn hide_uri_password(arg: &str) -> String {
    let Some(scheme_end) = ["postgresql://", "postgres://"]
        .iter()
        .find_map(|s| arg.starts_with(s).then_some(s.len()))
    else {
        return arg.to_owned();
    };
    let rest = &arg[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return arg.to_owned();
    };
    let Some(colon) = rest[..at].find(':') else {
        return arg.to_owned();
    };
    format!(
        "{}{HIDDEN}{}",
        &arg[..scheme_end + colon + 1],
        &arg[scheme_end + at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn psql_statements_are_redacted_in_every_form() {
        let argv = args(&[
            "/usr/bin/psql",
            "-X",
            "-c",
            "SELECT * FROM p WHERE ssn = '123-45-6789'",
            "-cINSERT INTO p VALUES (1, 'Jane')",
            "--command",
            "DELETE FROM p WHERE id = 7",
            "--command=UPDATE p SET name = 'Jo'",
            "-d",
            "ehr",
        ]);
        let out = redact("/usr/lib/postgresql/15/bin/psql", &argv);
        assert_eq!(
            out.unwrap(),
            args(&[
                "/usr/bin/psql",
                "-X",
                "-c",
                "SELECT * FROM p WHERE ssn = ?",
                "-cINSERT INTO p VALUES (?, ?)",
                "--command",
                "DELETE FROM p WHERE id = ?",
                "--command=UPDATE p SET name = ?",
                "-d",
                "ehr",
            ])
        );
    }

    #[test]
    fn psql_passwords_in_conninfo_and_uris_are_hidden() {
        let argv = args(&[
            "psql",
            "host=db password=s3cret user=alice",
            "password='it\\'s x' dbname=ehr",
            "postgresql://alice:s3cret@db:5432/ehr?sslmode=require",
            "postgres://alice@db/ehr",
        ]);
        let out = redact("/usr/bin/psql", &argv);
        assert_eq!(
            out.unwrap(),
            args(&[
                "psql",
                "host=db password=*** user=alice",
                "password=*** dbname=ehr",
                "postgresql://alice:***@db:5432/ehr?sslmode=require",
                "postgres://alice@db/ehr",
            ])
        );
    }

    #[test]
    fn mysql_statements_and_passwords_are_redacted() {
        let argv = args(&[
            "mariadb",
            "-uroot",
            "-ps3cret",
            "--password=s3cret",
            "-e",
            "SELECT name FROM p WHERE ssn = \"123-45-6789\"",
            "--execute=INSERT INTO p VALUES (1, 'Jane')",
            "-eSELECT 'x'",
            "-p",
            "ehr",
        ]);
        let out = redact("/usr/bin/mariadb", &argv);
        assert_eq!(
            out.unwrap(),
            args(&[
                "mariadb",
                "-uroot",
                "-p***",
                "--password=***",
                "-e",
                "SELECT name FROM p WHERE ssn = ?",
                "--execute=INSERT INTO p VALUES (?, ?)",
                "-eSELECT ?",
                "-p",
                "ehr",
            ])
        );
    }

    #[test]
    fn a_wrapper_script_run_by_its_interpreter_is_recognised() {
        let argv = args(&["/usr/bin/perl", "/usr/bin/psql", "-c", "SELECT 'x'"]);
        assert_eq!(
            redact("/usr/bin/perl", &argv).unwrap(),
            args(&["/usr/bin/perl", "/usr/bin/psql", "-c", "SELECT ?"])
        );
    }

    #[test]
    fn other_programs_are_left_alone_and_not_copied() {
        let argv = args(&["grep", "-c", "'123-45-6789'", "--password=x"]);
        assert_eq!(redact("/usr/bin/grep", &argv), None);
        assert_eq!(redact("/usr/bin/grep", &[]), None);
    }

    #[test]
    fn arbitrary_arguments_never_panic() {
        let mut rng = crate::db::testutil::XorShift(0x5eed);
        for _ in 0..2000 {
            let n = rng.below(6);
            let mut argv = vec!["psql".to_owned()];
            for _ in 0..n {
                let len = rng.below(24);
                let bytes = rng.bytes(len);
                argv.push(String::from_utf8_lossy(&bytes).into_owned());
            }
            argv.push("password='".into());
            argv.push("postgresql://a:@".into());
            let _ = redact("psql", &argv);
            argv[0] = "mysql".into();
            let _ = redact("mysql", &argv);
        }
    }
}
