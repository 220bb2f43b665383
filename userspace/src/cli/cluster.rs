//! `sonde nodes` and `sonde leader`: the cluster as etcd holds it; and [`EtcdArgs`], how
//! every command that talks to etcd finds it (`sonde run`, `check`, `status`, `watch`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::cluster::{
    etcd::{Etcd, EtcdOptions, EtcdTls},
    keys::Keys,
};

/// Where the cluster's etcd is and how to log in: the same global options for the daemon
/// (`sonde run --etcd`: cluster mode) and for the client commands (`sonde check|status|
/// watch --etcd`: the cluster instead of the local daemon; `sonde nodes|leader`).
#[derive(Debug, Clone, Default, Args)]
pub struct EtcdArgs {
    /// etcd client URLs (comma-separated): cluster mode; client commands then read and
    /// write the cluster in etcd instead of asking the local daemon.
    #[arg(long, value_delimiter = ',', value_name = "URLS", global = true)]
    pub etcd: Vec<String>,
    /// Key prefix in etcd.
    #[arg(long, default_value = "/sonde", global = true)]
    pub prefix: String,
    /// etcd user (with --etcd-password).
    #[arg(long, global = true)]
    pub etcd_user: Option<String>,
    /// etcd password.
    #[arg(long, global = true)]
    pub etcd_password: Option<String>,
    /// CA certificate of etcd's TLS (PEM); enables TLS.
    #[arg(long, global = true)]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate for etcd (PEM).
    #[arg(long, global = true)]
    pub etcd_cert: Option<PathBuf>,
    /// Client key for etcd (PEM).
    #[arg(long, global = true)]
    pub etcd_key: Option<PathBuf>,
}

impl EtcdArgs {
    /// True when `--etcd` was given.
    #[must_use]
    pub fn enabled(&self) -> bool {
        !self.etcd.is_empty()
    }

    /// Connection settings: defaults plus user, password and TLS.
    #[must_use]
    pub fn options(&self) -> EtcdOptions {
        EtcdOptions {
            user: self.etcd_user.clone(),
            password: self.etcd_password.clone(),
            tls: self.etcd_ca.as_ref().map(|ca| EtcdTls {
                ca: ca.clone(),
                cert: self.etcd_cert.clone(),
                key: self.etcd_key.clone(),
            }),
            ..EtcdOptions::default()
        }
    }

    /// The key layout under `--prefix`.
    #[must_use]
    pub fn keys(&self) -> Keys {
        Keys::new(&self.prefix)
    }

    /// Connect (etcd need not answer yet; calls retry across the endpoints).
    ///
    /// # Errors
    /// No `--etcd`, invalid options or endpoints, rejected credentials.
    pub async fn connect(&self) -> Result<Etcd> {
        if self.etcd.is_empty() {
            bail!("--etcd URLS is needed (the cluster's etcd client URLs)");
        }
        Etcd::connect(&self.etcd, self.options())
            .await
            .with_context(|| format!("connecting to etcd at {}", self.etcd.join(",")))
    }
}

/// Arguments of `sonde nodes` and `sonde leader` (etcd: the global `--etcd` options).
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// A small runtime for a client command that talks to etcd.
///
/// # Errors
/// The runtime cannot start.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")
}

/// `sonde nodes`: live nodes, their share of the checks and their last registration.
///
/// # Errors
/// etcd unreachable.
pub fn nodes(a: &ClusterArgs, e: &EtcdArgs) -> Result<()> {
    runtime()?.block_on(async {
        let etcd = e.connect().await?;
        let keys = e.keys();
        // The same view the daemons serve on /v1/cluster and the status page.
        let view = crate::cluster::view::read(&etcd, &keys, "").await?;
        if a.json {
            let v: Vec<serde_json::Value> = view
                .nodes
                .iter()
                .map(|n| {
                    serde_json::json!({
                        "id": n.id, "version": n.version, "assigned": n.assigned,
                        "share": n.share, "suspect": n.suspect,
                        "registered_unix_ms": n.registered_unix_ms, "leader": n.leader,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!(
                "{:<20} {:<8} {:>9}  {:<8} {:<8} REGISTERED",
                "NODE", "ROLE", "ASSIGNED", "VERSION", "OPINIONS"
            );
            for n in &view.nodes {
                let role = if n.leader { "leader" } else { "follower" };
                let opinions = if n.suspect { "suspect" } else { "counted" };
                println!(
                    "{:<20} {:<8} {:>9}  {:<8} {:<8} {} ms since the epoch",
                    n.id, role, n.assigned, n.version, opinions, n.registered_unix_ms
                );
            }
            if view.nodes.is_empty() {
                println!("(no live nodes under {})", keys.nodes());
            }
        }
        Ok(())
    })
}

/// `sonde leader`: the elected leader and its term.
///
/// # Errors
/// etcd unreachable.
pub fn leader(a: &ClusterArgs, e: &EtcdArgs) -> Result<()> {
    runtime()?.block_on(async {
        let etcd = e.connect().await?;
        let keys = e.keys();
        match etcd.leader(keys.election()).await? {
            Some(kv) => {
                let id = String::from_utf8_lossy(&kv.value).into_owned();
                if a.json {
                    println!(
                        "{}",
                        serde_json::json!({"leader": id, "term": kv.create_revision})
                    );
                } else {
                    println!("{id} (term {})", kv.create_revision);
                }
                Ok(())
            }
            None => anyhow::bail!("no leader elected under {}", keys.election()),
        }
    })
}
