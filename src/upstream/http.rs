//! The HTTPS client every provider request goes through: system roots plus an optional
//! `ca_file`, rustls with aws-lc-rs, no redirects, one timeout for connect and answer.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why an HTTPS client could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpClientError {
    /// The `ca_file` could not be read.
    #[error("cannot read ca_file {}: {source}", path.display())]
    ReadCa {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    /// An entry of the `ca_file` is not a PEM certificate.
    #[error("ca_file {}: not a PEM certificate: {source}", path.display())]
    NotPem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate of the `ca_file` cannot be a trust root.
    #[error("ca_file {}: {source}", path.display())]
    BadCa { path: PathBuf, source: rustls::Error },
    /// The `ca_file` holds no certificate at all.
    #[error("ca_file {} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    /// The TLS library refused its own configuration.
    #[error("TLS setup: {0}")]
    Tls(rustls::Error),
    /// The HTTP client could not be built.
    #[error("HTTP client setup: {0}")]
    Client(reqwest::Error),
}

/// Builds an HTTPS client that trusts the system roots plus `extra_ca` (PEM file).
pub(crate) fn http_client(
    extra_ca: Option<&std::path::Path>,
    timeout: Duration,
) -> Result<reqwest::Client, HttpClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_ca {
        use rustls::pki_types::pem::PemObject;
        let certs =
            rustls::pki_types::CertificateDer::pem_file_iter(path).map_err(|source| HttpClientError::ReadCa {
                path: path.to_path_buf(),
                source,
            })?;
        let mut n = 0;
        for cert in certs {
            let cert = cert.map_err(|source| HttpClientError::NotPem {
                path: path.to_path_buf(),
                source,
            })?;
            roots.add(cert).map_err(|source| HttpClientError::BadCa {
                path: path.to_path_buf(),
                source,
            })?;
            n += 1;
        }
        if n == 0 {
            return Err(HttpClientError::NoCertificate {
                path: path.to_path_buf(),
            });
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(HttpClientError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("cortexid/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(HttpClientError::Client)
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The full chain of an error, which reqwest hides behind "error sending request".
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let msg = inner.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = inner.source();
    }
    s
}
