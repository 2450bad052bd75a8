//! Mutual TLS for the meta group: between its replicas and towards its
//! clients (`fabric-ctl`, node agents).
//!
//! One certificate authority (the CA file) vouches for every party. A
//! replica given TLS settings serves only TLS and accepts a connection only
//! when its client certificate chains to the CA; it presents its own
//! certificate as a server to clients and as a client to the other
//! replicas. So that a client's certificate cannot speak for a replica, a
//! Raft message is accepted only over a connection whose certificate is
//! valid for the address the group knows for the replica that sent it (the
//! same check a client makes of a server's certificate). A replica's
//! certificate therefore names its address as a subject alternative name
//! (DNS, or IP for an IP address) and, if it lists extended key usages,
//! both `serverAuth` and `clientAuth`.
//!
//! The files are PEM: a certificate (with its chain after it, if any), its
//! private key (PKCS#8, PKCS#1 or SEC1) and the CA certificate(s). They are
//! read once, at start: a renewed certificate takes a restart.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A TLS setting that cannot be used: the setting's name (a flag or a
/// file key, as the caller calls it) and why.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct TlsError {
    /// The setting.
    pub setting: &'static str,
    /// What is wrong.
    pub reason: String,
}

/// The three files' settings by name, for error messages (flags or keys).
#[derive(Debug, Clone, Copy)]
pub struct TlsSettingNames {
    /// The certificate's setting.
    pub cert: &'static str,
    /// The private key's setting.
    pub key: &'static str,
    /// The CA's setting.
    pub ca: &'static str,
}

/// The flags of `fabricd meta` and `fabric-ctl`.
pub const TLS_FLAGS: TlsSettingNames = TlsSettingNames {
    cert: "--tls-cert",
    key: "--tls-key",
    ca: "--tls-ca",
};

/// Loaded TLS material: this party's identity and the CA it trusts.
#[derive(Clone)]
pub struct Tls {
    identity: Identity,
    ca: Certificate,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tls { .. }")
    }
}

/// A status's message and, for one made from a local error (a failed
/// connection), that error's causes, on one line.
pub fn status_text(status: &tonic::Status) -> String {
    let message = status.message();
    match std::error::Error::source(status) {
        Some(source) => {
            let more = chain(source);
            if message.contains(&more) {
                message.to_string()
            } else {
                format!("{message}: {more}")
            }
        }
        None => message.to_string(),
    }
}

/// The error and its causes on one line.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        // Errors often repeat their source in their own text.
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}

/// Reads the PEM file of `setting`.
fn read_pem(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError {
        setting,
        reason: format!("cannot read {}: {e}", path.display()),
    })
}

/// Checks that `pem` (the file `path` of `setting`) holds certificates,
/// the first a usable end-entity certificate (`ca`: each a usable trust
/// anchor).
fn check_certificates(
    setting: &'static str,
    path: &Path,
    pem: &[u8],
    ca: bool,
) -> Result<(), TlsError> {
    let bad = |why: String| TlsError {
        setting,
        reason: format!("{}: {why}", path.display()),
    };
    let mut count = 0;
    for der in CertificateDer::pem_slice_iter(pem) {
        let der = der.map_err(|e| bad(e.to_string()))?;
        let usable = if ca {
            webpki::anchor_from_trusted_cert(&der).map(|_| ())
        } else if count == 0 {
            webpki::EndEntityCert::try_from(&der).map(|_| ())
        } else {
            Ok(())
        };
        usable.map_err(|e| bad(format!("certificate {} does not parse: {e}", count + 1)))?;
        count += 1;
    }
    if count == 0 {
        return Err(bad("holds no PEM certificate".into()));
    }
    Ok(())
}

impl Tls {
    /// Loads the files given, or `None` when none is. Giving some but not
    /// all three is an error, and so is a file that is not what its setting
    /// needs.
    pub fn load(
        cert: Option<&Path>,
        key: Option<&Path>,
        ca: Option<&Path>,
        names: TlsSettingNames,
    ) -> Result<Option<Tls>, TlsError> {
        let (cert, key, ca) = match (cert, key, ca) {
            (None, None, None) => return Ok(None),
            (Some(cert), Some(key), Some(ca)) => (cert, key, ca),
            (cert, key, _) => {
                let missing = if cert.is_none() {
                    names.cert
                } else if key.is_none() {
                    names.key
                } else {
                    names.ca
                };
                return Err(TlsError {
                    setting: missing,
                    reason: format!(
                        "TLS needs all three of {}, {} and {}",
                        names.cert, names.key, names.ca
                    ),
                });
            }
        };
        let (cert_pem, key_pem, ca_pem) = (
            read_pem(names.cert, cert)?,
            read_pem(names.key, key)?,
            read_pem(names.ca, ca)?,
        );
        check_certificates(names.cert, cert, &cert_pem, false)?;
        check_certificates(names.ca, ca, &ca_pem, true)?;
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError {
            setting: names.key,
            reason: match e {
                pem::Error::NoItemsFound => format!("{} holds no PEM private key", key.display()),
                e => format!("{}: {e}", key.display()),
            },
        })?;
        let tls = Tls {
            identity: Identity::from_pem(cert_pem, key_pem),
            ca: Certificate::from_pem(ca_pem),
        };
        // Build both sides once, so that a key that does not go with the
        // certificate is an error now.
        Server::builder()
            .tls_config(tls.server_config())
            .map_err(|e| TlsError {
                setting: names.key,
                reason: format!(
                    "{} does not serve with {}: {}",
                    key.display(),
                    names.cert,
                    chain(&e)
                ),
            })?;
        endpoint("localhost:1", Some(&tls)).map_err(|reason| TlsError {
            setting: names.cert,
            reason,
        })?;
        Ok(Some(tls))
    }

    /// The server side: this identity, and client certificates required
    /// and checked against the CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .client_auth_optional(false)
            .timeout(HANDSHAKE_TIMEOUT)
    }

    fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .timeout(HANDSHAKE_TIMEOUT)
    }
}

