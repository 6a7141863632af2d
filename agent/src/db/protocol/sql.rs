//! Statement text: literal redaction, a statement-kind classifier and cheap table extraction.
//!
//! One lexer per dialect serves all three. It classifies every token of the text: words
//! (keywords and identifiers), quoted identifiers, literals (strings in every quoting the
//! dialect knows, numbers, bit/hex/national strings), placeholders (`$1`, `?`, `:name`),
//! punctuation, whitespace and comments. Redaction replaces every literal with `?`, drops
//! comments (they can carry data too) and keeps identifiers, keywords, operators and
//! placeholders. A byte the lexer cannot classify is redacted like a literal: nothing leaves
//! verbatim unless the lexer knows it is code.
//!
//! The dialects differ where it matters for secrets:
//!
//! | | PostgreSQL | MySQL / MariaDB |
//! | --- | --- | --- |
//! | `"…"` | identifier | string, identifier under `ANSI_QUOTES` |
//! | `\` in `'…'` | escape only when `standard_conforming_strings` is off, and in `E'…'` | escape unless `NO_BACKSLASH_ESCAPES` |
//! | `/* */` | nests | does not nest; `/*! … */`, `/*!50001 … */`, `/*M! … */` are executable: their contents are lexed as the statement's |
//! | line comments | `--` | `-- ` (with a space or control character), `#` |
//! | other quoting | `$tag$…$tag$` (tag of any identifier characters), `E'…'`, `U&'…'` | `` `…` `` identifiers, `_charset'…'` |
//!
//! The session settings that change lexing are tracked by [`Settings`] (from the statements
//! the session sends and, for PostgreSQL, the server's ParameterStatus). A setting that is not
//! known is *doubted*: the text is lexed both ways and whatever either way reads as a literal
//! or a comment is redacted. The lexer never fails: unterminated literals and comments run
//! to the end of the text.

/// Which SQL dialect the text is in (they differ in what `"` and `\` mean).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL: `"…"` is an identifier; backslash escapes only in `E'…'`.
    Postgres,
    /// MySQL/MariaDB: `"…"` is a string; backslash escapes in strings; `` `…` `` identifiers.
    MySql,
}

/// What a statement does, for the audit record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatementKind {
    /// Reads (`SELECT`, `VALUES`, `TABLE`, `SHOW`, `WITH … SELECT`).
    Select,
    /// `INSERT` (and `REPLACE`).
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
    /// Schema changes: `CREATE`, `ALTER`, `DROP`, `TRUNCATE`, `RENAME`, `COMMENT`.
    Ddl,
    /// Everything else (`BEGIN`, `SET`, `COPY`, `GRANT`, …).
    Other,
}

impl StatementKind {
    /// Upper-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Select => "SELECT",
            Self::Insert => "INSERT",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
            Self::Ddl => "DDL",
            Self::Other => "OTHER",
        }
    }
}

/// Most tables [`tables`] returns.
pub const MAX_TABLES: usize = 16;

/// The session settings that change how statement text is lexed; `None` where a setting
/// is not known, which makes the lexer doubt it (lex both ways, redact the union).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The dialect.
    pub dialect: Dialect,
    /// Whether a backslash escapes the next character in a plain `'…'` string: PostgreSQL
    /// with `standard_conforming_strings` off, MySQL without `NO_BACKSLASH_ESCAPES`.
    pub backslash_escapes: Option<bool>,
    /// MySQL `ANSI_QUOTES`: `"…"` is an identifier rather than a string. Ignored for
    /// PostgreSQL. Anything but `Some(true)` lexes `"…"` as a string (redacted).
    pub ansi_quotes: Option<bool>,
}

/// Words whose presence in a statement means it may change a lexing setting.
const SETTING_WORDS: [&str; 5] = [
    "standard_conforming_strings",
    "sql_mode",
    "set_config",
    "RESET",
    "DISCARD",
];

/// MariaDB/MySQL `sql_mode` values that include `ANSI_QUOTES`.
const ANSI_QUOTES_MODES: [&str; 7] = [
    "ANSI_QUOTES",
    "ANSI",
    "DB2",
    "MAXDB",
    "MSSQL",
    "ORACLE",
    "POSTGRESQL",
];

impl Settings {
    /// Nothing known: every setting doubted.
    pub fn unknown(dialect: Dialect) -> Self {
        Self {
            dialect,
            backslash_escapes: None,
            ansi_quotes: None,
        }
    }

    /// A PostgreSQL ParameterStatus from the server (it reports `standard_conforming_strings`
    /// at login and whenever it changes).
    pub fn server_parameter(&mut self, name: &str, value: &str) {
        if self.dialect == Dialect::Postgres && name == "standard_conforming_strings" {
            self.backslash_escapes = match value {
                "on" => Some(false),
                "off" => Some(true),
                _ => None,
            };
        }
    }

    /// A MySQL server status (OK or EOF packet): `SERVER_STATUS_NO_BACKSLASH_ESCAPES` is the
    /// server's own word on backslashes.
    pub fn server_no_backslash_escapes(&mut self, on: bool) {
        if self.dialect == Dialect::MySql {
            self.backslash_escapes = Some(!on);
        }
    }

    /// A statement that may change a setting (see [`Analysis::touches_settings`]) succeeded:
    /// learn the new value when it is set plainly, else doubt the setting from here on.
    pub fn statement_succeeded(&mut self, sql: &str) {
        let doubted = Settings::unknown(self.dialect);
        let toks = tokens(sql, &doubted);
        let sig = significant_tokens(sql, &toks);
        for stmt in sig.split(|&(k, t)| k == Tok::Punct && t == ";") {
            match self.dialect {
                Dialect::Postgres => self.postgres_statement(stmt),
                Dialect::MySql => self.mysql_statement(stmt),
            }
        }
    }

