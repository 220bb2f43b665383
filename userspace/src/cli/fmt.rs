//! Text formatting shared by the client commands: tables, durations, times, targets
//! and reasons, all from the API's JSON.

use std::{
    fmt::Write as _,
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

/// Milliseconds since the Unix epoch, now.
#[must_use]
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
#[must_use]
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i + 1 < widths.len() {
                let _ = write!(text, "{cell:<width$}  ", width = widths[i]);
            } else {
                text.push_str(cell);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// `s` cut to `max` characters, with `...` when cut.
#[must_use]
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(3)).collect();
    out.push_str("...");
    out
}

/// A duration in microseconds: `850us`, `12.3ms`, `1.25s`.
#[must_use]
pub fn micros(us: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let f = us as f64;
    if us < 1_000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.1}ms", f / 1e3)
    } else {
        format!("{:.2}s", f / 1e6)
    }
}

/// How long ago `then_ms` was, from `now_ms`: `12s ago`, `5m ago`, `3h ago`, `2d ago`.
#[must_use]
pub fn ago(then_ms: u64, now_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// UTC time of `ms` since the epoch: `2024-05-01T12:34:56.789Z`.
#[must_use]
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// A string field of `v`, or `-`.
#[must_use]
pub fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("-")
}

/// A number field of `v`, or 0.
#[must_use]
pub fn u64_of(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// `host:port` of a serialised target (`[v6]:port`; the host alone for ICMP).
#[must_use]
pub fn target(t: &Value, kind: &str) -> String {
    let host = str_of(t, "host");
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    if kind == "icmp" {
        host
    } else {
        format!("{host}:{}", u64_of(t, "port"))
    }
}

/// A serialised reason (`{"reason": "status", "code": 503}`) as `status code=503`.
#[must_use]
pub fn reason(r: &Value) -> String {
    let Some(obj) = r.as_object() else {
        return r.as_str().unwrap_or("-").to_owned();
    };
    let mut out = obj
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned();
    for (k, v) in obj.iter().filter(|(k, _)| *k != "reason") {
        let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        let _ = write!(out, " {k}={v}");
    }
    out
}

/// The kind of a serialised probe spec (`"tcp_syn"` or `{"http": {...}}`).
#[must_use]
pub fn probe_kind(probe: &Value) -> String {
    match probe {
        Value::String(s) => s.clone(),
        Value::Object(o) => match o.iter().next() {
            Some((k, v)) if k == "http" && v.get("tls").is_some_and(|t| !t.is_null()) => {
                "https".to_owned()
            }
            Some((k, _)) => k.clone(),
            None => "-".to_owned(),
        },
        _ => "-".to_owned(),
    }
}

/// A serialised `std::time::Duration` (`{"secs": 5, "nanos": 0}`) as `5s`/`250ms`.
#[must_use]
pub fn duration(d: &Value) -> String {
    let ms = u64_of(d, "secs") * 1000 + u64_of(d, "nanos") / 1_000_000;
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// `k=v,k=v` of a serialised label map (`-` when empty).
#[must_use]
pub fn labels(l: &Value) -> String {
    let text: Vec<String> = l
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(micros(850), "850us");
        assert_eq!(micros(12_345), "12.3ms");
        assert_eq!(micros(1_250_000), "1.25s");
        assert_eq!(ago(0, 61_000), "1m ago");
        assert_eq!(ago(5_000, 1_000), "0s ago");
        let r = serde_json::json!({"reason": "status", "code": 503});
        assert_eq!(reason(&r), "status code=503");
        assert_eq!(
            probe_kind(&serde_json::json!({"http": {"tls": {}}})),
            "https"
        );
        assert_eq!(probe_kind(&serde_json::json!("icmp")), "icmp");
        assert_eq!(
            duration(&serde_json::json!({"secs": 0, "nanos": 250_000_000})),
            "250ms"
        );
        let t = table(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
        assert_eq!(clip("abcdef", 5), "ab...");
    }
}
