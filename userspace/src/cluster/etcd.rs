//! Resilient access to etcd: bounded unary calls with retries, and streams that resume.
//!
//! [`Etcd`] wraps `etcd-client` 0.21 and works around its gaps (see `shared/TOOLCHAIN.md`):
//!
//! - **One client per endpoint.** etcd-client keeps dead endpoints in its balanced pool
//!   (etcd-client#39), so [`Etcd`] holds one single-endpoint client per member and sends each
//!   call to a *current* endpoint; a retryable failure moves it to the next one. Errors name
//!   the endpoint that failed last.
//! - **Bounded unary calls.** Every attempt of a unary call is wrapped in
//!   `tokio::time::timeout` ([`EtcdOptions::timeout`]; not `ConnectOptions::with_timeout`,
//!   which also cuts streams and `campaign`). Attempts that fail with `Unavailable`-type
//!   statuses, transport errors or timeouts are retried on the next endpoint, with bounded
//!   exponential backoff after each round over all endpoints, until
//!   [`EtcdOptions::deadline`]. A call never runs longer than its deadline (plus scheduling).
//! - **Retried writes may apply twice.** An attempt that timed out may have been applied:
//!   `put` and `delete` are idempotent in effect; a retried `txn` sees its own earlier effect
//!   (guard transactions with compares); `lease_grant` may leave an orphan lease that expires
//!   by TTL.
//! - **Streams that resume.** [`Etcd::watch_prefix`] reopens after errors from the last seen
//!   revision + 1 (no gaps, no duplicates) and reports compaction explicitly;
//!   [`Etcd::keep_alive`] renews a lease in the background, reopens its stream after errors
//!   and publishes a [`LeaseState`] whose `expires_at` is measured on the local clock from
//!   the moment each renewal was *sent*, so a holder can step down before etcd expires it.
//!
//! The module knows nothing of sonde's key layout or cluster rules.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client as ec;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use etcd_client::{Compare, CompareOp, LeaderKey, Txn, TxnOp, TxnOpResponse, TxnResponse};

/// etcd's default `--grpc-keepalive-min-time`: HTTP/2 pings more often make etcd drop the
/// connection, so [`EtcdOptions::keepalive_interval`] may not be shorter.
pub const MIN_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// Client TLS material, as PEM files.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    /// CA certificate(s) that signed the members' server certificates.
    pub ca: PathBuf,
    /// Client certificate, for members that require one (needs `key` too).
    pub cert: Option<PathBuf>,
    /// Private key of `cert`.
    pub key: Option<PathBuf>,
}

/// Settings of [`Etcd::connect`].
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Bound of one attempt of a unary call (default 2 s).
    pub timeout: Duration,
    /// Bound of one unary call, retries included (default 6 s).
    pub deadline: Duration,
    /// User name for etcd authentication (with `password`).
    pub user: Option<String>,
    /// Password of `user`.
    pub password: Option<String>,
    /// TLS; endpoints must then be `https://` URLs or bare `host:port`.
    pub tls: Option<EtcdTls>,
    /// HTTP/2 keep-alive ping interval on open streams (default 10 s, at least
    /// [`MIN_KEEPALIVE_INTERVAL`]).
    pub keepalive_interval: Duration,
    /// How long a keep-alive ping may stay unanswered before the connection is dropped
    /// (default 5 s).
    pub keepalive_timeout: Duration,
    /// First pause between retry rounds (default 50 ms); doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest pause between retry rounds (default 1 s).
    pub backoff_max: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(6),
            user: None,
            password: None,
            tls: None,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
        }
    }
}

/// Which call failed, where, and after how much effort.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallInfo {
    /// Operation (`get`, `put`, `txn`, `campaign`, ...).
    pub op: &'static str,
    /// Key, prefix, lease or election name the operation was about.
    pub key: String,
    /// Endpoint of the last attempt.
    pub endpoint: String,
    /// Attempts made.
    pub attempts: u32,
    /// Time spent on the call.
    pub elapsed: Duration,
}

impl std::fmt::Display for CallInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (op, key, endpoint) = (self.op, &self.key, &self.endpoint);
        let (attempts, elapsed) = (self.attempts, self.elapsed);
        write!(
            f,
            "etcd {op} `{key}` at {endpoint} ({attempts} attempts in {elapsed:.2?})"
        )
    }
}

