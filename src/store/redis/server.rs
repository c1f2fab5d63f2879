//! What permitd needs of the Redis it is given, read from `INFO`: a version
//! that runs its scripts, and an eviction policy that never drops its keys.

use crate::store::StoreError;

/// The oldest Redis the scripts run on: they read `TIME` before writing,
/// which needs effects replication, the default from Redis 5.0 on (older
/// versions refuse the write, or replicate a script whose replay differs).
pub const MIN_VERSION: (u32, u32) = (5, 0);

/// The one eviction policy under which Redis never drops a key on its own.
const NO_EVICTION: &str = "noeviction";

/// Reads one `field:value` line of an `INFO` reply.
fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// `major.minor` of a `redis_version` such as `7.0.15`.
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
}

/// Whether this Redis is 7.0 or newer: it has Functions, and reads a script's
/// `#!lua` flags line (older ones cannot parse it). An unreadable version
/// counts as old.
pub fn is_redis_7(info: &str) -> bool {
    field(info, "redis_version")
        .and_then(major_minor)
        .is_some_and(|v| v >= (7, 0))
}

/// The warnings for an `INFO` reply (see `SemaphoreStore::warnings`).
///
/// # Errors
/// `Internal` when the version is older than [`MIN_VERSION`].
pub fn check(info: &str) -> Result<Vec<String>, StoreError> {
    let version = field(info, "redis_version").unwrap_or("unknown");
    if major_minor(version).is_some_and(|v| v < MIN_VERSION) {
        return Err(StoreError::Internal(format!(
            "Redis {version} is too old: permitd needs Redis {}.{} or newer (its scripts read \
             TIME before writing, which needs effects replication)",
            MIN_VERSION.0, MIN_VERSION.1
        )));
    }
    let mut warnings = Vec::new();
    if let Some(policy) = field(info, "maxmemory_policy")
        && policy != NO_EVICTION
    {
        warnings.push(format!(
            "Redis maxmemory-policy is {policy}: Redis may evict permitd's keys when memory is \
             full, losing permits and queue places (never exceeding a limit, but waiters may \
             lose their turn and retries their idempotency); set maxmemory-policy {NO_EVICTION}"
        ));
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n\
                        # Memory\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction\r\n";

    #[test]
    fn a_current_redis_without_eviction_gives_no_warning() {
        assert!(check(INFO).unwrap().is_empty());
    }

    #[test]
    fn an_eviction_policy_is_a_warning_that_names_noeviction() {
        let info = INFO.replace("noeviction", "allkeys-lru");
        let warnings = check(&info).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("allkeys-lru") && warnings[0].contains("noeviction"));
    }

    #[test]
    fn a_redis_older_than_5_is_refused_with_the_version_needed() {
        let error = check(&INFO.replace("7.0.15", "4.0.14")).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("4.0.14") && message.contains("5.0"),
            "{message}"
        );
        assert!(check(&INFO.replace("7.0.15", "5.0.0")).is_ok());
        assert_eq!(major_minor("6.2"), Some((6, 2)));
        assert_eq!(major_minor("x"), None);
    }

    #[test]
    fn functions_and_script_flags_are_for_redis_7_on() {
        assert!(is_redis_7(INFO));
        assert!(!is_redis_7(&INFO.replace("7.0.15", "6.2.14")));
        assert!(!is_redis_7("# Server\r\n"));
    }
}
