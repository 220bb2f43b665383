//! Sans-IO HTTP/1.x codecs for HTTP(S) checks.
//!
//! Nothing here touches a socket, a clock or a runtime: these are pure functions and
//! state machines over byte buffers, driven by the io_uring engine (and trivially
//! testable byte by byte).
//!
//! - [`request`]: encoding the request of an [`HttpSpec`](crate::engine::spec::HttpSpec),
//!   refusing header injection.
//! - [`proxy`]: the PROXY protocol v1 / v2 header sent before the request.
//! - [`response`]: an incremental response parser with bounded memory
//!   ([`Limits`]): status line, headers, Content-Length / chunked / close-delimited
//!   bodies, interim 1xx responses, keep-alive decision.
//! - [`matcher`]: judging a parsed [`Response`] against an
//!   [`HttpExpect`](crate::engine::spec::HttpExpect), and turning parser errors into a
//!   [`Reason`](crate::engine::result::Reason).
//!
//! A probe, as the engine runs it:
//!
//! 1. optionally [`proxy::encode`] the PROXY header, then [`encode_request`] into the
//!    send buffer;
//! 2. [`ResponseParser::feed`] every received chunk until [`Progress::Done`], or
//!    [`ResponseParser::finish_eof`] when the peer closes;
//! 3. [`judge`] the [`Response`] (or [`error_reason`] on a parser error);
//! 4. reuse the connection only if [`ResponseParser::keepalive_ok`].

pub mod matcher;
pub mod proxy;
pub mod request;
pub mod response;

#[cfg(test)]
pub(crate) mod test_rng;

pub use matcher::{error_reason, judge, CompiledExpect};
pub use proxy::encode as encode_proxy_header;
pub use request::{default_host, encode_request, RequestError, USER_AGENT};
pub use response::{Framing, HttpError, HttpVersion, Limits, Progress, Response, ResponseParser};