/// What went wrong with an etcd operation; all but `Config` name operation, key, endpoint.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The options or endpoints cannot work; nothing was sent.
    #[error("etcd configuration: {0}")]
    Config(String),
    /// No endpoint served the call before its deadline; the last failure was a transport
    /// error or a retryable status (member down, unreachable, no leader).
    #[error("{call}: unavailable: {last}")]
    Unavailable {
        /// The call.
        call: CallInfo,
        /// The last attempt's error.
        last: String,
    },
    /// The last attempt got no answer within its bound (etcd stalled; for `campaign`: not
    /// elected in time).
    #[error("{call}: no answer within {after:?}")]
    Timeout {
        /// The call.
        call: CallInfo,
        /// Bound of the last attempt.
        after: Duration,
    },
    /// etcd answered with an error that retrying cannot fix (bad request, permission,
    /// missing lease, compacted revision, ...).
    #[error("{call}: {source}")]
    Rejected {
        /// The call.
        call: CallInfo,
        /// The client's error.
        #[source]
        source: ec::Error,
    },
}

impl EtcdError {
    /// True when etcd could not be reached in time (as opposed to refusing the request):
    /// the caller should keep going on its last known state and try again later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Timeout { .. })
    }

    /// The failed call (`None` for `Config`).
    pub fn call(&self) -> Option<&CallInfo> {
        match self {
            Self::Config(_) => None,
            Self::Unavailable { call, .. } | Self::Timeout { call, .. } => Some(call),
            Self::Rejected { call, .. } => Some(call),
        }
    }
}

/// A stored key and its value with etcd's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// Key.
    pub key: Vec<u8>,
    /// Value.
    pub value: Vec<u8>,
    /// Revision that created the key.
    pub create_revision: i64,
    /// Revision of the last change.
    pub mod_revision: i64,
    /// Number of changes since creation.
    pub version: i64,
    /// Lease the key is attached to (0: none).
    pub lease: i64,
}

impl From<&ec::KeyValue> for KeyValue {
    fn from(kv: &ec::KeyValue) -> Self {
        Self {
            key: kv.key().to_vec(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
            lease: kv.lease(),
        }
    }
}

/// The keys under a prefix, read at one revision.
#[derive(Clone, Debug)]
pub struct Listing {
    /// Store revision the listing was read at: watch from `revision + 1` to follow it.
    pub revision: i64,
    /// Keys in key order.
    pub kvs: Vec<KeyValue>,
}

/// A granted lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Lease id.
    pub id: i64,
    /// TTL granted by etcd.
    pub ttl: Duration,
}

/// One change under a watched prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// Revision of the change (the changes of one transaction share it).
    pub revision: i64,
    /// Changed key.
    pub key: Vec<u8>,
    /// New value; `None` for a deletion.
    pub value: Option<Vec<u8>>,
}

/// What a [`PrefixWatch`] delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchUpdate {
    /// A change, in revision order.
    Event(WatchEvent),
    /// The history from `requested` to `compact_revision - 1` was compacted away: changes
    /// in it are lost, the watch goes on from `compact_revision`. Re-read the prefix.
    Compacted {
        /// First revision the watch wanted.
        requested: i64,
        /// First revision still available.
        compact_revision: i64,
    },
    /// The stream broke (sent once per outage); it is being reopened.
    Interrupted {
        /// Endpoint whose stream or reopening failed.
        endpoint: String,
        /// Why.
        error: String,
    },
    /// The stream is open again after an [`WatchUpdate::Interrupted`].
    Resumed {
        /// Endpoint now serving the watch.
        endpoint: String,
        /// Revision it resumed from.
        from_revision: i64,
    },
}

/// A watch on a prefix that survives member failures; dropping it stops the watch.
#[derive(Debug)]
pub struct PrefixWatch {
    rx: mpsc::Receiver<WatchUpdate>,
    task: JoinHandle<()>,
}

impl PrefixWatch {
    /// The next update; `None` only if the background task ended (runtime shutdown).
    pub async fn next(&mut self) -> Option<WatchUpdate> {
        self.rx.recv().await
    }

