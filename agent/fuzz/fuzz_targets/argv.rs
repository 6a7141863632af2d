//! The argv redactor never panics on any argv (arguments split at NUL bytes), for a database
//! client, a shell and any other program; and a password given as the first option of a
//! client, or in a URI, never survives whatever follows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phiguard::db::argv::redact;

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    let rest: Vec<String> = text.split('\0').map(str::to_owned).collect();
    for exe in ["/usr/bin/psql", "/usr/bin/mariadb", "/bin/sh", "/usr/bin/env"] {
        let _ = redact(exe, &rest);
    }
    for first in [
        "--password=fuzzsecret9",
        "-pfuzzsecret9",
        "postgresql://u:fuzzsecret9@h/db",
    ] {
        let mut argv = vec!["mariadb".to_owned(), first.to_owned()];
        argv.extend(rest.iter().cloned());
        let out = redact("/usr/bin/mariadb", &argv).unwrap_or(argv);
        assert!(
            !out[1].contains("fuzzsecret9"),
            "password kept: {out:?}"
        );
    }
});