    fn postgres_statement(&mut self, stmt: &[(Tok, &str)]) {
        let words = |w: &str| {
            stmt.iter()
                .any(|&(k, t)| k == Tok::Word && t.eq_ignore_ascii_case(w))
        };
        let Some(&(Tok::Word, first)) = stmt.first() else {
            return;
        };
        if first.eq_ignore_ascii_case("SHOW") {
            return;
        }
        if !SETTING_WORDS.iter().any(|w| *w != "sql_mode" && words(w)) {
            return;
        }
        // SET [SESSION] standard_conforming_strings {TO | =} value
        let rest = match stmt {
            [(Tok::Word, set), (Tok::Word, session), rest @ ..]
                if set.eq_ignore_ascii_case("SET") && session.eq_ignore_ascii_case("SESSION") =>
            {
                rest
            }
            [(Tok::Word, set), rest @ ..] if set.eq_ignore_ascii_case("SET") => rest,
            _ => &[][..],
        };
        self.backslash_escapes = match rest {
            [(Tok::Word, name), (k, to), (vk, v)]
                if name.eq_ignore_ascii_case("standard_conforming_strings")
                    && ((*k == Tok::Word && to.eq_ignore_ascii_case("TO"))
                        || (*k == Tok::Punct && *to == "=")) =>
            {
                let v = if *vk == Tok::Literal {
                    v.strip_prefix('\'').and_then(|v| v.strip_suffix('\''))
                } else {
                    Some(*v)
                };
                match v.map(str::to_ascii_lowercase).as_deref() {
                    Some("on" | "true" | "yes" | "1") => Some(false),
                    Some("off" | "false" | "no" | "0") => Some(true),
                    _ => None,
                }
            }
            _ => None,
        };
    }

    fn mysql_statement(&mut self, stmt: &[(Tok, &str)]) {
        let Some(&(Tok::Word, first)) = stmt.first() else {
            return;
        };
        if !first.eq_ignore_ascii_case("SET") {
            return;
        }
        // MariaDB's SET STATEMENT … FOR: for that statement only.
        if stmt
            .get(1)
            .is_some_and(|&(k, t)| k == Tok::Word && t.eq_ignore_ascii_case("STATEMENT"))
        {
            return;
        }
        for (at, &(k, t)) in stmt.iter().enumerate() {
            if k != Tok::Word || !t.eq_ignore_ascii_case("sql_mode") {
                continue;
            }
            // `SET GLOBAL sql_mode` / `@@global.sql_mode` leave this session alone.
            let global = stmt[..at]
                .iter()
                .rev()
                .take(3)
                .take_while(|&&(k, t)| k != Tok::Punct || t != ",")
                .any(|&(k, t)| k == Tok::Word && t.eq_ignore_ascii_case("GLOBAL"));
            if global {
                continue;
            }
            let mut after = &stmt[at + 1..];
            if let [(Tok::Punct, ":"), rest @ ..] = after {
                after = rest;
            }
            let modes = match after {
                [(Tok::Punct, "="), (Tok::Literal, v), tail @ ..]
                    if tail
                        .first()
                        .is_none_or(|&(k, t)| k == Tok::Punct && t == ",") =>
                {
                    plain_string(v)
                }
                _ => None,
            };
            match modes {
                Some(modes) => {
                    let has = |list: &[&str]| {
                        modes
                            .split(',')
                            .any(|m| list.iter().any(|l| l.eq_ignore_ascii_case(m.trim())))
                    };
                    self.backslash_escapes = Some(!has(&["NO_BACKSLASH_ESCAPES"]));
                    self.ansi_quotes = Some(has(&ANSI_QUOTES_MODES));
                }
                None => {
                    self.backslash_escapes = None;
                    self.ansi_quotes = None;
                }
            }
        }
    }
}

/// A change of the session's identity a statement makes, to apply once the server accepted
/// it (see [`identity_changes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityChange {
    /// `SET [SESSION] ROLE name` (PostgreSQL), `SET ROLE name[, …]` (MySQL / MariaDB): the
    /// role (or roles, or MySQL's `ALL` / `DEFAULT`) in effect from now on.
    Role(String),
    /// `SET ROLE NONE`, `RESET ROLE`: no role set any more.
    ResetRole,
    /// PostgreSQL `SET [SESSION] SESSION AUTHORIZATION name`: the session user from now on
    /// (which also resets the role).
    SessionAuthorization(String),
    /// PostgreSQL `SET SESSION AUTHORIZATION DEFAULT`, `RESET SESSION AUTHORIZATION`,
    /// `RESET ALL`, `DISCARD ALL`: back to the login user, no role.
    ResetAuthorization,
}

/// Whether `text` contains any of `words` (upper-case ASCII), in any case.
fn mentions_any(text: &str, words: &[&str]) -> bool {
    let text = text.as_bytes();
    (0..text.len()).any(|at| {
        let first = text[at].to_ascii_uppercase();
        words.iter().any(|w| {
            w.as_bytes()[0] == first
                && text
                    .get(at..at + w.len())
                    .is_some_and(|t| t.eq_ignore_ascii_case(w.as_bytes()))
        })
    })
}

