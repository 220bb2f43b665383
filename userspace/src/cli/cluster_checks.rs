//! `sonde check list|show|add|rm --etcd`: the cluster's checks, stored in etcd under
//! `P/checks/<id>`.
//!
//! A check is validated exactly as a `[[check]]` table of the config file is (the same
//! code, built-in defaults; each daemon applies its own `[defaults]` on top), and refused
//! with every problem named. `add` creates only (a transaction that requires the key to
//! be absent): an existing id is an error, never silently replaced. `rm` of an id that is
//! not stored is an error too. Both exit 1 on failure, 2 when etcd cannot be used
//! (unreachable, the TLS handshake or the credentials refused).

use std::io::{self, Write};

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};

use super::{
    check::{AddArgs, CheckArgs, CheckCommand},
    cluster::{runtime, EtcdArgs},
    cluster_status::{etcd_failed, view_check, View},
    fmt,
    output::{emit, pretty, Exit},
};
use crate::{
    cluster::{
        etcd::{Compare, CompareOp, Etcd, Txn, TxnOp},
        keys::Keys,
        node::StoredCheck,
        quorum::QuorumRule,
    },
    config::{self, ConfigError, Defaults},
    engine::spec::CheckId,
};

/// Run `sonde check ... --etcd`.
///
/// # Errors
/// Never: failures are reported on stderr and in the exit status.
pub(super) fn run(e: &EtcdArgs, args: &CheckArgs) -> Result<Exit> {
    let rt = runtime()?;
    let mut out = io::stdout().lock();
    let res = rt.block_on(async {
        let etcd = e.connect().await?;
        let keys = e.keys();
        match &args.command {
            CheckCommand::List { json } => list(&etcd, &keys, *json, &mut out).await,
            CheckCommand::Show { id, json } => show(&etcd, &keys, id, *json, &mut out).await,
            CheckCommand::Add(add) => {
                let (id, key) = add_check(&etcd, &keys, add).await?;
                emit(&mut out, &format!("added {id} to the cluster ({key})\n"));
                Ok(Exit::Success)
            }
            CheckCommand::Rm { id } => {
                let key = remove_check(&etcd, &keys, id).await?;
                emit(
                    &mut out,
                    &format!("removed {id} from the cluster ({key})\n"),
                );
                Ok(Exit::Success)
            }
        }
    });
    Ok(res.unwrap_or_else(|err| etcd_failed(&err, e)))
}

/// Parse `--quorum`: majority, any, all, or a number.
fn quorum_rule(s: &str) -> Result<QuorumRule> {
    match s.trim().to_ascii_lowercase().as_str() {
        "majority" => Ok(QuorumRule::Majority),
        "any" => Ok(QuorumRule::Any),
        "all" => Ok(QuorumRule::All),
        n => n.parse::<u8>().map(QuorumRule::AtLeast).map_err(|_| {
            anyhow!("--quorum {s:?}: expected majority, any, all or a number of replicas")
        }),
    }
}

/// `e` with every problem's origin (`<json>`) replaced by `origin`.
fn relabel(e: ConfigError, origin: &str) -> ConfigError {
    match e {
        ConfigError::Invalid { mut problems } => {
            for p in &mut problems {
                p.origin = origin.to_owned();
            }
            ConfigError::Invalid { problems }
        }
        other => other,
    }
}

/// The record to store for `add`: validated as the config file validates a check.
///
/// # Errors
/// Unreadable input, an invalid check (every problem, named), bad replicas or quorum.
pub(super) fn stored_check(add: &AddArgs) -> Result<(CheckId, StoredCheck)> {
    let input = add.to_json().map_err(|e| anyhow!(e))?;
    let origin = add
        .file
        .as_ref()
        .map_or_else(|| "command line".to_owned(), |f| f.display().to_string());
    // A file may hold the stored shape ({"check": {...}, "replicas": 3}) too.
    let (check, file_replicas, file_quorum) = match input.get("check") {
        Some(c) if c.is_object() => {
            let sc: StoredCheck = serde_json::from_value(input.clone())
                .map_err(|e| anyhow!("{origin}: not a stored check: {e}"))?;
            (c.clone(), Some(sc.replicas), Some(sc.quorum))
        }
        _ => (input, None, None),
    };
    let spec =
        config::parse_check_json(&check, &Defaults::default()).map_err(|e| relabel(e, &origin))?;
    let replicas = add.replicas.or(file_replicas).unwrap_or(2);
    if replicas == 0 {
        bail!("{origin}: replicas: must be at least 1 (nodes that probe the check)");
    }
    let quorum = match &add.quorum {
        Some(q) => quorum_rule(q)?,
        None => file_quorum.unwrap_or_default(),
    };
    if let QuorumRule::AtLeast(k) = quorum {
        if k == 0 || k > replicas {
            bail!(
                "{origin}: quorum: at least {k} of {replicas} replicas can never be reached; \
                 use 1..={replicas}, majority, any or all"
            );
        }
    }
    Ok((
        spec.id,
        StoredCheck {
            check,
            replicas,
            quorum,
        },
    ))
}

async fn add_check(etcd: &Etcd, keys: &Keys, add: &AddArgs) -> Result<(CheckId, String)> {
    let (id, stored) = stored_check(add)?;
    let key = keys.check(&id);
    let value = serde_json::to_vec(&stored)?;
    // Create only: an existing check is never replaced by accident.
    let txn = Txn::new()
        .when(vec![Compare::version(key.clone(), CompareOp::Equal, 0)])
        .and_then(vec![TxnOp::put(key.clone(), value.clone(), None)]);
    let resp = etcd.txn(&key, txn).await?;
    if !resp.succeeded() {
        // A retried attempt may find its own earlier write.
        let same = etcd.get(&key).await?.is_some_and(|kv| kv.value == value);
        if !same {
            bail!(
                "check \"{id}\" already exists in the cluster ({key}); remove it first \
                 (sonde check rm {id} --etcd ...) to replace it"
            );
        }
    }
    Ok((id, key))
}

