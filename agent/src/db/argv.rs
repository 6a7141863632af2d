//! Minimum necessary for command lines: one redactor for the argv of every process.
//!
//! `psql -c "… WHERE ssn = '123-45-6789'"`, `mariadb -pS3cret` or
//! `su -c "psql postgresql://u:S3cret@db/ehr"` put patient data and secrets into a process's
//! argv, which every event of that process (and of its children's ancestry) carries. Before
//! an argv leaves the agent, [`ArgvRedactor::redact`]:
//!
//! - hides **credentials in every argument** of every program: the password of any
//!   `scheme://user:password@host` URI, and the value of `password=`, `passwd=`, `pwd=`,
//!   `pass=`, `sslpassword=` (any case, after any separator: libpq conninfo, ODBC `PWD=…;`,
//!   URI query strings, `--db-password=…`, `PGPASSWORD=…`, `MYSQL_PWD=…`), quoted or not;
//! - redacts **database clients' options** as their own option parsers read them, wherever the
//!   client sits in the argv (so wrappers such as `timeout 5 psql`, `env X=1 psql`,
//!   `sudo -u postgres psql`, `runuser -u x -- psql` are covered without modelling them):
//!   - `psql` (getopt_long: clustered short options, `--opt=value`, `--opt value`, any
//!     abbreviation of a long option): `-c`/`--command` statements get SQL literal redaction,
//!     `-v`/`--set`/`--variable` `name=value` lose their value;
//!   - `mysql`, `mariadb`, `mariadb-dump`, `mariadb-admin` and the rest of the family
//!     (my_getopt: case-insensitive unique prefixes, `--loose-` prefix, `-p` taking the rest
//!     of its cluster): `-p`/`--password=` values hidden, `-e`/`--execute`,
//!     `--init-command`, `-w`/`--where`, `mariadb-slap --query`/`--create` statements
//!     redacted, `mariadb-admin password NEW` hidden;
//! - parses **shell command strings** (any argument with a space or shell operator in it:
//!   `sh -c "…"`, `su -c "…"`, `runuser -l x -c "…"`, `watch "…"`, `ssh host "…"`) into simple
//!   commands and redacts each the same way, re-quoting what it changed; a string it cannot
//!   parse (command substitution, unterminated quote) that names a client is redacted as
//!   SQL text (every quoted part and number hidden);
//! - applies the **configured extra patterns** (local identifiers such as MRN formats) to
//!   every argument.
//!
//! What an option parser would reject (an ambiguous abbreviation) is still redacted: the
//! argv is in the event whether or not the client ran.

use std::borrow::Cow;

use regex::Regex;

use super::sql::{self, Dialect};

/// What replaces a password or a variable's value.
pub const HIDDEN: &str = "***";

/// How deep shell strings inside shell strings are followed.
const MAX_DEPTH: u8 = 4;

/// Keys whose `=` value is a secret wherever they appear.
const SECRET_KEYS: [&str; 6] = [
    "password",
    "passwd",
    "pwd",
    "pass",
    "sslpassword",
    "pgpassword",
];

/// The argv redactor: the built-in rules plus the configured extra patterns.
#[derive(Clone, Debug, Default)]
pub struct ArgvRedactor {
    extra: Vec<Regex>,
}

impl ArgvRedactor {
    /// The built-in rules and `extra` patterns (every match becomes `***`).
    pub fn new(extra: Vec<Regex>) -> Self {
        Self { extra }
    }

    /// The extra patterns.
    pub fn patterns(&self) -> &[Regex] {
        &self.extra
    }

    /// `argv` with secrets hidden and statements redacted; `None` when nothing changed.
    /// `exe` (the executable's path) names the client when `argv[0]` does not.
    pub fn redact(&self, exe: &str, argv: &[String]) -> Option<Vec<String>> {
        let mut out = command(argv, Client::of(exe), 0);
        for a in &mut out {
            for re in &self.extra {
                if let Cow::Owned(s) = re.replace_all(a, HIDDEN) {
                    *a = Cow::Owned(s);
                }
            }
        }
        if out.iter().all(|a| matches!(a, Cow::Borrowed(_))) {
            return None;
        }
        Some(out.into_iter().map(Cow::into_owned).collect())
    }
}

/// [`ArgvRedactor::redact`] with the built-in rules only.
pub fn redact(exe: &str, argv: &[String]) -> Option<Vec<String>> {
    ArgvRedactor::default().redact(exe, argv)
}

