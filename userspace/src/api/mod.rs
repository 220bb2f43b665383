//! The local API: what a running sonde answers on its unix socket and loopback HTTP
//! address. [`control`] is the boundary to the daemon.
//!
//! # Routes
//!
//! All JSON (errors too: `{"error": "...", "kind": "..."}`), one request per
//! connection:
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /v1/info` | [`DaemonInfo`] |
//! | `GET /v1/status[?unhealthy=1][&label=k=v]...` | `[CheckStatus]`, sorted by id |
//! | `GET /v1/checks` | `[CheckSpec]` |
//! | `GET /v1/checks/{id}` | `{"spec": CheckSpec, "status": CheckStatus}` |
//! | `GET /v1/checks/{id}/history` | [`CheckHistory`] |
//! | `POST /v1/checks` (body: one check, as a `[[check]]` table in JSON) | 201 `{"id": ...}` |
//! | `DELETE /v1/checks/{id}` | `{"removed": id}` |
//! | `POST /v1/reload` | [`ReloadReport`] |
//! | `GET /v1/watch` | stream of [`Event`]s ([`watch`]) |
//! | `GET /metrics` | Prometheus text ([`metrics`]) |
//! | `GET /v1/cluster` | `{"mode":"standalone"}` or `{"mode":"cluster","cluster": ClusterView}` |
//! | `GET /v1/rtts[?n=N]` | `{check id: [rtt_us or null]}`, the latest N (1-32, default 30) |
//! | `GET /`, `GET /ui/app.js`, `GET /ui/app.css` | the status page ([`ui`]) |
//!
//! `POST` and `DELETE` need `Authorization: Bearer <token>` ([`token`]).
//!
//! Error kinds and statuses: `bad_request` 400 (malformed request, query or target),
//! `bad_host` 400 (non-loopback `Host` on HTTP), `invalid` 400 (the check or file is
//! invalid), `unauthorized` 401, `not_found` 404 (no such route), `unknown_check` 404
//! (names the id), `method_not_allowed` 405, `timeout` 408, `duplicate` 409,
//! `unsupported` 409 (e.g. reload without a file) or 501 (Transfer-Encoding),
//! `length_required` 411, `too_large` 413 (body) or 431 (head), `too_many_watchers`
//! 429, `internal` 500, `overloaded` 503.

mod conn;
pub mod control;
pub mod error;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod routes;
pub mod server;
pub mod token;
pub mod ui;
pub mod watch;

#[cfg(test)]
mod tests;

pub use control::{CheckHistory, Control, ControlError, DaemonInfo, Event, ReloadReport};
pub use error::ApiError;
pub use memory::MemoryControl;
pub use metrics::{render, MetricsInput};
pub use server::{serve, ApiOptions, Server};