    /// The underlying receiver (e.g. for `tokio::select!`).
    pub fn receiver(&mut self) -> &mut mpsc::Receiver<WatchUpdate> {
        &mut self.rx
    }
}

impl Drop for PrefixWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the holder of a kept-alive lease knows, on its own clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseState {
    /// The lease is held as far as this node can tell: the last acknowledged renewal has not
    /// run out yet. False before the first renewal, after `expires_at` and once `lost`.
    pub alive: bool,
    /// etcd said the lease no longer exists (or refused to renew it); renewing stopped for
    /// good.
    pub lost: bool,
    /// When the last acknowledged renewal was sent (the keeper's start before the first).
    pub last_renewal: Instant,
    /// `last_renewal` + the TTL etcd granted: etcd cannot expire the lease earlier. Step down
    /// before this (minus a margin of your choice).
    pub expires_at: Instant,
}

/// Renews a lease in the background; dropping it stops renewing (the lease then expires).
#[derive(Debug)]
pub struct LeaseKeepAlive {
    lease_id: i64,
    state: watch::Receiver<LeaseState>,
    tasks: [JoinHandle<()>; 2],
}

impl LeaseKeepAlive {
    /// The lease being renewed.
    pub fn lease_id(&self) -> i64 {
        self.lease_id
    }

    /// A receiver of state changes (renewals, expiry on the local clock, loss).
    pub fn state(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }

    /// The state now.
    pub fn current(&self) -> LeaseState {
        *self.state.borrow()
    }
}

impl Drop for LeaseKeepAlive {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

struct Slot {
    endpoint: String,
    client: Mutex<Option<ec::Client>>,
}

struct Inner {
    slots: Vec<Slot>,
    current: AtomicUsize,
    opts: EtcdOptions,
    connect: ec::ConnectOptions,
}

/// A resilient etcd handle; cheap to clone, all clones share connections.
#[derive(Clone)]
pub struct Etcd {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.endpoints())
            .finish()
    }
}

impl Etcd {
    /// Prepares one client per endpoint (`http://host:port`, `https://...` or `host:port`).
    ///
    /// etcd need not be reachable: endpoints that cannot be set up now (authentication needs
    /// a round trip) are retried by the calls. Fails on invalid options, unreadable TLS files,
    /// a malformed endpoint or rejected credentials.
    pub async fn connect<S: AsRef<str>>(
        endpoints: &[S],
        opts: EtcdOptions,
    ) -> Result<Etcd, EtcdError> {
        let connect = connect_options(&opts)?;
        let slots: Vec<Slot> = endpoints
            .iter()
            .map(|e| Slot {
                endpoint: e.as_ref().to_string(),
                client: Mutex::new(None),
            })
            .collect();
        let etcd = Etcd {
            inner: Arc::new(Inner {
                slots,
                current: AtomicUsize::new(0),
                opts,
                connect,
            }),
        };
        for idx in 0..etcd.inner.slots.len() {
            let start = Instant::now();
            let res = tokio::time::timeout(etcd.inner.opts.timeout, etcd.client(idx)).await;
            if let Ok(Err(source)) = res {
                if !retryable(&source) {
                    let call = CallInfo {
                        op: "connect",
                        key: String::new(),
                        endpoint: etcd.endpoint(idx),
                        attempts: 1,
                        elapsed: start.elapsed(),
                    };
                    return Err(EtcdError::Rejected { call, source });
                }
            }
        }
        Ok(etcd)
    }

    /// The endpoints, in the order given to [`Etcd::connect`].
    pub fn endpoints(&self) -> Vec<String> {
        self.inner
            .slots
            .iter()
            .map(|s| s.endpoint.clone())
            .collect()
    }

    /// The options in force.
    pub fn options(&self) -> &EtcdOptions {
        &self.inner.opts
    }

    /// Reads one key (linearizable).
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<KeyValue>, EtcdError> {
        let key = key.as_ref();
        let resp = self.call("get", key, |mut c| async move { c.get(key, None).await });
        Ok(resp.await?.kvs().first().map(KeyValue::from))
    }

