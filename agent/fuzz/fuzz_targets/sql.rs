//! SQL redaction, classification and table extraction never panic, in either dialect; and a
//! string literal appended to text without quotes or comments never survives redaction.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phiguard::db::sql::{classify, redact, tables, Dialect};

/// Characters that open quotes, comments or escapes: text with none of them cannot hide the
/// appended literal inside one of its own constructs.
const OPENERS: &[char] = &['\'', '"', '`', '$', '\\', '#', '-', '/'];

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    for dialect in [Dialect::Postgres, Dialect::MySql] {
        let _ = redact(&text, dialect);
        let _ = classify(&text, dialect);
        let _ = tables(&text, dialect);
        if !text.contains(OPENERS) {
            let with_literal = format!("{text} WHERE x = 'fuzz-secret-7c1e'");
            assert!(
                !redact(&with_literal, dialect).contains("fuzz-secret"),
                "literal kept in {with_literal:?}"
            );
        }
    }
});
