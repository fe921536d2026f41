//! A vassal's own settings: the `[imperium]` section of its ini config.
//!
//! uWSGI reads only the section it is asked for (`[uwsgi]`, or the one
//! named by `--ini file:section`), so the section is invisible to the
//! vassal (checked with uWSGI 2.0.21). Keys: the limits `memory-max`,
//! `memory-high`, `cpu-max`, `pids-max` ([`crate::cgroup::limits::Limits::set`]) and the
//! health check `health`, `health-interval`, `health-timeout`,
//! `health-failures`, `health-grace` ([`HealthSettings::set`]) and, for
//! `--emperor-cluster`, `replicas` (a count or `all`). An unknown
//! key or a bad value is an error: the vassal is not started, and the log
//! says which line is wrong.

use crate::cgroup::limits::Limits;
use crate::health::HealthSettings;

/// What a vassal's `[imperium]` section sets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OwnSettings {
    /// Its limits (applied with cgroups only).
    pub limits: Limits,
    /// Its health check.
    pub health: HealthSettings,
    /// How many cluster members run it (`--emperor-cluster`; `None`: the
    /// emperor's `--emperor-replicas`).
    pub replicas: Option<crate::cluster::Replicas>,
}

/// Every key an `[imperium]` section may hold.
pub const KEYS: &str = "memory-max, memory-high, cpu-max, pids-max, health, health-interval, health-timeout, health-failures, health-grace, replicas";

impl OwnSettings {
    /// Reads the `[imperium]` section of an ini text (none: the defaults).
    pub fn from_ini(text: &str) -> Result<OwnSettings, String> {
        let mut own = OwnSettings::default();
        let mut inside = false;
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            if let Some(sec) = line.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                inside = sec.trim() == "imperium";
                continue;
            }
            if !inside {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(format!(
                    "[imperium] line {}: {line:?} is not key = value",
                    n + 1
                ));
            };
            let (k, v) = (k.trim(), v.trim());
            let bad = |e: String| format!("[imperium] {k} = {v}: {e}");
            if k == "replicas" {
                own.replicas = Some(crate::cluster::Replicas::parse(v).map_err(bad)?);
                continue;
            }
            if !own.limits.set(k, v).map_err(bad)? && !own.health.set(k, v).map_err(bad)? {
                return Err(format!(
                    "[imperium] line {}: unknown key {k:?} ({KEYS})",
                    n + 1
                ));
            }
        }
        Ok(own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_imperium_section_is_read_and_checked() {
        let own = OwnSettings::from_ini(
            "[uwsgi]\nmemory-max = 1\n[imperium]\n; a comment\nmemory-max = 64M\nmemory-high = 48M\ncpu-max = 0.5\npids-max = 20\nhealth = tcp://127.0.0.1:9\nhealth-grace = 2s\n[zerg]\npids-max = x\n",
        )
        .unwrap();
        assert_eq!(
            own.limits,
            Limits {
                memory_max: Some(64 << 20),
                memory_high: Some(48 << 20),
                cpu_max: Some(0.5),
                pids_max: Some(20)
            }
        );
        assert_eq!(own.health.check.as_deref(), Some("tcp://127.0.0.1:9"));
        assert_eq!(own.health.grace, Some(Duration::from_secs(2)));
        let own = OwnSettings::from_ini("[imperium]\nreplicas = all\n").unwrap();
        assert_eq!(own.replicas, Some(crate::cluster::Replicas::All));
        let own = OwnSettings::from_ini("[imperium]\nreplicas = 2\n").unwrap();
        assert_eq!(own.replicas, Some(crate::cluster::Replicas::Count(2)));
        assert_eq!(
            OwnSettings::from_ini("[uwsgi]\nmaster = 1\n").unwrap(),
            OwnSettings::default()
        );
        let e = OwnSettings::from_ini("[imperium]\nmemory-maxx = 1\n").unwrap_err();
        assert!(e.contains("line 2: unknown key \"memory-maxx\""), "{e}");
        for bad in [
            "cpu-max = 0",
            "pids-max = -1",
            "junk",
            "health = ftp://x",
            "health-failures = 0",
            "health-interval = soon",
            "replicas = 0",
            "replicas = some",
        ] {
            let e = OwnSettings::from_ini(&format!("[imperium]\n{bad}\n"));
            assert!(e.is_err(), "{bad:?}");
        }
    }
}