/// The identity changes in `sql`, statement by statement, lexed under `settings`. Not
/// followed: `SET LOCAL` (for the transaction only), `set_config('role', …)`, a
/// transaction's rollback undoing a `SET ROLE`, and roles a function runs as
/// (`SECURITY DEFINER`).
pub fn identity_changes(sql: &str, settings: &Settings) -> Vec<IdentityChange> {
    let mut out = Vec::new();
    // Cheap test first, one pass without allocating: nearly every statement names none of
    // these.
    if !mentions_any(sql, &["ROLE", "AUTHORIZATION", "RESET", "DISCARD"]) {
        return out;
    }
    let toks = tokens(sql, settings);
    let sig = significant_tokens(sql, &toks);
    let dialect = settings.dialect;
    let word = |t: &(Tok, &str), w: &str| t.0 == Tok::Word && t.1.eq_ignore_ascii_case(w);
    for stmt in sig.split(|&(k, t)| k == Tok::Punct && t == ";") {
        let change = match (dialect, stmt) {
            (_, [set, role, rest @ ..]) if word(set, "SET") && word(role, "ROLE") => {
                role_names(rest, dialect)
            }
            (Dialect::Postgres, [set, session, role, rest @ ..])
                if word(set, "SET") && word(session, "SESSION") && word(role, "ROLE") =>
            {
                role_names(rest, dialect)
            }
            (Dialect::Postgres, [reset, role]) if word(reset, "RESET") && word(role, "ROLE") => {
                Some(IdentityChange::ResetRole)
            }
            (Dialect::Postgres, [reset, all]) if word(reset, "RESET") && word(all, "ALL") => {
                Some(IdentityChange::ResetAuthorization)
            }
            (Dialect::Postgres, [discard, all]) if word(discard, "DISCARD") && word(all, "ALL") => {
                Some(IdentityChange::ResetAuthorization)
            }
            (Dialect::Postgres, [reset, session, auth])
                if word(reset, "RESET")
                    && word(session, "SESSION")
                    && word(auth, "AUTHORIZATION") =>
            {
                Some(IdentityChange::ResetAuthorization)
            }
            (Dialect::Postgres, [set, rest @ ..]) if word(set, "SET") => {
                // `SET SESSION SESSION AUTHORIZATION …`: the first SESSION is the scope.
                let rest = match rest {
                    [scope, session, ..] if word(scope, "SESSION") && word(session, "SESSION") => {
                        &rest[1..]
                    }
                    _ => rest,
                };
                match rest {
                    [session, auth, name]
                        if word(session, "SESSION") && word(auth, "AUTHORIZATION") =>
                    {
                        if word(name, "DEFAULT") {
                            Some(IdentityChange::ResetAuthorization)
                        } else {
                            identifier(*name, dialect).map(IdentityChange::SessionAuthorization)
                        }
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        out.extend(change);
    }
    out
}

/// The role list after `SET ROLE`: `NONE`, one name (PostgreSQL), or MySQL's names, `ALL`,
/// `ALL EXCEPT …`, `DEFAULT`, kept as written (names unquoted).
fn role_names(rest: &[(Tok, &str)], dialect: Dialect) -> Option<IdentityChange> {
    match rest {
        [] => None,
        [(Tok::Word, none)] if none.eq_ignore_ascii_case("NONE") => Some(IdentityChange::ResetRole),
        [one] if dialect == Dialect::Postgres => {
            identifier(*one, dialect).map(IdentityChange::Role)
        }
        _ if dialect == Dialect::Postgres => None,
        _ => {
            let mut names = String::new();
            let mut sep = "";
            for &t in rest {
                match t {
                    (Tok::Punct, ",") => sep = ", ",
                    // MySQL's `role@host`.
                    (Tok::Punct, "@") => sep = "@",
                    _ => {
                        names.push_str(sep);
                        names.push_str(&identifier(t, dialect)?);
                        sep = " ";
                    }
                }
            }
            Some(IdentityChange::Role(names))
        }
    }
}

/// A name as the server reads it: a word (folded to lower case by PostgreSQL), a quoted
/// identifier without its quotes, or a plain string literal's contents.
fn identifier((kind, text): (Tok, &str), dialect: Dialect) -> Option<String> {
    match kind {
        Tok::Word if dialect == Dialect::Postgres => Some(text.to_lowercase()),
        Tok::Word => Some(text.to_owned()),
        Tok::QuotedIdent => {
            let q = &text[..1];
            let inner = text.get(1..text.len() - 1)?;
            Some(inner.replace(&format!("{q}{q}"), q))
        }
        Tok::Literal => plain_string(text).map(str::to_owned),
        _ => None,
    }
}

/// The contents of a string literal without escapes or doubled quotes in it (`'a,b'`,
/// `_utf8'a'`), else `None`.
fn plain_string(lit: &str) -> Option<&str> {
    let open = lit.find(['\'', '"'])?;
    let q = &lit[open..=open];
    let inner = lit[open + 1..].strip_suffix(q)?;
    (!inner.contains(['\\', '\'', '"'])).then_some(inner)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Word,
    QuotedIdent,
    Literal,
    Placeholder,
    Space,
    Comment,
    Punct,
    /// A byte the lexer cannot classify: redacted like a literal.
    Unknown,
}

/// A quoted identifier, unless unterminated: then it may swallow literals, so it is redacted.
fn ident_or_literal(b: &[u8], start: usize, end: usize) -> Tok {
    if end > start + 1 && end <= b.len() && b[end - 1] == b[start] {
        Tok::QuotedIdent
    } else {
        Tok::Literal
    }
}

/// Whitespace to both servers (space, tab, newline, carriage return, form feed, vertical tab).
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

/// Characters that may continue an identifier (and a dollar-quote tag, without `$`).
fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

/// Splits `sql` into (kind, byte range) tokens under `settings`, doubting what is unknown.
/// Ranges always lie on char boundaries.
fn tokens(sql: &str, settings: &Settings) -> Vec<(Tok, usize, usize)> {
    let ansi = settings.ansi_quotes == Some(true);
    match settings.backslash_escapes {
        Some(escapes) => lex(sql, settings.dialect, escapes, ansi),
        None if !sql.as_bytes().contains(&b'\\') => lex(sql, settings.dialect, false, ansi),
        None => {
            let mut with = lex(sql, settings.dialect, true, ansi);
            let without = lex(sql, settings.dialect, false, ansi);
            doubt(&mut with, &without);
            with
        }
    }
}

/// Turns every token of `primary` that `other` reads (partly) as a literal, comment or
/// unknown byte into a literal.
fn doubt(primary: &mut [(Tok, usize, usize)], other: &[(Tok, usize, usize)]) {
    let mut hidden = other
        .iter()
        .filter(|t| matches!(t.0, Tok::Literal | Tok::Comment | Tok::Unknown))
        .peekable();
    for t in primary.iter_mut() {
        if matches!(t.0, Tok::Space | Tok::Comment | Tok::Literal | Tok::Unknown) {
            continue;
        }
        while hidden.next_if(|h| h.2 <= t.1).is_some() {}
        if hidden.peek().is_some_and(|h| h.1 < t.2) {
            t.0 = Tok::Literal;
        }
    }
}

/// One lexing pass with every setting fixed.
fn lex(
    sql: &str,
    dialect: Dialect,
    backslash: bool,
    ansi_quotes: bool,
) -> Vec<(Tok, usize, usize)> {
    let b = sql.as_bytes();
    let n = b.len();
    let my = dialect == Dialect::MySql;
    let mut out = Vec::with_capacity(n / 4 + 1);
    let mut i = 0;
    // Inside a MySQL executable comment (`/*! … */`): its closing `*/` is whitespace.
    let mut executable = false;
    // Finds the end of a quoted run starting after the opening quote `q` at `start`.
    let quoted_end = |start: usize, q: u8, backslash: bool| -> usize {
        let mut j = start;
        while j < n {
            if backslash && b[j] == b'\\' {
                j += 2;
                continue;
            }
            if b[j] == q {
                if j + 1 < n && b[j + 1] == q {
                    j += 2;
                    continue;
                }
                return j + 1;
            }
            j += 1;
        }
        n
    };
    while i < n {
        let c = b[i];
        let start = i;
        let kind = if is_space(c) {
            while i < n && is_space(b[i]) {
                i += 1;
            }
            Tok::Space
        } else if (c == b'-'
            && b.get(i + 1) == Some(&b'-')
            // MySQL needs whitespace or a control character after `--` (`5--3` is 5 - -3).
            && (!my || b.get(i + 2).is_none_or(|&d| d <= b' ')))
            || (c == b'#' && my)
        {
            while i < n && b[i] != b'\n' {
                i += 1;
            }
            Tok::Comment
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            if my {
                let mut j = i + 2;
                if b.get(j) == Some(&b'M') && b.get(j + 1) == Some(&b'!') {
                    j += 1;
                }
                if b.get(j) == Some(&b'!') && !executable {
                    // `/*!`, `/*!50001`, `/*M!100101`: the contents are the statement's.
                    j += 1;
                    while j < n && b[j].is_ascii_digit() {
                        j += 1;
                    }
                    executable = true;
                    i = j;
                    Tok::Space
                } else {
                    // MySQL comments do not nest: the first `*/` ends it.
                    i = sql[i + 2..].find("*/").map_or(n, |p| i + 2 + p + 2);
                    Tok::Comment
                }
            } else {
                // PostgreSQL comments nest.
                let mut depth = 1usize;
                let mut j = i + 2;
                while j < n && depth > 0 {
                    if b[j] == b'/' && b.get(j + 1) == Some(&b'*') {
                        depth += 1;
                        j += 2;
                    } else if b[j] == b'*' && b.get(j + 1) == Some(&b'/') {
                        depth -= 1;
                        j += 2;
                    } else {
                        j += 1;
                    }
                }
                i = j;
                Tok::Comment
            }
        } else if executable && c == b'*' && b.get(i + 1) == Some(&b'/') {
            executable = false;
            i += 2;
            Tok::Space
        } else if c == b'\'' {
            i = quoted_end(i + 1, b'\'', backslash);
            Tok::Literal
        } else if c == b'"' {
            if my && !ansi_quotes {
                i = quoted_end(i + 1, b'"', backslash);
                Tok::Literal
            } else {
                i = quoted_end(i + 1, b'"', false);
                ident_or_literal(b, start, i)
            }
        } else if c == b'`' {
            i = quoted_end(i + 1, b'`', false);
            if my {
                ident_or_literal(b, start, i)
            } else {
                // Not PostgreSQL syntax: whatever it quotes is not shown.
                Tok::Literal
            }
        } else if c == b'$' && !my {
            if b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                i += 1;
                while i < n && b[i].is_ascii_digit() {
                    i += 1;
                }
                Tok::Placeholder
            } else {
                // A dollar quote: `$$` or `$tag$`, the tag of identifier characters not
                // starting with a digit.
                let mut j = i + 1;
                while j < n && is_ident_char(b[j]) {
                    j += 1;
                }
                if j < n && b[j] == b'$' {
                    let tag = &sql[i..=j];
                    i = sql[j + 1..].find(tag).map_or(n, |p| j + 1 + p + tag.len());
                    Tok::Literal
                } else {
                    i += 1;
                    Tok::Unknown
                }
            }
        } else if c == b'?' {
            i += 1;
            Tok::Placeholder
        } else if c == b':'
            && b.get(i + 1)
                .is_some_and(|&d| d.is_ascii_alphabetic() || d == b'_')
            && out
                .last()
                .is_none_or(|t: &(Tok, usize, usize)| b[t.2 - 1] != b':')
        {
            i += 1;
            while i < n && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            Tok::Placeholder
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            if c == b'0' && matches!(b.get(i + 1), Some(b'x' | b'X' | b'b' | b'B' | b'o' | b'O')) {
                i += 2;
            } else {
                while i < n && (b[i].is_ascii_digit() || b[i] == b'.' || b[i] == b'_') {
                    i += 1;
                }
                if i < n && (b[i] == b'e' || b[i] == b'E') {
                    let mut j = i + 1;
                    if j < n && (b[j] == b'+' || b[j] == b'-') {
                        j += 1;
                    }
                    if j < n && b[j].is_ascii_digit() {
                        i = j;
                    }
                }
            }
            // Digits and whatever identifier characters follow (`0x1F`, `1e5`, MySQL's
            // `1abc`): one literal.
            while i < n && (is_ident_char(b[i]) || b[i] == b'.') {
                i += 1;
            }
            Tok::Literal
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            while i < n && (is_ident_char(b[i]) || b[i] == b'$') {
                i += 1;
            }
            // A prefixed string: E'…', B'…', X'…', N'…', MySQL _charset'…'.
            let word = &sql[start..i];
            let prefix = (i - start == 1
                && matches!(c.to_ascii_uppercase(), b'E' | b'B' | b'X' | b'N'))
                || (my && word.starts_with('_'));
            let quote = b.get(i).copied();
            if prefix && (quote == Some(b'\'') || (my && !ansi_quotes && quote == Some(b'"'))) {
                let escapes = backslash || (!my && word.eq_ignore_ascii_case("e"));
                i = quoted_end(i + 1, b[i], escapes);
                Tok::Literal
            } else {
                Tok::Word
            }
        } else if c.is_ascii_punctuation() && c != b'\\' {
            i += 1;
            Tok::Punct
        } else {
            // A backslash outside a string, a control character, MySQL's `$`.
            i += 1;
            Tok::Unknown
        };
        // Escapes can step past the end.
        let end = i.min(n);
        i = end;
        out.push((kind, start, end));
    }
    out
}

/// The statement with every literal replaced by `?` and comments removed.
///
/// `WHERE ssn = '123-45-6789' AND age > 40` → `WHERE ssn = ? AND age > ?`. No session
/// setting is known: those that change lexing are doubted ([`Settings::unknown`]).
pub fn redact(sql: &str, dialect: Dialect) -> String {
    redact_tokens(sql, &tokens(sql, &Settings::unknown(dialect)))
}

/// [`redact`] under a session's known settings.
pub fn redact_with(sql: &str, settings: &Settings) -> String {
    redact_tokens(sql, &tokens(sql, settings))
}

fn redact_tokens(sql: &str, tokens: &[(Tok, usize, usize)]) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut last_literal = false;
    for &(kind, s, e) in tokens {
        match kind {
            Tok::Literal | Tok::Unknown => {
                // Adjacent literals ('a' 'b' continuation) collapse into one.
                if !last_literal {
                    out.push('?');
                }
                last_literal = true;
                continue;
            }
            Tok::Comment => {
                if !out.ends_with(' ') && !out.is_empty() {
                    out.push(' ');
                }
                continue;
            }
            Tok::Space => {
                // Whitespace runs become one space (the record is one line); a literal after
                // a literal still collapses.
                if !out.ends_with(' ') && !out.is_empty() {
                    out.push(' ');
                }
                continue;
            }
            Tok::Punct if &sql[s..e] == "-" && out.ends_with('-') => {
                // MySQL's `5--3` (minus minus three): kept apart so that the output never
                // reads as a `--` comment.
                out.push_str(" -");
            }
            _ => out.push_str(&sql[s..e]),
        }
        last_literal = false;
    }
    let trimmed = out.trim();
    if trimmed.len() == out.len() {
        out
    } else {
        trimmed.to_string()
    }
}

/// A statement's redacted text, kind and tables, from one pass of the tokenizer (what
/// [`redact`], [`classify`] and [`tables`] return one by one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Analysis {
    /// [`redact`]'s text, when asked for.
    pub redacted: Option<String>,
    /// [`classify`]'s kind.
    pub kind: StatementKind,
    /// [`tables`]' names.
    pub tables: Vec<String>,
    /// The statement names a setting that changes lexing: pass it to
    /// [`Settings::statement_succeeded`] once the server accepted it.
    pub touches_settings: bool,
}

/// Redacts (when `redact` is set), classifies and extracts the tables of `sql` at once, with
/// every lexing setting doubted.
pub fn analyze(sql: &str, dialect: Dialect, redact: bool) -> Analysis {
    analyze_with(sql, &Settings::unknown(dialect), redact)
}

/// [`analyze`] under a session's settings. A statement that itself names a lexing setting
/// (`SET sql_mode = …; SELECT …`) is lexed with every setting doubted.
pub fn analyze_with(sql: &str, settings: &Settings, redact: bool) -> Analysis {
    let mut toks = tokens(sql, settings);
    // Every setting word starts with s, r or d: most words are rejected on one byte.
    let touches_settings = toks.iter().any(|&(k, s, e)| {
        k == Tok::Word
            && matches!(sql.as_bytes()[s] | 0x20, b's' | b'r' | b'd')
            && SETTING_WORDS
                .iter()
                .any(|w| w.eq_ignore_ascii_case(&sql[s..e]))
    });
    if touches_settings {
        toks = tokens(sql, &Settings::unknown(settings.dialect));
    }
    let sig = significant_tokens(sql, &toks);
    Analysis {
        redacted: redact.then(|| redact_tokens(sql, &toks)),
        kind: classify_significant(&sig),
        tables: tables_significant(&sig),
        touches_settings,
    }
}

/// The significant tokens (words, quoted identifiers, punctuation, literals) with their text.
fn significant_tokens<'a>(sql: &'a str, tokens: &[(Tok, usize, usize)]) -> Vec<(Tok, &'a str)> {
    tokens
        .iter()
        .filter(|(k, _, _)| !matches!(k, Tok::Space | Tok::Comment))
        .map(|&(k, s, e)| (k, &sql[s..e]))
        .collect()
}

