//! Test support for imperium: fixtures that start real servers privately on
//! loopback, a handle on a running `imperium` process, real uWSGI vassals,
//! and the test vassal program (`imperium-test-vassal`, see its source for
//! the behaviour keys).
//!
//! Fixtures never skip: when a program is missing they panic with the
//! command that installs it (see [`servers::require_program`]).

pub mod amqp_publish;
pub mod imperium;
pub mod procs;
pub mod servers;
pub mod users;
pub mod uwsgi;
pub mod vm;
pub mod zmq_push;

pub use imperium::{
    ctl, ctl_ok, imperium_bin, record_lines, record_starts, test_vassal_bin, uwsgi_emperor_args,
    Imperium, VassalDir,
};
