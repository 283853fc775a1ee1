//! One module per verb.

pub mod check;
pub mod init;
pub mod plan;
