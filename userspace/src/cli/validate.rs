//! `sonde validate FILE`: check a configuration file without a daemon.

use std::{io::Write, path::PathBuf};

use clap::Args;

use super::client::{emit, Exit};
use crate::config::{self, ConfigError};

/// Arguments of `sonde validate`.
#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// The configuration file.
    pub file: PathBuf,
}

/// Validate the file: `ok: N checks` on `out` and [`Exit::Success`], or every problem
/// (one per line, with file, line, column, check and field) on `err` and
/// [`Exit::Failure`].
pub fn run(args: &ValidateArgs, out: &mut dyn Write, err: &mut dyn Write) -> Exit {
    match config::load_file(&args.file) {
        Ok(c) => {
            let n = c.checks.len();
            emit(
                out,
                &format!("ok: {n} check{}\n", if n == 1 { "" } else { "s" }),
            );
            Exit::Success
        }
        Err(e @ ConfigError::Read { .. }) => {
            emit(err, &format!("{e}\n"));
            Exit::Failure
        }
        Err(e) => {
            let problems = e.problems();
            for p in problems {
                emit(err, &format!("{p}\n"));
            }
            let n = problems.len();
            emit(
                err,
                &format!("invalid: {n} problem{}\n", if n == 1 { "" } else { "s" }),
            );
            Exit::Failure
        }
    }
}
