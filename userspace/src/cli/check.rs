//! `sonde check list|show|add|rm`: the daemon's checks, one by one.

use std::{io::Write, path::PathBuf};

use clap::{Args, Subcommand};
use serde_json::{Map, Value};

use super::{
    client::{check_path, emit, pretty, Client, ClientError, Exit},
    fmt,
    status::parse_label,
};

/// Arguments of `sonde check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: CheckCommand,
}

/// `sonde check` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum CheckCommand {
    /// List every check's definition.
    List {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one check: definition and status.
    Show {
        /// The check id.
        id: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a check, from a JSON file shaped like a `[[check]]` table, or from flags.
    Add(Box<AddArgs>),
    /// Remove a check.
    #[command(alias = "remove")]
    Rm {
        /// The check id.
        id: String,
    },
}

/// Arguments of `sonde check add`: `--file`, or `--id`, `--target` and `--kind` (and
/// optional fields), as in a `[[check]]` table.
#[derive(Debug, Clone, Default, Args)]
pub struct AddArgs {
    /// JSON file with one check (`-` for stdin).
    #[arg(long, short, value_name = "FILE", conflicts_with_all = ["id", "target", "kind"])]
    pub file: Option<PathBuf>,
    /// Check id.
    #[arg(long, required_unless_present = "file")]
    pub id: Option<String>,
    /// Target, ADDR:PORT (ADDR for icmp).
    #[arg(long, required_unless_present = "file")]
    pub target: Option<String>,
    /// Kind: tcp_syn, tcp_connect, http, https, icmp, udp, dns.
    #[arg(long, required_unless_present = "file")]
    pub kind: Option<String>,
    /// Interval between probes, e.g. 5s.
    #[arg(long)]
    pub interval: Option<String>,
    /// Probe timeout, e.g. 2s.
    #[arg(long)]
    pub timeout: Option<String>,
    /// Successes in a row to become healthy.
    #[arg(long)]
    pub rise: Option<u32>,
    /// Failures in a row to become unhealthy.
    #[arg(long)]
    pub fall: Option<u32>,
    /// Label (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label)]
    pub label: Vec<(String, String)>,
    /// HTTP path (http and https).
    #[arg(long, value_name = "PATH")]
    pub http_path: Option<String>,
    /// DNS name to query (dns).
    #[arg(long, value_name = "NAME")]
    pub dns_name: Option<String>,
    /// With --etcd: nodes that probe the check (default 2).
    #[arg(long, value_name = "N")]
    pub replicas: Option<u8>,
    /// With --etcd: how the replicas' opinions become the cluster's verdict: majority
    /// (default), any, all, or a number N (at least N replicas agree).
    #[arg(long, value_name = "RULE")]
    pub quorum: Option<String>,
}

impl AddArgs {
    /// The check as JSON, as the API takes it.
    ///
    /// # Errors
    /// The file cannot be read or is not JSON.
    pub fn to_json(&self) -> Result<Value, String> {
        if let Some(file) = &self.file {
            let text = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .map_err(|e| format!("cannot read stdin: {e}"))?;
                s
            } else {
                std::fs::read_to_string(file)
                    .map_err(|e| format!("{}: cannot read: {e}", file.display()))?
            };
            return serde_json::from_str(&text)
                .map_err(|e| format!("{}: not JSON: {e}", file.display()));
        }
        let mut m = Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.to_owned(), v);
            }
        };
        put("id", self.id.clone().map(Value::String));
        put("target", self.target.clone().map(Value::String));
        put("kind", self.kind.clone().map(Value::String));
        put("interval", self.interval.clone().map(Value::String));
        put("timeout", self.timeout.clone().map(Value::String));
        put("rise", self.rise.map(Value::from));
        put("fall", self.fall.map(Value::from));
        if !self.label.is_empty() {
            let labels: Map<String, Value> = self
                .label
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            put("labels", Some(Value::Object(labels)));
        }
        if let Some(p) = &self.http_path {
            put("http", Some(serde_json::json!({ "path": p })));
        }
        if let Some(n) = &self.dns_name {
            put("dns", Some(serde_json::json!({ "name": n })));
        }
        Ok(Value::Object(m))
    }
}

fn list(client: &Client, json: bool, out: &mut dyn Write) -> Result<Exit, ClientError> {
    let value = client.get("/v1/checks")?;
    if json {
        emit(out, &pretty(&value));
        return Ok(Exit::Success);
    }
    let specs = value.as_array().cloned().unwrap_or_default();
    if specs.is_empty() {
        emit(out, "no checks\n");
        return Ok(Exit::Success);
    }
    let rows: Vec<Vec<String>> = specs
        .iter()
        .map(|s| {
            let kind = fmt::probe_kind(s.get("probe").unwrap_or(&Value::Null));
            let target = fmt::target(s.get("target").unwrap_or(&Value::Null), &kind);
            let null = Value::Null;
            vec![
                fmt::str_of(s, "id").to_owned(),
                kind,
                target,
                fmt::duration(s.get("interval").unwrap_or(&null)),
                fmt::duration(s.get("timeout").unwrap_or(&null)),
                fmt::labels(s.get("labels").unwrap_or(&null)),
            ]
        })
        .collect();
    let headers = ["CHECK", "KIND", "TARGET", "INTERVAL", "TIMEOUT", "LABELS"];
    emit(out, &fmt::table(&headers, &rows));
    Ok(Exit::Success)
}

