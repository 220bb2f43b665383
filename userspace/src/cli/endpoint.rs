//! Where the daemon's API is: the global `--socket`, `--api`, `--token-file` and
//! `--api-timeout` options, and the endpoint they name.

use std::{
    fmt,
    net::{SocketAddr, ToSocketAddrs},
    path::PathBuf,
    time::Duration,
};

use clap::Args;

use super::client::{Client, ClientError};
use crate::api::server::{DEFAULT_SOCKET, DEFAULT_TOKEN_FILE};

/// How to reach the daemon (global options of the client commands).
#[derive(Debug, Clone, Args)]
pub struct ClientOptions {
    /// The daemon's API unix socket.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Use the loopback HTTP API instead of the socket, e.g. http://127.0.0.1:9911.
    #[arg(long, global = true, value_name = "URL")]
    pub api: Option<String>,
    /// File holding the API token, sent on changes (check add/rm, reload).
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_TOKEN_FILE)]
    pub token_file: PathBuf,
    /// Seconds to wait for the daemon's answers.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 10)]
    pub api_timeout: u64,
}

impl ClientOptions {
    /// The client these options describe.
    ///
    /// # Errors
    /// A malformed or non-loopback `--api` URL.
    pub fn client(&self) -> Result<Client, ClientError> {
        let endpoint = match &self.api {
            Some(url) => Endpoint::parse_url(url)?,
            None => Endpoint::Unix(self.socket.clone()),
        };
        Ok(Client {
            endpoint,
            token_file: self.token_file.clone(),
            timeout: Duration::from_secs(self.api_timeout.max(1)),
        })
    }
}

/// Where the API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket path.
    Unix(PathBuf),
    /// A loopback TCP address.
    Tcp(SocketAddr),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "http://{a}"),
        }
    }
}

impl Endpoint {
    /// Parse `http://HOST:PORT[/]`; HOST must be loopback (`localhost`, 127.x, `[::1]`).
    ///
    /// # Errors
    /// [`ClientError::BadUrl`].
    pub fn parse_url(url: &str) -> Result<Self, ClientError> {
        let bad = |why: &str| ClientError::BadUrl {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("expected http://HOST:PORT"))?;
        let hostport = rest.strip_suffix('/').unwrap_or(rest);
        if hostport.contains('/') {
            return Err(bad("give no path, only http://HOST:PORT"));
        }
        let addr = hostport
            .to_socket_addrs()
            .map_err(|e| bad(&format!("cannot resolve: {e}")))?
            .next()
            .ok_or_else(|| bad("resolves to no address"))?;
        if !addr.ip().to_canonical().is_loopback() {
            return Err(bad("the sonde API listens on loopback addresses only"));
        }
        Ok(Endpoint::Tcp(addr))
    }
}