    /// Reads every key under `prefix` (linearizable), with the revision read at.
    pub async fn get_prefix(&self, prefix: impl AsRef<[u8]>) -> Result<Listing, EtcdError> {
        let (key, opts) = (prefix.as_ref(), &ec::GetOptions::new().with_prefix());
        let resp = self.call("get_prefix", key, |mut c| async move {
            c.get(key, Some(opts.clone())).await
        });
        let resp = resp.await?;
        let kvs = resp.kvs().iter().map(KeyValue::from).collect();
        Ok(Listing {
            revision: header_revision(resp.header()),
            kvs,
        })
    }

    /// A cheap fingerprint of everything under `prefix`: how many keys there are and the
    /// highest mod revision among them (one key read, no values). Any put under the
    /// prefix raises the maximum and any delete lowers the count, so an unchanged stamp
    /// means an unchanged prefix: re-read it only when the stamp moved.
    pub async fn prefix_stamp(&self, prefix: impl AsRef<[u8]>) -> Result<(i64, i64), EtcdError> {
        let opts = &ec::GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_sort(ec::SortTarget::Mod, ec::SortOrder::Descend)
            .with_limit(1);
        let key = prefix.as_ref();
        let resp = self.call("prefix_stamp", key, |mut c| async move {
            c.get(key, Some(opts.clone())).await
        });
        let resp = resp.await?;
        let max = resp.kvs().first().map_or(0, ec::KeyValue::mod_revision);
        Ok((resp.count(), max))
    }

    /// Writes `key`, attached to `lease` if given; returns the revision of the write.
    pub async fn put(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        lease: Option<i64>,
    ) -> Result<i64, EtcdError> {
        let (key, value) = (key.as_ref(), value.as_ref());
        let opts = &lease.map(|l| ec::PutOptions::new().with_lease(l));
        let resp = self.call("put", key, |mut c| async move {
            c.put(key, value, opts.clone()).await
        });
        Ok(header_revision(resp.await?.header()))
    }

    /// Deletes `key`; returns how many keys were deleted (0 or 1) and the revision.
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<(i64, i64), EtcdError> {
        self.delete_with("delete", key.as_ref(), None).await
    }

    /// Deletes every key under `prefix`; returns how many were deleted and the revision.
    pub async fn delete_prefix(&self, prefix: impl AsRef<[u8]>) -> Result<(i64, i64), EtcdError> {
        let opts = ec::DeleteOptions::new().with_prefix();
        self.delete_with("delete_prefix", prefix.as_ref(), Some(opts))
            .await
    }

    async fn delete_with(
        &self,
        op: &'static str,
        key: &[u8],
        opts: Option<ec::DeleteOptions>,
    ) -> Result<(i64, i64), EtcdError> {
        let opts = &opts;
        let resp = self.call(
            op,
            key,
            |mut c| async move { c.delete(key, opts.clone()).await },
        );
        let resp = resp.await?;
        Ok((resp.deleted(), header_revision(resp.header())))
    }

    /// Runs a transaction; `what` names its keys in errors. See the module doc on retries.
    pub async fn txn(&self, what: &str, txn: Txn) -> Result<TxnResponse, EtcdError> {
        let txn = &txn;
        self.call("txn", what.as_bytes(), |mut c| async move {
            c.txn(txn.clone()).await
        })
        .await
    }

    /// Compacts the history before `revision` (watches from older revisions then get
    /// [`WatchUpdate::Compacted`]).
    pub async fn compact(&self, revision: i64) -> Result<(), EtcdError> {
        let key = format!("revision {revision}");
        let resp = self.call("compact", key.as_bytes(), |mut c| async move {
            c.compact(revision, None).await
        });
        resp.await.map(drop)
    }

    /// Grants a lease of `ttl` (rounded up to whole seconds, at least 1 s).
    pub async fn lease_grant(&self, ttl: Duration) -> Result<Lease, EtcdError> {
        let secs = (ttl.as_secs() as i64 + i64::from(ttl.subsec_nanos() > 0)).max(1);
        let key = format!("ttl {secs}s");
        let resp = self.call("lease_grant", key.as_bytes(), |mut c| async move {
            c.lease_grant(secs, None).await
        });
        let resp = resp.await?;
        let ttl = Duration::from_secs(resp.ttl().max(0) as u64);
        Ok(Lease { id: resp.id(), ttl })
    }

