//! TLS client configuration for the broker connection (rustls with the `ring` provider, so no
//! aws-lc-sys in the build). Owns reading the CA bundle and the client certificate and key;
//! the handshake itself happens inside rumqttc (see `mqtt`).

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::config::Tls;

/// Builds the rustls client config once at start-up: a missing or unreadable file is the
/// user's to fix, so it fails the start instead of looping on reconnects.
pub fn client_config(tls: &Tls) -> anyhow::Result<Arc<ClientConfig>> {
    if tls.client_cert.is_some() != tls.client_key.is_some() {
        bail!("mqtt.tls: set both client_cert and client_key for mutual TLS, or neither");
    }
    let roots = match &tls.ca_file {
        Some(path) => roots_from_file(path)?,
        None => system_roots()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS: the ring provider supports no default protocol version")?
        .with_root_certificates(roots);
    let config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            let key = read_key(key)?;
            builder.with_client_auth_cert(chain, key).with_context(|| {
                format!(
                    "mqtt.tls: the client key does not match the certificate in {}",
                    cert.display()
                )
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn open(path: &Path, what: &str) -> anyhow::Result<BufReader<File>> {
    File::open(path)
        .map(BufReader::new)
        .with_context(|| format!("mqtt.tls: cannot open the {what} {}", path.display()))
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = rustls_pemfile::certs(&mut open(path, "certificate file")?)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("mqtt.tls: {} is not valid PEM", path.display()))?;
    if certs.is_empty() {
        bail!(
            "mqtt.tls: {} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(certs)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut open(path, "client key")?)
        .with_context(|| format!("mqtt.tls: {} is not valid PEM", path.display()))?
        .ok_or_else(|| {
            anyhow!(
                "mqtt.tls: {} holds no private key (PKCS#1, PKCS#8 or SEC1 PEM expected)",
                path.display()
            )
        })
}

fn roots_from_file(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .with_context(|| format!("mqtt.tls: a certificate in {} is invalid", path.display()))?;
    }
    Ok(roots)
}

fn system_roots() -> anyhow::Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    for err in &found.errors {
        tracing::warn!(error = %err, "skipping unreadable system CA certificates");
    }
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        bail!(
            "mqtt.tls: no system CA certificates found; install the ca-certificates package \
             or set mqtt.tls.ca_file to the broker's CA bundle"
        );
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ca_file_names_the_file_and_the_setting() {
        let tls = Tls {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Tls::default()
        };
        let err = format!("{:#}", client_config(&tls).unwrap_err());
        assert!(
            err.contains("mqtt.tls") && err.contains("/nonexistent/ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let tls = Tls {
            ca_file: None,
            client_cert: Some("/etc/hostname".into()),
            client_key: None,
        };
        let err = format!("{:#}", client_config(&tls).unwrap_err());
        assert!(err.contains("both client_cert and client_key"), "{err}");
    }

    #[test]
    fn a_file_without_pem_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let tls = Tls {
            ca_file: Some(path),
            ..Tls::default()
        };
        let err = format!("{:#}", client_config(&tls).unwrap_err());
        assert!(err.contains("holds no PEM certificate"), "{err}");
    }
}
