//! The MySQL decoder, from the start of a session and joined mid-stream, never panics.
#![no_main]

mod chunks;

use libfuzzer_sys::fuzz_target;
use phiguard::db::mysql::Decoder;

fuzz_target!(|input: &[u8]| {
    let mut fresh = Decoder::new();
    let mut joined = Decoder::mid_session();
    chunks::for_each_chunk(input, |chunk| {
        let _ = fresh.feed(chunk);
        let _ = joined.feed(chunk);
    });
});
