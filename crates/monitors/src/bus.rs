//! Helpers shared by the push monitors (amqp://, zmq://): change keys from a
//! per-monitor clock, config file paths from messages, and short previews of
//! message bodies for log lines.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use emperor::{Change, ChangeKey, ConfigSource};

/// Hands out [`ChangeKey::Stamp`]s that only ever grow.
///
/// Each stamp is the wall clock in nanoseconds, or one more than the last
/// stamp when the clock has not moved on (or went backwards). So two messages
/// for the same vassal within one second both reload it (uWSGI compares whole
/// seconds and drops the second one), and the stamp still reads as a time in
/// stats (`last_mod`).
#[derive(Debug, Default)]
pub(crate) struct StampClock {
    last: i128,
}

impl StampClock {
    /// The next stamp: strictly larger than every stamp handed out before.
    pub(crate) fn next(&mut self) -> ChangeKey {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        self.last = now.max(self.last + 1);
        ChangeKey::Stamp(self.last)
    }
}

/// The config file a message names: an absolute path as given, a relative
/// one resolved against the emperor's working directory.
pub(crate) fn resolve_config_path(path: &str, cwd: &Path) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    }
}

/// At most 64 characters of a message part, for log lines (control
/// characters escaped, so a hostile body cannot forge log lines).
pub(crate) fn preview(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text.chars().take(64).flat_map(char::escape_debug).collect();
    if text.chars().count() > 64 {
        out.push('…');
    }
    out
}

/// One line for the log saying what a change does.
pub(crate) fn describe_change(change: &Change) -> String {
    match change {
        Change::Upsert(spec) => match &spec.config {
            ConfigSource::File(p) => {
                format!("spawn/reload {} (config file {})", spec.name, p.display())
            }
            ConfigSource::Url(u) => format!("spawn/reload {} (config fetched from {u})", spec.name),
            ConfigSource::Inline(t) => {
                format!(
                    "spawn/reload {} ({} bytes of config over the config pipe)",
                    spec.name,
                    t.len()
                )
            }
        },
        Change::Remove(name) => format!("stop {name}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_grow_even_within_one_clock_tick() {
        let mut c = StampClock::default();
        let mut last = match c.next() {
            ChangeKey::Stamp(s) => s,
            k => panic!("not a stamp: {k:?}"),
        };
        for _ in 0..10_000 {
            let ChangeKey::Stamp(s) = c.next() else {
                panic!("not a stamp")
            };
            assert!(s > last, "{s} <= {last}");
            last = s;
        }
        // a stamp is a time: within a minute of now
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((ChangeKey::Stamp(last).as_secs() - now).abs() < 60);
    }

    #[test]
    fn stamps_survive_a_clock_that_goes_backwards() {
        let mut c = StampClock {
            last: i128::from(i64::MAX),
        };
        assert_eq!(c.next(), ChangeKey::Stamp(i128::from(i64::MAX) + 1));
    }

    #[test]
    fn relative_paths_resolve_against_cwd() {
        let cwd = Path::new("/srv/emperor");
        assert_eq!(
            resolve_config_path("a.ini", cwd),
            PathBuf::from("/srv/emperor/a.ini")
        );
        assert_eq!(
            resolve_config_path("sub/a.ini", cwd),
            PathBuf::from("/srv/emperor/sub/a.ini")
        );
        assert_eq!(
            resolve_config_path("/etc/a.ini", cwd),
            PathBuf::from("/etc/a.ini")
        );
    }

    #[test]
    fn previews_are_short_and_escaped() {
        assert_eq!(preview(b"a\nb"), "a\\nb");
        let long = preview(&[b'x'; 100]);
        assert_eq!(long.chars().count(), 65);
        assert!(long.ends_with('…'));
        assert_eq!(preview(&[0xff, b'a']), "\u{fffd}a");
    }
}
