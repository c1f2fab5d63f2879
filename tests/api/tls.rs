//! Redis over TLS (`rediss://`), with a certificate authority the test makes
//! with `openssl`: a server certificate it signed, trusted through
//! `--redis-tls-ca-file`; a client certificate for a Redis that requires
//! one; and a CA that did not sign the server's, which must stop the start
//! with a clear error.

use std::path::{Path, PathBuf};
use std::process::Command;

use permitd::startup::Application;
use serde_json::json;

use crate::helpers::{Harness, RedisServer, free_port};

/// Runs `openssl` with `args` in `dir`; panics with its output if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed (Debian package openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A certificate authority in `dir`: `<name>.pem` and `<name>.key`.
fn authority(dir: &Path, name: &str) -> PathBuf {
    let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &key,
            "-out",
            &pem,
        ],
    );
    dir.join(pem)
}

/// A certificate for 127.0.0.1 signed by authority `ca`: `<name>.pem` and
/// `<name>.key` in `dir`.
fn signed(dir: &Path, ca: &str, name: &str) -> (PathBuf, PathBuf) {
    let (pem, key, csr) = (
        format!("{name}.pem"),
        format!("{name}.key"),
        format!("{name}.csr"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            &pem,
        ],
    );
    (dir.join(pem), dir.join(key))
}

/// A Redis that answers TLS on its own port (and plain TCP on another, which
/// only the harness uses to see it is up), and the `rediss://` URL.
fn tls_redis(dir: &Path, require_client_certificates: bool) -> (RedisServer, String) {
    let ca = authority(dir, "ca");
    let (cert, key) = signed(dir, "ca", "server");
    let tls_port = free_port();
    let redis = RedisServer::builder()
        .config("tls-port", &tls_port.to_string())
        .config("tls-cert-file", cert.to_str().unwrap())
        .config("tls-key-file", key.to_str().unwrap())
        .config("tls-ca-cert-file", ca.to_str().unwrap())
        .config(
            "tls-auth-clients",
            if require_client_certificates {
                "yes"
            } else {
                "no"
            },
        )
        .start();
    (redis, format!("rediss://127.0.0.1:{tls_port}"))
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("permitd-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_redis_with_a_private_ca_serves_the_api() {
    let dir = temp_dir();
    let (redis, url) = tls_redis(&dir, false);
    let ca = dir.join("ca.pem");
    let app = &Harness::on(redis)
        .configure(move |settings| {
            settings.redis_url = Some(permitd::secret::Secret::new(url.clone()));
            settings.redis_tls_ca_file = Some(ca.clone());
        })
        .spawn()
        .await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let granted = app.acquire("over-tls", json!({ "limit": 1 })).await;
    assert_eq!(granted.status(), 201);
    assert_eq!(app.status("over-tls").await["held"], 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_requires_client_certificates_accepts_ours() {
    let dir = temp_dir();
    let (redis, url) = tls_redis(&dir, true);
    let (cert, key) = signed(&dir, "ca", "client");
    let ca = dir.join("ca.pem");
    let app = &Harness::on(redis)
        .configure(move |settings| {
            settings.redis_url = Some(permitd::secret::Secret::new(url.clone()));
            settings.redis_tls_ca_file = Some(ca.clone());
            settings.redis_tls_cert_file = Some(cert.clone());
            settings.redis_tls_key_file = Some(key.clone());
        })
        .spawn()
        .await;
    let granted = app.acquire("mutual", json!({ "limit": 1 })).await;
    assert_eq!(granted.status(), 201);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_did_not_sign_the_servers_certificate_stops_the_start() {
    let dir = temp_dir();
    let (redis, url) = tls_redis(&dir, false);
    let stranger = authority(&dir, "stranger");
    let harness = Harness::on(redis).configure(move |settings| {
        settings.redis_url = Some(permitd::secret::Secret::new(url.clone()));
        settings.redis_tls_ca_file = Some(stranger.clone());
    });
    let error = match Application::build(&harness.settings()).await {
        Ok(_) => panic!("started with a CA that does not trust the server"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("certificate") && error.contains("--redis-tls-ca-file"),
        "{error}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A self-signed certificate made with one `openssl req -x509` is a CA
/// (CA:TRUE); used as the server's own, rustls refuses it even when it is
/// the CA file given, and the message must say so and how to make a pair
/// that works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_certificate_used_as_the_servers_own_is_named_with_the_remedy() {
    let dir = temp_dir();
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=self",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            "self.key",
            "-out",
            "self.pem",
        ],
    );
    let (pem, key) = (dir.join("self.pem"), dir.join("self.key"));
    let tls_port = free_port();
    let redis = RedisServer::builder()
        .config("tls-port", &tls_port.to_string())
        .config("tls-cert-file", pem.to_str().unwrap())
        .config("tls-key-file", key.to_str().unwrap())
        .config("tls-ca-cert-file", pem.to_str().unwrap())
        .config("tls-auth-clients", "no")
        .start();
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let harness = Harness::on(redis).configure(move |settings| {
        settings.redis_url = Some(permitd::secret::Secret::new(url.clone()));
        settings.redis_tls_ca_file = Some(pem.clone());
    });
    let error = match Application::build(&harness.settings()).await {
        Ok(_) => panic!("started with a CA certificate as the server's own"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("presents a CA certificate")
            && error.contains("a server certificate that CA signs"),
        "{error}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_files_without_a_rediss_url_are_refused() {
    let harness = Harness::new(crate::helpers::Store::Redis)
        .configure(|settings| settings.redis_tls_ca_file = Some(PathBuf::from("/nonexistent")));
    let error = match Application::build(&harness.settings()).await {
        Ok(_) => panic!("started with TLS files for a redis:// URL"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("rediss://"), "{error}");
}