    /// Revokes a lease, deleting its keys. A lease that is already gone is not an error.
    pub async fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        let key = format!("lease {id:x}");
        let resp = self.call("lease_revoke", key.as_bytes(), |mut c| async move {
            c.lease_revoke(id).await
        });
        match resp.await {
            Err(EtcdError::Rejected { source, .. }) if is_status(&source, "lease not found") => {
                Ok(())
            }
            r => r.map(drop),
        }
    }

    /// The remaining TTL of a lease on etcd's clock; `None` if it does not exist (anymore).
    pub async fn lease_time_to_live(&self, id: i64) -> Result<Option<Duration>, EtcdError> {
        let key = format!("lease {id:x}");
        let resp = self.call("lease_time_to_live", key.as_bytes(), |mut c| async move {
            c.lease_time_to_live(id, None).await
        });
        let ttl = resp.await?.ttl();
        Ok((ttl >= 0).then(|| Duration::from_secs(ttl as u64)))
    }

    /// Campaigns in election `name` with `value`, tied to `lease`; waits up to `wait` to be
    /// elected ([`EtcdError::Timeout`] if not; the candidacy is then withdrawn by etcd).
    pub async fn campaign(
        &self,
        name: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        lease: i64,
        wait: Duration,
    ) -> Result<LeaderKey, EtcdError> {
        let (name, value) = (name.as_ref(), value.as_ref());
        let missing = || ec::Error::ElectError("campaign answer without leader key".into());
        self.call_with("campaign", name, wait, wait, |mut c| async move {
            c.campaign(name, value, lease)
                .await?
                .take_leader()
                .ok_or_else(missing)
        })
        .await
    }

    /// The current leader's key and value in election `name`, `None` if there is none.
    pub async fn leader(&self, name: impl AsRef<[u8]>) -> Result<Option<KeyValue>, EtcdError> {
        let name = name.as_ref();
        match self
            .call("leader", name, |mut c| async move { c.leader(name).await })
            .await
        {
            Ok(resp) => Ok(resp.kv().map(KeyValue::from)),
            Err(EtcdError::Rejected { source, .. })
                if is_status(&source, "election: no leader") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Gives up leadership held with `leader`. Not being the leader (anymore) is not an
    /// error.
    pub async fn resign(&self, leader: &LeaderKey) -> Result<(), EtcdError> {
        let opts = &ec::ResignOptions::new().with_leader(leader.clone());
        let resp = self.call("resign", leader.name(), |mut c| async move {
            c.resign(Some(opts.clone())).await
        });
        match resp.await {
            Err(EtcdError::Rejected { source, .. })
                if is_status(&source, "election: not leader") =>
            {
                Ok(())
            }
            r => r.map(drop),
        }
    }

    /// Watches every key under `prefix` from `from_revision` (0: from now on), reopening
    /// the stream after errors from the last delivered revision + 1. Needs a Tokio runtime.
    pub fn watch_prefix(&self, prefix: impl AsRef<[u8]>, from_revision: i64) -> PrefixWatch {
        let (tx, rx) = mpsc::channel(256);
        let task = tokio::spawn(run_watch(
            self.clone(),
            prefix.as_ref().to_vec(),
            from_revision,
            tx,
        ));
        PrefixWatch { rx, task }
    }

    /// Keeps lease `lease_id` (granted with `ttl`) alive in the background: renews every
    /// `ttl / 3` and reopens the keep-alive stream after errors. The first renewal is sent
    /// at once. Needs a Tokio runtime.
    pub fn keep_alive(&self, lease_id: i64, ttl: Duration) -> LeaseKeepAlive {
        let now = Instant::now();
        let (tx, rx) = watch::channel(LeaseState {
            alive: false,
            lost: false,
            last_renewal: now,
            expires_at: now,
        });
        let tx = Arc::new(tx);
        let renew = tokio::spawn(run_keep_alive(self.clone(), lease_id, ttl, tx.clone()));
        let watchdog = tokio::spawn(run_expiry_watchdog(tx));
        LeaseKeepAlive {
            lease_id,
            state: rx,
            tasks: [renew, watchdog],
        }
    }

    fn current(&self) -> usize {
        self.inner.current.load(Ordering::Acquire) % self.inner.slots.len()
    }

    fn endpoint(&self, idx: usize) -> String {
        self.inner.slots[idx].endpoint.clone()
    }

    /// Moves the current endpoint past `idx` (unless another task already did).
    fn rotate(&self, idx: usize) {
        let next = (idx + 1) % self.inner.slots.len();
        let _ = self
            .inner
            .current
            .compare_exchange(idx, next, Ordering::AcqRel, Ordering::Relaxed);
    }

    async fn client(&self, idx: usize) -> Result<ec::Client, ec::Error> {
        let slot = &self.inner.slots[idx];
        if let Some(c) = slot.client.lock().clone() {
            return Ok(c);
        }
        let c =
            ec::Client::connect([slot.endpoint.as_str()], Some(self.inner.connect.clone())).await?;
        *slot.client.lock() = Some(c.clone());
        Ok(c)
    }

    async fn call<T, F, Fut>(&self, op: &'static str, key: &[u8], f: F) -> Result<T, EtcdError>
    where
        F: FnMut(ec::Client) -> Fut,
        Fut: Future<Output = Result<T, ec::Error>>,
    {
        let (timeout, deadline) = (self.inner.opts.timeout, self.inner.opts.deadline);
        self.call_with(op, key, timeout, deadline, f).await
    }

    /// Runs `f` against the current endpoint, each attempt bounded by `timeout`, retrying
    /// retryable failures on the next endpoint until `deadline` has passed.
    async fn call_with<T, F, Fut>(
        &self,
        op: &'static str,
        key: &[u8],
        timeout: Duration,
        deadline: Duration,
        mut f: F,
    ) -> Result<T, EtcdError>
    where
        F: FnMut(ec::Client) -> Fut,
        Fut: Future<Output = Result<T, ec::Error>>,
    {
        let start = Instant::now();
        let end = start + deadline;
        let mut backoff = Backoff::new(&self.inner.opts);
        let mut attempts = 0u32;
        loop {
            let idx = self.current();
            attempts += 1;
            let bound = timeout.min(end.saturating_duration_since(Instant::now()));
            let attempt = async { f(self.client(idx).await?).await };
            let result = tokio::time::timeout(bound, attempt).await;
            let call = || CallInfo {
                op,
                key: lossy(key),
                endpoint: self.endpoint(idx),
                attempts,
                elapsed: start.elapsed(),
            };
            let last = match result {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(source)) if !retryable(&source) => {
                    return Err(EtcdError::Rejected {
                        call: call(),
                        source,
                    })
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => None,
            };
            self.rotate(idx);
            if (attempts as usize).is_multiple_of(self.inner.slots.len()) {
                let left = end.saturating_duration_since(Instant::now());
                tokio::time::sleep(backoff.next().min(left)).await;
            }
            if Instant::now() + Duration::from_millis(1) >= end {
                return Err(match last {
                    Some(last) => EtcdError::Unavailable { call: call(), last },
                    None => EtcdError::Timeout {
                        call: call(),
                        after: bound,
                    },
                });
            }
        }
    }
}

fn connect_options(opts: &EtcdOptions) -> Result<ec::ConnectOptions, EtcdError> {
    let bad = |m: String| Err(EtcdError::Config(m));
    if opts.timeout.is_zero() || opts.deadline.is_zero() {
        return bad("timeout and deadline must be positive".into());
    }
    if opts.keepalive_interval < MIN_KEEPALIVE_INTERVAL {
        return bad(format!(
            "keepalive_interval {:?} is below etcd's --grpc-keepalive-min-time ({:?}): etcd \
             would drop the connection",
            opts.keepalive_interval, MIN_KEEPALIVE_INTERVAL
        ));
    }
    let mut co = ec::ConnectOptions::new()
        .with_keep_alive(opts.keepalive_interval, opts.keepalive_timeout)
        .with_connect_timeout(opts.timeout)
        .with_require_leader(true);
    match (&opts.user, &opts.password) {
        (Some(u), Some(p)) => co = co.with_user(u, p).with_auto_token_refresh(true),
        (None, None) => {}
        _ => return bad("user and password go together".into()),
    }
    if let Some(tls) = &opts.tls {
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p)
                .map_err(|e| EtcdError::Config(format!("TLS {what} {}: {e}", p.display())))
        };
        let mut t =
            ec::TlsOptions::new().ca_certificate(ec::Certificate::from_pem(read(&tls.ca, "CA")?));
        match (&tls.cert, &tls.key) {
            (Some(c), Some(k)) => {
                t = t.identity(ec::Identity::from_pem(read(c, "cert")?, read(k, "key")?));
            }
            (None, None) => {}
            _ => return bad("TLS cert and key go together".into()),
        }
        co = co.with_tls(t);
    }
    Ok(co)
}

