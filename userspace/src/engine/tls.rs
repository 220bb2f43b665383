//! TLS for HTTPS checks (rustls, ring provider): client configurations per trust
//! setting, a verifier that records instead of refusing when verification is off, and
//! the certificate's days until expiry.
//!
//! rustls is sans-IO: the io_uring slot moves ciphertext between the socket and the
//! `ClientConnection`, so TLS adds no thread and no blocking call to the engine.

use std::{
    collections::HashMap,
    fs, io,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::SystemTime,
};

use parking_lot::Mutex;
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use thiserror::Error;

/// Why a TLS client configuration could not be built.
#[derive(Debug, Error)]
pub enum TlsSetupError {
    /// The CA file could not be read or holds no certificate.
    #[error("CA file {path}: {detail}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any certificate (verification off), so expiry can still be reported and a
/// self-signed origin checked. Signatures are still verified, so the handshake proves
/// the server holds the key of the certificate it sent.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut store = RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for c in found.certs {
            let _ = store.add(c);
        }
        store
    })
}

fn ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let err = |detail: String| TlsSetupError::CaFile {
        path: path.to_owned(),
        detail,
    };
    let pem = fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("{e:?}")))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// Trust settings a client configuration is built for: verify, and the CA file.
type TrustKey = (bool, Option<PathBuf>);

/// Client configurations, one per (verify, CA file) pair, built once and shared.
#[derive(Default)]
pub struct TlsConfigs {
    /// Built configurations.
    configs: Mutex<HashMap<TrustKey, Arc<ClientConfig>>>,
}

impl TlsConfigs {
    /// The configuration for these trust settings.
    ///
    /// # Errors
    /// The CA file is unreadable or empty, or rustls refuses the configuration.
    pub fn get(&self, verify: bool, ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsSetupError> {
        let key = (verify, ca.map(Path::to_path_buf));
        if let Some(c) = self.configs.lock().get(&key) {
            return Ok(Arc::clone(c));
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let cfg = if verify {
            let mut roots = system_roots().clone();
            if let Some(p) = ca {
                for c in ca_file(p)? {
                    roots.add(c).map_err(TlsSetupError::Config)?;
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
                .with_no_client_auth()
        };
        let cfg = Arc::new(cfg);
        self.configs.lock().insert(key, Arc::clone(&cfg));
        Ok(cfg)
    }
}

/// Whole days from `now` until the certificate's notAfter (negative once expired);
/// `None` if the certificate cannot be parsed.
#[must_use]
pub fn days_left(der: &[u8], now: SystemTime) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let not_after = cert.validity().not_after.timestamp();
    let now = i64::try_from(now.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs()).ok()?;
    Some((not_after - now).div_euclid(86_400))
}

/// Drive `conn` with ciphertext `data` just received; collect what it wants to send
/// into `out`. Returns the plaintext now readable.
///
/// # Errors
/// A TLS protocol or certificate error, as rustls reports it.
pub fn feed(
    conn: &mut rustls::ClientConnection,
    mut data: &[u8],
    plain: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    while !data.is_empty() {
        let n = conn
            .read_tls(&mut data)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        if n == 0 {
            break;
        }
        let state = conn.process_new_packets()?;
        let avail = state.plaintext_bytes_to_read();
        if avail > 0 {
            let start = plain.len();
            plain.resize(start + avail, 0);
            let got = io::Read::read(&mut conn.reader(), &mut plain[start..]).unwrap_or(0);
            plain.truncate(start + got);
        }
    }
    Ok(())
}

/// Move everything rustls wants to send into `out`.
pub fn drain_out(conn: &mut rustls::ClientConnection, out: &mut Vec<u8>) {
    while conn.wants_write() {
        if conn.write_tls(out).is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_expiring(days: i64) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(vec!["origin.test".to_owned()]).expect("params");
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(400);
        params.not_after = now + time::Duration::days(days) + time::Duration::hours(1);
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn days_left_counts_whole_days_and_goes_negative() {
        let now = SystemTime::now();
        assert_eq!(days_left(&cert_expiring(30), now), Some(30));
        assert_eq!(days_left(&cert_expiring(0), now), Some(0));
        assert_eq!(days_left(&cert_expiring(-3), now), Some(-3));
        assert_eq!(days_left(b"not a certificate", now), None);
    }

    #[test]
    fn configs_are_cached_and_bad_ca_files_named() {
        let c = TlsConfigs::default();
        let a = c.get(false, None).expect("no-verify config");
        let b = c.get(false, None).expect("no-verify config");
        assert!(Arc::ptr_eq(&a, &b));
        let e = c
            .get(true, Some(Path::new("/nonexistent/ca.pem")))
            .expect_err("missing file");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
