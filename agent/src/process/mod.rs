//! Processes: /proc reading and the process table.

pub mod procfs;
pub mod table;
