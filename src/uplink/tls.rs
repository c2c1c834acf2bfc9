//! TLS client configuration for the broker connection (rustls with the `ring` provider, so no
//! aws-lc-sys in the build). Owns reading the CA bundle and the client certificate and key;
//! the handshake itself happens inside rumqttc (see `mqtt`).
//!
//! Client certificates in X.509 v1 form (what `openssl x509 -req` makes without an
//! extensions file) are accepted: rustls presents the certificate as it is and the broker
//! judges it (mosquitto accepts v1), but rustls' own check that the key belongs to the
//! certificate parses it with webpki, which knows only v3. That check is redone here on the
//! certificate's SubjectPublicKeyInfo, read with a few lines of DER, so a wrong key is still
//! refused at start with the real cause.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, InconsistentKeys, RootCertStore};

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
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS: the ring provider supports no default protocol version")?
        .with_root_certificates(roots);
    let config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let certified = certified_key(cert, key, &provider)?;
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)))
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The client certificate chain with its key, once it is sure the key belongs to it.
fn certified_key(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> anyhow::Result<CertifiedKey> {
    let chain = read_certs(cert_path)?;
    let key = provider
        .key_provider
        .load_private_key(read_key(key_path)?)
        .map_err(|e| {
            anyhow!(
                "mqtt.tls: cannot use the client key {} ({e}); an RSA, ECDSA P-256/P-384 or \
                 Ed25519 key is needed",
                key_path.display()
            )
        })?;
    let certified = CertifiedKey::new(chain, key);
    let mismatch = || {
        anyhow!(
            "mqtt.tls: the client key {} does not belong to the certificate in {}: set \
             client_key to the key the certificate was issued for",
            key_path.display(),
            cert_path.display()
        )
    };
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => Err(mismatch()),
        // webpki could not parse the certificate (a v1 certificate, for one): compare the
        // keys on the certificate's own SubjectPublicKeyInfo.
        Err(parse_error) => {
            let spki = certified
                .cert
                .first()
                .and_then(|c| subject_public_key_info(c.as_ref()))
                .ok_or_else(|| {
                    anyhow!(
                        "mqtt.tls: {} is not a readable X.509 certificate ({parse_error}); \
                         re-issue it",
                        cert_path.display()
                    )
                })?;
            match certified.key.public_key() {
                Some(key_spki) if key_spki.as_ref() != spki => Err(mismatch()),
                _ => Ok(certified),
            }
        }
    }
}

/// The SubjectPublicKeyInfo (whole DER element) of an X.509 certificate of any version:
/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serial,
/// signature, issuer, validity, subject, subjectPublicKeyInfo, … }, … }`.
fn subject_public_key_info(cert: &[u8]) -> Option<&[u8]> {
    let (_, certificate, _) = der_element(cert, 0x30)?;
    let (_, tbs, _) = der_element(certificate, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xA0) {
        rest = der_element(rest, 0xA0)?.2;
    }
    // serial, signature algorithm, issuer, validity, subject
    for tag in [0x02, 0x30, 0x30, 0x30, 0x30] {
        rest = der_element(rest, tag)?.2;
    }
    let (whole, _, _) = der_element(rest, 0x30)?;
    Some(whole)
}

/// Splits the DER element at the start of `input`, which must carry `tag`, into (the whole
/// element, its content, what follows it).
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8], &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    let first = *input.get(1)? as usize;
    let (length, header) = if first < 0x80 {
        (first, 2)
    } else {
        let count = first & 0x7F;
        if count == 0 || count > 4 {
            return None;
        }
        let bytes = input.get(2..2 + count)?;
        (
            bytes.iter().fold(0usize, |n, &b| (n << 8) | b as usize),
            2 + count,
        )
    };
    let end = header.checked_add(length)?;
    let whole = input.get(..end)?;
    Some((whole, &whole[header..], &input[end..]))
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
    fn der_elements_with_short_and_long_lengths_are_split_and_truncated_ones_refused() {
        let short = [0x30, 0x02, 0x05, 0x00, 0xFF];
        let (whole, content, rest) = der_element(&short, 0x30).unwrap();
        assert_eq!(
            (whole.len(), content, rest),
            (4, &[0x05, 0x00][..], &[0xFF][..])
        );
        let mut long = vec![0x30, 0x81, 0x80];
        long.extend([7u8; 0x80]);
        let (_, content, rest) = der_element(&long, 0x30).unwrap();
        assert_eq!((content.len(), rest.len()), (0x80, 0));
        assert!(der_element(&long[..50], 0x30).is_none(), "truncated");
        assert!(der_element(&short, 0x02).is_none(), "another tag");
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
