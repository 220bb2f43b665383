//! `sonde watch`: follow the daemon's events, one line each. When the stream breaks
//! (the daemon restarted), a note goes to stderr and the command reconnects with
//! exponential backoff (0.5 s doubling to 10 s), forever by default.

use std::{io::Write, time::Duration};

use clap::Args;
use serde_json::Value;

use super::{
    client::{emit, Client, ClientError, Exit},
    fmt,
};

/// Arguments of `sonde watch`.
#[derive(Debug, Clone, Default, Args)]
pub struct WatchArgs {
    /// Print each event as the API's JSON line.
    #[arg(long)]
    pub json: bool,
}

/// How long to follow and how to reconnect.
#[derive(Debug, Clone)]
pub struct Follow {
    /// Stop after this many events (`None`: never).
    pub max_events: Option<u64>,
    /// First reconnection delay.
    pub backoff_start: Duration,
    /// Longest reconnection delay.
    pub backoff_max: Duration,
    /// Give up after this many failed reconnections in a row (`None`: never).
    pub max_retries: Option<u32>,
}

impl Default for Follow {
    fn default() -> Self {
        Self {
            max_events: None,
            backoff_start: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            max_retries: None,
        }
    }
}

/// The line printed for an event line: the line itself with `json`, a human line
/// otherwise (`now_ms` dates events that carry no time); `None` for a `lagged`
/// notice, which [`follow`] reports on stderr.
#[must_use]
pub fn render(line: &str, json: bool, now_ms: u64) -> Option<String> {
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return Some(format!("{line}\n"));
    };
    let kind = fmt::str_of(&v, "event");
    if kind == "lagged" {
        return None;
    }
    if json {
        return Some(format!("{line}\n"));
    }
    Some(match kind {
        "transition" => format!(
            "{}  {}  {} -> {}  ({})\n",
            fmt::utc(fmt::u64_of(&v, "at_unix_ms")),
            fmt::str_of(&v, "check"),
            fmt::str_of(&v, "from").to_uppercase(),
            fmt::str_of(&v, "to").to_uppercase(),
            fmt::reason(v.get("reason").unwrap_or(&Value::Null)),
        ),
        "check_added" => format!("{}  {}  added\n", fmt::utc(now_ms), fmt::str_of(&v, "id")),
        "check_removed" => format!("{}  {}  removed\n", fmt::utc(now_ms), fmt::str_of(&v, "id")),
        _ => format!("{line}\n"),
    })
}

/// Follow the stream, printing events on `out` and notes on `err`.
///
/// # Errors
/// The first connection fails (the daemon is not running), or `max_retries`
/// reconnections in a row failed.
pub fn follow(
    client: &Client,
    args: &WatchArgs,
    opts: &Follow,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Exit, ClientError> {
    let mut stream = client.watch()?;
    let mut seen = 0u64;
    loop {
        if opts.max_events.is_some_and(|m| seen >= m) {
            return Ok(Exit::Success);
        }
        let why = match stream.next_line() {
            Ok(Some(line)) => {
                match render(&line, args.json, fmt::now_ms()) {
                    Some(text) => emit(out, &text),
                    None => {
                        let missed = serde_json::from_str::<Value>(&line)
                            .map(|v| fmt::u64_of(&v, "missed"))
                            .unwrap_or(0);
                        emit(
                            err,
                            &format!("note: missed {missed} events (reading too slowly)\n"),
                        );
                    }
                }
                seen += 1;
                continue;
            }
            Ok(None) => "the daemon closed the stream".to_owned(),
            Err(e) => e.to_string(),
        };
        emit(
            err,
            &format!("note: lost the event stream ({why}); reconnecting\n"),
        );
        let mut delay = opts.backoff_start;
        let mut failures = 0u32;
        stream = loop {
            std::thread::sleep(delay);
            match client.watch() {
                Ok(s) => {
                    emit(err, &format!("note: reconnected to {}\n", client.endpoint));
                    break s;
                }
                Err(e) => {
                    failures += 1;
                    if opts.max_retries.is_some_and(|m| failures >= m) {
                        return Err(e);
                    }
                    delay = (delay * 2).min(opts.backoff_max);
                }
            }
        };
    }
}
