//! Ring-buffer records decoded into owned, checked values: [`decode`] checks each record's
//! kind and length; [`header`] decodes the header every record carries; [`process`], [`file`]
//! and [`net`] turn process, file and socket records into text, file identities, addresses
//! and endpoints.

pub mod decode;
pub mod file;
pub mod header;
pub mod net;
pub mod process;
