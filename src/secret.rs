//! Values that must never reach a log line or an error message (a Redis
//! password, an API token), and the redaction of URLs that may carry one.
//!
//! A leaf module: anything may use it, it uses nothing of the crate.

/// A value that must never reach a log line or an error message: a password
/// or a token. `Debug` prints `***`, there is no `Display`, and the value is
/// only reachable through [`Secret::expose`], so printing `Settings` is safe.
/// No `PartialEq` either: tokens are compared in constant time, in
/// `http::auth`, never with `==`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that needs it (a connection, a
    /// comparison). Never format it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// The URL with any password replaced, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
            } else {
                url.to_owned()
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_the_password_and_keeps_the_rest() {
        assert_eq!(
            redact_url("redis://:s3cret@host:6379/0"),
            "redis://:***@host:6379/0"
        );
        assert_eq!(
            redact_url("redis://user:s3cret@host:6379"),
            "redis://user:***@host:6379"
        );
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
    }
}
