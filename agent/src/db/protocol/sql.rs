//! Statement text: literal redaction, a statement-kind classifier and cheap table extraction.
//!
//! One small tokenizer serves all three. It knows quoted strings (`'…'` with `''` and, for
//! `E'…'` and MySQL, backslash escapes), dollar quoting (`$tag$…$tag$`), quoted identifiers
//! (`"…"` in PostgreSQL, `` `…` `` in MySQL, where `"…"` is a string), numbers, comments and
//! placeholders (`$1`, `?`, `:name`). Redaction replaces every string and number literal with
//! `?` and drops comments (they can carry data too); identifiers, keywords, operators and
//! placeholders stay. It never fails: unterminated literals are redacted to the end.

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Word,
    QuotedIdent,
    Literal,
    Placeholder,
    Space,
    Comment,
    Punct,
}

/// A quoted identifier, unless unterminated: then it may swallow literals, so it is redacted.
fn ident_or_literal(b: &[u8], start: usize, end: usize) -> Tok {
    if end > start + 1 && end <= b.len() && b[end - 1] == b[start] {
        Tok::QuotedIdent
    } else {
        Tok::Literal
    }
}

/// Splits `sql` into (kind, byte range) tokens. Ranges always lie on char boundaries.
fn tokens(sql: &str, dialect: Dialect) -> Vec<(Tok, usize, usize)> {
    let b = sql.as_bytes();
    let n = b.len();
    let mut out = Vec::new();
    let mut i = 0;
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
        let kind = if c.is_ascii_whitespace() {
            while i < n && b[i].is_ascii_whitespace() {
                i += 1;
            }
            Tok::Space
        } else if c == b'-' && b.get(i + 1) == Some(&b'-')
            || (c == b'#' && dialect == Dialect::MySql)
        {
            while i < n && b[i] != b'\n' {
                i += 1;
            }
            Tok::Comment
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i = sql[i + 2..].find("*/").map_or(n, |p| i + 2 + p + 2);
            Tok::Comment
        } else if c == b'\'' {
            i = quoted_end(i + 1, b'\'', dialect == Dialect::MySql);
            Tok::Literal
        } else if c == b'"' {
            if dialect == Dialect::MySql {
                i = quoted_end(i + 1, b'"', true);
                Tok::Literal
            } else {
                i = quoted_end(i + 1, b'"', false);
                ident_or_literal(b, start, i)
            }
        } else if c == b'`' {
            i = quoted_end(i + 1, b'`', false);
            ident_or_literal(b, start, i)
        } else if c == b'$' {
            if b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                i += 1;
                while i < n && b[i].is_ascii_digit() {
                    i += 1;
                }
                Tok::Placeholder
            } else {
                // A dollar quote: $$ or $tag$ (tag: identifier characters).
                let mut j = i + 1;
                while j < n && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                if j < n && b[j] == b'$' && dialect == Dialect::Postgres {
                    let tag = &sql[i..=j];
                    i = sql[j + 1..].find(tag).map_or(n, |p| j + 1 + p + tag.len());
                    Tok::Literal
                } else {
                    i += 1;
                    Tok::Punct
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
                while i < n && (b[i].is_ascii_hexdigit() || b[i] == b'_') {
                    i += 1;
                }
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
                        while i < n && b[i].is_ascii_digit() {
                            i += 1;
                        }
                    }
                }
            }
            Tok::Literal
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            while i < n
                && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$' || b[i] >= 0x80)
            {
                i += 1;
            }
            // A typed/prefixed string: E'…', B'…', X'…', N'…', U&'…', _utf8'…'.
            let word = &sql[start..i];
            let prefix = (i - start == 1
                && matches!(c.to_ascii_uppercase(), b'E' | b'B' | b'X' | b'N'))
                || (dialect == Dialect::MySql && word.starts_with('_'));
            if prefix && i < n && b[i] == b'\'' {
                let backslash = dialect == Dialect::MySql || word.eq_ignore_ascii_case("e");
                i = quoted_end(i + 1, b'\'', backslash);
                Tok::Literal
            } else {
                Tok::Word
            }
        } else {
            // One character (of whatever UTF-8 length).
            i += sql[i..].chars().next().map_or(1, char::len_utf8);
            Tok::Punct
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
/// `WHERE ssn = '123-45-6789' AND age > 40` → `WHERE ssn = ? AND age > ?`.
pub fn redact(sql: &str, dialect: Dialect) -> String {
    redact_tokens(sql, &tokens(sql, dialect))
}

fn redact_tokens(sql: &str, tokens: &[(Tok, usize, usize)]) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut last_literal = false;
    for &(kind, s, e) in tokens {
        match kind {
            Tok::Literal => {
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
}

/// Redacts (when `redact` is set), classifies and extracts the tables of `sql` at once.
pub fn analyze(sql: &str, dialect: Dialect, redact: bool) -> Analysis {
    let toks = tokens(sql, dialect);
    let sig = significant_tokens(sql, &toks);
    Analysis {
        redacted: redact.then(|| redact_tokens(sql, &toks)),
        kind: classify_significant(&sig),
        tables: tables_significant(&sig),
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
    classify_significant(&significant_tokens(sql, &tokens(sql, dialect)))
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
    tables_significant(&significant_tokens(sql, &tokens(sql, dialect)))
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
                    tokens(&r, d)
                        .iter()
                        .all(|t| !matches!(t.0, Tok::Literal | Tok::Comment)),
                    "{s:?} -> {r:?}"
                );
                let _ = (classify(&s, d), tables(&s, d));
            }
        }
    }
}