/// A database client whose options this module knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    Psql,
    /// `mysql`/`mariadb`.
    MySql,
    /// `mysqldump`/`mariadb-dump`.
    MySqlDump,
    /// `mysqladmin`/`mariadb-admin`.
    MySqlAdmin,
    /// `mysqlslap`/`mariadb-slap`.
    MySqlSlap,
    /// The rest of the MySQL/MariaDB family (import, check, show, binlog, upgrade…).
    MySqlOther,
}

/// How an option's value is redacted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Value {
    /// Not redacted beyond the credential rules.
    Plain,
    /// SQL text: literals become `?`.
    Sql,
    /// A password: hidden.
    Secret,
    /// psql `name=value`: the value hidden.
    Variable,
}

/// A long option: name, whether it takes a value (`Some(required)`), how it is redacted.
type LongOpt = (&'static str, Option<bool>, Value);

const PSQL_LONG: &[LongOpt] = &[
    ("command", Some(true), Value::Sql),
    ("set", Some(true), Value::Variable),
    ("variable", Some(true), Value::Variable),
    ("dbname", Some(true), Value::Plain),
    ("file", Some(true), Value::Plain),
    ("field-separator", Some(true), Value::Plain),
    ("host", Some(true), Value::Plain),
    ("log-file", Some(true), Value::Plain),
    ("output", Some(true), Value::Plain),
    ("port", Some(true), Value::Plain),
    ("pset", Some(true), Value::Plain),
    ("record-separator", Some(true), Value::Plain),
    ("table-attr", Some(true), Value::Plain),
    ("username", Some(true), Value::Plain),
];

/// Long options every MySQL/MariaDB client shares.
const MYSQL_COMMON_LONG: &[LongOpt] = &[
    ("password", Some(false), Value::Secret),
    ("host", Some(true), Value::Plain),
    ("user", Some(true), Value::Plain),
    ("port", Some(true), Value::Plain),
    ("socket", Some(true), Value::Plain),
    ("database", Some(true), Value::Plain),
    ("init-command", Some(true), Value::Sql),
];

impl Client {
    fn of(path: &str) -> Option<Client> {
        let base = path.rsplit('/').next().unwrap_or(path);
        Some(match base {
            "psql" => Client::Psql,
            "mysql" | "mariadb" => Client::MySql,
            "mysqldump" | "mariadb-dump" => Client::MySqlDump,
            "mysqladmin" | "mariadb-admin" => Client::MySqlAdmin,
            "mysqlslap" | "mariadb-slap" => Client::MySqlSlap,
            "mysqlimport" | "mariadb-import" | "mysqlcheck" | "mariadb-check" | "mysqlshow"
            | "mariadb-show" | "mysqlbinlog" | "mariadb-binlog" | "mysql_upgrade"
            | "mariadb-upgrade" | "mariadb-backup" | "mariabackup" => Client::MySqlOther,
            _ => return None,
        })
    }

    fn dialect(self) -> Dialect {
        match self {
            Client::Psql => Dialect::Postgres,
            _ => Dialect::MySql,
        }
    }

    /// Short options that take a value, and how it is redacted (`-p` and `-#` take the
    /// rest of their cluster only, see [`Client::optional_short`]).
    fn short(self, c: char) -> Option<Value> {
        let (letters, sql): (&str, &[char]) = match self {
            Client::Psql => ("cdfFhLoPRTUv", &['c']),
            Client::MySql => ("DehPSu", &['e']),
            Client::MySqlDump => ("hPrSTuw", &['w']),
            Client::MySqlAdmin => ("chiPSu", &[]),
            Client::MySqlSlap => ("hPSuqD", &['q']),
            Client::MySqlOther => ("hPSuD", &[]),
        };
        if !letters.contains(c) {
            return None;
        }
        Some(if sql.contains(&c) {
            Value::Sql
        } else if self == Client::Psql && c == 'v' {
            Value::Variable
        } else {
            Value::Plain
        })
    }

    /// Short options whose value is optional: only the rest of the cluster (`-pSECRET`).
    fn optional_short(self, c: char) -> Option<Value> {
        match (self, c) {
            (Client::Psql, _) => None,
            (_, 'p') => Some(Value::Secret),
            (_, '#') => Some(Value::Plain),
            _ => None,
        }
    }

    /// The long options (beyond the shared ones for the MySQL family).
    fn long(self) -> (&'static [LongOpt], &'static [LongOpt]) {
        match self {
            Client::Psql => (PSQL_LONG, &[]),
            Client::MySql => (MYSQL_COMMON_LONG, &[("execute", Some(true), Value::Sql)]),
            Client::MySqlDump => (MYSQL_COMMON_LONG, &[("where", Some(true), Value::Sql)]),
            Client::MySqlSlap => (
                MYSQL_COMMON_LONG,
                &[
                    ("query", Some(true), Value::Sql),
                    ("create", Some(true), Value::Sql),
                    ("pre-query", Some(true), Value::Sql),
                    ("post-query", Some(true), Value::Sql),
                ],
            ),
            Client::MySqlAdmin | Client::MySqlOther => (MYSQL_COMMON_LONG, &[]),
        }
    }

    /// The long option `name` (as typed, without `--` and value) abbreviates, by the
    /// client's parser's rules, preferring an exact match, then whichever candidate redacts
    /// most. An ambiguous abbreviation the client would reject still counts.
    fn long_option(self, name: &str) -> Option<LongOpt> {
        let mysql = self != Client::Psql;
        let name = if mysql {
            let lower = name.to_ascii_lowercase();
            let stripped = lower.strip_prefix("loose-").unwrap_or(&lower).to_owned();
            Cow::Owned(stripped)
        } else {
            Cow::Borrowed(name)
        };
        if name.is_empty() {
            return None;
        }
        let (a, b) = self.long();
        let all = || a.iter().chain(b.iter());
        if let Some(exact) = all().find(|o| o.0 == name) {
            return Some(*exact);
        }
        let rank = |v: Value| match v {
            Value::Secret => 3,
            Value::Sql => 2,
            Value::Variable => 1,
            Value::Plain => 0,
        };
        all()
            .filter(|o| o.0.starts_with(name.as_ref()))
            .max_by_key(|o| rank(o.2))
            .copied()
    }
}

/// Redacts one command: `argv[0]` is the program (or, for an interpreter, the script).
fn command(argv: &[String], exe_client: Option<Client>, depth: u8) -> Vec<Cow<'_, str>> {
    // The client may sit behind wrappers (`timeout 5 psql`, `sudo -u x psql`) or be run by
    // its interpreter (`perl /usr/bin/psql`): the first argument that names one.
    let found = argv
        .iter()
        .enumerate()
        .find_map(|(i, a)| Client::of(a).map(|c| (i, c)))
        .or_else(|| exe_client.map(|c| (0, c)));
    let mut out: Vec<Cow<'_, str>> = Vec::with_capacity(argv.len());
    let Some((at, client)) = found else {
        generic(argv, depth, &mut out);
        return out;
    };
    generic(&argv[..at], depth, &mut out);
    out.push(word(&argv[at], depth));
    client_args(client, &argv[at + 1..], depth, &mut out);
    out
}

