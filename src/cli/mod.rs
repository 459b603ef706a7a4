//! Commands for people at a terminal.

pub mod demo;
pub mod table;
