//! Per-check preparation done once, not per probe: the compiled HTTP expectation
//! (regex) and the TLS client configuration.

use std::sync::Arc;

use thiserror::Error;

use crate::engine::{
    http::CompiledExpect,
    spec::{CheckSpec, ProbeSpec},
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
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("http", &self.http.is_some())
            .field("tls", &self.tls.is_some())
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
        })
    }
}
