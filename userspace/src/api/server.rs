//! The API server: the same routes ([`super::routes`]) on a unix socket and on a
//! loopback HTTP address, one request per connection, with bounded everything.
//!
//! - The unix socket is created with mode 0660 (group set with
//!   [`ApiOptions::socket_group`]): it is bound under a temporary name, given its mode,
//!   then renamed into place, so it is never reachable with looser permissions. A
//!   stale socket at the path is replaced; a live one (another daemon answers) or a
//!   file that is not a socket is refused. The socket file is removed on shutdown if
//!   it is still ours.
//! - The HTTP address must be loopback; requests on it must carry a loopback `Host`
//!   (or none), which stops DNS-rebinding pages from reading the API.
//! - Limits: [`ApiOptions`]; beyond `max_connections` a connection gets a 503 and is
//!   closed at once.

use std::{
    io,
    net::SocketAddr,
    os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    net::{TcpListener, UnixListener},
    sync::{watch, Semaphore},
};

use super::{conn, control::Control, error::ApiError, http::Response, token};

/// Default unix socket path.
pub const DEFAULT_SOCKET: &str = "/run/sonde/sonde.sock";
/// Default token file.
pub const DEFAULT_TOKEN_FILE: &str = "/var/lib/sonde/token";

/// Where and how the API listens.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Unix socket path (`None`: no socket).
    pub socket: Option<PathBuf>,
    /// Group owning the socket (`None`: the daemon's group).
    pub socket_group: Option<u32>,
    /// HTTP address; must be loopback (`None`: no HTTP).
    pub http: Option<SocketAddr>,
    /// The bearer token file ([`token::load_or_create`]).
    pub token_file: PathBuf,
    /// Connections served at once (default 256); more get a 503.
    pub max_connections: usize,
    /// Watch streams at once (default 64); more get a 429.
    pub max_watchers: usize,
    /// Longest request head, bytes (default 16 KiB); longer gets a 431.
    pub max_head_bytes: usize,
    /// Longest request body, bytes (default 64 KiB); longer gets a 413.
    pub max_body_bytes: usize,
    /// Time allowed to send the whole request head, and then the body (default 10 s).
    pub read_timeout: Duration,
    /// Time allowed for a response (or one watch event) to be written (default 10 s).
    pub write_timeout: Duration,
}

