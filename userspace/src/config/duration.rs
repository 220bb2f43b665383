//! Humane durations: a decimal number and a unit, `"250ms"`, `"5s"`, `"1.5s"`, `"1m"`,
//! `"1h"`. No spaces, no sign, no compound forms (`"1m30s"`: write `"90s"`), and the
//! result must be a whole number of milliseconds (`"1.5s"` is accepted, `"1.0005s"` is
//! not): probe timing finer than that is noise.

use std::time::Duration;

/// Units and examples, for messages.
pub(crate) const EXPECTED: &str =
    "a duration with a unit: ms, s, m or h (e.g. \"250ms\", \"5s\", \"1.5s\", \"1m\")";

/// Longest duration accepted by the parser (limits beyond this are the fields' own).
const MAX_MS: u128 = 24 * 3_600_000;

/// Parse a humane duration; the error says what is wrong and what is expected.
pub(crate) fn parse(s: &str) -> Result<Duration, String> {
    let bad = |what: &str| format!("{what} in duration {s:?}; expected {EXPECTED}");
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let unit_ms: u128 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => return Err(bad("missing unit")),
        _ => return Err(bad(&format!("unknown unit {unit:?}"))),
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits_ok = |d: &str| d.len() <= 12 && d.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits_ok(int) || !digits_ok(frac) || number.ends_with('.') {
        return Err(bad("malformed number"));
    }
    let int: u128 = int.parse().map_err(|_| bad("malformed number"))?;
    let frac_num: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad("malformed number"))?
    };
    let scale = 10u128.pow(u32::try_from(frac.len()).unwrap_or(12));
    let frac_scaled = frac_num * unit_ms;
    if !frac_scaled.is_multiple_of(scale) {
        return Err(format!(
            "duration {s:?} is not a whole number of milliseconds; expected {EXPECTED}"
        ));
    }
    let ms = int * unit_ms + frac_scaled / scale;
    if ms > MAX_MS {
        return Err(format!("duration {s:?} is too long (at most 24h)"));
    }
    Ok(Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)))
}

/// Format a duration the way it would be written in the file (`"1.5s"`, `"250ms"`).
pub(crate) fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{d:?}");
    }
    match ms {
        0 => "0s".to_owned(),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1_000) => format!("{}s", ms / 1_000),
        _ if ms > 1_000 => {
            let frac = format!("{:03}", ms % 1_000);
            format!("{}.{}s", ms / 1_000, frac.trim_end_matches('0'))
        }
        _ => format!("{ms}ms"),
    }
}
