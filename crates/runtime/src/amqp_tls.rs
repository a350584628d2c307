//! TLS to RabbitMQ (`amqps://` URLs): the files of `AMQP_CA_FILE`, `AMQP_CERT_FILE` and
//! `AMQP_KEY_FILE`, read and checked once at start so that a bad file stops the server with its
//! name instead of failing every connection; and the one way both servers connect to a node.
//!
//! lapin's rustls support does the handshake (crypto by ring, no OpenSSL). It trusts the system's
//! roots plus the authorities of `AMQP_CA_FILE`, and checks the host name of the URL against the
//! certificate. A handshake that fails is an error of that try, retried like any other: an
//! `amqps://` URL is never tried in clear text.

use crate::AmqpSettings;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;

/// The RabbitMQ nodes a server may connect to, and how to speak TLS to those with `amqps://`.
#[derive(Debug, Clone)]
pub struct Nodes {
    /// The nodes' URLs, in the order of `AMQP_URL`.
    pub uris: Vec<AMQPUri>,
    tls: OwnedTLSConfig,
}

impl Nodes {
    /// Opens a connection to node `node` (an index in `uris`): TLS for `amqps://`.
    pub async fn connect(
        &self,
        node: usize,
        properties: ConnectionProperties,
    ) -> lapin::Result<Connection> {
        let uri = self.uris[node].clone();
        let runtime = lapin::runtime::default_runtime()?;
        Connection::connect_uri_with_config(uri, properties, self.tls.clone(), runtime).await
    }

    /// Whether node `node` is reached over TLS.
    pub fn is_tls(&self, node: usize) -> bool {
        self.uris[node].scheme == AMQPScheme::AMQPS
    }
}

impl AmqpSettings {
    /// The nodes of `AMQP_URL` (see [`AmqpSettings::uris`]) with the TLS files read and checked:
    /// a file that cannot be read or holds no valid PEM is an error naming it, as is a client
    /// certificate without its key or the reverse.
    pub fn nodes(&self) -> anyhow::Result<Nodes> {
        let uris = self.uris()?;
        let mut tls = OwnedTLSConfig::default();
        if let Some(path) = &self.amqp_ca_file {
            let pem = read_pem_file("AMQP_CA_FILE", path)?;
            check_certificates("AMQP_CA_FILE", path, &pem)?;
            tls.cert_chain =
                Some(String::from_utf8(pem).map_err(|_| {
                    anyhow::anyhow!("AMQP_CA_FILE {} is not PEM text", path.display())
                })?);
        }
        tls.identity = match (&self.amqp_cert_file, &self.amqp_key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let pem = read_pem_file("AMQP_CERT_FILE", cert)?;
                check_certificates("AMQP_CERT_FILE", cert, &pem)?;
                let key_pem = read_pem_file("AMQP_KEY_FILE", key)?;
                PrivateKeyDer::from_pem_slice(&key_pem).map_err(|err| {
                    anyhow::anyhow!(
                        "AMQP_KEY_FILE {} holds no usable PEM private key: {err}",
                        key.display()
                    )
                })?;
                Some(OwnedIdentity::PKCS8 { pem, key: key_pem })
            }
            (Some(_), None) => anyhow::bail!("AMQP_CERT_FILE is set without AMQP_KEY_FILE"),
            (None, Some(_)) => anyhow::bail!("AMQP_KEY_FILE is set without AMQP_CERT_FILE"),
        };
        let any_tls = uris.iter().any(|uri| uri.scheme == AMQPScheme::AMQPS);
        if !any_tls && (tls.cert_chain.is_some() || tls.identity.is_some()) {
            tracing::warn!(
                "AMQP_CA_FILE, AMQP_CERT_FILE or AMQP_KEY_FILE is set but no AMQP_URL is \
                 amqps://: the connections to RabbitMQ are not encrypted"
            );
        }
        Ok(Nodes { uris, tls })
    }
}

fn read_pem_file(setting: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|err| anyhow::anyhow!("cannot read {setting} {}: {err}", path.display()))
}

/// Checks that `pem` holds at least one certificate and that every one parses.
fn check_certificates(setting: &str, path: &Path, pem: &[u8]) -> anyhow::Result<()> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| anyhow::anyhow!("{setting} {} is not valid PEM: {err}", path.display()))?;
    if certificates.is_empty() {
        anyhow::bail!(
            "{setting} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(())
}

/// Whether a failed connect was TLS refusing a certificate or the handshake (rustls's
/// `invalid peer certificate: …`, an alert from the broker), so that the log says so rather than
/// leaving it to be read from lapin's wording. A connection the broker resets is not one: with
/// TLS 1.3 a broker that wanted a client certificate shows only that way, but so does one going
/// down, so it stays a plain failure.
pub(crate) fn is_certificate_error(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    ["certificate", "handshake", "alert", "tls"]
        .iter()
        .any(|word| error.contains(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> AmqpSettings {
        AmqpSettings::for_url(url)
    }

    fn file(content: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), content).unwrap();
        file
    }

    #[test]
    fn amqps_urls_are_tls_nodes() {
        let nodes = settings("amqps://u:p@h/v,amqp://u:p@h2/v").nodes().unwrap();
        assert!(nodes.is_tls(0));
        assert!(!nodes.is_tls(1));
        assert_eq!(nodes.uris[0].authority.port, 5671);
    }

    #[test]
    fn a_missing_or_invalid_ca_file_is_an_error_that_names_it() {
        let mut with_ca = settings("amqps://h/v");
        with_ca.amqp_ca_file = Some("/nonexistent/ca.pem".into());
        let err = format!("{:#}", with_ca.nodes().unwrap_err());
        assert!(err.contains("AMQP_CA_FILE /nonexistent/ca.pem"), "{err}");

        let garbage = file("not a certificate\n");
        with_ca.amqp_ca_file = Some(garbage.path().to_owned());
        let err = format!("{:#}", with_ca.nodes().unwrap_err());
        assert!(err.contains("AMQP_CA_FILE"), "{err}");
        assert!(err.contains(&garbage.path().display().to_string()), "{err}");
    }

    #[test]
    fn certificate_errors_are_told_from_other_failures() {
        assert!(is_certificate_error(
            "IO error: invalid peer certificate: UnknownIssuer"
        ));
        assert!(is_certificate_error(
            "IO error: received fatal alert: HandshakeFailure"
        ));
        assert!(!is_certificate_error(
            "IO error: Connection reset by peer (os error 104)"
        ));
        assert!(!is_certificate_error(
            "IO error: Connection refused (os error 111)"
        ));
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let mut half = settings("amqps://h/v");
        half.amqp_cert_file = Some("/x/cert.pem".into());
        let err = format!("{:#}", half.nodes().unwrap_err());
        assert!(
            err.contains("AMQP_CERT_FILE is set without AMQP_KEY_FILE"),
            "{err}"
        );
    }
}
