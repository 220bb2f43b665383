//! `sonde status --etcd` and `sonde watch --etcd`: the cluster's view, read from etcd.
//!
//! Status reads everything under the prefix in one request, so the table is one
//! consistent snapshot (one store revision): each check's quorum verdict and the votes
//! behind it, the replicas holding it with their own opinions, suspect nodes, the
//! leader. Watch reads the same snapshot, then follows every change under the prefix
//! from the next revision (no gap, no duplicate; the stream resumes by itself after
//! member failures) and prints one line per change.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{self, Write},
};

use anyhow::Result;
use serde_json::{json, Value};

use super::{
    cluster::{runtime, EtcdArgs},
    fmt,
    output::{emit, pretty, Exit},
    status::StatusArgs,
    watch::WatchArgs,
};
use crate::{
    cluster::{
        etcd::{Etcd, KeyValue, WatchEvent, WatchUpdate},
        keys::{AssignmentRecord, HealthRecord, Keys, ObservationRecord, SuspectRecord},
        node::StoredCheck,
    },
    config::{self, Defaults},
    engine::spec::CheckSpec,
};

/// What a key under the prefix is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum KeyKind {
    /// `P/checks/<check>`.
    Check(String),
    /// `P/health/<check>`.
    Health(String),
    /// `P/obs/<check>/<node>`.
    Observation(String, String),
    /// `P/assign/<node>`.
    Assign(String),
    /// `P/suspects/<node>`.
    Suspect(String),
    /// `P/nodes/<node>`.
    Node(String),
    /// A key of the leader election (`P/election/...`).
    Election,
    /// Anything else.
    Other,
}

/// Classify `key` under `keys`' prefix.
pub(super) fn classify(keys: &Keys, key: &str) -> KeyKind {
    let tail = |dir: String| keys.tail(&dir, key).map(str::to_owned);
    if let Some(c) = tail(keys.checks()) {
        KeyKind::Check(c)
    } else if let Some(c) = tail(keys.healths()) {
        KeyKind::Health(c)
    } else if let Some((c, n)) = keys.observation_parts(key) {
        KeyKind::Observation(c.to_owned(), n.to_owned())
    } else if let Some(n) = tail(keys.assigns()) {
        KeyKind::Assign(n)
    } else if let Some(n) = tail(keys.suspects()) {
        KeyKind::Suspect(n)
    } else if let Some(n) = tail(keys.nodes()) {
        KeyKind::Node(n)
    } else if key.starts_with(&format!("{}/", keys.election())) {
        KeyKind::Election
    } else {
        KeyKind::Other
    }
}

/// A stored check: its record and, when valid, its spec (built-in defaults).
#[derive(Clone, Debug)]
pub(super) struct ViewCheck {
    /// The stored record (`None`: not a readable record).
    pub stored: Option<StoredCheck>,
    /// Its validated spec, or why it is invalid.
    pub spec: Result<CheckSpec, String>,
    /// Revision of the last change.
    pub revision: i64,
}

/// Parse a stored check's value.
pub(super) fn view_check(value: &[u8], revision: i64) -> ViewCheck {
    match serde_json::from_slice::<StoredCheck>(value) {
        Ok(sc) => {
            let spec = config::parse_check_json(&sc.check, &Defaults::default())
                .map_err(|e| e.to_string());
            ViewCheck {
                stored: Some(sc),
                spec,
                revision,
            }
        }
        Err(e) => ViewCheck {
            stored: None,
            spec: Err(format!("not a stored check: {e}")),
            revision,
        },
    }
}

