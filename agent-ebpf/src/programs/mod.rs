//! The programs, one module per hook family.

pub mod db;
pub mod db_frame;
pub mod db_mysql;
pub mod enforce;
pub mod file;
pub mod handover;
pub mod integrity;
pub mod label;
pub mod net;
pub mod process;
pub mod taint;
