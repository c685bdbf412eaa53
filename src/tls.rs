//! Built-in TLS for the server (`--tls-cert`, `--tls-key`): loading the PEM
//! certificate chain and key, and swapping them on SIGHUP without a restart.
//!
//! The rustls [`ServerConfig`]s handed out here never change; they resolve
//! the certificate through a shared [`ArcSwap`], so a reload reaches every
//! face built on them (HTTP here, gRPC with its own ALPN) at their next
//! handshake, and connections already open keep theirs. rustls runs on the
//! `ring` provider, which builds without cmake or nasm.
//!
//! This module knows nothing of HTTP and never reads client certificates.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// The PEM files of a server identity.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// `--tls-cert`: the certificate chain, leaf first.
    pub cert: PathBuf,
    /// `--tls-key`: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("cannot read {what} {path}: {error}")]
    Read {
        /// "TLS certificate" or "TLS key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why (in the message, not a `source`, so it is printed once).
        error: std::io::Error,
    },
    /// The file holds no usable PEM item of the kind needed.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("TLS certificate {cert} with key {key}: {error}")]
    Invalid {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        error: rustls::Error,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|error| LoadError::Read {
        what,
        path: path.to_owned(),
        error,
    })
}

/// Reads and checks a certificate chain and its key.
fn load_key(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, LoadError> {
    let pem = read("TLS certificate", &files.cert)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LoadError::Pem {
            path: files.cert.clone(),
            reason: format!("malformed PEM certificate: {e}"),
        })?;
    if chain.is_empty() {
        return Err(LoadError::Pem {
            path: files.cert.clone(),
            reason: "no PEM certificate (-----BEGIN CERTIFICATE-----) found".into(),
        });
    }
    let pem = read("TLS key", &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| LoadError::Pem {
        path: files.key.clone(),
        reason: format!("no usable PEM private key: {e}"),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|error| LoadError::Invalid {
        cert: files.cert.clone(),
        key: files.key.clone(),
        error,
    })
}

/// Hands every handshake the identity in force.
struct Resolver(ArcSwap<CertifiedKey>);

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The server's TLS identity: a cheap-clone handle shared by every face and
/// the SIGHUP handler.
#[derive(Clone)]
pub struct Tls {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where the identity is read from (again on reload).
    files: TlsFiles,
    /// The identity in force, read by every handshake.
    resolver: Arc<Resolver>,
    /// The crypto provider every config uses.
    provider: Arc<CryptoProvider>,
    /// The HTTP/1.1 face's config.
    http: Arc<ServerConfig>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.inner.files)
            .finish()
    }
}

impl Tls {
    /// Loads the identity in `files`.
    ///
    /// # Errors
    /// A file cannot be read, holds no PEM certificate or key, or the key does
    /// not match the certificate.
    pub fn load(files: TlsFiles) -> Result<Tls, LoadError> {
        let provider = provider();
        let key = load_key(&files, &provider)?;
        let resolver = Arc::new(Resolver(ArcSwap::from_pointee(key)));
        let http = build(&provider, &resolver, vec![b"http/1.1".to_vec()]);
        Ok(Tls {
            inner: Arc::new(Inner {
                files,
                resolver,
                provider,
                http,
            }),
        })
    }

    /// Re-reads the files; handshakes from now on use the new identity,
    /// connections already open keep theirs.
    ///
    /// # Errors
    /// As [`Tls::load`]; the identity in force then stays.
    pub fn reload(&self) -> Result<(), LoadError> {
        let key = load_key(&self.inner.files, &self.inner.provider)?;
        self.inner.resolver.0.store(Arc::new(key));
        Ok(())
    }

    /// The rustls config of the HTTP/1.1 face (ALPN `http/1.1`).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.inner.http.clone()
    }

    /// A rustls config for another face, offering `alpn` (e.g. `[b"h2"]` for
    /// gRPC), sharing this identity and its reloads.
    pub fn server_config_with_alpn(&self, alpn: Vec<Vec<u8>>) -> Arc<ServerConfig> {
        build(&self.inner.provider, &self.inner.resolver, alpn)
    }

    /// The files the identity is read from.
    pub fn files(&self) -> &TlsFiles {
        &self.inner.files
    }
}

fn build(
    provider: &Arc<CryptoProvider>,
    resolver: &Arc<Resolver>,
    alpn: Vec<Vec<u8>>,
) -> Arc<ServerConfig> {
    let mut cfg = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    cfg.alpn_protocols = alpn;
    Arc::new(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_identity(dir: &Path, name: &str) -> TlsFiles {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let files = TlsFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.cert.pem()).unwrap();
        std::fs::write(&files.key, cert.key_pair.serialize_pem()).unwrap();
        files
    }

    #[test]
    fn loads_and_reloads_an_identity() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_identity(dir.path(), "a");
        let tls = Tls::load(files.clone()).unwrap();
        let first = tls.inner.resolver.0.load_full();
        assert_eq!(
            tls.server_config().alpn_protocols,
            vec![b"http/1.1".to_vec()]
        );

        let other = write_identity(dir.path(), "b");
        std::fs::copy(&other.cert, &files.cert).unwrap();
        std::fs::copy(&other.key, &files.key).unwrap();
        tls.reload().unwrap();
        let second = tls.inner.resolver.0.load_full();
        assert_ne!(first.cert, second.cert);

        // A broken file leaves the identity in force.
        std::fs::write(&files.key, "not a key").unwrap();
        let err = tls.reload().unwrap_err().to_string();
        assert!(err.contains("a.key"), "{err}");
        assert_eq!(tls.inner.resolver.0.load_full().cert, second.cert);
    }

    #[test]
    fn mismatched_or_missing_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_identity(dir.path(), "a");
        let b = write_identity(dir.path(), "b");
        let mixed = TlsFiles {
            cert: a.cert.clone(),
            key: b.key.clone(),
        };
        assert!(matches!(Tls::load(mixed), Err(LoadError::Invalid { .. })));
        let swapped = TlsFiles {
            cert: a.key.clone(),
            key: a.cert.clone(),
        };
        assert!(matches!(Tls::load(swapped), Err(LoadError::Pem { .. })));
        let missing = TlsFiles {
            cert: dir.path().join("nope.crt"),
            key: a.key,
        };
        let err = Tls::load(missing).unwrap_err().to_string();
        assert!(
            err.starts_with("cannot read TLS certificate") && err.contains("nope.crt"),
            "{err}"
        );
    }
}
