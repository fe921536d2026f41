//! Capped exponential backoff with jitter, for monitors that reconnect.

use std::time::Duration;

use rand::Rng;

/// Delays that double from `base` up to `cap`, each with ±25% jitter.
///
/// ```
/// use std::time::Duration;
/// let mut b = emperor::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
/// let first = b.next_delay();
/// assert!(first <= Duration::from_millis(125));
/// b.reset();
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base`, doubling up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next delay to wait before retrying.
    pub fn next_delay(&mut self) -> Duration {
        let d = exp_delay(self.base, self.cap, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        jitter(d)
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// `base * 2^attempt`, capped.
pub fn exp_delay(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(cap).min(cap)
}

/// `d` scaled by a random factor in [0.75, 1.25].
pub fn jitter(d: Duration) -> Duration {
    if d.is_zero() {
        return d;
    }
    let f: f64 = rand::rng().random_range(0.75..=1.25);
    d.mul_f64(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_and_caps() {
        let b = Duration::from_millis(100);
        let c = Duration::from_secs(1);
        assert_eq!(exp_delay(b, c, 0), Duration::from_millis(100));
        assert_eq!(exp_delay(b, c, 1), Duration::from_millis(200));
        assert_eq!(exp_delay(b, c, 3), Duration::from_millis(800));
        assert_eq!(exp_delay(b, c, 4), c);
        assert_eq!(exp_delay(b, c, 200), c);
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        for _ in 0..1000 {
            let j = jitter(Duration::from_millis(1000));
            assert!(j >= Duration::from_millis(750) && j <= Duration::from_millis(1250));
        }
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for _ in 0..5 {
            b.next_delay();
        }
        assert_eq!(b.attempts(), 5);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
    }
}
