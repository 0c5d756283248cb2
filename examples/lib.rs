//! The seeds' programs written with switchboard, as functions: the binaries in this
//! package run them, and the seed tests (`tests/seed_*.rs`) drive them.

pub mod chat;
