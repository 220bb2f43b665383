//! `sonde history ID`: a check's latest results and transitions, oldest first.

use std::io::Write;

use clap::Args;
use serde_json::Value;

use super::{
    client::{check_path, emit, pretty, Client, ClientError, Exit},
    fmt,
};

/// Arguments of `sonde history`.
#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// The check id.
    pub id: String,
    /// Print the API's JSON.
    #[arg(long)]
    pub json: bool,
}

/// Wall time (ms since the epoch) of the check state's creation, from any entry that
/// carries both `at_ms` and `at_unix_ms`.
fn anchor(entries: &[&Value]) -> Option<u64> {
    entries.iter().find_map(|e| {
        let wall = e.get("at_unix_ms")?.as_u64()?;
        Some(wall.saturating_sub(e.get("at_ms")?.as_u64()?))
    })
}

/// The human view of a history; `status` (of `GET /v1/checks/{id}`) may give the
/// wall-clock anchor when there is no transition.
#[must_use]
pub fn render(history: &Value, status: Option<&Value>) -> String {
    let list = |k: &str| {
        history
            .get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (results, transitions) = (list("results"), list("transitions"));
    let mut anchors: Vec<&Value> = transitions.iter().collect();
    let last = status
        .and_then(|s| s.get("status"))
        .and_then(|s| s.get("last_result"))
        .filter(|l| !l.is_null());
    anchors.extend(last);
    let base = anchor(&anchors);
    let at = |e: &Value| {
        let ms = fmt::u64_of(e, "at_ms");
        base.map_or_else(
            || format!("+{}", fmt::micros(ms * 1000)),
            |b| fmt::utc(b + ms),
        )
    };
    let mut text = format!("results of {} (oldest first)\n", fmt::str_of(history, "id"));
    if results.is_empty() {
        text.push_str("none yet\n");
    } else {
        let rows: Vec<Vec<String>> = results
            .iter()
            .map(|r| {
                let ok = r.get("ok").and_then(Value::as_bool).unwrap_or(false);
                vec![
                    at(r),
                    fmt::u64_of(r, "seq").to_string(),
                    if ok { "ok" } else { "FAIL" }.to_owned(),
                    fmt::str_of(r, "reason").to_owned(),
                    r.get("rtt_us")
                        .and_then(Value::as_u64)
                        .map_or_else(|| "-".to_owned(), fmt::micros),
                    r.get("clock")
                        .and_then(Value::as_str)
                        .unwrap_or("-")
                        .to_owned(),
                ]
            })
            .collect();
        text.push_str(&fmt::table(
            &["AT", "SEQ", "RESULT", "REASON", "RTT", "CLOCK"],
            &rows,
        ));
    }
    text.push_str("\ntransitions (oldest first)\n");
    if transitions.is_empty() {
        text.push_str("none yet\n");
    } else {
        let rows: Vec<Vec<String>> = transitions
            .iter()
            .map(|t| {
                vec![
                    fmt::utc(fmt::u64_of(t, "at_unix_ms")),
                    format!("{} -> {}", fmt::str_of(t, "from"), fmt::str_of(t, "to")),
                    fmt::reason(t.get("reason").unwrap_or(&Value::Null)),
                ]
            })
            .collect();
        text.push_str(&fmt::table(&["AT", "CHANGE", "REASON"], &rows));
    }
    text
}

/// Run `sonde history`, printing on `out`.
///
/// # Errors
/// The daemon cannot be reached, or the check is unknown.
pub fn run(client: &Client, args: &HistoryArgs, out: &mut dyn Write) -> Result<Exit, ClientError> {
    let history = client.get(&check_path(&args.id, "/history"))?;
    if args.json {
        emit(out, &pretty(&history));
        return Ok(Exit::Success);
    }
    let has_transitions = history
        .get("transitions")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    // The check may have been removed meanwhile: then go without the anchor.
    let status = if has_transitions {
        None
    } else {
        client.get(&check_path(&args.id, "")).ok()
    };
    emit(out, &render(&history, status.as_ref()));
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn each_result_says_which_clock_measured_it() {
        let history = json!({"id": "ping-1", "transitions": [], "results": [
            {"seq": 1, "ok": true, "reason": "ok", "rtt_us": 42, "clock": "kernel", "at_ms": 0},
            {"seq": 2, "ok": false, "reason": "timeout", "rtt_us": null, "clock": "userspace",
             "at_ms": 1000},
        ]});
        let text = super::render(&history, None);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].ends_with("CLOCK"), "{text}");
        assert!(lines[2].ends_with("kernel"), "{text}");
        assert!(lines[3].ends_with("userspace"), "{text}");
    }
}
