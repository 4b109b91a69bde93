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
    /// The certificate verifier could not be built from the trust roots.
    #[error("TLS setup: {0}")]
    Verifier(rustls::client::VerifierBuilderError),
}

/// Verifies server certificates against the trust roots (webpki), and also accepts a server
/// certificate that is, byte for byte, one of the `ca_file` certificates: a self-signed
/// certificate marked `CA:TRUE` (what `openssl req -x509` makes, and many internal providers
/// use), which webpki refuses as an end entity even when it is the trust anchor. The host name
/// is checked either way; the handshake signatures are verified by webpki.
#[derive(Debug)]
struct PinnedOrWebPki {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    pinned: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedOrWebPki {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Ok(verified) => Ok(verified),
            Err(e) if self.pinned.iter().any(|c| c.as_ref() == end_entity.as_ref()) => {
                let parsed = rustls::server::ParsedCertificate::try_from(end_entity).map_err(|_| e)?;
                rustls::client::verify_server_name(&parsed, server_name)?;
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
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
    let mut pinned = Vec::new();
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
            pinned.push(cert.clone());
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
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(HttpClientError::Verifier)?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(HttpClientError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedOrWebPki { webpki, pinned }))
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
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A self-signed certificate marked `CA:TRUE` for `names`, as `openssl req -x509` makes them,
    /// and a TLS server on 127.0.0.1 that presents it and answers every request with 200.
    async fn self_signed_server(names: &[&str]) -> (String, u16) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.der().clone()], key_der)
                .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let mut buf = [0u8; 4096];
                        let _ = tls.read(&mut buf).await;
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                            .await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        (cert.pem(), port)
    }

    #[tokio::test]
    async fn a_self_signed_ca_certificate_in_ca_file_is_trusted_as_itself_for_its_names_only() {
        let dir = tempfile::tempdir().unwrap();
        let (pem, port) = self_signed_server(&["127.0.0.1", "localhost"]).await;
        let ca = dir.path().join("provider.pem");
        std::fs::write(&ca, &pem).unwrap();
        let http = http_client(Some(&ca), Duration::from_secs(5)).unwrap();
        let r = http.get(format!("https://127.0.0.1:{port}/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = http.get(format!("https://localhost:{port}/")).send().await.unwrap();
        assert_eq!(r.status(), 200);

        // Another self-signed certificate in ca_file: refused.
        let (other, _) = self_signed_server(&["127.0.0.1"]).await;
        let wrong = dir.path().join("other.pem");
        std::fs::write(&wrong, other).unwrap();
        let http = http_client(Some(&wrong), Duration::from_secs(5)).unwrap();
        assert!(http.get(format!("https://127.0.0.1:{port}/")).send().await.is_err());

        // The right certificate, but not for this name: refused.
        let (pem, port) = self_signed_server(&["idp.example"]).await;
        std::fs::write(&ca, &pem).unwrap();
        let http = http_client(Some(&ca), Duration::from_secs(5)).unwrap();
        assert!(http.get(format!("https://127.0.0.1:{port}/")).send().await.is_err());
    }
}
