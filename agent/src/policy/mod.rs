//! Allow-list policies: the YAML language security staff write in `policies/`, validated into
//! a typed model with every error located (file:line:column and field).

pub mod model;
pub mod parse;
