//! `sonde reload`: make the daemon re-read its configuration file. An invalid file is
//! refused as a whole (every problem is printed) and nothing changes.

use std::io::Write;

use serde_json::Value;

use super::client::{emit, Client, ClientError, Exit};

fn ids(v: &Value, key: &str) -> String {
    let list: Vec<&str> = v
        .get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if list.is_empty() {
        "-".to_owned()
    } else {
        list.join(", ")
    }
}

/// The human view of a reload report.
#[must_use]
pub fn render(report: &Value) -> String {
    format!(
        "reloaded\nadded:     {}\nchanged:   {}\nremoved:   {}\nunchanged: {}\n",
        ids(report, "added"),
        ids(report, "changed"),
        ids(report, "removed"),
        report.get("unchanged").and_then(Value::as_u64).unwrap_or(0)
    )
}

/// Run `sonde reload`, printing on `out` (`json`: the API's JSON).
///
/// # Errors
/// The daemon cannot be reached or refused the reload (invalid file, no file).
pub fn run(client: &Client, json: bool, out: &mut dyn Write) -> Result<Exit, ClientError> {
    let report = client.call("POST", "/v1/reload", None)?;
    let text = if json {
        super::client::pretty(&report)
    } else {
        render(&report)
    };
    emit(out, &text);
    Ok(Exit::Success)
}
