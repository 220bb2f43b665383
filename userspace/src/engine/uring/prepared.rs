//! Per-check preparation done once, not per probe: the compiled HTTP expectation
//! (regex), the TLS client configuration and the encoded HTTP request.

use std::sync::Arc;

use thiserror::Error;

use crate::engine::{
    http::{default_host, encode_request, CompiledExpect},
    spec::{CheckSpec, HttpSpec, ProbeSpec},
    tls::{TlsConfigs, TlsSetupError},
};

/// Why a check cannot be prepared (the check is refused before any probe runs).
#[derive(Debug, Error)]
pub enum PrepareError {
    /// The body regex does not compile (or is too large).
    #[error("check {check}: expect_body_regex: {source}")]
    Regex {
        /// Check id.
        check: String,
        /// The regex error.
        #[source]
        source: regex::Error,
    },
    /// The TLS configuration cannot be built (e.g. unreadable CA file).
    #[error("check {check}: tls: {source}")]
    Tls {
        /// Check id.
        check: String,
        /// The TLS error.
        #[source]
        source: TlsSetupError,
    },
}

/// What a probe of a check needs beyond its spec.
#[derive(Clone, Default)]
pub struct Prepared {
    /// Compiled HTTP expectations (HTTP/HTTPS checks).
    pub http: Option<Arc<CompiledExpect>>,
    /// TLS client configuration (HTTPS checks).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The encoded request (HTTP/HTTPS checks), or why it cannot be sent: every probe
    /// of the check then ends with that error, as the request does not change.
    pub request: Option<Result<Arc<[u8]>, String>>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("http", &self.http.is_some())
            .field("tls", &self.tls.is_some())
            .field(
                "request",
                &self.request.as_ref().map(|r| r.as_ref().map(|b| b.len())),
            )
            .finish()
    }
}

/// The empty preparation of every check that needs none (all but HTTP and HTTPS).
static NOTHING: std::sync::LazyLock<Arc<Prepared>> = std::sync::LazyLock::new(Arc::default);

impl Prepared {
    /// The shared empty preparation.
    #[must_use]
    pub fn none() -> Arc<Self> {
        Arc::clone(&NOTHING)
    }

    /// [`Prepared::new`] behind an `Arc`; checks that need no preparation share one
    /// (a million of them would otherwise hold a million empty allocations).
    ///
    /// # Errors
    /// As [`Prepared::new`].
    pub fn shared(spec: &CheckSpec, tls: &TlsConfigs) -> Result<Arc<Self>, PrepareError> {
        if !matches!(spec.probe, ProbeSpec::Http(_)) {
            return Ok(Arc::clone(&NOTHING));
        }
        Self::new(spec, tls).map(Arc::new)
    }

    /// Prepare `spec`, sharing TLS configurations through `tls`.
    ///
    /// # Errors
    /// The regex or the TLS configuration is refused.
    pub fn new(spec: &CheckSpec, tls: &TlsConfigs) -> Result<Self, PrepareError> {
        let ProbeSpec::Http(h) = &spec.probe else {
            return Ok(Self::default());
        };
        let compiled = CompiledExpect::new(&h.expect).map_err(|source| PrepareError::Regex {
            check: spec.id.to_string(),
            source,
        })?;
        let tls = match &h.tls {
            Some(t) => Some(tls.get(t.verify, t.ca_file.as_deref()).map_err(|source| {
                PrepareError::Tls {
                    check: spec.id.to_string(),
                    source,
                }
            })?),
            None => None,
        };
        Ok(Self {
            http: Some(Arc::new(compiled)),
            tls,
            request: Some(encode(spec, h)),
        })
    }
}

/// The request of HTTP check `spec` (probe `h`), or why it cannot be encoded.
pub(super) fn encode(spec: &CheckSpec, h: &HttpSpec) -> Result<Arc<[u8]>, String> {
    let host_default = default_host(&spec.target.host, spec.target.port, h.tls.is_some());
    let mut request = Vec::with_capacity(256);
    encode_request(h, &host_default, &mut request).map_err(|e| e.to_string())?;
    Ok(Arc::from(request))
}
