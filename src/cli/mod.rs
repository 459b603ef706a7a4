//! Commands for people at a terminal.

pub mod commands;
pub mod demo;
pub mod table;