async fn remove_check(etcd: &Etcd, keys: &Keys, id: &str) -> Result<String> {
    let key = keys.check(&CheckId::new(id));
    let (deleted, _) = etcd.delete(&key).await?;
    if deleted == 0 {
        bail!(
            "no check {id:?} in the cluster (no key {key}); `sonde check list --etcd ...` \
             lists the stored checks"
        );
    }
    Ok(key)
}

async fn list(etcd: &Etcd, keys: &Keys, json: bool, out: &mut dyn Write) -> Result<Exit> {
    let l = etcd.get_prefix(keys.checks()).await?;
    let checks: Vec<(String, super::cluster_status::ViewCheck)> = l
        .kvs
        .iter()
        .filter_map(|kv| {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            let id = keys.tail(&keys.checks(), &key)?.to_owned();
            Some((id, view_check(&kv.value, kv.mod_revision)))
        })
        .collect();
    if json {
        let v: Vec<Value> = checks
            .iter()
            .map(|(id, c)| {
                json!({
                    "id": id,
                    "revision": c.revision,
                    "stored": c.stored,
                    "spec": c.spec.as_ref().ok(),
                    "invalid": c.spec.as_ref().err(),
                })
            })
            .collect();
        emit(out, &pretty(&Value::Array(v)));
        return Ok(Exit::Success);
    }
    if checks.is_empty() {
        emit(
            out,
            &format!("no checks in the cluster (under {})\n", keys.checks()),
        );
        return Ok(Exit::Success);
    }
    let null = Value::Null;
    let rows: Vec<Vec<String>> = checks
        .iter()
        .map(|(id, c)| {
            let (replicas, quorum) = c.stored.as_ref().map_or(("-".into(), "-".into()), |s| {
                let q = serde_json::to_value(s.quorum).unwrap_or_default();
                let q = match q.get("at_least") {
                    Some(k) => format!("at least {k}"),
                    None => q.as_str().unwrap_or("-").to_owned(),
                };
                (s.replicas.to_string(), q)
            });
            match &c.spec {
                Ok(spec) => {
                    let s = serde_json::to_value(spec).unwrap_or_default();
                    let kind = fmt::probe_kind(s.get("probe").unwrap_or(&null));
                    vec![
                        id.clone(),
                        kind.clone(),
                        fmt::target(s.get("target").unwrap_or(&null), &kind),
                        fmt::duration(s.get("interval").unwrap_or(&null)),
                        fmt::duration(s.get("timeout").unwrap_or(&null)),
                        replicas,
                        quorum,
                        fmt::labels(s.get("labels").unwrap_or(&null)),
                    ]
                }
                Err(e) => vec![
                    id.clone(),
                    "INVALID".into(),
                    fmt::clip(e, 60),
                    "-".into(),
                    "-".into(),
                    replicas,
                    quorum,
                    "-".into(),
                ],
            }
        })
        .collect();
    let headers = [
        "CHECK", "KIND", "TARGET", "INTERVAL", "TIMEOUT", "REPLICAS", "QUORUM", "LABELS",
    ];
    emit(out, &fmt::table(&headers, &rows));
    Ok(Exit::Success)
}

async fn show(etcd: &Etcd, keys: &Keys, id: &str, json: bool, out: &mut dyn Write) -> Result<Exit> {
    let view = View::read(etcd, keys).await?;
    let Some(c) = view.checks.get(id) else {
        bail!(
            "no check {id:?} in the cluster (no key {}); `sonde check list --etcd ...` lists \
             the stored checks",
            keys.check(&CheckId::new(id))
        );
    };
    let row = view.check_json(id, &view.holders());
    if json {
        let v = json!({"stored": c.stored, "spec": c.spec.as_ref().ok(), "cluster": row});
        emit(out, &pretty(&v));
        return Ok(Exit::Success);
    }
    let mut text = String::new();
    let mut line = |k: &str, v: String| text.push_str(&format!("{k:<12} {v}\n"));
    line("check", id.to_owned());
    line("kind", fmt::str_of(&row, "kind").to_owned());
    line("target", fmt::str_of(&row, "target").to_owned());
    if let Err(e) = &c.spec {
        line("invalid", e.clone());
    }
    line(
        "health",
        format!(
            "{} ({} of {} counted replicas healthy, term {})",
            fmt::str_of(&row, "health").to_uppercase(),
            fmt::u64_of(&row, "healthy"),
            fmt::u64_of(&row, "counted"),
            fmt::u64_of(&row, "term"),
        ),
    );
    if let Some(s) = &c.stored {
        line(
            "replicas",
            format!(
                "{} wanted, quorum {}",
                s.replicas,
                serde_json::to_value(s.quorum).unwrap_or_default()
            ),
        );
    }
    for r in row["replicas"].as_array().into_iter().flatten() {
        let suspect = if r["suspect"].as_bool() == Some(true) {
            " (suspect: ignored)"
        } else {
            ""
        };
        line(
            &format!("  {}", fmt::str_of(r, "node")),
            format!(
                "{}{suspect}  {}",
                fmt::str_of(r, "health").to_uppercase(),
                fmt::reason(r.get("reason").unwrap_or(&Value::Null))
            ),
        );
    }
    if let Some(s) = &c.stored {
        line("definition", s.check.to_string());
    }
    emit(out, &text);
    Ok(Exit::Success)
}
