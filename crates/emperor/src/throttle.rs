//! Respawn throttling: uWSGI's blacklist for vassals that never became
//! loyal, and exponential backoff for loyal vassals that crash in a loop.
//!
//! * Blacklist (docs/architecture.md, "Throttling"): each unexpected death of a non-loyal vassal
//!   widens its refusal window by `--emperor-throttle` up to
//!   `--emperor-max-throttle`: 0, 1 s, 2 s, 3 s, ... 180 s with the
//!   defaults. uWSGI's first window is 1 µs·throttle because of a unit slip
//!   and its windows oscillate between 90 and 180 s once the cap is hit;
//!   imperium starts at 0 and stays at the cap. Loyalty (byte 17) and
//!   SIGURG clear it.
//! * Loyal backoff (uWSGI has none): the first crash respawns at once, each
//!   further crash within [`ThrottleConfig::stable_after`] of its start
//!   doubles the delay from [`ThrottleConfig::loyal_base`] up to
//!   [`ThrottleConfig::loyal_cap`], with ±25% jitter.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::backoff::{exp_delay, jitter};
use crate::name::VassalName;

/// The throttle settings.
#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    /// `--emperor-throttle` (default 1000 ms): the blacklist step.
    pub throttle: Duration,
    /// `--emperor-max-throttle` (default 180000 ms): the blacklist cap.
    pub max_throttle: Duration,
    /// `--emperor-no-blacklist`.
    pub no_blacklist: bool,
    /// First delay of the loyal backoff after the first immediate respawn.
    pub loyal_base: Duration,
    /// Cap of the loyal backoff.
    pub loyal_cap: Duration,
    /// A vassal that ran this long before crashing starts its backoff over.
    pub stable_after: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            throttle: Duration::from_millis(1000),
            max_throttle: Duration::from_millis(180_000),
            no_blacklist: false,
            loyal_base: Duration::from_millis(100),
            loyal_cap: Duration::from_secs(30),
            stable_after: Duration::from_secs(60),
        }
    }
}

/// One blacklisted vassal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlacklistEntry {
    /// When the vassal first died while blacklisted.
    pub first_attempt: Instant,
    /// Its latest death.
    pub last_attempt: Instant,
    /// The current refusal window.
    pub level: Duration,
    /// Deaths after the first.
    pub attempt: u32,
}

impl BlacklistEntry {
    /// When a spawn is allowed again.
    pub fn allowed_at(&self) -> Instant {
        self.last_attempt + self.level
    }
}

/// The blacklist of non-loyal vassals.
#[derive(Debug, Default)]
pub struct Blacklist {
    entries: HashMap<VassalName, BlacklistEntry>,
}

impl Blacklist {
    /// Records a non-loyal death and returns the window before the next
    /// spawn. Logs uWSGI's warnings at the same points.
    pub fn record_death(
        &mut self,
        name: &VassalName,
        now: Instant,
        cfg: &ThrottleConfig,
    ) -> Duration {
        if cfg.no_blacklist {
            return Duration::ZERO;
        }
        match self.entries.get_mut(name) {
            Some(e) => {
                e.last_attempt = now;
                if e.level < cfg.max_throttle {
                    e.level = (e.level + cfg.throttle).min(cfg.max_throttle);
                } else {
                    tracing::warn!(vassal = %name, "[emperor] maximum throttle level for vassal {name} reached !!!");
                }
                e.attempt += 1;
                if e.attempt == 2 {
                    tracing::warn!(vassal = %name, "[emperor] unloyal bad behaving vassal found: {name} throttling it...");
                }
                e.level
            }
            None => {
                self.entries.insert(
                    name.clone(),
                    BlacklistEntry {
                        first_attempt: now,
                        last_attempt: now,
                        level: Duration::ZERO,
                        attempt: 0,
                    },
                );
                Duration::ZERO
            }
        }
    }

    /// When `name` may be spawned again (`None`: not blacklisted).
    pub fn allowed_at(&self, name: &VassalName) -> Option<Instant> {
        self.entries.get(name).map(BlacklistEntry::allowed_at)
    }