/// Whether `word` is one of `list` (upper-case), ignoring ASCII case, without allocating.
fn one_of(word: &str, list: &[&str]) -> bool {
    list.iter().any(|w| w.eq_ignore_ascii_case(word))
}

fn kind_of(word: &str) -> Option<StatementKind> {
    const KINDS: [(&[&str], StatementKind); 5] = [
        (
            &[
                "SELECT", "VALUES", "TABLE", "SHOW", "DESCRIBE", "DESC", "EXPLAIN",
            ],
            StatementKind::Select,
        ),
        (&["INSERT", "REPLACE"], StatementKind::Insert),
        (&["UPDATE"], StatementKind::Update),
        (&["DELETE"], StatementKind::Delete),
        (
            &["CREATE", "ALTER", "DROP", "TRUNCATE", "RENAME", "COMMENT"],
            StatementKind::Ddl,
        ),
    ];
    KINDS
        .iter()
        .find(|(words, _)| one_of(word, words))
        .map(|&(_, kind)| kind)
}

/// What the statement does, from its first keyword (for `WITH`, from the statement the
/// common table expressions lead to).
pub fn classify(sql: &str, dialect: Dialect) -> StatementKind {
    classify_significant(&significant_tokens(
        sql,
        &tokens(sql, &Settings::unknown(dialect)),
    ))
}

