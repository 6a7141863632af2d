//! Helpers shared by the privileged test suites.
