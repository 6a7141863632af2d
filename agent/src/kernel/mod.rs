//! Kernel side: BTF offsets, loading, attaching, reading.

pub mod btf;
