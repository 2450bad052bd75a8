//! A throw-away certificate authority for the TLS tests (rcgen), written
//! as PEM files: replica certificates for 127.0.0.1, 127.0.0.2 and
//! 127.0.0.3, a client certificate that names no address, and a
//! certificate of another CA.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

/// A certificate and its key, as files.
pub struct Party {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The files of the test PKI.
pub struct Pki {
    /// The CA every replica and client trusts.
    pub ca: PathBuf,
    /// Replica `i` (from 0) is valid for 127.0.0.`i+1`, as server and as
    /// client.
    pub replicas: Vec<Party>,
    /// An administrator: signed by the CA, client use only, no address.
    pub client: Party,
    /// Valid for 127.0.0.1 too, but signed by another CA.
    pub stranger: Party,
    /// That other CA.
    pub other_ca: PathBuf,
}

fn authority(name: &str) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    (params.self_signed(&key).expect("CA certificate"), key)
}

fn party(
    dir: &Path,
    name: &str,
    names: &[&str],
    usages: Vec<ExtendedKeyUsagePurpose>,
    (ca, ca_key): &(Certificate, KeyPair),
) -> Party {
    let key = KeyPair::generate().expect("key");
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = usages;
    let cert = params.signed_by(&key, ca, ca_key).expect("certificate");
    let party = Party {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&party.cert, cert.pem()).expect("write certificate");
    std::fs::write(&party.key, key.serialize_pem()).expect("write key");
    party
}

/// Makes the PKI's files in `dir`.
pub fn make(dir: &Path) -> Pki {
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let ca = authority("fabric test CA");
    let other = authority("another CA");
    let pki = Pki {
        ca: dir.join("ca.crt"),
        replicas: (1..=3)
            .map(|i| {
                let name = format!("replica{i}");
                let ip = format!("127.0.0.{i}");
                party(dir, &name, &[&ip], vec![ServerAuth, ClientAuth], &ca)
            })
            .collect(),
        client: party(dir, "admin", &[], vec![ClientAuth], &ca),
        stranger: party(
            dir,
            "stranger",
            &["127.0.0.1"],
            vec![ServerAuth, ClientAuth],
            &other,
        ),
        other_ca: dir.join("other-ca.crt"),
    };
    std::fs::write(&pki.ca, ca.0.pem()).expect("write CA");
    std::fs::write(&pki.other_ca, other.0.pem()).expect("write other CA");
    pki
}