/// Arguments of a program without options this module knows: credentials hidden, shell
/// strings followed, and a bare `--password VALUE` hides `VALUE`.
fn generic<'a>(argv: &'a [String], depth: u8, out: &mut Vec<Cow<'a, str>>) {
    let mut hide_next = false;
    for a in argv {
        if std::mem::take(&mut hide_next) && !a.starts_with('-') {
            out.push(Cow::Borrowed(HIDDEN));
            continue;
        }
        let bare = a.trim_start_matches('-');
        hide_next = a.starts_with('-')
            && SECRET_KEYS
                .iter()
                .chain(["password", "db-password"].iter())
                .any(|k| bare.eq_ignore_ascii_case(k));
        out.push(word(a, depth));
    }
}

/// A database client's arguments (after its name), as its option parser reads them.
fn client_args<'a>(client: Client, args: &'a [String], depth: u8, out: &mut Vec<Cow<'a, str>>) {
    let mut i = 0;
    let mut options_done = false;
    // mariadb-admin: the argument after the `password` command is the new password.
    let mut admin_password_next = false;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if options_done || a == "-" || !a.starts_with('-') {
            if admin_password_next {
                admin_password_next = false;
                out.push(Cow::Borrowed(HIDDEN));
                continue;
            }
            admin_password_next = client == Client::MySqlAdmin
                && (a.eq_ignore_ascii_case("password") || a.eq_ignore_ascii_case("old-password"));
            out.push(word(a, depth));
            continue;
        }
        if a == "--" {
            options_done = true;
            out.push(Cow::Borrowed(a));
            continue;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, value) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            let Some((_, takes, how)) = client.long_option(name) else {
                out.push(word(a, depth));
                continue;
            };
            match (value, takes) {
                (Some(v), _) => {
                    let head = &a[..a.len() - v.len()];
                    out.push(redacted_value(client, head, v, how, depth));
                }
                (None, Some(true)) => {
                    out.push(Cow::Borrowed(a));
                    if let Some(v) = args.get(i) {
                        i += 1;
                        out.push(redacted_value(client, "", v, how, depth));
                    }
                }
                (None, _) => out.push(Cow::Borrowed(a)),
            }
            continue;
        }
        // A cluster of short options: flags, then at most one that takes a value (the rest
        // of the cluster, else the next argument when the value is required).
        let mut handled = false;
        for (at, c) in a.char_indices().skip(1) {
            let rest_at = at + c.len_utf8();
            let rest = &a[rest_at..];
            if let Some(how) = client.short(c) {
                if rest.is_empty() {
                    out.push(Cow::Borrowed(a));
                    if let Some(v) = args.get(i) {
                        i += 1;
                        out.push(redacted_value(client, "", v, how, depth));
                    }
                } else {
                    out.push(redacted_value(client, &a[..rest_at], rest, how, depth));
                }
                handled = true;
                break;
            }
            if let Some(how) = client.optional_short(c) {
                out.push(redacted_value(client, &a[..rest_at], rest, how, depth));
                handled = true;
                break;
            }
        }
        if !handled {
            out.push(word(a, depth));
        }
    }
}

