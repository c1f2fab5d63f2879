//! One demo run as a validated value: the numbers within their bounds, and
//! what to call, which is the built-in upstream or a URL whose host the
//! operator allowed (`--demo-allowed-hosts`).

use super::bounds::{DemoBounds, MAX_IDEAL_MS, MAX_LIMIT};
use crate::semaphore::{Limit, ValueError};
use crate::telemetry::TraceContext;

/// Which hosts `GET /demo?url=…` may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedHosts {
    /// Any http(s) host: only for the terminal, where the operator is the user.
    Any,
    /// Exactly these hosts (lower case), each on any port or on one port.
    Only(Vec<(String, Option<u16>)>),
}

impl AllowedHosts {
    /// Parses entries of `--demo-allowed-hosts`: `host` or `host:port`, with
    /// IPv6 addresses in brackets (`[::1]:8080`). Blank entries are ignored.
    ///
    /// # Errors
    /// When an entry is not a bare host with an optional port.
    pub fn parse(entries: &[String]) -> Result<Self, ValueError> {
        let mut hosts = Vec::new();
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let bad = || {
                ValueError(format!(
                    "--demo-allowed-hosts: {entry:?} is not a host or host:port"
                ))
            };
            // Let the URL parser do host syntax (IDNA, IPv6, case) once, here.
            let url = reqwest::Url::parse(&format!("http://{entry}/")).map_err(|_| bad())?;
            if url.path() != "/" || !url.username().is_empty() || url.password().is_some() {
                return Err(bad());
            }
            let host = url.host_str().ok_or_else(bad)?.to_owned();
            // `Url::port` hides the scheme's default port; an entry `host:80`
            // still means "port 80 only".
            let port = url.port().or_else(|| entry.ends_with(":80").then_some(80));
            hosts.push((host, port));
        }
        Ok(Self::Only(hosts))
    }

    fn allows(&self, url: &reqwest::Url) -> bool {
        match self {
            AllowedHosts::Any => true,
            AllowedHosts::Only(hosts) => {
                let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
                    return false;
                };
                hosts
                    .iter()
                    .any(|(h, p)| h == host && p.is_none_or(|p| p == port))
            }
        }
    }
}

/// What to call while holding a permit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The built-in slow API of this process, `GET /demo/upstream?delay_ms=…`.
    BuiltIn { delay_ms: u64 },
    /// A URL whose host the operator allowed.
    Url(reqwest::Url),
}

/// One demo run, validated: the only way to build it is [`DemoRequest::new`].
#[derive(Debug, Clone)]
pub struct DemoRequest {
    requests: u32,
    limit: Limit,
    target: Target,
    /// The trace of the request that asked for the run: each outbound call
    /// passes it on as a child `traceparent`.
    trace: Option<TraceContext>,
}

impl DemoRequest {
    /// # Errors
    /// When a number is outside its bound (`bounds` for `requests` and
    /// `delay_ms`), the built-in upstream would take longer than
    /// [`MAX_IDEAL_MS`], or the URL is not http(s) to an allowed host.
    pub fn new(
        requests: u64,
        limit: u64,
        delay_ms: u64,
        url: Option<&str>,
        allowed: &AllowedHosts,
        bounds: &DemoBounds,
    ) -> Result<Self, ValueError> {
        if !(1..=bounds.max_requests).contains(&requests) {
            return Err(ValueError(format!(
                "requests must be between 1 and {}",
                bounds.max_requests
            )));
        }
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ValueError(format!(
                "limit must be between 1 and {MAX_LIMIT}"
            )));
        }
        bounds.delay_ms(delay_ms)?;
        // Only an empty URL means the built-in upstream: one of blanks is a
        // bad URL, as the served document says (it allows only "" when no
        // host is listed).
        let target = match url.filter(|u| !u.is_empty()) {
            None => {
                let ideal = requests.div_ceil(limit) * delay_ms;
                if ideal > MAX_IDEAL_MS {
                    return Err(ValueError(format!(
                        "{requests} requests at limit {limit} with delay_ms {delay_ms} would take \
                         at least {ideal} ms; a demo may plan at most {MAX_IDEAL_MS} ms"
                    )));
                }
                Target::BuiltIn { delay_ms }
            }
            Some(raw) => Target::Url(parse_url(raw, allowed)?),
        };
        Ok(Self {
            requests: requests as u32,
            limit: Limit::new(limit)?,
            target,
            trace: None,
        })
    }

    /// Makes the run's outbound calls part of `trace`.
    pub fn within_trace(mut self, trace: TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }

    pub fn trace(&self) -> Option<&TraceContext> {
        self.trace.as_ref()
    }

    pub fn requests(&self) -> u32 {
        self.requests
    }

    pub fn limit(&self) -> Limit {
        self.limit
    }

    pub fn target(&self) -> &Target {
        &self.target
    }
}

