//! Event sinks.
