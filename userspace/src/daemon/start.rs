//! Starting, running and stopping the daemon.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{atomic::Ordering, Arc},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use parking_lot::{Mutex, RwLock};
use tokio::sync::broadcast;
use tracing::{info, warn};

use super::{
    checks::{prepare_all, EngineParts},
    persist, runner, Shared,
};
use crate::{
    api::{
        metrics::{MetricsInput, StateCounts},
        server::ApiOptions,
        server::Server,
        Control,
    },
    config,
    ebpf::{self, KernelProbes},
    engine::{
        budget::{
            self, Budgets, InFlight, PerTargetLimiter, RateLimit, SocketBudget, TargetLimits,
            TokenBucket,
        },
        raw::{iface_of, source_for},
        round::new_config,
        schedule::Scheduler,
        spec::ProbeSpec,
        tls::TlsConfigs,
        uring::{Engine, EngineConfig, StatelessParts},
        PacketSource, PortRange,
    },
    health::{HealthConfig, HealthTable},
    journal::{Journal, JournalOptions},
};

/// Cluster mode: checks and assignment come from etcd.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// etcd client URLs.
    pub endpoints: Vec<String>,
    /// This node's id.
    pub node_id: String,
    /// Key prefix.
    pub prefix: String,
    /// Membership lease TTL.
    pub lease_ttl: std::time::Duration,
    /// Connection settings (timeouts, TLS, user/password).
    pub etcd: crate::cluster::etcd::EtcdOptions,
}

/// How `sonde run` was invoked.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The checks file (standalone), or daemon settings only (cluster mode, optional).
    pub config: Option<PathBuf>,
    /// Cluster mode.
    pub cluster: Option<ClusterOptions>,
    /// Interface for the kernel programs (overrides the file's `[daemon] iface`).
    pub iface: Option<String>,
    /// Where the journal and the API token live.
    pub state_dir: PathBuf,
    /// Unix socket of the API.
    pub socket: PathBuf,
    /// The API token file (created on first start).
    pub token_file: PathBuf,
    /// Loopback HTTP address of the API and /metrics.
    pub http: Option<std::net::SocketAddr>,
    /// Time stateless probes in userspace even where eBPF works.
    pub userspace: bool,
    /// Probes per second per target address (origin protection); cluster-wide in
    /// cluster mode (each node enforces it divided by the live nodes).
    pub per_target_pps: f64,
    /// Probes per second per IPv4 /24 and IPv6 /64, if capped; cluster-wide likewise.
    pub per_prefix_pps: Option<f64>,
    /// Probes per second in all.
    pub global_pps: f64,
    /// Probes in flight at most.
    pub max_in_flight: u32,
    /// Become this unprivileged user after setting up (`--user`).
    pub user: Option<String>,
    /// Keep every capability (`--keep-capabilities`, for debugging only).
    pub keep_capabilities: bool,
}

/// Which interface carries the answers to stateless probes: the option, the file, or
/// the interface holding the source address towards the first stateless target.
fn pick_iface(
    opt: Option<&str>,
    file: Option<&str>,
    checks: &[crate::engine::spec::CheckSpec],
) -> Option<String> {
    if let Some(i) = opt.or(file) {
        return Some(i.to_owned());
    }
    let first = checks
        .iter()
        .find(|c| matches!(c.probe, ProbeSpec::TcpSyn | ProbeSpec::Icmp))?;
    let local = source_for(first.target.addr).ok()?;
    iface_of(local)
}