/// Everything under the prefix at one revision.
#[derive(Clone, Debug, Default)]
pub(super) struct View {
    /// Store revision of the snapshot.
    pub revision: i64,
    /// Checks by id.
    pub checks: BTreeMap<String, ViewCheck>,
    /// Quorum verdicts by check, with their revision.
    pub health: BTreeMap<String, (HealthRecord, i64)>,
    /// Opinions: check -> node -> (record, revision).
    pub obs: BTreeMap<String, BTreeMap<String, (ObservationRecord, i64)>>,
    /// Assignment records by node.
    pub assign: BTreeMap<String, AssignmentRecord>,
    /// Suspect nodes.
    pub suspects: BTreeMap<String, SuspectRecord>,
    /// Live nodes.
    pub nodes: BTreeSet<String>,
    /// Election keys: key -> (create revision, candidate).
    pub election: BTreeMap<String, (i64, String)>,
}

impl View {
    /// Read the view.
    pub async fn read(etcd: &Etcd, keys: &Keys) -> Result<View> {
        let all = etcd.get_prefix(keys.root()).await?;
        let mut v = View {
            revision: all.revision,
            ..View::default()
        };
        for kv in &all.kvs {
            v.apply_kv(keys, kv);
        }
        Ok(v)
    }

    fn apply_kv(&mut self, keys: &Keys, kv: &KeyValue) {
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        self.apply(
            keys,
            &key,
            Some(&kv.value),
            kv.mod_revision,
            kv.create_revision,
        );
    }

    /// Apply one change (`value` `None`: deleted).
    pub fn apply(
        &mut self,
        keys: &Keys,
        key: &str,
        value: Option<&[u8]>,
        revision: i64,
        create_revision: i64,
    ) {
        match (classify(keys, key), value) {
            (KeyKind::Check(c), Some(v)) => {
                self.checks.insert(c, view_check(v, revision));
            }
            (KeyKind::Check(c), None) => {
                self.checks.remove(&c);
            }
            (KeyKind::Health(c), Some(v)) => {
                if let Ok(r) = serde_json::from_slice(v) {
                    self.health.insert(c, (r, revision));
                }
            }
            (KeyKind::Health(c), None) => {
                self.health.remove(&c);
            }
            (KeyKind::Observation(c, n), Some(v)) => {
                if let Ok(r) = serde_json::from_slice(v) {
                    self.obs.entry(c).or_default().insert(n, (r, revision));
                }
            }
            (KeyKind::Observation(c, n), None) => {
                if let Some(m) = self.obs.get_mut(&c) {
                    m.remove(&n);
                }
            }
            (KeyKind::Assign(n), Some(v)) => {
                if let Ok(r) = serde_json::from_slice(v) {
                    self.assign.insert(n, r);
                }
            }
            (KeyKind::Assign(n), None) => {
                self.assign.remove(&n);
            }
            (KeyKind::Suspect(n), Some(v)) => {
                if let Ok(r) = serde_json::from_slice(v) {
                    self.suspects.insert(n, r);
                }
            }
            (KeyKind::Suspect(n), None) => {
                self.suspects.remove(&n);
            }
            (KeyKind::Node(n), Some(_)) => {
                self.nodes.insert(n);
            }
            (KeyKind::Node(n), None) => {
                self.nodes.remove(&n);
            }
            (KeyKind::Election, Some(v)) => {
                let cand = String::from_utf8_lossy(v).into_owned();
                let created = self.election.get(key).map_or(create_revision, |(c, _)| *c);
                self.election.insert(key.to_owned(), (created, cand));
            }
            (KeyKind::Election, None) => {
                self.election.remove(key);
            }
            (KeyKind::Other, _) => {}
        }
    }

    /// The elected leader and its term: the election key created first.
    pub fn leader(&self) -> Option<(String, i64)> {
        self.election
            .values()
            .min_by_key(|(c, _)| *c)
            .map(|(c, n)| (n.clone(), *c))
    }

    /// check -> nodes holding it (from the assignment records).
    pub fn holders(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (n, r) in &self.assign {
            for c in &r.checks {
                out.entry(c.to_string()).or_default().push(n.clone());
            }
        }
        out
    }

