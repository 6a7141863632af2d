//! Framed capture records (the kernel's PostgreSQL and MySQL framing walks): any record data
//! parses into spans or is refused, and the spans, fed to the PostgreSQL and MySQL decoders
//! from the start of a session and joined mid-stream, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phiguard::db::{frame::parse_spans, mysql, postgres, Direction};

fuzz_target!(|input: &[u8]| {
    let Some((&head, data)) = input.split_first() else {
        return;
    };
    let direction = if head & 1 == 0 {
        Direction::ToServer
    } else {
        Direction::ToClient
    };
    let Ok(spans) = parse_spans(data, u32::from((head >> 1) & 0x3f)) else {
        return;
    };
    let mut fresh = postgres::Decoder::new();
    let mut joined = postgres::Decoder::mid_session();
    let mut my_fresh = mysql::Decoder::new();
    let mut my_joined = mysql::Decoder::mid_session();
    for span in &spans {
        let chunk = span.chunk(direction, data);
        let _ = fresh.feed(chunk);
        let _ = joined.feed(chunk);
        let _ = my_fresh.feed(chunk);
        let _ = my_joined.feed(chunk);
        if span.boundary && head & 0x80 != 0 {
            // As after records lost in the kernel.
            fresh.resync(direction);
            my_fresh.resync(direction);
        }
    }
});