/// Whether a failed attempt may succeed on another endpoint or later.
fn retryable(e: &ec::Error) -> bool {
    match e {
        ec::Error::TransportError(_) | ec::Error::IoError(_) | ec::Error::WatchError(_) => true,
        ec::Error::LeaseKeepAliveError(m) => m != "lease not found",
        ec::Error::GRpcStatus(s) => match i32::from(s.code()) {
            // Cancelled, DeadlineExceeded, ResourceExhausted, Aborted, Unavailable.
            1 | 4 | 8 | 10 | 14 => true,
            // Unknown, Internal: only connection-level trouble (etcd reports some of its own
            // errors, e.g. "election: no leader", as Unknown).
            2 | 13 => [
                "h2 protocol",
                "transport",
                "connection",
                "broken pipe",
                "reset",
            ]
            .iter()
            .any(|w| s.message().contains(w)),
            _ => false,
        },
        _ => false,
    }
}

/// Whether `e` is an answer from etcd whose message contains `text`.
fn is_status(e: &ec::Error, text: &str) -> bool {
    matches!(e, ec::Error::GRpcStatus(s) if s.message().contains(text))
}

fn header_revision(h: Option<&ec::ResponseHeader>) -> i64 {
    h.map_or(0, ec::ResponseHeader::revision)
}

