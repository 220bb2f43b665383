//! What the client commands print and how they exit.

use std::io::Write;

use serde_json::Value;

use super::client::ClientError;

/// Exit status of a client command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done; every check listed is healthy (or unknown).
    Success,
    /// 1: the call failed, the input is invalid, or a check listed is unhealthy.
    Failure,
    /// 2: the daemon cannot be reached.
    Unreachable,
}

impl Exit {
    /// The process exit code.
    #[must_use]
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::Unreachable => 2,
        }
    }
}

/// Print `e` on `err` and give the exit status it calls for: [`Exit::Unreachable`]
/// when the daemon cannot be reached, [`Exit::Failure`] otherwise.
pub fn report(e: &ClientError, err: &mut dyn Write) -> Exit {
    if matches!(e, ClientError::Connect { .. }) {
        let _ = writeln!(err, "{e}");
        Exit::Unreachable
    } else {
        let _ = writeln!(err, "sonde: error: {e}");
        Exit::Failure
    }
}

/// Write `text` to `out`, ignoring a closed output (e.g. `| head`).
pub fn emit(out: &mut dyn Write, text: &str) {
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// `value` as pretty JSON with a final newline.
#[must_use]
pub fn pretty(value: &Value) -> String {
    let mut s = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    s.push('\n');
    s
}
