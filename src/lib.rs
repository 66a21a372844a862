//! Portico: an nginx-compatible front server. This crate is the compiler (`config`), callable
//! from the binary, the tests and the fuzzer.

pub mod cli;
pub mod commands;
pub mod config;
pub mod inspect;
pub mod lint;
pub mod logging;
pub mod plan;
pub mod server;
