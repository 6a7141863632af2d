//! SQL redaction, classification, table extraction and identity changes (`SET ROLE`, …)
//! never panic, in either dialect and under
//! every combination of the session settings that change lexing (known on, known off,
//! doubted); and a string literal appended to text without quotes or comments never survives
//! redaction under any of them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phiguard::db::sql::{
    analyze_with, classify, identity_changes, redact, redact_with, tables, Dialect, Settings,
};

/// Characters that open quotes, comments or escapes: text with none of them cannot hide the
/// appended literal inside one of its own constructs.
const OPENERS: &[char] = &['\'', '"', '`', '$', '\\', '#', '-', '/'];

/// The settings the first byte picks: dialect, backslash escapes and ANSI_QUOTES, each
/// unknown, off or on.
fn settings(b: u8) -> Settings {
    let tri = |v: u8| match v % 3 {
        0 => None,
        1 => Some(false),
        _ => Some(true),
    };
    Settings {
        dialect: if b & 1 == 0 {
            Dialect::Postgres
        } else {
            Dialect::MySql
        },
        backslash_escapes: tri(b >> 1),
        ansi_quotes: tri(b >> 3),
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, rest)) = input.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let s = settings(first);
    let _ = redact_with(&text, &s);
    let a = analyze_with(&text, &s, true);
    let _ = identity_changes(&text, &s);
    if a.touches_settings {
        let mut learned = s;
        learned.statement_succeeded(&text);
    }
    for dialect in [Dialect::Postgres, Dialect::MySql] {
        let _ = redact(&text, dialect);
        let _ = classify(&text, dialect);
        let _ = tables(&text, dialect);
    }
    if !text.contains(OPENERS) {
        let with_literal = format!("{text} WHERE x = 'fuzz-secret-7c1e' AND y = 0x5ec7");
        for out in [
            redact_with(&with_literal, &s),
            redact(&with_literal, s.dialect),
        ] {
            assert!(
                !out.contains("fuzz-secret") && !out.contains("5ec7"),
                "literal kept in {with_literal:?} under {s:?}: {out:?}"
            );
        }
    }
});
