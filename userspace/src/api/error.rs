//! Why the API server could not start.

use std::{io, net::SocketAddr, path::PathBuf};

use super::token::TokenError;

/// Why [`super::server::serve`] (or [`super::server::Server::bind`]) failed. Nothing is
/// left listening in any case.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Neither a unix socket nor an HTTP address was given.
    #[error("API: nothing to listen on (give a unix socket path, an HTTP address or both)")]
    NothingToServe,
    /// An option is out of range.
    #[error("API option {name}: {why}")]
    Option {
        /// The option.
        name: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The HTTP address is not a loopback address.
    #[error(
        "API HTTP address {addr} is not a loopback address; the API only listens on \
         127.0.0.0/8 or [::1] (use the unix socket, or a proxy, for remote access)"
    )]
    NotLoopback {
        /// The refused address.
        addr: SocketAddr,
    },
    /// Binding the HTTP address failed.
    #[error("API: cannot listen on http://{addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Something at the socket path is not a socket: it is not removed.
    #[error(
        "API socket path {} exists and is not a socket; refusing to remove it",
        path.display()
    )]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A live server answers on the socket path (another sonde is running).
    #[error("API socket {} is in use: another sonde daemon is listening on it", path.display())]
    SocketInUse {
        /// The path.
        path: PathBuf,
    },
    /// Creating, binding or setting up the unix socket failed.
    #[error("API socket {}: {what}: {source}", path.display())]
    Socket {
        /// The socket (or its directory).
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The token file could not be read or created.
    #[error("API token: {0}")]
    Token(#[from] TokenError),
}