/// `head` followed by `value` redacted as `how` says (an empty `value` stays empty).
fn redacted_value<'a>(
    client: Client,
    head: &str,
    value: &'a str,
    how: Value,
    depth: u8,
) -> Cow<'a, str> {
    let redacted: Cow<'_, str> = match how {
        _ if value.is_empty() => Cow::Borrowed(value),
        Value::Plain => word(value, depth),
        Value::Secret => Cow::Borrowed(HIDDEN),
        Value::Sql => {
            let r = sql::redact(value, client.dialect());
            if r == value {
                Cow::Borrowed(value)
            } else {
                Cow::Owned(r)
            }
        }
        Value::Variable => match value.split_once('=') {
            Some((name, _)) => Cow::Owned(format!("{name}={HIDDEN}")),
            // `-v name` unsets: nothing to hide.
            None => Cow::Borrowed(value),
        },
    };
    if head.is_empty() {
        redacted
    } else {
        Cow::Owned(format!("{head}{redacted}"))
    }
}

/// One argument of any program: credentials hidden, and a shell command string (the whole
/// argument, or an option's value: `--command=psql -c …`) redacted command by command.
fn word(arg: &str, depth: u8) -> Cow<'_, str> {
    let hidden = hide_credentials(arg);
    if depth >= MAX_DEPTH || !hidden.contains([' ', '\t', '\n', ';', '|', '&']) {
        return hidden;
    }
    let head_len = if hidden.starts_with('-') {
        hidden.find('=').map_or(0, |p| p + 1)
    } else {
        0
    };
    let changed = match shell(&hidden[head_len..], depth + 1) {
        Cow::Owned(s) => Some(format!("{}{s}", &hidden[..head_len])),
        Cow::Borrowed(_) => None,
    };
    changed.map_or(hidden, Cow::Owned)
}

/// A shell command string with each simple command redacted by [`command`]; words that
/// changed are re-quoted. Unparseable strings that name a client are redacted as SQL text.
fn shell(text: &str, depth: u8) -> Cow<'_, str> {
    let Some(words) = shell_words(text) else {
        let names_client = text
            .split(|c: char| c.is_whitespace() || "\"'`;|&()$".contains(c))
            .any(|w| Client::of(w).is_some());
        if names_client {
            // Words split at whitespace (quotes ignored) for the option rules, then every
            // quoted part and number hidden.
            let words: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
            let joined = command(&words, None, MAX_DEPTH).join(" ");
            return Cow::Owned(sql::redact(&joined, Dialect::MySql));
        }
        return Cow::Borrowed(text);
    };
    let mut replacements: Vec<(usize, usize, String)> = Vec::new();
    for cmd in words.split(|w| w.operator) {
        let argv: Vec<String> = cmd.iter().map(|w| w.value.clone()).collect();
        let redacted = command(&argv, None, depth);
        for (w, r) in cmd.iter().zip(redacted) {
            if let Cow::Owned(r) = r {
                if r != w.value {
                    replacements.push((w.start, w.end, quote(&r)));
                }
            }
        }
    }
    if replacements.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (s, e, r) in replacements {
        out.push_str(&text[last..s]);
        out.push_str(&r);
        last = e;
    }
    out.push_str(&text[last..]);
    Cow::Owned(out)
}

/// A word of a shell command string: its value after quote removal and its source range.
struct ShellWord {
    value: String,
    start: usize,
    end: usize,
    /// A command separator (`;`, `&`, `|`, `&&`, `||`, newline, parentheses).
    operator: bool,
}

