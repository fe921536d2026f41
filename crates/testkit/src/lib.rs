//! Test support for imperium: fixtures that start real servers privately on
//! loopback, a handle on a running `imperium` process, and the test vassal.
//!
//! Fixtures never skip: when a program is missing they panic with the
//! command that installs it (see [`servers::require_program`]).

pub mod servers;
