//! HTTPS on the front-server: the certificate and key of `TLS_CERT_FILE` and `TLS_KEY_FILE`,
//! read and checked at start (a bad file stops the server with its name), made into the TLS
//! acceptor that the accept loop ([`crate::serve`]) puts in front of hyper.
//!
//! rustls with ring, the same stack as the TLS to RabbitMQ: no OpenSSL. HTTP/1.1 only, as the
//! accept loop serves; TLS 1.2 and 1.3 with rustls's safe defaults.

use anyhow::Context;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// The acceptor for HTTPS when both files are set, `None` (plain HTTP) when neither is; one
/// without the other is an error, as is a file that cannot be read or does not hold what it
/// should, or a key that does not belong to the certificate.
pub fn acceptor(cert: Option<&Path>, key: Option<&Path>) -> anyhow::Result<Option<TlsAcceptor>> {
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => anyhow::bail!(
            "TLS_CERT_FILE is set without TLS_KEY_FILE: HTTPS needs both (or neither, for HTTP)"
        ),
        (None, Some(_)) => anyhow::bail!(
            "TLS_KEY_FILE is set without TLS_CERT_FILE: HTTPS needs both (or neither, for HTTP)"
        ),
    };
    let chain = read(cert, "TLS_CERT_FILE")?;
    let chain = CertificateDer::pem_slice_iter(&chain)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| {
            anyhow::anyhow!("TLS_CERT_FILE {} is not valid PEM: {err}", cert.display())
        })?;
    if chain.is_empty() {
        anyhow::bail!(
            "TLS_CERT_FILE {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            cert.display()
        );
    }
    let private_key =
        PrivateKeyDer::from_pem_slice(&read(key, "TLS_KEY_FILE")?).map_err(|err| {
            anyhow::anyhow!(
                "TLS_KEY_FILE {} holds no usable PEM private key: {err}",
                key.display()
            )
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .with_context(|| {
            format!(
                "TLS_CERT_FILE {} and TLS_KEY_FILE {} do not make a usable certificate",
                cert.display(),
                key.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

fn read(path: &Path, setting: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|err| anyhow::anyhow!("cannot read {setting} {}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(cert: Option<&str>, key: Option<&str>) -> String {
        match acceptor(cert.map(Path::new), key.map(Path::new)) {
            Ok(_) => panic!("accepted {cert:?} and {key:?}"),
            Err(err) => format!("{err:#}"),
        }
    }

    #[test]
    fn neither_file_is_plain_http() {
        assert!(acceptor(None, None).unwrap().is_none());
    }

    #[test]
    fn one_file_without_the_other_is_an_error_that_says_so() {
        let err = error_of(Some("/c.pem"), None);
        assert!(
            err.contains("TLS_CERT_FILE is set without TLS_KEY_FILE"),
            "{err}"
        );
        let err = error_of(None, Some("/k.pem"));
        assert!(
            err.contains("TLS_KEY_FILE is set without TLS_CERT_FILE"),
            "{err}"
        );
    }

    #[test]
    fn an_unreadable_file_is_an_error_that_names_it() {
        let err = error_of(Some("/nonexistent/cert.pem"), Some("/nonexistent/key.pem"));
        assert!(err.contains("TLS_CERT_FILE /nonexistent/cert.pem"), "{err}");
    }
}
