//! Ring-buffer records decoded into owned, checked values: [`decode`] checks each record's
//! kind and length; [`net`] unpacks socket addresses and endpoints.

pub mod decode;
pub mod net;
