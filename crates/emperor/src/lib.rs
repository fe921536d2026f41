//! The imperium emperor: everything between "a monitor says what should
//! run" and "these processes run".
//!
//! * [`name`], [`spec`]: what monitors produce.
//! * [`monitor`]: the trait and context every monitor uses.
//! * [`protocol`]: the single-byte protocol and the config pipe format.
//! * [`backoff`]: capped exponential backoff with jitter.

pub mod backoff;
pub mod monitor;
pub mod name;
pub mod protocol;
pub mod spec;
pub mod stats;

pub use monitor::{
    Monitor, MonitorContext, MonitorError, MonitorId, MonitorOptions, OnDemandSource, Secret,
};
pub use name::{Extensions, NameError, NamePolicy, VassalName};
pub use spec::{Change, ChangeKey, ConfigSource, MonitorHealth, Owner, VassalSpec};
pub mod argv;
pub mod command;
pub mod control;
pub mod events;
pub mod lifecycle;
pub mod metrics;
pub mod ondemand;
pub mod reconciler;
pub mod runtime;
mod serve;
pub mod spawn;
pub mod throttle;