fn parse_url(raw: &str, allowed: &AllowedHosts) -> Result<reqwest::Url, ValueError> {
    let url = reqwest::Url::parse(raw)
        .map_err(|e| ValueError(format!("url is not an absolute URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ValueError("url must be http or https".into()));
    }
    // Credentials in a URL would be sent to the upstream on the operator's
    // behalf, and could end up in logs: refuse them outright.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ValueError("url must not contain credentials".into()));
    }
    if !allowed.allows(&url) {
        return Err(ValueError(format!(
            "url host {:?} is not allowed; the operator lists the hosts the demo may call \
             in --demo-allowed-hosts (leave url out to use the built-in upstream)",
            url.host_str().unwrap_or("")
        )));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::{MAX_DELAY_MS, MAX_REQUESTS};

    fn hosts(entries: &[&str]) -> AllowedHosts {
        AllowedHosts::parse(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn bounds_are_enforced() {
        let none = hosts(&[]);
        let bounds = DemoBounds::default();
        assert!(DemoRequest::new(5, 1, 100, None, &none, &bounds).is_ok());
        assert!(DemoRequest::new(0, 1, 100, None, &none, &bounds).is_err());
        assert!(DemoRequest::new(101, 1, 100, None, &none, &bounds).is_err());
        assert!(DemoRequest::new(5, 0, 100, None, &none, &bounds).is_err());
        assert!(DemoRequest::new(5, 101, 100, None, &none, &bounds).is_err());
        assert!(DemoRequest::new(5, 1, 5_001, None, &none, &bounds).is_err());
        // 100 rounds of 5 s is far beyond what one demo may plan.
        assert!(DemoRequest::new(100, 1, 5_000, None, &none, &bounds).is_err());
        assert!(DemoRequest::new(100, 100, 5_000, None, &none, &bounds).is_ok());
    }

    #[test]
    fn configured_bounds_are_enforced_and_capped() {
        let none = hosts(&[]);
        let small = DemoBounds::new(4, 5).unwrap();
        assert!(DemoRequest::new(4, 1, 5, None, &none, &small).is_ok());
        assert!(DemoRequest::new(5, 1, 5, None, &none, &small).is_err());
        assert!(DemoRequest::new(4, 1, 6, None, &none, &small).is_err());
        assert!(small.delay_ms(6).is_err());
        assert!(DemoBounds::new(0, 5).is_err());
        assert!(DemoBounds::new(MAX_REQUESTS + 1, 5).is_err());
        assert!(DemoBounds::new(4, MAX_DELAY_MS + 1).is_err());
        assert!(DemoBounds::new(MAX_REQUESTS, 0).is_ok());
        // Defaults stay within configured bounds.
        assert_eq!((small.default_requests(), small.default_delay_ms()), (4, 5));
        let bounds = DemoBounds::default();
        assert_eq!(
            (bounds.default_requests(), bounds.default_delay_ms()),
            (5, 100)
        );
    }

    #[test]
    fn only_listed_hosts_and_ports_may_be_called() {
        let allowed = hosts(&["api.example.com", "127.0.0.1:9000", "[::1]", "plain:80"]);
        let ok = |url: &str| {
            DemoRequest::new(2, 1, 0, Some(url), &allowed, &DemoBounds::default()).is_ok()
        };
        assert!(ok("https://api.example.com/v1/things?x=1"));
        assert!(ok("http://API.example.com:8443/"));
        assert!(ok("http://127.0.0.1:9000/"));
        assert!(!ok("http://127.0.0.1:9001/"));
        assert!(!ok("http://127.0.0.1/"));
        assert!(ok("http://[::1]:1234/"));
        assert!(ok("http://plain/"));
        assert!(!ok("https://plain/"));
        assert!(!ok("http://evil.example.com/"));
        assert!(!ok("http://api.example.com.evil.net/"));
        assert!(!ok("ftp://api.example.com/"));
        assert!(!ok("file:///etc/passwd"));
        assert!(!ok("http://user:pw@api.example.com/"));
        assert!(!ok("not a url"));
        assert!(!ok("/demo/upstream"));
    }

    #[test]
    fn an_empty_url_means_the_built_in_upstream() {
        let bounds = DemoBounds::default();
        let request = DemoRequest::new(3, 2, 50, Some(""), &hosts(&[]), &bounds).unwrap();
        assert_eq!(request.target(), &Target::BuiltIn { delay_ms: 50 });
        assert!(DemoRequest::new(3, 2, 50, Some("  "), &hosts(&[]), &bounds).is_err());
    }

    #[test]
    fn allow_list_entries_must_be_hosts() {
        for bad in ["http://x/", "x/path", "u@x"] {
            assert!(
                AllowedHosts::parse(&[bad.to_owned()]).is_err(),
                "{bad} was accepted"
            );
        }
        assert!(AllowedHosts::Any.allows(&reqwest::Url::parse("http://anything/").unwrap()));
    }
}
