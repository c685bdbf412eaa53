//! Test certificates: a private CA made by rcgen and a server certificate
//! it signed, as PEM files, for the TLS tests (HTTPS and gRPC).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A private CA and a server certificate it signed (for `localhost` and
/// `127.0.0.1`), written as PEM files.
pub struct Pki {
    /// The CA's certificate (what clients trust).
    pub ca: PathBuf,
    /// The server's certificate.
    pub cert: PathBuf,
    /// The server's key.
    pub key: PathBuf,
}

/// Writes `DIR/NAME-ca.pem`, `NAME-cert.pem` and `NAME-key.pem`.
pub fn make_pki(dir: &Path, name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("jobq test CA {name}"));
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let pki = Pki {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}-cert.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&pki.ca, ca.pem()).unwrap();
    std::fs::write(&pki.cert, cert.pem()).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    pki
}

/// Puts `from`'s certificate and key where `to`'s were.
pub fn install(from: &Pki, to: &Pki) {
    for (a, b) in [(&from.cert, &to.cert), (&from.key, &to.key)] {
        let tmp = b.with_extension("tmp");
        std::fs::copy(a, &tmp).unwrap();
        std::fs::rename(&tmp, b).unwrap();
    }
}
