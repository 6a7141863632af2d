//! Ring-buffer records decoded into owned, checked values.

pub mod decode;