/// Run the daemon until SIGTERM or SIGINT.
///
/// # Errors
/// Invalid config, unusable state directory, engine or kernel setup failure.
pub fn run(opts: &RunOptions) -> Result<()> {
    let cfg = match &opts.config {
        Some(path) => config::load_file(path).map_err(|e| anyhow::anyhow!("{e}"))?,
        None if opts.cluster.is_some() => {
            config::parse_str("", "<cluster>").map_err(|e| anyhow::anyhow!("{e}"))?
        }
        None => bail!("--config FILE is needed without --etcd"),
    };
    if opts.cluster.is_some() && !cfg.checks.is_empty() {
        bail!("in cluster mode the checks live in etcd (sonde check add); the config file may only hold [daemon] and [defaults]");
    }
    // Stateless probes: kernel path, userspace fallback, or none.
    let ports: PortRange = cfg.daemon.ports;
    let iface = pick_iface(
        opts.iface.as_deref(),
        cfg.daemon.iface.as_deref(),
        &cfg.checks,
    );
    // In cluster mode any check may be assigned later: set up stateless probing
    // whenever there is an interface.
    let has_stateless = opts.cluster.is_some()
        || cfg
            .checks
            .iter()
            .any(|c| matches!(c.probe, ProbeSpec::TcpSyn | ProbeSpec::Icmp));
    // The prepared entries hold the specs from here on. (A copy kept in `cfg` lived as
    // long as the daemon: 230 bytes of each of a million checks.)
    let config::Config {
        checks,
        defaults,
        daemon,
    } = cfg;
    let tls = TlsConfigs::default();
    let entries = prepare_all(checks, &tls).map_err(|e| anyhow::anyhow!("{e}"))?;
    let nofile = budget::raise_nofile_soft_limit().unwrap_or(1024);
    info!(nofile, checks = entries.len(), "starting");

    let probe_cfg = new_config(ports);
    let mut kernel: Option<KernelProbes> = None;
    let mut stateless: Option<StatelessParts> = None;
    let mut clock = ("userspace".to_owned(), None);
    if let Some(dev) = &iface {
        let unavailable = if opts.userspace || daemon.userspace {
            Some("userspace timestamps requested".to_owned())
        } else {
            ebpf::availability().err().map(|e| e.to_string())
        };
        match unavailable {
            None => {
                let k = |e: ebpf::KernelError| anyhow::anyhow!(ebpf::error_chain(&e));
                let mut probes = KernelProbes::load().map_err(k)?;
                probes.set_config(&probe_cfg).map_err(k)?;
                let hook = daemon.answer_hook.with_resets(daemon.syn_ack_reset);
                probes.attach_with(dev, hook).map_err(k)?;
                probes.set_reset(daemon.syn_ack_reset).map_err(k)?;
                let events = probes.take_events().context("ring buffer already taken")?;
                stateless = Some(StatelessParts {
                    source: Box::new(events),
                    probe: probe_cfg,
                });
                kernel = Some(probes);
                clock = ("kernel".to_owned(), None);
            }
            Some(reason) => {
                warn!(%reason, "kernel programs not used; stateless probes are timed in userspace");
                match PacketSource::open(dev, probe_cfg) {
                    Ok(src) => {
                        stateless = Some(StatelessParts {
                            source: Box::new(src),
                            probe: probe_cfg,
                        })
                    }
                    Err(e) => {
                        warn!(error = %e, "no packet socket; tcp_syn and icmp checks will fail")
                    }
                }
                clock = ("userspace".to_owned(), Some(reason));
            }
        }
        if stateless.is_some() {
            ports
                .reserve()
                .with_context(|| format!("reserving probe ports {ports}"))?;
        }
    } else if has_stateless {
        warn!(
            "no interface for stateless probes (give --iface); tcp_syn and icmp checks will fail"
        );
        clock.1 = Some("no interface".to_owned());
    }

    std::fs::create_dir_all(&opts.state_dir)
        .with_context(|| format!("creating {}", opts.state_dir.display()))?;
    let (journal, replayed) = Journal::<persist::Record>::open(
        &opts.state_dir.join("journal"),
        JournalOptions {
            max_total_bytes: super::journal_budget(entries.len()),
            ..JournalOptions::default()
        },
    )
    .with_context(|| format!("opening the journal in {}", opts.state_dir.display()))?;

    // Least privilege, before the first thread starts (capabilities are per thread).
    least_privilege(opts, stateless.is_some())?;

    let engine = Engine::start(&EngineConfig::default(), stateless)
        .context("starting the io_uring engine")?;

    let now = tokio::time::Instant::now();
    let mut health = HealthTable::with_config(HealthConfig::default());
    let mut sched = Scheduler::new();
    let mono =
        || u64::try_from(crate::engine::uring::sys::monotonic_now().as_nanos()).unwrap_or(u64::MAX);
    for (_, e) in entries {
        let parts = EngineParts::new(e.prepared);
        let _ = health.insert(e.spec, now, parts);
    }
    let restored = persist::fold(replayed.into_iter().map(|e| e.record), 16, now);
    let mut resumed = 0;
    for (id, r) in restored {
        if let (Some(h), Some((state, since))) = (health.get_mut(&id), r.state) {
            h.restore(state, since, r.transitions, now);
            resumed += 1;
        }
    }
    info!(resumed, "state resumed from the journal");
    // First probes spread over one interval from now, when probing is about to start:
    // scheduled while loading, a million checks came due at once after the load.
    let t0 = mono();
    for (id, h) in health.iter() {
        let spec = h.spec();
        sched.add(id.clone(), spec.interval, spec.jitter, t0);
    }
    // Loading a large file peaks far above what the checks keep (the parsed document
    // of a million checks takes ~1.8 GB); give what was freed back to the system.
    super::release_freed_memory();

    let sockets = SocketBudget::from_rlimit(256).unwrap_or_else(|_| SocketBudget::new(768));
    let budgets = Budgets::new(
        TokenBucket::new(opts.global_pps, 1000).context("global rate")?,
        PerTargetLimiter::new(target_limits((opts.per_target_pps, opts.per_prefix_pps), 1))
            .context("per-target rate")?,
        InFlight::new(opts.max_in_flight),
        sockets,
    );
    let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
    // Room for a burst of one event per check (a node taking over thousands of checks at
    // once): the cluster node and API watchers that fall behind lose events (counted).
    let (events, _) = broadcast::channel(16_384);
    let shared = Arc::new(Shared {
        config_path: if opts.cluster.is_some() {
            None
        } else {
            opts.config.clone()
        },
        defaults: RwLock::new(defaults),
        policy: RwLock::new(daemon.policy.clone()),
        metrics_check_limit: std::sync::atomic::AtomicUsize::new(daemon.metrics_check_limit),
        health: Mutex::new(health),
        sched: Mutex::new(sched),
        budgets: Mutex::new(budgets),
        outstanding: Mutex::new(HashMap::new()),
        events,
        journal: Mutex::new(journal),
        engine,
        kernel: kernel.map(Mutex::new),
        tls,
        wake_tx,
        wake_rx,
        refused: 0.into(),
        target_caps: (opts.per_target_pps, opts.per_prefix_pps),
        target_share: 1.into(),
        stopping: false.into(),
        engine_closed: false.into(),
        started: Instant::now(),
        clock,
        iface,
        cluster: std::sync::OnceLock::new(),
        cluster_view: RwLock::new(
            opts.cluster
                .as_ref()
                .map(|c| crate::cluster::view::ClusterView::new(&c.node_id)),
        ),
    });

    let d = Arc::clone(&shared);
    let dispatcher = std::thread::Builder::new()
        .name("sonde-dispatch".into())
        .spawn(move || runner::dispatch(&d))?;
    let r = Arc::clone(&shared);
    let results = std::thread::Builder::new()
        .name("sonde-results".into())
        .spawn(move || runner::results(&r))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve_until_signal(Arc::clone(&shared), opts))?;

    info!("shutting down: in-flight probes finish or time out");
    shared.stopping.store(true, Ordering::Release);
    let _ = shared.wake_tx.try_send(());
    if dispatcher.join().is_err() {
        warn!("dispatcher panicked");
    }
    // In-flight probes finish or time out inside `close`; then the result loop drains
    // what is left (journaling every transition) and ends.
    shared.engine.close();
    shared.engine_closed.store(true, Ordering::Release);
    drop(rt);
    let _ = results.join();
    drop(shared);
    info!("stopped; kernel programs detached");
    Ok(())
}