    /// One check's row as JSON (the `--json` shape and what the table shows).
    pub fn check_json(&self, id: &str, holders: &BTreeMap<String, Vec<String>>) -> Value {
        let c = self.checks.get(id);
        let spec = c.and_then(|c| c.spec.as_ref().ok());
        let spec_v = spec.map_or(Value::Null, |s| serde_json::to_value(s).unwrap_or_default());
        let kind = fmt::probe_kind(spec_v.get("probe").unwrap_or(&Value::Null));
        let target = fmt::target(spec_v.get("target").unwrap_or(&Value::Null), &kind);
        let h = self.health.get(id);
        let obs = self.obs.get(id);
        let replicas: Vec<Value> = holders
            .get(id)
            .into_iter()
            .flatten()
            .map(|n| {
                let o = obs.and_then(|m| m.get(n));
                json!({
                    "node": n,
                    "health": o.map_or_else(|| "unknown".to_owned(), |(r, _)| health_str(&r.health)),
                    "reason": o.map(|(r, _)| serde_json::to_value(&r.reason).unwrap_or_default()),
                    "revision": o.map(|(_, rev)| *rev),
                    "suspect": self.suspects.contains_key(n),
                })
            })
            .collect();
        json!({
            "id": id,
            "kind": kind,
            "target": target,
            "labels": spec_v.get("labels").cloned().unwrap_or(Value::Null),
            "invalid": c.and_then(|c| c.spec.as_ref().err().cloned()),
            "replicas_wanted": c.and_then(|c| c.stored.as_ref()).map(|s| s.replicas),
            "quorum": c.and_then(|c| c.stored.as_ref()).map(|s| serde_json::to_value(s.quorum).unwrap_or_default()),
            "health": h.map_or_else(|| "unknown".to_owned(), |(r, _)| health_str(&r.health)),
            "decided": h.is_some(),
            "since_unix_ms": h.map(|(r, _)| r.at_unix_ms),
            "counted": h.map(|(r, _)| r.counted),
            "healthy": h.map(|(r, _)| r.healthy),
            "unhealthy": h.map(|(r, _)| r.unhealthy),
            "ignored_suspect": h.map(|(r, _)| r.ignored_suspect),
            "term": h.map(|(r, _)| r.term),
            "revision": h.map(|(_, rev)| *rev),
            "replicas": replicas,
        })
    }
}

/// `healthy`, `unhealthy`, `unknown` (the record's serde name).
fn health_str<T: serde::Serialize>(h: &T) -> String {
    serde_json::to_value(h)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Whether a check row passes `--unhealthy` and `--label`.
fn selected(row: &Value, args: &StatusArgs) -> bool {
    if args.unhealthy && fmt::str_of(row, "health") != "unhealthy" {
        return false;
    }
    args.label.iter().all(|(k, v)| {
        row.get("labels")
            .and_then(|l| l.get(k))
            .and_then(Value::as_str)
            == Some(v.as_str())
    })
}

/// `n1:healthy n2:unhealthy(suspect)`.
fn replicas_cell(row: &Value) -> String {
    let cells: Vec<String> = row["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let s = if r["suspect"].as_bool() == Some(true) {
                "(suspect)"
            } else {
                ""
            };
            format!("{}:{}{s}", fmt::str_of(r, "node"), fmt::str_of(r, "health"))
        })
        .collect();
    if cells.is_empty() {
        "-".to_owned()
    } else {
        cells.join(" ")
    }
}