/// `rise 2, fall 3` or `3 of the last 5`.
fn thresholds(t: &Value) -> String {
    if let Some(c) = t.get("consecutive") {
        format!(
            "rise {}, fall {}",
            fmt::u64_of(c, "rise"),
            fmt::u64_of(c, "fall")
        )
    } else if let Some(w) = t.get("window") {
        let (n, of) = (fmt::u64_of(w, "threshold"), fmt::u64_of(w, "window"));
        format!("healthy while {n} of the last {of} succeed")
    } else {
        t.to_string()
    }
}

/// The human view of `GET /v1/checks/{id}`.
#[must_use]
pub fn render_show(v: &Value, now_ms: u64) -> String {
    let null = Value::Null;
    let spec = v.get("spec").unwrap_or(&null);
    let status = v.get("status").unwrap_or(&null);
    let kind = fmt::str_of(status, "kind");
    let mut text = String::new();
    let mut line = |k: &str, val: String| text.push_str(&format!("{k:<12} {val}\n"));
    line("check", fmt::str_of(spec, "id").to_owned());
    line("kind", kind.to_owned());
    line(
        "target",
        fmt::target(spec.get("target").unwrap_or(&null), kind),
    );
    let since = fmt::u64_of(status, "since_unix_ms");
    line(
        "state",
        format!(
            "{} since {} ({})",
            fmt::str_of(status, "state").to_uppercase(),
            fmt::utc(since),
            fmt::ago(since, now_ms)
        ),
    );
    if let Some(l) = status.get("last_result").filter(|l| !l.is_null()) {
        let reason = fmt::reason(l.get("reason").unwrap_or(&null));
        let at = fmt::u64_of(l, "at_unix_ms");
        line("last", format!("{reason} ({})", fmt::ago(at, now_ms)));
    }
    line(
        "in a row",
        format!(
            "{} ok, {} failed",
            fmt::u64_of(status, "consecutive_ok"),
            fmt::u64_of(status, "consecutive_fail")
        ),
    );
    let d = |k: &str| fmt::duration(spec.get(k).unwrap_or(&null));
    line(
        "timing",
        format!(
            "interval {}, fast {}, timeout {}",
            d("interval"),
            d("fast_interval"),
            d("timeout")
        ),
    );
    line(
        "thresholds",
        thresholds(spec.get("thresholds").unwrap_or(&null)),
    );
    line("labels", fmt::labels(spec.get("labels").unwrap_or(&null)));
    for (phase, l) in status
        .get("latency")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(_, l)| fmt::u64_of(l, "count") > 0)
    {
        let p = |k: &str| fmt::micros(fmt::u64_of(l, k));
        line(
            &format!("latency.{phase}"),
            format!(
                "p50 {} p90 {} p99 {} max {} ({} samples)",
                p("p50_us"),
                p("p90_us"),
                p("p99_us"),
                p("max_us"),
                fmt::u64_of(l, "count")
            ),
        );
    }
    line(
        "probe",
        spec.get("probe").map_or_else(String::new, Value::to_string),
    );
    text
}

/// Run `sonde check ...`, printing on `out`.
///
/// # Errors
/// The daemon cannot be reached or refused the call.
pub fn run(client: &Client, args: &CheckArgs, out: &mut dyn Write) -> Result<Exit, ClientError> {
    match &args.command {
        CheckCommand::List { json } => list(client, *json, out),
        CheckCommand::Show { id, json } => {
            let value = client.get(&check_path(id, ""))?;
            let text = if *json {
                pretty(&value)
            } else {
                render_show(&value, fmt::now_ms())
            };
            emit(out, &text);
            Ok(Exit::Success)
        }
        CheckCommand::Add(add) => {
            if add.replicas.is_some() || add.quorum.is_some() {
                return Err(ClientError::Input(
                    "--replicas and --quorum apply to checks stored in etcd: give --etcd URLS"
                        .into(),
                ));
            }
            let body = add.to_json().map_err(ClientError::Input)?;
            let value = client.call("POST", "/v1/checks", Some(&body))?;
            emit(out, &format!("added {}\n", fmt::str_of(&value, "id")));
            Ok(Exit::Success)
        }
        CheckCommand::Rm { id } => {
            client.call("DELETE", &check_path(id, ""), None)?;
            emit(out, &format!("removed {id}\n"));
            Ok(Exit::Success)
        }
    }
}
