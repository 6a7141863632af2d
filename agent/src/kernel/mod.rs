//! Kernel side: start-up checks (`startup`: `probe`, `mounts`, `btf` offsets), the program
//! registry, loading and attaching (`loader`, with `install`, `pins` and `integrity`; its
//! errors in `error`), and reading the ring buffer (`reader`).

pub mod bpf_sys;
pub mod btf;
pub mod error;
pub mod floor;
pub mod handover;
pub mod identity;
pub mod install;
pub mod integrity;
pub mod layer;
pub mod loader;
pub mod mounts;
pub mod pins;
pub mod probe;
pub mod reader;
pub mod registry;
pub mod startup;