/// The human table of the cluster status.
pub(super) fn render(rows: &[Value], view: &View, now_ms: u64) -> String {
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let votes = if r["decided"].as_bool() == Some(true) {
                format!(
                    "{}/{} healthy",
                    fmt::u64_of(r, "healthy"),
                    fmt::u64_of(r, "counted")
                )
            } else {
                "-".to_owned()
            };
            let since = r["since_unix_ms"]
                .as_u64()
                .map_or_else(|| "-".to_owned(), |ms| fmt::ago(ms, now_ms));
            let health = match r["invalid"].as_str() {
                Some(_) => "INVALID".to_owned(),
                None => fmt::str_of(r, "health").to_uppercase(),
            };
            vec![
                fmt::str_of(r, "id").to_owned(),
                fmt::str_of(r, "kind").to_owned(),
                fmt::str_of(r, "target").to_owned(),
                health,
                since,
                votes,
                replicas_cell(r),
            ]
        })
        .collect();
    let headers = [
        "CHECK", "KIND", "TARGET", "HEALTH", "SINCE", "VOTES", "REPLICAS",
    ];
    let mut text = fmt::table(&headers, &table);
    text.push_str(&footer(view));
    text
}

/// Leader, nodes and suspects, one line.
fn footer(view: &View) -> String {
    let leader = view.leader().map_or_else(
        || "no leader".to_owned(),
        |(n, t)| format!("leader {n} (term {t})"),
    );
    let nodes: Vec<&str> = view.nodes.iter().map(String::as_str).collect();
    let suspects: Vec<&str> = view.suspects.keys().map(String::as_str).collect();
    format!(
        "{leader}; nodes: {}; suspect: {} (revision {})\n",
        if nodes.is_empty() {
            "none".to_owned()
        } else {
            nodes.join(" ")
        },
        if suspects.is_empty() {
            "none".to_owned()
        } else {
            suspects.join(" ")
        },
        view.revision
    )
}

/// Print an error about etcd and give the exit status: 2 when etcd could not be used
/// (unreachable, the TLS handshake refused, the credentials refused, no answer in
/// time), so that a script never reads 1 ("something is unhealthy") for a failure to
/// ask; 1 for anything else (e.g. an invalid check).
pub(super) fn etcd_failed(err: &anyhow::Error, args: &EtcdArgs) -> Exit {
    use crate::cluster::etcd::EtcdError;
    let errors = || err.chain().filter_map(|c| c.downcast_ref::<EtcdError>());
    eprintln!("sonde: error: {err:#}");
    // A server requiring client certificates ends the handshake in one of several ways
    // (closed connection, an alert, a broken pipe: it depends on timing), so the hint
    // goes by what was configured: TLS without a client certificate, and no connection.
    let tls = args.etcd_ca.is_some() || args.etcd.iter().any(|u| u.starts_with("https://"));
    if tls && args.etcd_cert.is_none() && errors().any(EtcdError::is_unavailable) {
        eprintln!(
            "sonde: hint: no TLS connection to etcd; if it requires client certificates \
             (--client-cert-auth), give --etcd-cert and --etcd-key"
        );
    }
    if errors().next().is_some() {
        Exit::Unreachable
    } else {
        Exit::Failure
    }
}

/// `sonde status --etcd`.
///
/// # Errors
/// Never: failures are reported on stderr and in the exit status.
pub(super) fn status(e: &EtcdArgs, args: &StatusArgs) -> Result<Exit> {
    let run = async {
        let etcd = e.connect().await?;
        View::read(&etcd, &e.keys()).await
    };
    let view = match runtime()?.block_on(run) {
        Ok(v) => v,
        Err(err) => return Ok(etcd_failed(&err, e)),
    };
    let holders = view.holders();
    let rows: Vec<Value> = view
        .checks
        .keys()
        .map(|id| view.check_json(id, &holders))
        .filter(|r| selected(r, args))
        .collect();
    let mut out = io::stdout().lock();
    if args.json {
        let v = json!({
            "revision": view.revision,
            "leader": view.leader().map(|(n, t)| json!({"node": n, "term": t})),
            "nodes": view.nodes,
            "suspects": view.suspects.keys().collect::<Vec<_>>(),
            "checks": rows,
        });
        emit(&mut out, &pretty(&v));
    } else if rows.is_empty() {
        let none = if args.unhealthy {
            "no unhealthy checks in the cluster\n"
        } else {
            "no checks in the cluster\n"
        };
        emit(&mut out, none);
        emit(&mut out, &footer(&view));
    } else {
        emit(&mut out, &render(&rows, &view, fmt::now_ms()));
    }
    let unhealthy = rows.iter().any(|r| fmt::str_of(r, "health") == "unhealthy");
    Ok(if unhealthy {
        Exit::Failure
    } else {
        Exit::Success
    })
}