fn classify_significant(toks: &[(Tok, &str)]) -> StatementKind {
    let mut it = toks
        .iter()
        .skip_while(|(k, t)| *k == Tok::Punct && *t == "(");
    let Some(&(Tok::Word, first)) = it.next() else {
        return StatementKind::Other;
    };
    if first.eq_ignore_ascii_case("WITH") {
        // The first data keyword at parenthesis depth 0 after the CTEs.
        let mut depth = 0i32;
        for &(k, t) in it {
            match (k, t) {
                (Tok::Punct, "(") => depth += 1,
                (Tok::Punct, ")") => depth -= 1,
                (Tok::Word, w) if depth == 0 => {
                    if let Some(kind) = kind_of(w) {
                        return kind;
                    }
                }
                _ => {}
            }
        }
        return StatementKind::Other;
    }
    kind_of(first).unwrap_or(StatementKind::Other)
}

/// Words after which a table name follows.
fn introduces_table(word: &str) -> bool {
    one_of(
        word,
        &["FROM", "JOIN", "INTO", "UPDATE", "TABLE", "TRUNCATE"],
    )
}

/// Words that may sit between the introducer and the name, or that are not names.
fn is_noise(word: &str) -> bool {
    one_of(
        word,
        &[
            "ONLY",
            "LATERAL",
            "IF",
            "NOT",
            "EXISTS",
            "LOW_PRIORITY",
            "IGNORE",
            "QUICK",
            "DELAYED",
            "HIGH_PRIORITY",
        ],
    )
}

/// Words that end a `FROM a, b` list or cannot be an alias.
fn is_clause(word: &str) -> bool {
    one_of(
        word,
        &[
            "WHERE",
            "GROUP",
            "ORDER",
            "HAVING",
            "LIMIT",
            "OFFSET",
            "JOIN",
            "INNER",
            "LEFT",
            "RIGHT",
            "FULL",
            "CROSS",
            "NATURAL",
            "ON",
            "USING",
            "SET",
            "VALUES",
            "SELECT",
            "UNION",
            "EXCEPT",
            "INTERSECT",
            "RETURNING",
            "FOR",
            "WINDOW",
            "DEFAULT",
            "AS",
            "OUTER",
            "FETCH",
            "INTO",
        ],
    )
}

fn unquote(t: &str) -> &str {
    for q in ['"', '`'] {
        if let Some(inner) = t.strip_prefix(q) {
            return inner.strip_suffix(q).unwrap_or(inner);
        }
    }
    t
}

/// Tables the statement names after `FROM`, `JOIN`, `INTO`, `UPDATE`, `TABLE` and
/// `TRUNCATE`, schema-qualified as written, in order, without duplicates; at most
/// [`MAX_TABLES`]. Cheap, not a parser: sub-queries are looked into, functions in `FROM`
/// are missed and CTE names may appear.
pub fn tables(sql: &str, dialect: Dialect) -> Vec<String> {
    tables_significant(&significant_tokens(
        sql,
        &tokens(sql, &Settings::unknown(dialect)),
    ))
}

