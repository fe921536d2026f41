//! The imperium emperor: everything between "a monitor says what should
//! run" and "these processes run". Data flows one way, and the modules
//! are grouped the same way (docs/architecture.md has the code map):
//!
//! * **The monitor-facing contract**: [`name`], [`spec`] (what monitors
//!   produce) and [`monitor`] (the trait and the context every monitor
//!   uses). The monitors crate depends on this part only.
//! * **The pure core**, no I/O: [`reconciler`] (the vassal table and every
//!   lifecycle decision), [`throttle`] (blacklist and loyal backoff),
//!   [`events`] (each notable thing logged and counted in one call),
//!   [`protocol`] (the single-byte protocol and the config pipe),
//!   [`argv`] (uWSGI's vassal argv and environment), [`backoff`].
//! * **Process I/O**: [`runtime`] (the loop around the reconciler),
//!   [`logs`] (per-vassal output capture), [`cgroup`] (a cgroup per vassal), [`ondemand`] (on-demand sockets) and [`spawn`], the only module with
//!   `unsafe` code (process creation, fd helpers, the emperor's own
//!   process).
//! * **Observers**, which see the table only through a snapshot and change
//!   it only through a [`command::Command`]: [`stats`], [`metrics`],
//!   [`control`] (the control and command sockets), [`lifecycle`]
//!   (systemd notify), over the shared [`listener`].

#![warn(missing_docs)]

// the monitor-facing contract
pub mod monitor;
pub mod name;
pub mod spec;

// the pure core
pub mod argv;
pub mod backoff;
pub mod cluster;
pub mod events;
pub mod health;
pub mod own;
pub mod protocol;
pub mod reconciler;
pub mod throttle;

// process I/O
pub mod cgroup;
pub mod logs;
pub mod ondemand;
pub mod runtime;
pub mod sandbox;
#[allow(unsafe_code)]
pub mod spawn;
pub mod upgrade;

// observers
pub mod command;
pub mod control;
pub mod lifecycle;
pub mod listener;
pub mod metrics;
pub mod stats;

pub use monitor::{
    Monitor, MonitorContext, MonitorError, MonitorId, MonitorOptions, OnDemandSource, Secret,
};
pub use name::{Extensions, NameError, NamePolicy, VassalName};
pub use spawn::fd;
pub use spec::{Change, ChangeKey, ConfigSource, MonitorHealth, Owner, VassalSpec};
