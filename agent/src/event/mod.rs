//! Decoding ring-buffer records.