fn tables_significant(toks: &[(Tok, &str)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < toks.len() && out.len() < MAX_TABLES {
        let (k, t) = toks[i];
        i += 1;
        if k != Tok::Word || !introduces_table(t) {
            continue;
        }
        let is_from = t.eq_ignore_ascii_case("FROM");
        loop {
            while i < toks.len() && toks[i].0 == Tok::Word && is_noise(toks[i].1) {
                i += 1;
            }
            // A (possibly qualified) name: ident (. ident)*.
            let mut name = String::new();
            while i < toks.len() && matches!(toks[i].0, Tok::Word | Tok::QuotedIdent) {
                if toks[i].0 == Tok::Word && is_clause(toks[i].1) {
                    break;
                }
                name.push_str(unquote(toks[i].1));
                i += 1;
                if i + 1 < toks.len() && toks[i].0 == Tok::Punct && toks[i].1 == "." {
                    name.push('.');
                    i += 1;
                } else {
                    break;
                }
            }
            // A function call (`FROM generate_series(…)`) is not a table; after INTO a
            // parenthesis opens the column list.
            let call = (is_from || t.eq_ignore_ascii_case("JOIN"))
                && i < toks.len()
                && toks[i].0 == Tok::Punct
                && toks[i].1 == "(";
            if !name.is_empty()
                && !name.ends_with('.')
                && !call
                && !out.contains(&name)
                && out.len() < MAX_TABLES
            {
                out.push(name);
            }
            if !is_from {
                break;
            }
            // Skip an alias, then continue a comma list.
            if i < toks.len() && toks[i].0 == Tok::Word && toks[i].1.eq_ignore_ascii_case("AS") {
                i += 1;
            }
            if i < toks.len()
                && matches!(toks[i].0, Tok::Word | Tok::QuotedIdent)
                && !is_clause(toks[i].1)
            {
                i += 1;
            }
            if i < toks.len() && toks[i].0 == Tok::Punct && toks[i].1 == "," {
                i += 1;
                continue;
            }
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testutil::XorShift;

    const PG: Dialect = Dialect::Postgres;
    const MY: Dialect = Dialect::MySql;

    #[test]
    fn redacts_strings_and_numbers() {
        assert_eq!(
            redact("SELECT * FROM patients WHERE ssn = '123-45-6789'", PG),
            "SELECT * FROM patients WHERE ssn = ?"
        );
        assert_eq!(
            redact(
                "select name from p where age > 40 and w < 7.5e3 and id = 0x1F",
                PG
            ),
            "select name from p where age > ? and w < ? and id = ?"
        );
        assert_eq!(
            redact("INSERT INTO t (a, b) VALUES ('O''Brien', -12)", PG),
            "INSERT INTO t (a, b) VALUES (?, -?)"
        );
        assert_eq!(
            redact("SELECT E'it\\'s', $$body$$, $x$a$x$", PG),
            "SELECT ?, ?, ?"
        );
    }

    #[test]
    fn keeps_identifiers_keywords_and_placeholders() {
        assert_eq!(
            redact(
                "SELECT \"ssn 2\", t1.col9 FROM t1 WHERE a = $1 AND b = ?",
                PG
            ),
            "SELECT \"ssn 2\", t1.col9 FROM t1 WHERE a = $1 AND b = ?"
        );
        assert_eq!(
            redact("SELECT a::text, :name FROM t", PG),
            "SELECT a::text, :name FROM t"
        );
        assert_eq!(
            redact(
                "SELECT `col` FROM `db`.`t` WHERE x = \"secret\" AND y = 'it\\'s'",
                MY
            ),
            "SELECT `col` FROM `db`.`t` WHERE x = ? AND y = ?"
        );
    }

    #[test]
    fn comments_are_dropped_and_unterminated_literals_redacted() {
        assert_eq!(
            redact("SELECT 1 -- patient 123-45-6789\nFROM t", PG),
            "SELECT ? FROM t"
        );
        assert_eq!(
            redact("SELECT /* Jane Doe */ a\n  FROM t", PG),
            "SELECT a FROM t"
        );
        assert_eq!(
            redact("SELECT a FROM t WHERE ssn = '123-45", PG),
            "SELECT a FROM t WHERE ssn = ?"
        );
        assert_eq!(redact("SELECT a # note\nFROM t", MY), "SELECT a FROM t");
    }

    #[test]
    fn classifies() {
        assert_eq!(classify("  select 1", PG), StatementKind::Select);
        assert_eq!(
            classify("(SELECT 1) UNION (SELECT 2)", PG),
            StatementKind::Select
        );
        assert_eq!(
            classify("INSERT INTO t VALUES (1)", PG),
            StatementKind::Insert
        );
        assert_eq!(classify("update t set a = 1", PG), StatementKind::Update);
        assert_eq!(classify("DELETE FROM t", PG), StatementKind::Delete);
        assert_eq!(classify("CREATE TABLE t (a int)", PG), StatementKind::Ddl);
        assert_eq!(classify("drop table t", PG), StatementKind::Ddl);
        assert_eq!(classify("BEGIN", PG), StatementKind::Other);
        assert_eq!(classify("", PG), StatementKind::Other);
        assert_eq!(
            classify("WITH x AS (SELECT 1) DELETE FROM t USING x", PG),
            StatementKind::Delete
        );
        assert_eq!(classify("/* hi */ SELECT 1", PG), StatementKind::Select);
    }

    #[test]
    fn finds_tables() {
        assert_eq!(
            tables("SELECT * FROM patients WHERE ssn = '1'", PG),
            ["patients"]
        );
        assert_eq!(
            tables(
                "SELECT * FROM public.patients p JOIN visits v ON p.id = v.pid",
                PG
            ),
            ["public.patients", "visits"]
        );
        assert_eq!(
            tables("SELECT * FROM a, b AS bb, \"C\" WHERE 1=1", PG),
            ["a", "b", "C"]
        );
        assert_eq!(tables("INSERT INTO notes (a) VALUES (1)", PG), ["notes"]);
        assert_eq!(tables("UPDATE ONLY t SET a = 1", PG), ["t"]);
        assert_eq!(
            tables("DELETE FROM t WHERE a IN (SELECT id FROM u)", PG),
            ["t", "u"]
        );
        assert_eq!(tables("CREATE TABLE IF NOT EXISTS x (a int)", PG), ["x"]);
        assert_eq!(
            tables("SELECT * FROM generate_series(1, 3)", PG),
            Vec::<String>::new()
        );
        assert_eq!(
            tables("SELECT * FROM `ehr`.`patients`", MY),
            ["ehr.patients"]
        );
        assert_eq!(tables("SELECT 1", PG), Vec::<String>::new());
    }

    /// `SECRET` must not survive redaction of any of `cases` under `settings`.
    fn hidden(settings: &Settings, cases: &[&str]) {
        for sql in cases {
            let r = redact_with(sql, settings);
            assert!(
                !r.to_ascii_lowercase().contains("secret"),
                "{sql:?} -> {r:?} under {settings:?}"
            );
        }
    }

    fn pg(backslash: Option<bool>) -> Settings {
        Settings {
            backslash_escapes: backslash,
            ..Settings::unknown(PG)
        }
    }

    fn my(backslash: Option<bool>, ansi: Option<bool>) -> Settings {
        Settings {
            dialect: MY,
            backslash_escapes: backslash,
            ansi_quotes: ansi,
        }
    }

    #[test]
    fn postgres_comments_nest_and_mysql_comments_do_not() {
        assert_eq!(
            redact("SELECT /* a /* secret */ secret */ x FROM t", PG),
            "SELECT x FROM t"
        );
        // MySQL: the first `*/` ends the comment; what follows is code.
        assert_eq!(
            redact("SELECT /* a /* b */ c FROM t", MY),
            "SELECT c FROM t"
        );
        hidden(
            &pg(None),
            &["SELECT 1 /* /* secret */", "SELECT a -- secret"],
        );
        hidden(
            &my(None, None),
            &[
                "SELECT a # secret",
                "SELECT a -- secret",
                "SELECT a --\tsecret",
                "SELECT a /* secret",
            ],
        );
        // MySQL `--` without a space is two minus signs.
        assert_eq!(redact("SELECT 5--3 FROM t", MY), "SELECT ?- -? FROM t");
        assert_eq!(redact("SELECT 5--3 FROM t", PG), "SELECT ?");
    }

    #[test]
    fn dollar_quote_tags_of_any_identifier_characters() {
        for sql in [
            "SELECT $$secret$$ FROM t",
            "SELECT $tag$secret$tag$ FROM t",
            "SELECT $_x1$secret $ $x1$ $_x1$ FROM t",
            "SELECT $ü$secret$ü$ FROM t",
            "SELECT $日本$it's secret$日本$ FROM t",
        ] {
            assert_eq!(redact(sql, PG), "SELECT ? FROM t", "{sql}");
        }
        hidden(
            &pg(Some(false)),
            &["SELECT $a$ secret", "SELECT $ü$ secret $u$"],
        );
        assert_eq!(
            redact("SELECT a FROM t WHERE b = $12", PG),
            "SELECT a FROM t WHERE b = $12"
        );
    }

    #[test]
    fn standard_conforming_strings_decide_what_a_backslash_does() {
        let sql = r"SELECT 'a\' secret ' FROM t";
        // Off: the backslash escapes the quote, the string runs to the last quote.
        assert_eq!(redact_with(sql, &pg(Some(true))), "SELECT ? FROM t");
        // On: 'a\' is a string, then `secret` would be an identifier.
        assert_eq!(redact_with(sql, &pg(Some(false))), "SELECT ? secret ?");
        // Unknown: redacted both ways.
        hidden(&pg(None), &[sql, r"SELECT 'x\', 'secret' secret2 'y'"]);
        // E'…' always has escapes.
        hidden(
            &pg(Some(false)),
            &[r"SELECT E'a\' secret ' FROM t", r"SELECT e'\\\' secret'"],
        );
    }

    #[test]
    fn mysql_backslashes_and_ansi_quotes_follow_sql_mode() {
        hidden(
            &my(Some(true), None),
            &[
                r#"SELECT 'a\' secret ' FROM t"#,
                r#"SELECT "a\" secret " FROM t"#,
            ],
        );
        hidden(&my(Some(false), None), &[r#"SELECT 'a\', 'secret'"#]);
        hidden(
            &my(None, None),
            &[
                r#"SELECT 'a\' secret ' FROM t"#,
                r#"SELECT 'x\', 'secret' secret2 'y'"#,
            ],
        );
        // "…" is a string unless ANSI_QUOTES is known on.
        assert_eq!(
            redact_with(r#"SELECT "secret" FROM t"#, &my(None, None)),
            "SELECT ? FROM t"
        );
        assert_eq!(
            redact_with(r#"SELECT "col" FROM "t""#, &my(Some(true), Some(true))),
            r#"SELECT "col" FROM "t""#
        );
    }

    #[test]
    fn mysql_executable_comments_are_part_of_the_statement() {
        let a = analyze_with(
            "/*!50001 SELECT name FROM patients WHERE ssn = 'secret' */",
            &my(None, None),
            true,
        );
        assert_eq!(
            a.redacted.as_deref(),
            Some("SELECT name FROM patients WHERE ssn = ?")
        );
        assert_eq!(a.kind, StatementKind::Select);
        assert_eq!(a.tables, ["patients"]);
        let a = analyze_with(
            "SELECT * FROM a /*! JOIN b ON b.x = 'secret' */ /*M!100101 , c */ WHERE z = 1",
            &my(None, None),
            true,
        );
        assert_eq!(
            a.redacted.as_deref(),
            Some("SELECT * FROM a JOIN b ON b.x = ? , c WHERE z = ?")
        );
        assert_eq!(a.tables, ["a", "b"]);
        hidden(
            &my(None, None),
            &[
                "/*! SELECT 'secret'",
                "/*!40101 SET x = 'secret' */ /* secret */",
            ],
        );
    }

    #[test]
    fn hex_bit_national_and_charset_strings_and_numbers() {
        for d in [PG, MY] {
            assert_eq!(
                redact("SELECT X'5345', x'00', B'101', b'1', N'secret', 0x5345, 0b1, 12, 1.5, .5, 1e-3, 7e+2", d),
                "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?"
            );
        }
        assert_eq!(
            redact(
                "SELECT _utf8'secret', _binary\"secret\", _latin1 X'41', U&'d\\0061t\\+000061'",
                MY
            ),
            "SELECT ?, ?, _latin1 ?, U&?"
        );
        assert_eq!(
            redact("SELECT U&'d\\0061ta' FROM t", PG),
            "SELECT U&? FROM t"
        );
        // A number that runs into identifier characters is one literal.
        assert_eq!(redact("SELECT 123secret, 0x1Fsecret", MY), "SELECT ?, ?");
    }

    #[test]
    fn bytes_the_lexer_cannot_classify_are_redacted() {
        assert_eq!(redact("SELECT a \\ b", PG), "SELECT a ? b");
        assert_eq!(redact("SELECT a \u{1} b", PG), "SELECT a ? b");
        assert_eq!(redact("SELECT $ b", PG), "SELECT ? b");
        assert_eq!(redact("SELECT `secret`", PG), "SELECT ?");
    }

    #[test]
    fn session_settings_are_learned_from_statements_and_the_server() {
        let mut s = Settings::unknown(PG);
        s.server_parameter("standard_conforming_strings", "on");
        assert_eq!(s.backslash_escapes, Some(false));
        for (sql, expect) in [
            ("SET standard_conforming_strings = off", Some(true)),
            (
                "set session standard_conforming_strings to 'on'",
                Some(false),
            ),
            ("SET standard_conforming_strings TO false", Some(true)),
            ("SET LOCAL standard_conforming_strings = on", None),
            ("SET standard_conforming_strings = on; RESET ALL", None),
            (
                "SELECT set_config('standard_conforming_strings', 'off', false)",
                None,
            ),
        ] {
            s.backslash_escapes = Some(false);
            let a = analyze_with(sql, &s, true);
            assert!(a.touches_settings, "{sql}");
            s.statement_succeeded(sql);
            assert_eq!(s.backslash_escapes, expect, "{sql}");
        }
        let mut s = Settings::unknown(MY);
        for (sql, nbe, ansi) in [
            (
                "SET sql_mode = 'NO_BACKSLASH_ESCAPES'",
                Some(false),
                Some(false),
            ),
            (
                "SET SESSION sql_mode='ANSI_QUOTES,STRICT_TRANS_TABLES'",
                Some(true),
                Some(true),
            ),
            ("SET @@session.sql_mode := 'ANSI'", Some(true), Some(true)),
            ("SET @@sql_mode = ''", Some(true), Some(false)),
            (
                "SET GLOBAL sql_mode = 'ANSI_QUOTES'",
                Some(true),
                Some(false),
            ),
            (
                "SET sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')",
                None,
                None,
            ),
            ("SET sql_mode = DEFAULT", None, None),
            (
                "SET sql_mode = 'ORACLE,NO_BACKSLASH_ESCAPES'",
                Some(false),
                Some(true),
            ),
        ] {
            s.statement_succeeded(sql);
            assert_eq!((s.backslash_escapes, s.ansi_quotes), (nbe, ansi), "{sql}");
        }
        s.server_no_backslash_escapes(true);
        assert_eq!(s.backslash_escapes, Some(false));
        // A statement that changes a setting is lexed with every setting doubted.
        let known = my(Some(false), Some(true));
        let a = analyze_with(
            r#"SET sql_mode = ''; SELECT "secret", 'a\' secret2 '"#,
            &known,
            true,
        );
        assert!(!a.redacted.unwrap().contains("secret"));
    }

    #[test]
    fn random_text_never_panics() {
        let mut rng = XorShift(0x5eed_1234_abcd);
        let alphabet =
            "SELECT FROM WHERE ' \" ` $ $$ $a$ -- /* */ # ? : :: 0x 1.5e é 日本 \\ ( ) , . ; \n E'";
        let pieces: Vec<&str> = alphabet.split(' ').collect();
        for _ in 0..3000 {
            let mut s = String::new();
            for _ in 0..rng.below(20) {
                s.push_str(pieces[rng.below(pieces.len())]);
                if rng.below(2) == 0 {
                    s.push(' ');
                }
            }
            for d in [PG, MY] {
                let r = redact(&s, d);
                // Nothing in the redacted text reads as a literal or a comment.
                assert!(
                    tokens(&r, &Settings::unknown(d))
                        .iter()
                        .all(|t| !matches!(t.0, Tok::Literal | Tok::Comment | Tok::Unknown)),
                    "{s:?} -> {r:?}"
                );
                let _ = (classify(&s, d), tables(&s, d));
            }
        }
    }

    #[test]
    fn the_quick_identity_test_finds_a_word_anywhere_in_any_case() {
        let words = ["ROLE", "AUTHORIZATION", "RESET", "DISCARD"];
        for text in [
            "set role x",
            "SET ROLE",
            "x;reSet all",
            "dIsCaRd",
            "é ROLE",
            "ROLE",
        ] {
            assert!(mentions_any(text, &words), "{text}");
        }
        for text in ["", "select 1", "ROL", "rol e", "authorizatio", "é"] {
            assert!(!mentions_any(text, &words), "{text}");
        }
    }

    #[test]
    fn identity_changes_per_dialect() {
        use IdentityChange::*;
        let pg = |sql: &str| identity_changes(sql, &Settings::unknown(PG));
        let my = |sql: &str| identity_changes(sql, &Settings::unknown(MY));
        assert_eq!(pg("SET ROLE Auditor"), [Role("auditor".into())]);
        assert_eq!(
            pg("set session role \"Billing Clerk\";"),
            [Role("Billing Clerk".into())]
        );
        assert_eq!(pg("SET ROLE 'reader'"), [Role("reader".into())]);
        assert_eq!(pg("SET ROLE NONE"), [ResetRole]);
        assert_eq!(pg("RESET ROLE"), [ResetRole]);
        assert_eq!(
            pg("SET SESSION AUTHORIZATION clerk; SELECT 1"),
            [SessionAuthorization("clerk".into())]
        );
        assert_eq!(
            pg("/* pool */ SET SESSION SESSION AUTHORIZATION DEFAULT"),
            [ResetAuthorization]
        );
        assert_eq!(pg("RESET SESSION AUTHORIZATION"), [ResetAuthorization]);
        assert_eq!(pg("DISCARD ALL"), [ResetAuthorization]);
        assert_eq!(pg("RESET ALL"), [ResetAuthorization]);
        // However long the statement.
        assert_eq!(
            pg(&format!("/* {} */ SET ROLE auditor", "x".repeat(70_000))),
            [Role("auditor".into())]
        );
        // For the transaction only, or not a change of identity: not followed.
        assert_eq!(pg("SET LOCAL ROLE auditor"), []);
        assert_eq!(pg("SELECT role FROM staff"), []);
        assert_eq!(pg("SELECT 'SET ROLE x'"), []);
        assert_eq!(pg("GRANT auditor TO clerk"), []);
        assert_eq!(my("SET ROLE auditor"), [Role("auditor".into())]);
        assert_eq!(my("SET ROLE `Audit`"), [Role("Audit".into())]);
        assert_eq!(my("SET ROLE r1, r2"), [Role("r1, r2".into())]);
        assert_eq!(my("SET ROLE NONE"), [ResetRole]);
        assert_eq!(my("SET ROLE ALL EXCEPT r1"), [Role("ALL EXCEPT r1".into())]);
        assert_eq!(my("SET DEFAULT ROLE auditor FOR clerk"), []);
        assert_eq!(my("RESET ROLE"), []);
    }
}
