//! (work in progress)

pub mod relay;
