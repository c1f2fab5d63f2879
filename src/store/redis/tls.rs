//! TLS to Redis (`rediss://`): the certificate files beyond the system's
//! trusted roots, read once into what every client of every mode is built
//! with (standalone, each sentinel and data node, each cluster node).

use std::path::{Path, PathBuf};

use deadpool_redis::redis::{self, ClientTlsConfig, IntoConnectionInfo, TlsCertificates};

use crate::store::StoreError;

/// Certificate files for TLS (`rediss://`), beyond the system's roots.
#[derive(Debug, Clone, Default)]
pub struct RedisTls {
    /// The CA that signed the server's certificate (PEM).
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM), for `tls-auth-clients yes`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path)
        .map_err(|e| StoreError::Internal(format!("cannot read {flag} {}: {e}", path.display())))
}

impl RedisTls {
    fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// The certificates for these URLs, or `None` when no file is given
    /// (plain TCP, or TLS with the system's roots).
    ///
    /// # Errors
    /// When files are given for a URL that is not `rediss://`, only one of
    /// the client certificate and key is given, or a file cannot be read.
    pub(super) fn certificates<'a>(
        &self,
        mut urls: impl Iterator<Item = &'a str>,
    ) -> Result<Option<TlsCertificates>, StoreError> {
        if !self.is_set() {
            return Ok(None);
        }
        if urls.any(|url| !url.starts_with("rediss://")) {
            return Err(not_tls());
        }
        let client_tls = match (&self.cert_file, &self.key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(ClientTlsConfig {
                client_cert: read_pem("--redis-tls-cert-file", cert)?,
                client_key: read_pem("--redis-tls-key-file", key)?,
            }),
            _ => {
                return Err(StoreError::Internal(
                    "--redis-tls-cert-file and --redis-tls-key-file go together".into(),
                ));
            }
        };
        let root_cert = match &self.ca_file {
            Some(ca) => Some(read_pem("--redis-tls-ca-file", ca)?),
            None => None,
        };
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

/// The client for one node's `url`, with the TLS certificates when given.
///
/// # Errors
/// When the URL cannot be parsed, certificates are given for a URL that is
/// not `rediss://`, or they cannot be parsed.
pub(super) fn client(
    url: &str,
    certificates: Option<&TlsCertificates>,
) -> Result<redis::Client, StoreError> {
    let info = url
        .into_connection_info()
        .map_err(|e| StoreError::Internal(format!("bad Redis URL: {e}")))?;
    client_for(info, certificates)
}

/// The client for one node's connection info (see [`client`]).
///
/// # Errors
/// As [`client`].
pub(super) fn client_for(
    info: redis::ConnectionInfo,
    certificates: Option<&TlsCertificates>,
) -> Result<redis::Client, StoreError> {
    let Some(certificates) = certificates else {
        return redis::Client::open(info)
            .map_err(|e| StoreError::Internal(format!("bad Redis URL: {e}")));
    };
    if !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
        return Err(not_tls());
    }
    redis::Client::build_with_tls(info, certificates.clone())
        .map_err(|e| StoreError::Internal(format!("bad Redis TLS configuration: {e}")))
}

fn not_tls() -> StoreError {
    StoreError::Internal("--redis-tls-* files are for TLS: use rediss:// URLs".into())
}