/// What [`describe`] needs to know of the view before a change (cheap to take per
/// event, unlike a copy of the view).
#[derive(Clone, Debug, Default)]
pub(super) struct Prior {
    /// The check's cluster verdict before (`unknown` without one).
    health: String,
    /// The check existed.
    check: bool,
    /// The node was registered.
    node: bool,
    /// The leader and its term.
    leader: Option<(String, i64)>,
}

impl View {
    /// The part of the view a change of `key` is compared with.
    pub(super) fn prior(&self, keys: &Keys, key: &str) -> Prior {
        let mut p = Prior {
            health: "unknown".to_owned(),
            ..Prior::default()
        };
        match classify(keys, key) {
            KeyKind::Health(c) => {
                if let Some((r, _)) = self.health.get(&c) {
                    p.health = health_str(&r.health);
                }
            }
            KeyKind::Check(c) => p.check = self.checks.contains_key(&c),
            KeyKind::Node(n) => p.node = self.nodes.contains(&n),
            KeyKind::Election => p.leader = self.leader(),
            _ => {}
        }
        p
    }
}

/// The line (human or JSON) for one change, given the view before it; `None` for
/// changes that say nothing new (an identical rewrite, keys outside the layout).
pub(super) fn describe(
    keys: &Keys,
    before: &Prior,
    after: &View,
    ev: &WatchEvent,
    json: bool,
    now_ms: u64,
) -> Option<String> {
    let time = fmt::utc(now_ms);
    let key = String::from_utf8_lossy(&ev.key);
    let (key, revision, deleted) = (key.as_ref(), ev.revision, ev.value.is_none());
    let (v, text) = match classify(keys, key) {
        KeyKind::Health(c) => {
            let from = before.health.clone();
            let (r, _) = after.health.get(&c)?;
            let to = health_str(&r.health);
            let text = format!(
                "{time}  {c}  cluster {} -> {}  ({}/{} replicas healthy, term {})",
                from.to_uppercase(),
                to.to_uppercase(),
                r.healthy,
                r.counted,
                r.term
            );
            let v = json!({"event": "health", "check": c, "from": from, "to": to,
                "counted": r.counted, "healthy": r.healthy, "unhealthy": r.unhealthy,
                "ignored_suspect": r.ignored_suspect, "term": r.term, "at_unix_ms": r.at_unix_ms});
            (v, text)
        }
        KeyKind::Observation(c, n) => {
            if deleted {
                return None;
            }
            let (r, _) = after.obs.get(&c)?.get(&n)?;
            let to = health_str(&r.health);
            let reason = serde_json::to_value(&r.reason).unwrap_or_default();
            let text = format!(
                "{time}  {c}  {n} says {}  ({})",
                to.to_uppercase(),
                fmt::reason(&reason)
            );
            let v = json!({"event": "observation", "check": c, "node": n, "health": to,
                "reason": reason, "at_unix_ms": r.at_unix_ms});
            (v, text)
        }
        KeyKind::Suspect(n) => {
            let text = if deleted {
                format!("{time}  node {n} no longer suspect: its opinions count again")
            } else {
                format!("{time}  node {n} suspect: its opinions are ignored")
            };
            (
                json!({"event": "suspect", "node": n, "suspect": !deleted}),
                text,
            )
        }
        KeyKind::Check(c) => {
            let what = match (before.check, deleted) {
                (_, true) => "removed",
                (true, false) => "changed",
                (false, false) => "added",
            };
            let text = format!("{time}  {c}  {what}");
            (json!({"event": format!("check_{what}"), "id": c}), text)
        }
        KeyKind::Node(n) => {
            let what = match (before.node, deleted) {
                (_, true) => "left",
                (false, false) => "joined",
                (true, false) => return None,
            };
            let text = format!("{time}  node {n} {what}");
            (json!({"event": format!("node_{what}"), "node": n}), text)
        }
        KeyKind::Assign(n) => {
            if deleted {
                let text = format!("{time}  node {n} assignment removed");
                (
                    json!({"event": "assignment", "node": n, "checks": Value::Null}),
                    text,
                )
            } else {
                let r = after.assign.get(&n)?;
                let text = format!(
                    "{time}  node {n} assigned {} checks (leader {}, term {})",
                    r.checks.len(),
                    r.leader,
                    r.term
                );
                let v = json!({"event": "assignment", "node": n, "checks": r.checks.len(),
                    "leader": r.leader.to_string(), "term": r.term});
                (v, text)
            }
        }
        KeyKind::Election => {
            let (b, a) = (before.leader.clone(), after.leader());
            if b == a {
                return None;
            }
            let text = match &a {
                Some((n, t)) => format!("{time}  leader {n} (term {t})"),
                None => format!("{time}  no leader"),
            };
            let v = json!({"event": "leader", "node": a.as_ref().map(|(n, _)| n.clone()),
                "term": a.as_ref().map(|(_, t)| *t)});
            (v, text)
        }
        KeyKind::Other => return None,
    };
    Some(if json {
        let mut v = v;
        v["revision"] = json!(revision);
        format!("{v}\n")
    } else {
        format!("{text}\n")
    })
}

