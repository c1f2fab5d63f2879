//! Validated newtypes: each constructor enforces one bound of the contract and
//! its error says which, in words a client can act on.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a raw value was refused. The message is shown to the client as the
/// problem `detail`, so it names the field and the allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(pub String);

fn err(msg: impl Into<String>) -> ValueError {
    ValueError(msg.into())
}

/// A semaphore name: 1–128 characters of `A–Z a–z 0–9 . _ - :`.
///
/// The alphabet keeps names safe inside a Redis hash tag (no `{` or `}`) and
/// inside a URL path segment without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SemaphoreName(String);

impl SemaphoreName {
    pub const MAX_LEN: usize = 128;

    /// # Errors
    /// When the name is empty, too long, or has a character outside the alphabet.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err(err(format!(
                "semaphore name must be 1 to {} characters long",
                Self::MAX_LEN
            )));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
        {
            return Err(err(
                "semaphore name may contain only A-Z a-z 0-9 . _ - :".to_string()
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SemaphoreName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The most units a semaphore lets be held at once: 1 … 1,000,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(u32);

impl Limit {
    pub const MAX: u32 = 1_000_000;

    /// # Errors
    /// When the value is outside 1 … 1,000,000.
    pub fn new(value: u64) -> Result<Self, ValueError> {
        if (1..=u64::from(Self::MAX)).contains(&value) {
            Ok(Self(value as u32))
        } else {
            Err(err(format!("limit must be between 1 and {}", Self::MAX)))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// Units one permit takes, all or nothing: 1 … 1,000,000 here; "at most the
/// semaphore's limit" is checked by the store, which knows the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count(u32);

impl Count {
    pub const ONE: Count = Count(1);

    /// # Errors
    /// When the value is outside 1 … 1,000,000.
    pub fn new(value: u64) -> Result<Self, ValueError> {
        if (1..=u64::from(Limit::MAX)).contains(&value) {
            Ok(Self(value as u32))
        } else {
            Err(err(format!(
                "count must be between 1 and the semaphore's limit (at most {})",
                Limit::MAX
            )))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// A lease length: at least 100 ms (or a configured higher minimum), at most
/// the configured maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(u64);

impl Ttl {
    pub const MIN_MS: u64 = 100;

    /// # Errors
    /// When the value is below 100 ms or above `max_ms`.
    pub fn new(ms: u64, max_ms: u64) -> Result<Self, ValueError> {
        Self::within(ms, Self::MIN_MS, max_ms)
    }

    /// A lease within a configured range; the floor of 100 ms always holds.
    ///
    /// # Errors
    /// When the value is below `min_ms` (or 100 ms) or above `max_ms`.
    pub fn within(ms: u64, min_ms: u64, max_ms: u64) -> Result<Self, ValueError> {
        let min_ms = min_ms.max(Self::MIN_MS);
        if (min_ms..=max_ms).contains(&ms) {
            Ok(Self(ms))
        } else {
            Err(err(format!("ttl_ms must be between {min_ms} and {max_ms}")))
        }
    }

    pub fn as_millis(self) -> u64 {
        self.0
    }
}

/// How long an acquire may wait for capacity: 0 (try once) … the configured
/// maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WaitTime(u64);

impl WaitTime {
    pub const NONE: WaitTime = WaitTime(0);

    /// # Errors
    /// When the value is above `max_ms`.
    pub fn new(ms: u64, max_ms: u64) -> Result<Self, ValueError> {
        if ms <= max_ms {
            Ok(Self(ms))
        } else {
            Err(err(format!("wait_ms must be between 0 and {max_ms}")))
        }
    }

    pub fn as_millis(self) -> u64 {
        self.0
    }

    pub fn as_duration(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

/// A free-text label for a holder: up to 128 characters, no control
/// characters (it is shown in status and written to logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder(String);

impl Holder {
    pub const MAX_CHARS: usize = 128;

    /// # Errors
    /// When the label is too long or has control characters.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        if raw.chars().count() > Self::MAX_CHARS {
            return Err(err(format!(
                "holder must be at most {} characters",
                Self::MAX_CHARS
            )));
        }
        if raw.chars().any(char::is_control) {
            return Err(err("holder must not contain control characters"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An `Idempotency-Key` header value: 1–255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    /// # Errors
    /// When the key is empty, too long, or not visible ASCII.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN || !raw.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(err(format!(
                "Idempotency-Key must be 1 to {} visible ASCII characters",
                Self::MAX_LEN
            )));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as seen by one caller (`scope`, e.g. which API token sent it),
    /// so two callers that pick the same key neither share nor learn each
    /// other's permits. `/` cannot start a scope's own text, so scoped keys of
    /// different callers never collide.
    #[must_use]
    pub fn scoped(&self, scope: &str) -> Self {
        Self(format!("{scope}/{}", self.0))
    }
}

/// A permit's id: a random UUID v4 (122 random bits). Holding it is the
/// capability to refresh or release the permit, so it is never listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PermitId(uuid::Uuid);

impl PermitId {
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    /// # Errors
    /// When the text is not a UUID.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        uuid::Uuid::try_parse(raw)
            .map(Self)
            .map_err(|_| err("permit id must be a UUID"))
    }
}

impl fmt::Display for PermitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.as_hyphenated().fmt(f)
    }
}

/// A point in time as milliseconds since the Unix epoch, on the store's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

impl Millis {
    /// This process's wall clock; only the memory store uses it (the Redis
    /// store reads Redis `TIME` inside its scripts).
    pub fn now() -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self(since.as_millis() as u64)
    }

    /// RFC 3339 with milliseconds, UTC, e.g. `2026-11-28T07:30:00.123Z`.
    pub fn to_rfc3339(self) -> String {
        let time = UNIX_EPOCH + Duration::from_millis(self.0);
        humantime::format_rfc3339_millis(time).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_accept_the_documented_alphabet_only() {
        assert!(SemaphoreName::parse("payments-api.v2:eu_west").is_ok());
        assert!(SemaphoreName::parse(&"a".repeat(128)).is_ok());
        for bad in ["", "has space", "brace{", "slash/", "ü", &"a".repeat(129)] {
            assert!(SemaphoreName::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn limit_and_count_are_bounded_to_a_million() {
        assert!(Limit::new(0).is_err());
        assert_eq!(Limit::new(1).unwrap().get(), 1);
        assert_eq!(Limit::new(1_000_000).unwrap().get(), 1_000_000);
        assert!(Limit::new(1_000_001).is_err());
        assert!(Count::new(0).is_err());
        assert!(Count::new(1_000_001).is_err());
    }

    #[test]
    fn ttl_is_bounded_by_minimum_and_configured_maximum() {
        assert!(Ttl::new(99, 1000).is_err());
        assert!(Ttl::new(100, 1000).is_ok());
        assert!(Ttl::new(1000, 1000).is_ok());
        assert!(Ttl::new(1001, 1000).is_err());
        assert!(Ttl::within(499, 500, 1000).is_err());
        assert!(Ttl::within(500, 500, 1000).is_ok());
        assert!(Ttl::within(99, 10, 1000).is_err(), "100 ms is the floor");
        assert!(WaitTime::new(0, 10).is_ok());
        assert!(WaitTime::new(11, 10).is_err());
    }

    #[test]
    fn holder_counts_characters_not_bytes_and_refuses_control_characters() {
        assert!(Holder::parse(&"é".repeat(128)).is_ok());
        assert!(Holder::parse(&"é".repeat(129)).is_err());
        assert!(Holder::parse("line\nbreak").is_err());
        assert!(Holder::parse("").is_ok());
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        assert!(IdempotencyKey::parse("order-42/attempt").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
    }

    #[test]
    fn permit_ids_round_trip_and_are_distinct() {
        let a = PermitId::random();
        assert_eq!(PermitId::parse(&a.to_string()).unwrap(), a);
        assert_ne!(a, PermitId::random());
        assert!(PermitId::parse("not-a-uuid").is_err());
    }

    #[test]
    fn millis_render_as_rfc3339_utc() {
        assert_eq!(Millis(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(Millis(1_500).to_rfc3339(), "1970-01-01T00:00:01.500Z");
    }
}
