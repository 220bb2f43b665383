//! `sonde nodes` and `sonde leader`: the cluster as etcd holds it.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use clap::Args;

use crate::cluster::{
    etcd::{Etcd, EtcdOptions},
    keys::{AssignmentRecord, Keys, NodeRecord},
};

/// Where the cluster is.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// etcd client URLs (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// Key prefix.
    #[arg(long, default_value = "/sonde")]
    pub prefix: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")
}

/// `sonde nodes`: live nodes, their share of the checks and their last registration.
///
/// # Errors
/// etcd unreachable.
pub fn nodes(a: &ClusterArgs) -> Result<()> {
    runtime()?.block_on(async {
        let etcd = Etcd::connect(&a.etcd, EtcdOptions::default()).await.context("connecting to etcd")?;
        let keys = Keys::new(&a.prefix);
        let nodes = etcd.get_prefix(keys.nodes()).await?;
        let assigns = etcd.get_prefix(keys.assigns()).await?;
        let leader = etcd.leader(keys.election()).await?.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
        let mut share: BTreeMap<String, usize> = BTreeMap::new();
        for kv in &assigns.kvs {
            if let Ok(r) = serde_json::from_slice::<AssignmentRecord>(&kv.value) {
                share.insert(r.node.to_string(), r.checks.len());
            }
        }
        let recs: Vec<NodeRecord> = nodes.kvs.iter().filter_map(|kv| serde_json::from_slice(&kv.value).ok()).collect();
        if a.json {
            let v: Vec<serde_json::Value> = recs
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "id": r.id, "version": r.version, "assigned": share.get(r.id.as_str()).copied().unwrap_or(0),
                        "registered_unix_ms": r.registered_unix_ms, "leader": leader.as_deref() == Some(r.id.as_str()),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!("{:<20} {:<8} {:>9}  {:<8} REGISTERED", "NODE", "ROLE", "ASSIGNED", "VERSION");
            for r in &recs {
                let role = if leader.as_deref() == Some(r.id.as_str()) { "leader" } else { "follower" };
                let n = share.get(r.id.as_str()).copied().unwrap_or(0);
                println!("{:<20} {:<8} {:>9}  {:<8} {} ms since the epoch", r.id, role, n, r.version, r.registered_unix_ms);
            }
            if recs.is_empty() {
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
pub fn leader(a: &ClusterArgs) -> Result<()> {
    runtime()?.block_on(async {
        let etcd = Etcd::connect(&a.etcd, EtcdOptions::default())
            .await
            .context("connecting to etcd")?;
        let keys = Keys::new(&a.prefix);
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