/// The endpoint of a replica at `address` (`HOST:PORT`): `https` with
/// `tls` (the server's certificate must be valid for HOST), `http`
/// without.
pub fn endpoint(address: &str, tls: Option<&Tls>) -> Result<Endpoint, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|e| format!("address '{address}': {}", chain(&e)))?;
    match tls {
        Some(tls) => endpoint
            .tls_config(tls.client_config())
            .map_err(|e| format!("TLS towards '{address}': {}", chain(&e))),
        None => Ok(endpoint),
    }
}

/// Whether the first certificate in the PEM file `path` (already checked
/// by [`Tls::load`]) is valid for the host of `address`.
pub fn file_certificate_is_for(path: &Path, address: &str) -> bool {
    let Ok(pem) = std::fs::read(path) else {
        return false;
    };
    CertificateDer::pem_slice_iter(&pem)
        .next()
        .and_then(Result::ok)
        .is_some_and(|der| certificate_is_for(&der, address))
}

/// Whether the certificate `der` is valid for the host of `address`
/// (`HOST:PORT`): a DNS name it names or an IP address among its subject
/// alternative names. Its chain was checked in the handshake.
pub fn certificate_is_for(der: &CertificateDer<'_>, address: &str) -> bool {
    let Ok((host, _)) = crate::cli::split_address(address) else {
        return false;
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let (Ok(name), Ok(cert)) = (
        ServerName::try_from(host),
        webpki::EndEntityCert::try_from(der),
    ) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn some_but_not_all_files_name_the_missing_one() {
        let p = Path::new("/nonexistent");
        let e = Tls::load(Some(p), None, Some(p), TLS_FLAGS).expect_err("key missing");
        assert_eq!(e.setting, "--tls-key");
        let e = Tls::load(None, None, Some(p), TLS_FLAGS).expect_err("cert missing");
        assert_eq!(e.setting, "--tls-cert");
        assert!(Tls::load(None, None, None, TLS_FLAGS)
            .expect("no TLS")
            .is_none());
    }

    #[test]
    fn unreadable_or_wrong_files_are_errors_naming_them() {
        let dir = tempfile::tempdir().expect("dir");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").expect("write");
        let missing = dir.path().join("missing.pem");
        let e =
            Tls::load(Some(&missing), Some(&junk), Some(&junk), TLS_FLAGS).expect_err("unreadable");
        assert_eq!(e.setting, "--tls-cert");
        assert!(e.reason.contains("missing.pem"), "{e}");
        let e = Tls::load(Some(&junk), Some(&junk), Some(&junk), TLS_FLAGS).expect_err("junk");
        assert_eq!(e.setting, "--tls-cert");
        assert!(e.reason.contains("no PEM certificate"), "{e}");
        // A good certificate and CA, a key of another certificate.
        let (cert, key, ca) = (
            dir.path().join("c"),
            dir.path().join("k"),
            dir.path().join("a"),
        );
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = params.self_signed(&ca_key).expect("CA");
        std::fs::write(&ca, ca_cert.pem()).expect("write");
        std::fs::write(&cert, ca_cert.pem()).expect("write");
        std::fs::write(
            &key,
            rcgen::KeyPair::generate().expect("key").serialize_pem(),
        )
        .expect("write");
        let e = Tls::load(Some(&cert), Some(&key), Some(&ca), TLS_FLAGS).expect_err("mismatch");
        assert_eq!(e.setting, "--tls-key");
        assert!(e.reason.contains("does not serve with --tls-cert"), "{e}");
        let e = Tls::load(Some(&cert), Some(&ca), Some(&ca), TLS_FLAGS).expect_err("no key");
        assert_eq!(e.setting, "--tls-key");
        assert!(e.reason.contains("no PEM private key"), "{e}");
        let e = Tls::load(Some(&cert), Some(&key), Some(&key), TLS_FLAGS).expect_err("no CA");
        assert_eq!(e.setting, "--tls-ca");
    }

    fn leaf(names: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "10.0.0.9");
        params.self_signed(&key).expect("certificate").der().clone()
    }

    #[test]
    fn certificates_match_the_host_of_an_address_by_subject_alternative_name() {
        let cert = leaf(&["10.0.0.1", "::1", "meta-1.example"]);
        for address in ["10.0.0.1:7400", "[::1]:7400", "meta-1.example:1"] {
            assert!(certificate_is_for(&cert, address), "{address}");
        }
        // Not another address, nor the common name.
        for address in [
            "10.0.0.2:7400",
            "[::2]:7400",
            "meta-2.example:1",
            "10.0.0.9:1",
        ] {
            assert!(!certificate_is_for(&cert, address), "{address}");
        }
    }

    #[test]
    fn addresses_that_are_not_host_port_match_no_certificate() {
        let der = CertificateDer::from(vec![0u8; 8]);
        assert!(!certificate_is_for(&der, "no-port"));
        assert!(!certificate_is_for(&der, "127.0.0.1:1"));
    }
}
