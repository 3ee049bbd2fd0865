pub mod config;
pub mod digest;
pub mod error;
pub mod manifest;
pub mod reference;
pub mod registry;
