//! One module per verb.

pub mod check;
pub mod cluster;
pub mod image;
pub mod init;
pub mod plan;
pub mod test;
