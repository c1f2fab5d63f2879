//! This instance's estimate of the Redis clock, from the `TIME` every acquire
//! script replies with, so an attempt can carry its deadline on that clock.
//!
//! The deadline is when the caller stops waiting for the reply (now plus the
//! call timeout). A script that reaches Redis later than that (a stalled or
//! partitioned link delivered it late) grants nothing: nobody would hold the
//! permit. A reading arrives late by its reply's travel time, which makes the
//! Redis clock look behind; so the estimate keeps the most-ahead reading, the
//! least delayed one, and only follows a reading further behind than
//! [`CLOCK_STEP`] (the Redis clock itself moved, e.g. a failover to another
//! node). A deadline is therefore never earlier than the caller's.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Redis clock minus this machine's clock, in microseconds.
#[derive(Debug)]
pub(super) struct StoreClock {
    offset_us: AtomicI64,
}

/// Not seen yet: attempts then carry no deadline.
const UNKNOWN: i64 = i64::MIN;

/// A reading this far behind the estimate is a change of the Redis clock,
/// not a slow reply (replies slower than the call timeout are not read).
const CLOCK_STEP: i64 = 5_000_000;

impl Default for StoreClock {
    fn default() -> Self {
        Self {
            offset_us: AtomicI64::new(UNKNOWN),
        }
    }
}

fn local_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl StoreClock {
    /// Records a reading of the Redis clock (µs) just received.
    pub(super) fn observe(&self, store_us: u64) {
        let offset = (store_us as i64).saturating_sub(local_us());
        let _ = self
            .offset_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |known| {
                let keep = known != UNKNOWN && offset <= known && known - offset < CLOCK_STEP;
                (!keep).then_some(offset)
            });
    }

    /// `within` from now, on the Redis clock, in ms; empty when the clock was
    /// never seen (the first attempt of an instance).
    pub(super) fn deadline_ms(&self, within: Duration) -> String {
        let offset = self.offset_us.load(Ordering::Relaxed);
        if offset == UNKNOWN {
            return String::new();
        }
        let deadline_us = local_us() + offset + within.as_micros() as i64;
        (deadline_us / 1000).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_deadline_until_the_clock_is_seen_then_one_on_its_time() {
        let clock = StoreClock::default();
        assert_eq!(clock.deadline_ms(Duration::from_secs(2)), "");
        // A store clock exactly one hour ahead of ours.
        clock.observe((local_us() + 3_600_000_000) as u64);
        let deadline: i64 = clock.deadline_ms(Duration::from_secs(2)).parse().unwrap();
        let expected = (local_us() + 3_600_000_000 + 2_000_000) / 1000;
        assert!((deadline - expected).abs() < 50, "{deadline} vs {expected}");
    }

    #[test]
    fn a_late_reading_does_not_pull_the_deadline_in_but_a_clock_step_does() {
        let clock = StoreClock::default();
        clock.observe(local_us() as u64);
        let on_time = clock.deadline_ms(Duration::ZERO).parse::<i64>().unwrap();
        // A reply that took 1.5 s to arrive: the Redis clock looks behind.
        clock.observe((local_us() - 1_500_000) as u64);
        let after_late = clock.deadline_ms(Duration::ZERO).parse::<i64>().unwrap();
        assert!(after_late >= on_time, "{after_late} < {on_time}");
        // The Redis clock itself moved back a minute (another node).
        clock.observe((local_us() - 60_000_000) as u64);
        let after_step = clock.deadline_ms(Duration::ZERO).parse::<i64>().unwrap();
        assert!(on_time - after_step > 55_000, "{after_step} vs {on_time}");
    }
}