/// Splits a POSIX shell command string into words and operators; `None` for what this
/// does not follow (command substitution, unterminated quotes).
fn shell_words(text: &str) -> Option<Vec<ShellWord>> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b' ' || c == b'\t' {
            i += 1;
            continue;
        }
        if matches!(c, b';' | b'&' | b'|' | b'\n' | b'(' | b')') {
            let start = i;
            i += 1;
            while i < b.len() && matches!(b[i], b'&' | b'|') {
                i += 1;
            }
            out.push(ShellWord {
                value: text[start..i].to_owned(),
                start,
                end: i,
                operator: true,
            });
            continue;
        }
        let start = i;
        let mut value = String::new();
        while i < b.len()
            && !matches!(
                b[i],
                b' ' | b'\t' | b';' | b'&' | b'|' | b'\n' | b'(' | b')'
            )
        {
            match b[i] {
                b'`' => return None,
                b'$' if b.get(i + 1) == Some(&b'(') => return None,
                b'\'' => {
                    let close = text[i + 1..].find('\'')? + i + 1;
                    value.push_str(&text[i + 1..close]);
                    i = close + 1;
                }
                b'"' => {
                    let mut j = i + 1;
                    loop {
                        match b.get(j)? {
                            b'"' => break,
                            b'`' => return None,
                            b'$' if b.get(j + 1) == Some(&b'(') => return None,
                            b'\\' if matches!(b.get(j + 1), Some(b'"' | b'\\' | b'$' | b'`')) => {
                                value.push(b[j + 1] as char);
                                j += 2;
                            }
                            _ => {
                                let ch = text[j..].chars().next()?;
                                value.push(ch);
                                j += ch.len_utf8();
                            }
                        }
                    }
                    i = j + 1;
                }
                b'\\' => {
                    let ch = text.get(i + 1..)?.chars().next()?;
                    if ch != '\n' {
                        value.push(ch);
                    }
                    i += 1 + ch.len_utf8();
                }
                _ => {
                    let ch = text[i..].chars().next()?;
                    value.push(ch);
                    i += ch.len_utf8();
                }
            }
        }
        out.push(ShellWord {
            value,
            start,
            end: i,
            operator: false,
        });
    }
    Some(out)
}

/// `s` single-quoted for a shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Hides URI passwords and `password=`-style values in one argument.
fn hide_credentials(arg: &str) -> Cow<'_, str> {
    let uri = hide_uri_passwords(arg);
    match hide_key_values(&uri) {
        Cow::Owned(s) => Cow::Owned(s),
        Cow::Borrowed(_) => uri,
    }
}