fn lossy(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// Exponential backoff with ±25 % jitter.
struct Backoff {
    cur: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn new(opts: &EtcdOptions) -> Self {
        Self {
            cur: opts.backoff_min,
            min: opts.backoff_min,
            max: opts.backoff_max.max(opts.backoff_min),
        }
    }

    fn next(&mut self) -> Duration {
        let d = self.cur.mul_f64(0.75 + rand::random::<f64>() * 0.5);
        self.cur = (self.cur * 2).min(self.max);
        d
    }

    fn reset(&mut self) {
        self.cur = self.min;
    }
}

async fn run_watch(etcd: Etcd, prefix: Vec<u8>, from: i64, tx: mpsc::Sender<WatchUpdate>) {
    let mut next = from.max(0);
    let mut broken = false;
    let mut backoff = Backoff::new(&etcd.inner.opts);
    let timeout = etcd.inner.opts.timeout;
    loop {
        let idx = etcd.current();
        let endpoint = etcd.endpoint(idx);
        let opts = ec::WatchOptions::new()
            .with_prefix()
            .with_start_revision(next);
        let open = async {
            let mut c = etcd.client(idx).await?;
            c.watch(prefix.clone(), Some(opts)).await
        };
        let failure = match tokio::time::timeout(timeout, open).await {
            Ok(Ok(mut stream)) => loop {
                let msg = tokio::select! {
                    m = stream.message() => m,
                    _ = tx.closed() => return,
                };
                let resp = match msg {
                    Ok(Some(resp)) => resp,
                    Ok(None) => break Some("stream closed by the server".to_string()),
                    Err(e) => break Some(e.to_string()),
                };
                if resp.compact_revision() > 0 {
                    let compact_revision = resp.compact_revision();
                    let requested = next;
                    next = compact_revision;
                    let up = WatchUpdate::Compacted {
                        requested,
                        compact_revision,
                    };
                    if tx.send(up).await.is_err() {
                        return;
                    }
                    break None;
                }
                if resp.canceled() {
                    break Some(format!("watch canceled: {}", resp.cancel_reason()));
                }
                let header_rev = header_revision(resp.header());
                if resp.created() {
                    if next == 0 {
                        next = header_rev + 1;
                    }
                    if std::mem::take(&mut broken) {
                        backoff.reset();
                        let up = WatchUpdate::Resumed {
                            endpoint: endpoint.clone(),
                            from_revision: next,
                        };
                        if tx.send(up).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                if resp.events().is_empty() {
                    // Progress notification: every later event is above the header revision.
                    next = next.max(header_rev + 1);
                    continue;
                }
                let floor = next;
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let revision = kv.mod_revision();
                    if revision < floor {
                        continue; // already delivered before a reopen
                    }
                    let value = match ev.event_type() {
                        ec::EventType::Put => Some(kv.value().to_vec()),
                        ec::EventType::Delete => None,
                    };
                    next = next.max(revision + 1);
                    let key = kv.key().to_vec();
                    let up = WatchUpdate::Event(WatchEvent {
                        revision,
                        key,
                        value,
                    });
                    if tx.send(up).await.is_err() {
                        return;
                    }
                }
            },
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("watch not opened within {timeout:?}")),
        };
        let Some(error) = failure else { continue }; // compaction: reopen at once
        if !std::mem::replace(&mut broken, true) {
            let up = WatchUpdate::Interrupted { endpoint, error };
            if tx.send(up).await.is_err() {
                return;
            }
        }
        etcd.rotate(idx);
        tokio::time::sleep(backoff.next()).await;
    }
}

async fn run_keep_alive(etcd: Etcd, id: i64, ttl: Duration, tx: Arc<watch::Sender<LeaseState>>) {
    let interval = (ttl / 3).max(Duration::from_millis(100));
    let timeout = etcd.inner.opts.timeout.min(interval);
    let mut backoff = Backoff::new(&etcd.inner.opts);
    backoff.max = backoff.max.min(interval);
    let renewed = |sent: Instant, ttl: Duration| {
        tx.send_modify(|s| {
            s.alive = sent + ttl > Instant::now();
            s.last_renewal = sent;
            s.expires_at = sent + ttl;
        })
    };
    let lost = || tx.send_modify(|s| (s.alive, s.lost) = (false, true));
    loop {
        let idx = etcd.current();
        let mut sent = Instant::now();
        let open = async { etcd.client(idx).await?.lease_client().keep_alive(id).await };
        let (mut keeper, mut stream) = match tokio::time::timeout(timeout, open).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) if !retryable(&e) => return lost(),
            Ok(Err(_)) | Err(_) => {
                etcd.rotate(idx);
                tokio::time::sleep(backoff.next()).await;
                continue;
            }
        };
        renewed(sent, ttl);
        backoff.reset();
        loop {
            // Between renewals, a broken stream is noticed at once and reopened elsewhere.
            tokio::select! {
                _ = tokio::time::sleep_until((sent + interval).into()) => {}
                m = stream.message() => match m {
                    Ok(Some(r)) if r.ttl() <= 0 => return lost(),
                    _ => break,
                },
            }
            sent = Instant::now();
            if keeper.keep_alive().await.is_err() {
                break;
            }
            match tokio::time::timeout(timeout, stream.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {
                    renewed(sent, Duration::from_secs(r.ttl() as u64))
                }
                Ok(Ok(Some(_))) => return lost(),
                _ => break,
            }
        }
        etcd.rotate(idx);
    }
}

/// Turns `alive` off when `expires_at` passes without a newer renewal.
async fn run_expiry_watchdog(tx: Arc<watch::Sender<LeaseState>>) {
    let mut rx = tx.subscribe();
    loop {
        let s = *rx.borrow_and_update();
        if s.lost {
            return;
        }
        if s.alive {
            tokio::select! {
                _ = tokio::time::sleep_until(s.expires_at.into()) => {
                    tx.send_if_modified(|st| {
                        let expired = st.alive && Instant::now() >= st.expires_at;
                        st.alive &= !expired;
                        expired
                    });
                }
                _ = rx.changed() => {}
            }
        } else if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
#[path = "etcd_tests.rs"]
mod tests;