/// Serve the API and wait for SIGTERM/SIGINT; SIGHUP reloads.
async fn serve_until_signal(shared: Arc<Shared>, opts: &RunOptions) -> Result<()> {
    let control: Arc<dyn Control> = Arc::clone(&shared) as Arc<dyn Control>;
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let api_opts = ApiOptions {
        socket: Some(opts.socket.clone()),
        http: opts.http,
        token_file: opts.token_file.clone(),
        ..ApiOptions::default()
    };
    if let Some(dir) = opts.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let server = Server::bind(api_opts).await.context("starting the API")?;
    info!(socket = %opts.socket.display(), http = ?server.http_addr(), "API listening");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let api = tokio::spawn(server.run(Arc::clone(&control), stop_rx.clone()));
    if shared
        .kernel
        .as_ref()
        .is_some_and(|k| k.lock().reset_state().mode == ebpf::ResetMode::Xdp)
    {
        tokio::spawn(guard_xdp_reset(Arc::clone(&shared), stop_rx.clone()));
    }
    if let Some(c) = &opts.cluster {
        let etcd = crate::cluster::etcd::Etcd::connect(&c.endpoints, c.etcd.clone())
            .await
            .with_context(|| format!("connecting to etcd at {}", c.endpoints.join(",")))?;
        let node = crate::cluster::node::NodeOptions {
            id: crate::cluster::assign::NodeId::new(&c.node_id),
            prefix: c.prefix.clone(),
            lease_ttl: c.lease_ttl,
            max_pending: 100_000,
        };
        tokio::spawn(refresh_cluster_view(
            Arc::clone(&shared),
            etcd.clone(),
            crate::cluster::keys::Keys::new(&c.prefix),
            c.node_id.clone(),
            stop_rx.clone(),
        ));
        let local: Arc<dyn crate::cluster::node::Local> = Arc::clone(&shared) as _;
        let stats = crate::cluster::node::spawn(etcd, node, local, stop_rx);
        let _ = shared.cluster.set((c.node_id.clone(), stats));
        info!(node = %c.node_id, "cluster node started");
    }
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match control.reload() {
                Ok(r) => info!(added = r.added.len(), changed = r.changed.len(), removed = r.removed.len(), "reloaded on SIGHUP"),
                Err(e) => warn!(error = %e, "reload refused; running checks unchanged"),
            },
        }
    }
    let _ = stop_tx.send(true);
    match tokio::time::timeout(std::time::Duration::from_secs(5), api).await {
        Ok(Ok(Err(e))) => warn!(error = %e, "API stopped with an error"),
        Ok(Err(e)) => warn!(error = %e, "API task failed"),
        Err(_) => warn!("API did not stop within 5 s"),
        Ok(Ok(Ok(()))) => {}
    }
    Ok(())
}

