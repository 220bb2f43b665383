//! `sonde status`: every check's state, as a table or the API's JSON. Exit status 0
//! when no listed check is unhealthy (unknown is not unhealthy: checks are unknown
//! until their first verdict), 1 when one is, 2 when the daemon cannot be reached.

use std::io::Write;

use clap::Args;
use serde_json::Value;

use super::{
    client::{emit, pretty, Client, ClientError, Exit},
    fmt,
};
use crate::api::http::percent_encode;

/// Arguments of `sonde status`.
#[derive(Debug, Clone, Default, Args)]
pub struct StatusArgs {
    /// List only unhealthy checks.
    #[arg(long)]
    pub unhealthy: bool,
    /// List only checks with this label (repeatable; all must match).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label)]
    pub label: Vec<(String, String)>,
    /// Print the API's JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parse `KEY=VALUE`.
///
/// # Errors
/// No `=` or an empty key.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// The API path of `args`' query.
#[must_use]
pub fn path(args: &StatusArgs) -> String {
    let mut q: Vec<String> = Vec::new();
    if args.unhealthy {
        q.push("unhealthy=1".to_owned());
    }
    for (k, v) in &args.label {
        q.push(format!("label={}", percent_encode(&format!("{k}={v}"))));
    }
    if q.is_empty() {
        "/v1/status".to_owned()
    } else {
        format!("/v1/status?{}", q.join("&"))
    }
}

fn last(s: &Value) -> String {
    match s.get("last_result").filter(|l| !l.is_null()) {
        None => "-".to_owned(),
        Some(l) => {
            let mut text = fmt::reason(l.get("reason").unwrap_or(&Value::Null));
            if let Some(code) = l.get("http_status").and_then(Value::as_u64) {
                if !text.contains("code=") {
                    text.push_str(&format!(" http={code}"));
                }
            }
            fmt::clip(&text, 40)
        }
    }
}

/// Which clock measured the latest result (`kernel` or `userspace`), `-` before one.
fn clock(s: &Value) -> String {
    s.get("last_result")
        .and_then(|l| l.get("clock"))
        .and_then(Value::as_str)
        .unwrap_or("-")
        .to_owned()
}

fn latency(s: &Value, key: &str) -> String {
    let rtt = s.get("latency").and_then(|l| l.get("rtt"));
    match rtt {
        Some(r) if fmt::u64_of(r, "count") > 0 => fmt::micros(fmt::u64_of(r, key)),
        _ => "-".to_owned(),
    }
}

/// The human table of a status list, relative times from `now_ms`.
#[must_use]
pub fn render(list: &[Value], now_ms: u64) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            let kind = fmt::str_of(s, "kind");
            vec![
                fmt::str_of(s, "id").to_owned(),
                kind.to_owned(),
                fmt::target(s.get("target").unwrap_or(&Value::Null), kind),
                fmt::str_of(s, "state").to_uppercase(),
                fmt::ago(fmt::u64_of(s, "since_unix_ms"), now_ms),
                last(s),
                clock(s),
                latency(s, "p50_us"),
                latency(s, "p99_us"),
            ]
        })
        .collect();
    let headers = [
        "CHECK", "KIND", "TARGET", "STATE", "SINCE", "LAST", "CLOCK", "P50", "P99",
    ];
    fmt::table(&headers, &rows)
}

/// Run `sonde status`, printing on `out`.
///
/// # Errors
/// The daemon cannot be reached or refused the query.
pub fn run(client: &Client, args: &StatusArgs, out: &mut dyn Write) -> Result<Exit, ClientError> {
    let value = client.get(&path(args))?;
    let list = value.as_array().cloned().unwrap_or_default();
    if args.json {
        emit(out, &pretty(&value));
    } else if list.is_empty() {
        emit(
            out,
            if args.unhealthy {
                "no unhealthy checks\n"
            } else {
                "no checks\n"
            },
        );
    } else {
        emit(out, &render(&list, fmt::now_ms()));
    }
    let unhealthy = list.iter().any(|s| fmt::str_of(s, "state") == "unhealthy");
    Ok(if unhealthy {
        Exit::Failure
    } else {
        Exit::Success
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn the_table_says_which_clock_measured() {
        let list = [
            json!({"id": "syn-1", "kind": "tcp_syn", "state": "healthy",
                   "target": {"host": "198.18.0.2", "port": 80},
                   "last_result": {"reason": {"reason": "ok"}, "rtt_us": 42, "clock": "kernel"}}),
            json!({"id": "web-1", "kind": "http", "state": "unknown",
                   "target": {"host": "198.18.0.2", "port": 80}, "last_result": null}),
        ];
        let text = super::render(&list, 0);
        let lines: Vec<&str> = text.lines().collect();
        let col = lines[0].find("CLOCK").expect("CLOCK column");
        assert!(lines[1][col..].starts_with("kernel"), "{text}");
        assert!(lines[2][col..].starts_with('-'), "{text}");
    }
}
