//! `phiguard-collector` (skeleton).
fn main() {}