/// `sonde watch --etcd`: follow the cluster from the current revision.
///
/// # Errors
/// Never: failures are reported on stderr and in the exit status.
pub(super) fn watch(e: &EtcdArgs, args: &WatchArgs) -> Result<Exit> {
    let rt = runtime()?;
    let keys = e.keys();
    let res: Result<()> = rt.block_on(async {
        let etcd = e.connect().await?;
        let mut view = View::read(&etcd, &keys).await?;
        let mut out = io::stdout();
        let mut err = io::stderr();
        let root = keys.root();
        let _ = writeln!(
            err,
            "note: following {root} from revision {}",
            view.revision + 1
        );
        let mut w = etcd.watch_prefix(&root, view.revision + 1);
        while let Some(u) = w.next().await {
            match u {
                WatchUpdate::Event(ev) => {
                    let key = String::from_utf8_lossy(&ev.key).into_owned();
                    let before = view.prior(&keys, &key);
                    view.apply(&keys, &key, ev.value.as_deref(), ev.revision, ev.revision);
                    view.revision = ev.revision;
                    let line = describe(&keys, &before, &view, &ev, args.json, fmt::now_ms());
                    if let Some(line) = line {
                        emit(&mut out, &line);
                    }
                }
                WatchUpdate::Compacted {
                    compact_revision, ..
                } => {
                    let _ = writeln!(
                        err,
                        "note: history compacted at {compact_revision}; re-reading the cluster"
                    );
                    view = View::read(&etcd, &keys).await?;
                    w = etcd.watch_prefix(&root, view.revision + 1);
                }
                WatchUpdate::Interrupted { endpoint, error } => {
                    let _ = writeln!(
                        err,
                        "note: lost the etcd watch at {endpoint} ({error}); resuming"
                    );
                }
                WatchUpdate::Resumed {
                    endpoint,
                    from_revision,
                } => {
                    let _ = writeln!(
                        err,
                        "note: resumed at {endpoint} from revision {from_revision}"
                    );
                }
            }
        }
        Ok(())
    });
    match res {
        Ok(()) => Ok(Exit::Success),
        Err(err) => Ok(etcd_failed(&err, e)),
    }
}
