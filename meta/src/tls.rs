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
//! certificate therefore names its address (a DNS name, or an IP address
//! as an IP subject alternative name) and, if it lists extended key usages,
//! both `serverAuth` and `clientAuth`.
//!
//! The files are PEM: a certificate (with its chain after it, if any), its
//! private key (PKCS#8, PKCS#1 or SEC1) and the CA certificate(s). They are
//! read once, at start: a renewed certificate takes a restart.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, ServerName};
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

/// Reads a PEM file holding at least one `what` (a block whose label ends
/// with `label`).
fn read_pem(
    setting: &'static str,
    path: &Path,
    label: &str,
    what: &str,
) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError {
        setting,
        reason: format!("cannot read {}: {e}", path.display()),
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let found = text
        .split("-----BEGIN ")
        .skip(1)
        .filter_map(|block| block.split_once("-----").map(|(l, _)| l))
        .any(|l| l == label || l.ends_with(&format!(" {label}")));
    if !found {
        return Err(TlsError {
            setting,
            reason: format!("{} holds no PEM {what}", path.display()),
        });
    }
    Ok(bytes)
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
        let tls = Tls {
            identity: Identity::from_pem(
                read_pem(names.cert, cert, "CERTIFICATE", "certificate")?,
                read_pem(names.key, key, "PRIVATE KEY", "private key")?,
            ),
            ca: Certificate::from_pem(read_pem(names.ca, ca, "CERTIFICATE", "certificate")?),
        };
        // Build both sides once, so that a key that does not parse, or does
        // not go with the certificate, is an error now.
        Server::builder()
            .tls_config(tls.server_config())
            .map_err(|e| TlsError {
                setting: names.key,
                reason: format!("the certificate and key cannot serve TLS: {}", chain(&e)),
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
    }

    #[test]
    fn addresses_that_are_not_host_port_match_no_certificate() {
        let der = CertificateDer::from(vec![0u8; 8]);
        assert!(!certificate_is_for(&der, "no-port"));
        assert!(!certificate_is_for(&der, "127.0.0.1:1"));
    }
}
