//! Enrichment of decoded events.

pub mod hash;
pub mod users;