impl Default for ApiOptions {
    fn default() -> Self {
        Self {
            socket: Some(PathBuf::from(DEFAULT_SOCKET)),
            socket_group: None,
            http: None,
            token_file: PathBuf::from(DEFAULT_TOKEN_FILE),
            max_connections: 256,
            max_watchers: 64,
            max_head_bytes: 16 * 1024,
            max_body_bytes: 64 * 1024,
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// State shared by every connection.
pub(super) struct Shared {
    pub control: Arc<dyn Control>,
    pub token: String,
    pub opts: ApiOptions,
    pub watchers: Arc<Semaphore>,
    pub shutdown: watch::Receiver<bool>,
}

/// Serve one connection on any byte stream exactly as [`Server::run`] serves an
/// accepted one: the same request decoding, limits from `opts`, `token` for the
/// mutating routes, and (with `tcp`) the loopback `Host` rule. Returns once the
/// connection is answered (a watch stream: once the peer closes its side). For
/// fuzzing the real request path and for tests without sockets.
pub async fn serve_stream<S>(
    stream: S,
    control: Arc<dyn Control>,
    token: &str,
    opts: ApiOptions,
    tcp: bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let (_keep, shutdown) = watch::channel(false);
    let shared = Shared {
        control,
        token: token.to_owned(),
        watchers: Arc::new(Semaphore::new(opts.max_watchers)),
        opts,
        shutdown,
    };
    conn::handle(stream, &shared, tcp).await;
}

/// The unix socket file we created, removed on drop if it is still the same inode.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if m.dev() == self.dev && m.ino() == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Bound listeners, ready to [`Server::run`]. Dropping it closes them (and removes
/// the socket file).
pub struct Server {
    unix: Option<(UnixListener, SocketFile)>,
    tcp: Option<TcpListener>,
    token: String,
    opts: ApiOptions,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("socket", &self.socket_path())
            .field("http", &self.http_addr())
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

fn sock_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> ApiError + 'a {
    move |source| ApiError::Socket {
        path: path.to_owned(),
        what,
        source,
    }
}

/// Check what is at `path`: nothing, or a stale socket, is fine. A socket that
/// accepts a connection, or does not refuse one within a second, is in use.
async fn check_existing(path: &Path) -> Result<(), ApiError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(sock_err(path, "cannot inspect")(e)),
        Ok(m) if !m.file_type().is_socket() => Err(ApiError::NotASocket {
            path: path.to_owned(),
        }),
        Ok(_) => {
            let probe = tokio::net::UnixStream::connect(path);
            match tokio::time::timeout(Duration::from_secs(1), probe).await {
                Ok(Err(_)) => Ok(()), // nobody listens: stale, replaced by the rename
                Ok(Ok(_)) | Err(_) => Err(ApiError::SocketInUse {
                    path: path.to_owned(),
                }),
            }
        }
    }
}

async fn bind_unix(
    path: &Path,
    group: Option<u32>,
) -> Result<(UnixListener, SocketFile), ApiError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(sock_err(dir, "cannot create directory"))?;
    }
    check_existing(path).await?;
    let name = path
        .file_name()
        .map_or_else(|| "sonde.sock".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    if std::fs::symlink_metadata(&tmp).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(&tmp);
    }
    let std_listener =
        std::os::unix::net::UnixListener::bind(&tmp).map_err(sock_err(path, "cannot bind"))?;
    let setup = || -> Result<(), ApiError> {
        if let Some(gid) = group {
            std::os::unix::fs::chown(&tmp, None, Some(gid))
                .map_err(sock_err(path, "cannot set the socket's group"))?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))
            .map_err(sock_err(path, "cannot set mode 0660"))?;
        std::fs::rename(&tmp, path).map_err(sock_err(path, "cannot move the socket into place"))
    };
    if let Err(e) = setup() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let meta = std::fs::symlink_metadata(path).map_err(sock_err(path, "cannot inspect"))?;
    let file = SocketFile {
        path: path.to_owned(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    std_listener
        .set_nonblocking(true)
        .map_err(sock_err(path, "cannot make non-blocking"))?;
    let listener =
        UnixListener::from_std(std_listener).map_err(sock_err(path, "cannot register"))?;
    Ok((listener, file))
}

fn check_options(opts: &ApiOptions) -> Result<(), ApiError> {
    let positive = [
        ("max_connections", opts.max_connections),
        ("max_watchers", opts.max_watchers),
        ("max_head_bytes", opts.max_head_bytes),
        ("max_body_bytes", opts.max_body_bytes),
    ];
    for (name, v) in positive {
        if v == 0 || u32::try_from(v).is_err() {
            return Err(ApiError::Option {
                name,
                why: format!("{v} is out of range 1..=4294967295"),
            });
        }
    }
    if opts.socket.is_none() && opts.http.is_none() {
        return Err(ApiError::NothingToServe);
    }
    Ok(())
}

impl Server {
    /// Load (or create) the token, check the options and bind the listeners.
    ///
    /// # Errors
    /// See [`ApiError`]; nothing is left bound on error.
    pub async fn bind(opts: ApiOptions) -> Result<Self, ApiError> {
        check_options(&opts)?;
        if let Some(addr) = opts.http {
            if !addr.ip().to_canonical().is_loopback() {
                return Err(ApiError::NotLoopback { addr });
            }
        }
        let token = token::load_or_create(&opts.token_file)?;
        let unix = match &opts.socket {
            Some(path) => Some(bind_unix(path, opts.socket_group).await?),
            None => None,
        };
        let tcp = match opts.http {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ApiError::Bind { addr, source })?,
            ),
            None => None,
        };
        Ok(Self {
            unix,
            tcp,
            token,
            opts,
        })
    }

    /// The bound HTTP address (with the actual port when port 0 was asked for).
    #[must_use]
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The unix socket path.
    #[must_use]
    pub fn socket_path(&self) -> Option<&Path> {
        self.unix.as_ref().map(|(_, f)| f.path.as_path())
    }

    /// Serve until `shutdown` turns true (or its sender is dropped), then stop
    /// accepting, end watch streams, wait up to 5 s for requests in progress and
    /// remove the socket file.
    ///
    /// # Errors
    /// None at present once bound (accept errors are logged and retried); the
    /// `Result` leaves room for fatal listener errors.
    pub async fn run(
        self,
        control: Arc<dyn Control>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), ApiError> {
        let Server {
            unix,
            tcp,
            token,
            opts,
        } = self;
        let conns = Arc::new(Semaphore::new(opts.max_connections));
        let shared = Arc::new(Shared {
            control,
            token,
            watchers: Arc::new(Semaphore::new(opts.max_watchers)),
            opts,
            shutdown: shutdown.clone(),
        });
        let (unix_listener, socket_file) = match unix {
            Some((l, f)) => (Some(l), Some(f)),
            None => (None, None),
        };
        let mut stop = shutdown;
        loop {
            let accepted = tokio::select! {
                () = stopped(&mut stop) => break,
                r = accept_unix(unix_listener.as_ref()) => r.map(Conn::Unix),
                r = accept_tcp(tcp.as_ref()) => r.map(Conn::Tcp),
            };
            match accepted {
                Ok(conn) => dispatch(conn, &conns, &shared),
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        drop(unix_listener);
        drop(socket_file);
        drop(tcp);
        let all = u32::try_from(shared.opts.max_connections).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(Duration::from_secs(5), conns.acquire_many(all)).await;
        Ok(())
    }
}

/// Bind per `opts` and serve `control` until `shutdown` turns true.
///
/// # Errors
/// See [`Server::bind`] and [`Server::run`].
pub async fn serve(
    control: Arc<dyn Control>,
    opts: ApiOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ApiError> {
    Server::bind(opts).await?.run(control, shutdown).await
}

/// Resolves once the shutdown flag is true or its sender is gone.
pub(super) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

enum Conn {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn accept_unix(l: Option<&UnixListener>) -> io::Result<tokio::net::UnixStream> {
    match l {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

async fn accept_tcp(l: Option<&TcpListener>) -> io::Result<tokio::net::TcpStream> {
    match l {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

fn dispatch(conn: Conn, conns: &Arc<Semaphore>, shared: &Arc<Shared>) {
    let Ok(permit) = Arc::clone(conns).try_acquire_owned() else {
        // Over the limit: answer without waiting (a full socket buffer drops it).
        let busy =
            Response::error(503, "overloaded", "too many connections; retry later").to_bytes();
        let _ = match &conn {
            Conn::Unix(s) => s.try_write(&busy),
            Conn::Tcp(s) => s.try_write(&busy),
        };
        return;
    };
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        match conn {
            Conn::Unix(s) => conn::handle(s, &shared, false).await,
            Conn::Tcp(s) => {
                let _ = s.set_nodelay(true);
                conn::handle(s, &shared, true).await;
            }
        }
        drop(permit);
    });
}