/// Prometheus text for the daemon's state.
/// The per-target caps a node enforces when `nodes` live nodes share the cluster-wide
/// caps: each gets an equal part, so all of them together never exceed the caps, however
/// the checks on one address are spread over them.
pub(super) fn target_limits(caps: (f64, Option<f64>), nodes: usize) -> TargetLimits {
    #[allow(clippy::cast_precision_loss)]
    let share = |pps: f64| RateLimit {
        rate_per_sec: pps / nodes.max(1) as f64,
        burst: 10,
    };
    TargetLimits {
        per_addr: share(caps.0),
        per_v4_24: caps.1.map(share),
        per_v6_64: caps.1.map(share),
        max_targets: 1 << 20,
    }
}

/// Drop what the daemon no longer needs (see [`super::privs`]): keep `CAP_NET_RAW` if
/// stateless probing is set up, and become `--user` (the state directory and a socket
/// directory sonde creates are given to it first).
fn least_privilege(opts: &RunOptions, raw_sockets: bool) -> Result<()> {
    use super::privs;
    let user = opts
        .user
        .as_deref()
        .map(privs::User::lookup)
        .transpose()
        .context("--user")?;
    if opts.keep_capabilities {
        if user.is_some() {
            bail!("--user and --keep-capabilities exclude each other: switching user drops capabilities");
        }
        warn!("--keep-capabilities: running with every capability the process started with");
        return Ok(());
    }
    if let Some(u) = &user {
        privs::chown_tree(&opts.state_dir, u)
            .with_context(|| format!("giving {} to user {}", opts.state_dir.display(), u.name))?;
        if let Some(dir) = opts.socket.parent().filter(|d| !d.exists()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            privs::chown_tree(dir, u)
                .with_context(|| format!("giving {} to user {}", dir.display(), u.name))?;
        }
        if opts.token_file.exists() && !opts.token_file.starts_with(&opts.state_dir) {
            privs::chown_tree(&opts.token_file, u).with_context(|| {
                format!("giving {} to user {}", opts.token_file.display(), u.name)
            })?;
        }
    }
    let keep: &[u32] = if raw_sockets {
        &[privs::CAP_NET_RAW]
    } else {
        &[]
    };
    privs::drop_privileges(keep, user.as_ref()).context("dropping privileges")?;
    Ok(())
}

