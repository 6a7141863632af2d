//! Kernel side: start-up checks, BTF offsets, the program registry, loading and attaching, and
//! reading the ring buffer.

pub mod bpf_sys;
pub mod btf;
pub mod floor;
pub mod install;
pub mod integrity;
pub mod layer;
pub mod loader;
pub mod mounts;
pub mod pins;
pub mod probe;
pub mod reader;
pub mod registry;