/// The password of every `scheme://user:password@host` in `arg`.
fn hide_uri_passwords(arg: &str) -> Cow<'_, str> {
    if !arg.contains("://") {
        return Cow::Borrowed(arg);
    }
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(p) = rest.find("://") {
        let (head, tail) = rest.split_at(p + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match authority.rfind('@') {
            Some(at) if authority[..at].contains(':') => {
                let colon = authority.find(':').unwrap_or(at);
                out.push_str(&authority[..=colon]);
                out.push_str(HIDDEN);
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    if out == arg {
        Cow::Borrowed(arg)
    } else {
        Cow::Owned(out)
    }
}

/// The value of every `key=value` whose key is a [`SECRET_KEYS`] word (any case; after the
/// start or a non-alphanumeric character; spaces allowed around `=`), quoted with `'…'`,
/// `"…"` or `{…}`, or up to whitespace, `;`, `&` or `,`.
fn hide_key_values(arg: &str) -> Cow<'_, str> {
    let b = arg.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        let boundary = i == 0 || !b[i - 1].is_ascii_alphanumeric();
        let key = boundary
            .then(|| {
                SECRET_KEYS
                    .iter()
                    .filter(|k| {
                        arg.get(i..i + k.len())
                            .is_some_and(|w| w.eq_ignore_ascii_case(k))
                    })
                    .map(|k| k.len())
                    .max()
            })
            .flatten();
        let Some(klen) = key else {
            i += 1;
            continue;
        };
        let mut j = i + klen;
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        if b.get(j) != Some(&b'=') {
            i += klen;
            continue;
        }
        j += 1;
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        let value_start = j;
        let end = match b.get(j) {
            Some(b'\'') | Some(b'"') => {
                let q = b[j];
                let mut k = j + 1;
                while k < b.len() && b[k] != q {
                    k += if b[k] == b'\\' { 2 } else { 1 };
                }
                (k + 1).min(b.len())
            }
            Some(b'{') => {
                let mut k = j + 1;
                while k < b.len() {
                    if b[k] == b'}' {
                        if b.get(k + 1) == Some(&b'}') {
                            k += 2;
                            continue;
                        }
                        break;
                    }
                    k += 1;
                }
                (k + 1).min(b.len())
            }
            _ => {
                let mut k = j;
                while k < b.len()
                    && !b[k].is_ascii_whitespace()
                    && !matches!(b[k], b';' | b'&' | b',')
                {
                    k += 1;
                }
                k
            }
        };
        // Ends always fall on ASCII bytes or the end, so on char boundaries.
        let end = (value_start..=end)
            .rev()
            .find(|&e| arg.is_char_boundary(e))
            .unwrap_or(end);
        if end > value_start {
            let o = out.get_or_insert_with(|| String::with_capacity(arg.len()));
            o.push_str(&arg[copied..value_start]);
            o.push_str(HIDDEN);
            copied = end;
        }
        i = end.max(i + 1);
    }
    match out {
        Some(mut o) => {
            o.push_str(&arg[copied..]);
            Cow::Owned(o)
        }
        None => Cow::Borrowed(arg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    /// The redacted argv of `list` run as `exe`.
    fn run(exe: &str, list: &[&str]) -> Vec<String> {
        redact(exe, &args(list)).unwrap_or_else(|| args(list))
    }

    /// No argument of the redacted argv contains `SECRET` (any case).
    fn clean(exe: &str, list: &[&str]) -> Vec<String> {
        let out = run(exe, list);
        assert!(
            out.iter()
                .all(|a| !a.to_ascii_lowercase().contains("secret")),
            "{list:?} -> {out:?}"
        );
        out
    }

    #[test]
    fn psql_statements_are_redacted_in_every_form() {
        let argv = [
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
        ];
        assert_eq!(
            run("/usr/lib/postgresql/15/bin/psql", &argv),
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

    /// Spellings `psql` 15 accepts (checked with the real binary: getopt_long takes any
    /// unambiguous abbreviation, `--co` for `--command`, `--va` for `--variable`, `--se` for
    /// `--set`, and clusters `-Xc`), plus ambiguous ones it rejects (`--c`, `--v`), which are
    /// redacted all the same.
    #[test]
    fn psql_abbreviations_clusters_and_variables() {
        assert_eq!(
            run(
                "psql",
                &[
                    "psql",
                    "--co=SELECT 'secret'",
                    "--comm",
                    "SELECT 1",
                    "-XcSELECT 'secret'",
                    "-Xq",
                    "-c",
                    "SELECT 2",
                    "--c=SELECT 'secret'",
                    "-v",
                    "mrn=secret",
                    "-vpw=secret",
                    "--set=x=secret",
                    "--va",
                    "y=secret",
                    "--v=z=secret",
                    "-v",
                    "unset_me",
                ]
            ),
            args(&[
                "psql",
                "--co=SELECT ?",
                "--comm",
                "SELECT ?",
                "-XcSELECT ?",
                "-Xq",
                "-c",
                "SELECT ?",
                "--c=SELECT ?",
                "-v",
                "mrn=***",
                "-vpw=***",
                "--set=x=***",
                "--va",
                "y=***",
                "--v=z=***",
                "-v",
                "unset_me",
            ])
        );
        // `-U` takes the next argument: `-c` after it is a user name, not a statement.
        assert_eq!(
            run("psql", &["psql", "-U", "-c", "ehr"]),
            args(&["psql", "-U", "-c", "ehr"])
        );
    }

    #[test]
    fn credentials_in_uris_and_connection_strings_of_any_program() {
        assert_eq!(
            run(
                "/usr/bin/psql",
                &[
                    "psql",
                    "host=db password=secret user=alice",
                    "password='it\\'s secret' dbname=ehr",
                    "postgresql://alice:secret@db:5432/ehr?sslmode=require",
                    "postgres://alice@db/ehr",
                    "--dbname=postgresql://u:secret@h/ehr",
                ]
            ),
            args(&[
                "psql",
                "host=db password=*** user=alice",
                "password=*** dbname=ehr",
                "postgresql://alice:***@db:5432/ehr?sslmode=require",
                "postgres://alice@db/ehr",
                "--dbname=postgresql://u:***@h/ehr",
            ])
        );
        assert_eq!(
            run(
                "/usr/bin/java",
                &[
                    "java",
                    "-Ddb=mysql://app:secret@db:3306/ehr",
                    "Driver={MariaDB};Server=db;UID=app;PWD={se;cret}};x};Database=ehr",
                    "jdbc:postgresql://db/ehr?user=app&password=secret&ssl=true",
                    "--db-password=secret",
                    "--password",
                    "secret",
                    "PGPASSWORD=secret",
                    "MYSQL_PWD=secret",
                    "--verbose",
                ]
            ),
            args(&[
                "java",
                "-Ddb=mysql://app:***@db:3306/ehr",
                "Driver={MariaDB};Server=db;UID=app;PWD=***;Database=ehr",
                "jdbc:postgresql://db/ehr?user=app&password=***&ssl=true",
                "--db-password=***",
                "--password",
                "***",
                "PGPASSWORD=***",
                "MYSQL_PWD=***",
                "--verbose",
            ])
        );
        // Nothing to hide: not copied.
        assert_eq!(
            redact("/usr/bin/grep", &args(&["grep", "-c", "x", "f"])),
            None
        );
        assert_eq!(redact("/usr/bin/grep", &[]), None);
    }

    /// mariadb 10.11's my_getopt, checked with the real binary: `--pas=` and `--passw=` are
    /// accepted abbreviations (`--pa` is ambiguous), option names are case-insensitive,
    /// `--loose-` prefixes any option, `-vpSECRET` is `-v -pSECRET`, while `-upSECRET` is the
    /// user `pSECRET` (`-u` takes the rest of the cluster); `--password VALUE` prompts and
    /// leaves `VALUE` a database name.
    #[test]
    fn mysql_password_spellings_follow_my_getopt() {
        assert_eq!(
            run(
                "/usr/bin/mariadb",
                &[
                    "mariadb",
                    "-uroot",
                    "-psecret",
                    "--password=secret",
                    "--pass=secret",
                    "--pas=secret",
                    "--PASSWORD=secret",
                    "--loose-password=secret",
                    "--loose-pass=secret",
                    "-vpsecret",
                    "-upx",
                    "-p",
                    "ehr",
                ]
            ),
            args(&[
                "mariadb",
                "-uroot",
                "-p***",
                "--password=***",
                "--pass=***",
                "--pas=***",
                "--PASSWORD=***",
                "--loose-password=***",
                "--loose-pass=***",
                "-vp***",
                "-upx",
                "-p",
                "ehr",
            ])
        );
    }

    #[test]
    fn mysql_statements_in_every_option() {
        assert_eq!(
            run(
                "/usr/bin/mariadb",
                &[
                    "mariadb",
                    "-e",
                    "SELECT name FROM p WHERE ssn = \"secret\"",
                    "--execute=INSERT INTO p VALUES (1, 'secret')",
                    "-eSELECT 'secret'",
                    "-vesELECT 'secret'",
                    "--exec",
                    "SELECT 'secret'",
                    "--ex=SELECT 'secret'",
                    "--init-command=SET @a = 'secret'",
                    "--init=SET @a = 'secret'",
                ]
            ),
            args(&[
                "mariadb",
                "-e",
                "SELECT name FROM p WHERE ssn = ?",
                "--execute=INSERT INTO p VALUES (?, ?)",
                "-eSELECT ?",
                "-vesELECT ?",
                "--exec",
                "SELECT ?",
                "--ex=SELECT ?",
                "--init-command=SET @a = ?",
                "--init=SET @a = ?",
            ])
        );
        clean(
            "/usr/bin/mariadb-dump",
            &[
                "mariadb-dump",
                "-psecret",
                "-w",
                "ssn = 'secret'",
                "--where=ssn='secret'",
                "-wssn='secret'",
                "ehr",
                "patients",
            ],
        );
        assert_eq!(
            run(
                "/usr/bin/mariadb-admin",
                &[
                    "mariadb-admin",
                    "-u",
                    "root",
                    "--pass=secret",
                    "password",
                    "secret"
                ]
            ),
            args(&[
                "mariadb-admin",
                "-u",
                "root",
                "--pass=***",
                "password",
                "***"
            ])
        );
        clean(
            "/usr/bin/mysqlslap",
            &["mysqlslap", "--query=SELECT 'secret'", "-qSELECT 'secret'"],
        );
    }

    #[test]
    fn clients_behind_wrappers_and_in_shell_strings() {
        for (exe, argv) in [
            (
                "/usr/bin/timeout",
                &["timeout", "5", "psql", "-c", "SELECT 'secret'"][..],
            ),
            (
                "/usr/bin/timeout",
                &["timeout", "-s", "KILL", "5", "mariadb", "-psecret"],
            ),
            (
                "/usr/bin/env",
                &[
                    "env",
                    "X=1",
                    "PGPASSWORD=secret",
                    "psql",
                    "-c",
                    "SELECT 'secret'",
                ],
            ),
            (
                "/usr/bin/sudo",
                &["sudo", "-u", "postgres", "psql", "-vmrn=secret"],
            ),
            (
                "/usr/sbin/runuser",
                &[
                    "runuser",
                    "-u",
                    "postgres",
                    "--",
                    "psql",
                    "-c",
                    "SELECT 'secret'",
                ],
            ),
            (
                "/usr/bin/nice",
                &[
                    "nice",
                    "-n",
                    "5",
                    "/usr/bin/mariadb",
                    "-e",
                    "SELECT 'secret'",
                ],
            ),
            (
                "/usr/bin/perl",
                &["/usr/bin/perl", "/usr/bin/psql", "-c", "SELECT 'secret'"],
            ),
            (
                "/bin/su",
                &["su", "-c", "psql -c \"SELECT 'secret'\"", "postgres"],
            ),
            (
                "/bin/su",
                &["su", "postgres", "--command=psql -c \"SELECT 'secret'\""],
            ),
            (
                "/usr/sbin/runuser",
                &[
                    "runuser",
                    "-l",
                    "postgres",
                    "-c",
                    "psql -c 'SELECT 42' -v x=secret",
                ],
            ),
            (
                "/bin/sh",
                &[
                    "sh",
                    "-c",
                    "psql -c \"SELECT 'secret'\" && mariadb -psecret ehr",
                ],
            ),
            (
                "/bin/bash",
                &[
                    "bash",
                    "-lc",
                    "PGPASSWORD=secret timeout 5 psql -c 'select 1' | tee x",
                ],
            ),
            (
                "/bin/sh",
                &[
                    "sh",
                    "-c",
                    "mariadb -e \"SELECT 'secret'\" -p$(cat /secret)",
                ],
            ),
            (
                "/bin/sh",
                &["sh", "-c", "sh -c \"psql -c \\\"SELECT 'secret'\\\"\""],
            ),
            (
                "/usr/bin/watch",
                &["watch", "psql postgresql://u:secret@h/ehr -c 'SELECT 1'"],
            ),
            (
                "/usr/bin/ssh",
                &["ssh", "db", "mariadb -e \"SELECT 'secret'\""],
            ),
            (
                "/usr/bin/env",
                &["env", "-S", "psql -c 'SELECT $$secret$$'"],
            ),
        ] {
            clean(exe, argv);
        }
        // The statement keeps its shape, re-quoted for the shell.
        assert_eq!(
            run(
                "/bin/sh",
                &[
                    "sh",
                    "-c",
                    "psql -X -c \"SELECT * FROM p WHERE id = 7\" ehr"
                ]
            ),
            args(&["sh", "-c", "psql -X -c 'SELECT * FROM p WHERE id = ?' ehr"])
        );
    }

    #[test]
    fn extra_patterns_hide_local_identifiers() {
        let r = ArgvRedactor::new(vec![Regex::new(r"MRN-[0-9]{6}").unwrap()]);
        assert_eq!(
            r.redact(
                "/usr/local/bin/export",
                &args(&["export", "--patient=MRN-123456", "x"])
            ),
            Some(args(&["export", "--patient=***", "x"]))
        );
        assert_eq!(r.redact("/usr/bin/ls", &args(&["ls", "-l"])), None);
    }

    #[test]
    fn arbitrary_arguments_never_panic() {
        let mut rng = crate::db::testutil::XorShift(0x5eed);
        let pieces = [
            "psql",
            "mariadb",
            "sh",
            "-c",
            "-p",
            "--pass=",
            "'",
            "\"",
            "\\",
            "$(",
            "`",
            " ",
            ";",
            "password=",
            "://",
            "@",
            ":",
            "{",
            "}",
            "é",
            "-v",
            "=",
            "--",
            "-e",
            "x",
        ];
        for _ in 0..3000 {
            let mut argv = Vec::new();
            for _ in 0..rng.below(6) {
                let mut a = String::new();
                for _ in 0..rng.below(8) {
                    a.push_str(pieces[rng.below(pieces.len())]);
                }
                argv.push(a);
            }
            let len = rng.below(24);
            let bytes = rng.bytes(len);
            argv.push(String::from_utf8_lossy(&bytes).into_owned());
            for exe in ["psql", "mysql", "mariadb-admin", "sh"] {
                let _ = redact(exe, &argv);
            }
        }
    }
}