    /// Removes one vassal (it became loyal, or an operator cleared it).
    pub fn remove(&mut self, name: &VassalName) -> bool {
        self.entries.remove(name).is_some()
    }

    /// Clears every entry (SIGURG).
    pub fn clear(&mut self) -> usize {
        let n = self.entries.len();
        self.entries.clear();
        n
    }

    /// Puts an entry back as it was (a hot upgrade's new image).
    pub fn restore(&mut self, name: VassalName, entry: BlacklistEntry) {
        self.entries.insert(name, entry);
    }

    /// The entries, for stats.
    pub fn entries(&self) -> impl Iterator<Item = (&VassalName, &BlacklistEntry)> {
        self.entries.iter()
    }
}

/// The delay before respawning a loyal vassal after its `streak`-th
/// consecutive crash (1 = the first crash, respawned at once).
pub fn loyal_delay(streak: u32, cfg: &ThrottleConfig) -> Duration {
    if streak <= 1 {
        Duration::ZERO
    } else {
        jitter(exp_delay(cfg.loyal_base, cfg.loyal_cap, streak - 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::{Extensions, NamePolicy};

    fn name() -> VassalName {
        VassalName::parse("a.ini", &Extensions::default(), NamePolicy::Plain).unwrap()
    }

    #[test]
    fn blacklist_windows_grow_by_throttle_and_stop_at_the_cap() {
        let cfg = ThrottleConfig {
            throttle: Duration::from_secs(1),
            max_throttle: Duration::from_millis(3500),
            ..Default::default()
        };
        let mut b = Blacklist::default();
        let t0 = Instant::now();
        let w: Vec<u64> = (0..7)
            .map(|i| {
                b.record_death(&name(), t0 + Duration::from_secs(i), &cfg)
                    .as_millis() as u64
            })
            .collect();
        assert_eq!(w, vec![0, 1000, 2000, 3000, 3500, 3500, 3500]);
        assert_eq!(
            b.allowed_at(&name()),
            Some(t0 + Duration::from_secs(6) + Duration::from_millis(3500))
        );
    }

    #[test]
    fn default_windows_match_uwsgi_steps() {
        let cfg = ThrottleConfig::default();
        let mut b = Blacklist::default();
        let t0 = Instant::now();
        let mut last = Duration::ZERO;
        for _ in 0..200 {
            last = b.record_death(&name(), t0, &cfg);
        }
        assert_eq!(last, Duration::from_secs(180));
    }

    #[test]
    fn loyalty_and_sigurg_clear() {
        let cfg = ThrottleConfig::default();
        let mut b = Blacklist::default();
        let t0 = Instant::now();
        b.record_death(&name(), t0, &cfg);
        assert!(b.allowed_at(&name()).is_some());
        assert!(b.remove(&name()));
        assert!(b.allowed_at(&name()).is_none());
        b.record_death(&name(), t0, &cfg);
        assert_eq!(b.clear(), 1);
    }

    #[test]
    fn no_blacklist_never_refuses() {
        let cfg = ThrottleConfig {
            no_blacklist: true,
            ..Default::default()
        };
        let mut b = Blacklist::default();
        for _ in 0..10 {
            assert_eq!(
                b.record_death(&name(), Instant::now(), &cfg),
                Duration::ZERO
            );
        }
        assert!(b.allowed_at(&name()).is_none());
    }

    #[test]
    fn loyal_backoff_is_immediate_then_doubles_to_cap() {
        let cfg = ThrottleConfig::default();
        assert_eq!(loyal_delay(1, &cfg), Duration::ZERO);
        let d2 = loyal_delay(2, &cfg);
        assert!(d2 >= Duration::from_millis(75) && d2 <= Duration::from_millis(125));
        let d4 = loyal_delay(4, &cfg);
        assert!(d4 >= Duration::from_millis(300) && d4 <= Duration::from_millis(500));
        let d = loyal_delay(40, &cfg);
        assert!(d <= cfg.loyal_cap.mul_f64(1.25) && d >= cfg.loyal_cap.mul_f64(0.75));
    }
}
