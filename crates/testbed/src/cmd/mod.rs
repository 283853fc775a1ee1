//! One module per verb.

pub mod check;
pub mod cluster;
pub mod doctor;
pub mod fault;
pub mod image;
pub mod init;
pub mod plan;
pub mod test;
