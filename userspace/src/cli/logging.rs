//! Logs on stderr through `tracing`, as human text (the default) or, with the global
//! `--log-format json`, as one JSON object per line for log shippers (journald to
//! Vector, Fluent Bit, Promtail, ...).
//!
//! The level comes from `-v`/`-vv` (warn, debug, trace), `RUST_LOG` overriding it.
//! Records of the `log` crate (aya logs through it) are bridged into the same output.
//!
//! A JSON line has `timestamp` (RFC 3339, UTC), `level`, `target`, the event's fields
//! at the top level (`message` and any structured field such as `checks` or `iface`),
//! and `span`/`spans` when the event happens inside spans:
//!
//! ```text
//! {"timestamp":"2025-01-01T00:00:00.000000Z","level":"INFO","message":"starting","nofile":1048576,"checks":3,"target":"sonde::daemon::start"}
//! ```
//!
//! Text lines carry ANSI colours only when stderr is a terminal, so the journal and
//! log files get plain text.

use std::io::IsTerminal as _;

use clap::ValueEnum;
use tracing_subscriber::{fmt::MakeWriter, EnvFilter};

/// How log records are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line, fields at the top level.
    Json,
}

/// The level filter: `RUST_LOG` when set and valid, else from the `-v` count.
#[must_use]
pub fn filter(verbose: u8) -> EnvFilter {
    let default = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// A subscriber writing `format` records that pass `filter` to `writer`; `ansi`
/// colours text lines (never JSON ones).
pub fn dispatch<W>(format: LogFormat, filter: EnvFilter, writer: W, ansi: bool) -> tracing::Dispatch
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => tracing::Dispatch::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => tracing::Dispatch::new(
            builder
                .with_ansi(false)
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(true)
                .finish(),
        ),
    }
}

/// Install the global subscriber on stderr (a second call changes nothing).
pub fn init(verbose: u8, format: LogFormat) {
    use tracing_subscriber::util::SubscriberInitExt as _;
    let ansi = std::io::stderr().is_terminal();
    let _ = dispatch(format, filter(verbose), std::io::stderr, ansi).try_init();
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::{Arc, Mutex},
    };

    use clap::Parser as _;

    use super::*;
    use crate::cli::Cli;

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("buffer").clone()).expect("utf-8")
        }
    }

    fn log_with(format: LogFormat) -> String {
        let buf = Buf::default();
        let out = buf.clone();
        let d = dispatch(format, EnvFilter::new("info"), move || out.clone(), false);
        tracing::dispatcher::with_default(&d, || {
            let span = tracing::info_span!("reload", file = "checks.toml");
            let _g = span.enter();
            tracing::info!(checks = 3, iface = "eth0", "starting");
            tracing::debug!("filtered out");
        });
        buf.text()
    }

    #[test]
    fn json_lines_are_objects_with_fields_at_the_top() {
        let out = log_with(LogFormat::Json);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).expect("one JSON object");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "starting");
        assert_eq!(v["checks"], 3);
        assert_eq!(v["iface"], "eth0");
        assert_eq!(v["target"], module_path!());
        assert_eq!(v["span"]["name"], "reload");
        assert_eq!(v["span"]["file"], "checks.toml");
        assert!(v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    }

    #[test]
    fn text_is_plain_without_ansi() {
        let out = log_with(LogFormat::Text);
        assert!(out.contains("INFO"), "{out}");
        assert!(out.contains("starting checks=3 iface=\"eth0\""), "{out}");
        assert!(!out.contains('\x1b'), "no colours: {out:?}");
        assert!(!out.contains("filtered out"));
        assert!(serde_json::from_str::<serde_json::Value>(out.trim()).is_err());
    }

    #[test]
    fn log_format_is_global_and_text_by_default() {
        let cli = Cli::try_parse_from(["sonde", "status"]).expect("parses");
        assert_eq!(cli.log_format, LogFormat::Text);
        let cli = Cli::try_parse_from(["sonde", "--log-format", "json", "status"]).expect("parses");
        assert_eq!(cli.log_format, LogFormat::Json);
        let cli = Cli::try_parse_from(["sonde", "run", "--config", "x", "--log-format=json"])
            .expect("global: accepted after the subcommand");
        assert_eq!(cli.log_format, LogFormat::Json);
        assert!(Cli::try_parse_from(["sonde", "--log-format", "yaml", "status"]).is_err());
    }
}