/// Enforce the cluster-wide per-target caps as `live` nodes' equal parts from now on.
/// The buckets start anew (a change of membership is rare; the burst is 10 probes).
fn rescale_target_caps(shared: &Shared, live: usize) {
    let limits = target_limits(shared.target_caps, live);
    match PerTargetLimiter::new(limits) {
        Ok(l) => {
            *shared.budgets.lock().targets_mut() = l;
            shared.target_share.store(live, Ordering::Relaxed);
            info!(
                live,
                per_target_pps = limits.per_addr.rate_per_sec,
                "per-target caps shared by the live nodes"
            );
        }
        Err(e) => warn!(error = %e, "per-target caps unchanged"),
    }
}

/// The guard of resets from XDP (see `ebpf::reset`): once a second, until it turns
/// them off or the daemon stops.
async fn guard_xdp_reset(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let Some(kernel) = shared.kernel.as_ref() else {
            return;
        };
        let mut k = kernel.lock();
        match k.check_reset() {
            // The guard logs why it took them away from XDP.
            Ok(Some(_)) => return,
            Ok(None) if k.reset_state().mode != ebpf::ResetMode::Xdp => return,
            Ok(None) => {}
            Err(e) => {
                warn!(error = %ebpf::error_chain(&e), "cannot watch resets from XDP; handing them to the TC program");
                if let Err(e) = k.set_reset(ebpf::ResetMode::Tc) {
                    warn!(error = %ebpf::error_chain(&e), "cannot hand resets from XDP to the TC program");
                }
                return;
            }
        }
    }
}

/// Keep [`Shared::cluster_view`] fresh until shutdown; on a failed read keep the last
/// view and say why in it.
async fn refresh_cluster_view(
    shared: Arc<Shared>,
    etcd: crate::cluster::etcd::Etcd,
    keys: crate::cluster::keys::Keys,
    me: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use crate::cluster::view;
    loop {
        let read = tokio::time::timeout(view::REFRESH * 2, view::read(&etcd, &keys, &me)).await;
        {
            let mut slot = shared.cluster_view.write();
            let old = slot.get_or_insert_with(|| view::ClusterView::new(&me));
            match read {
                Ok(Ok(mut v)) => {
                    v.refreshed_unix_ms =
                        crate::health::state::unix_ms(std::time::SystemTime::now());
                    let live = v.nodes.len().max(1);
                    if live != shared.target_share.load(Ordering::Relaxed) {
                        rescale_target_caps(&shared, live);
                    }
                    *old = v;
                }
                Ok(Err(e)) => old.error = Some(e.to_string()),
                Err(_) => {
                    old.error = Some(format!(
                        "etcd did not answer within {:?}",
                        view::REFRESH * 2
                    ))
                }
            }
        }
        tokio::select! {
            _ = stop.wait_for(|v| *v) => return,
            () = tokio::time::sleep(view::REFRESH) => {}
        }
    }
}

pub(super) fn render_metrics(s: &Shared) -> String {
    let limit = s.metrics_check_limit.load(Ordering::Relaxed);
    let (statuses, outcomes, omitted) = if s.health.lock().len() <= limit {
        let (statuses, outcomes): (Vec<_>, _) = s
            .each_check(|h| {
                let status = h.status();
                let outcomes = (status.id.clone(), h.outcomes().collect());
                (status, outcomes)
            })
            .into_iter()
            .unzip();
        (statuses, outcomes, None)
    } else {
        // Counts only: a status per check would be gigabytes of text at a million.
        let mut counts = StateCounts::default();
        for state in s.each_check(crate::health::CheckHealth::state) {
            counts.add(state);
        }
        (Vec::new(), BTreeMap::new(), Some(counts))
    };
    let input = MetricsInput {
        info: s.info(),
        statuses,
        outcomes,
        engine: s.engine.stats(),
        budget: *s.budgets.lock().stats(),
        kernel: s.kernel.as_ref().and_then(|k| k.lock().counters().ok()),
        cluster: s.cluster_view.read().clone(),
        refused_checks: s.refused.load(Ordering::Relaxed),
        omitted,
    };
    let mut text = crate::api::metrics::render(&input);
    if let Some((node, stats)) = s.cluster.get() {
        text.push_str(&crate::cluster::node::render_metrics(node, stats));
    }
    text
}
