//! Integration tests: the official `mongodb` driver against the double.

mod change_streams;
mod common;
mod crud;
mod faults;
mod protocol;
