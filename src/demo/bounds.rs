//! The demo's bounds: hard ceilings, defaults, and the configured
//! `--demo-max-requests` / `--demo-max-delay-ms` that may lower them.

use crate::semaphore::ValueError;

/// Most requests one demo may fan out: enough to see the effect of a limit,
/// few enough that `/demo` cannot be used to flood an upstream. The default of
/// `--demo-max-requests`, which may lower it but not raise it.
pub const MAX_REQUESTS: u64 = 100;
/// Highest demo limit (a limit above `requests` is allowed: nobody waits).
pub const MAX_LIMIT: u64 = 100;
/// Slowest the built-in upstream may be asked to be: the default of
/// `--demo-max-delay-ms`, which may lower it but not raise it.
pub const MAX_DELAY_MS: u64 = 5_000;
/// `requests`, `limit` and `delay_ms` when a demo request leaves them out.
pub const DEFAULT_REQUESTS: u64 = 5;
pub const DEFAULT_LIMIT: u64 = 1;
pub const DEFAULT_DELAY_MS: u64 = 100;

/// The demo's configured bounds (`--demo-max-requests`,
/// `--demo-max-delay-ms`): enforced by [`DemoRequest::new`] and the built-in
/// upstream, and stated in the served OpenAPI document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoBounds {
    /// Most requests one demo may fan out, 1 … [`MAX_REQUESTS`].
    pub max_requests: u64,
    /// Slowest the built-in upstream may be asked to be, 0 … [`MAX_DELAY_MS`].
    pub max_delay_ms: u64,
    /// Whether `url` may name any host at all (`--demo-allowed-hosts` lists
    /// one); when not, only the built-in upstream can be called.
    pub urls_allowed: bool,
}

impl Default for DemoBounds {
    fn default() -> Self {
        Self {
            max_requests: MAX_REQUESTS,
            max_delay_ms: MAX_DELAY_MS,
            urls_allowed: false,
        }
    }
}

impl DemoBounds {
    /// # Errors
    /// When a bound is above its hard ceiling, or `max_requests` is 0.
    pub fn new(max_requests: u64, max_delay_ms: u64) -> Result<Self, ValueError> {
        if !(1..=MAX_REQUESTS).contains(&max_requests) {
            return Err(ValueError(format!(
                "--demo-max-requests must be between 1 and {MAX_REQUESTS}"
            )));
        }
        if max_delay_ms > MAX_DELAY_MS {
            return Err(ValueError(format!(
                "--demo-max-delay-ms must be between 0 and {MAX_DELAY_MS}"
            )));
        }
        Ok(Self {
            max_requests,
            max_delay_ms,
            urls_allowed: false,
        })
    }

    /// `requests` when a request leaves it out: [`DEFAULT_REQUESTS`], or the
    /// configured maximum when that is lower.
    pub fn default_requests(&self) -> u64 {
        DEFAULT_REQUESTS.min(self.max_requests)
    }

    /// `delay_ms` when a request leaves it out: [`DEFAULT_DELAY_MS`], or the
    /// configured maximum when that is lower.
    pub fn default_delay_ms(&self) -> u64 {
        DEFAULT_DELAY_MS.min(self.max_delay_ms)
    }

    /// A `delay_ms` for the built-in upstream, checked against these bounds.
    ///
    /// # Errors
    /// When it is above `max_delay_ms`.
    pub fn delay_ms(&self, delay_ms: u64) -> Result<u64, ValueError> {
        if delay_ms > self.max_delay_ms {
            return Err(ValueError(format!(
                "delay_ms must be between 0 and {}",
                self.max_delay_ms
            )));
        }
        Ok(delay_ms)
    }
}
/// Longest a demo with the built-in upstream may be planned to take
/// (`ceil(requests / limit) × delay_ms`); beyond it the request is refused
/// rather than holding a connection open for minutes.
pub const MAX_IDEAL_MS: u64 = 30_000;
