//! Shell completions and man pages, generated from the clap definitions themselves
//! (hidden subcommands `sonde completions SHELL` and `sonde man [DIR]`), so they can
//! never drift from the binary. `cargo xtask completions`, `cargo xtask man` and
//! `cargo xtask package` run them on the release binary; the Debian package ships
//! their output.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap::{Args, CommandFactory as _};
pub use clap_complete::Shell;

use super::Cli;

/// Arguments of `sonde completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to write a completion script for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Arguments of `sonde man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write sonde.1 and one page per subcommand (sonde-run.1, sonde-check-add.1, ...)
    /// here; without it, sonde.1 goes to stdout.
    pub dir: Option<PathBuf>,
}

/// The clap command of the `sonde` binary.
#[must_use]
pub fn command() -> clap::Command {
    Cli::command()
}

/// The completion script of `shell` for the `sonde` binary.
#[must_use]
pub fn completion_script(shell: Shell) -> String {
    // clap_complete panics on write errors: generate into memory, write it out after.
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut command(), "sonde", &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Sections added to sonde(1): what the package installs and the daemon uses.
const MAIN_PAGE_EXTRA: &str = r#".SH "EXIT STATUS"
\fBsonde status\fR exits 0 when no check is unhealthy, 1 when one is, 2 when the
daemon cannot be reached. Other commands exit 0 on success and 1 on error.
.SH SIGNALS
The daemon (\fBsonde run\fR) re\-reads its checks file on \fBSIGHUP\fR (an invalid
file changes nothing). On \fBSIGTERM\fR or \fBSIGINT\fR it stops after in\-flight
probes finish or time out, and detaches its kernel programs.
.SH ENVIRONMENT
.TP
\fBRUST_LOG\fR
Log filter (e.g. \fBinfo\fR, \fBwarn,sonde=debug\fR); overrides \fB\-v\fR.
.SH FILES
.TP
\fI/etc/sonde/checks.toml\fR
The checks file of the packaged service.
.TP
\fI/etc/default/sonde\fR
Options and environment of the packaged service (\fBSONDE_OPTS\fR, \fBRUST_LOG\fR).
.TP
\fI/var/lib/sonde\fR
State directory: the journal (health resumes from it after a restart) and the API
token file \fItoken\fR (mode 0600).
.TP
\fI/run/sonde/sonde.sock\fR
The API socket of the client commands (mode 0660, group \fBsonde\fR).
.TP
\fI/usr/share/sonde/sonde\-alerts.yml\fR
Prometheus alerting rules for the daemon's \fB/metrics\fR.
.SH "SEE ALSO"
\fBsonde\-run\fR(1), \fBsonde\-status\fR(1), \fBsystemctl\fR(1), \fBjournalctl\fR(1)
"#;

/// Render sonde(1): clap's sections plus exit status, signals, environment and files
/// (before the VERSION section).
///
/// # Errors
/// Writing to `out` failed.
pub fn write_main_page(out: &mut dyn Write) -> io::Result<()> {
    let mut cmd = command().disable_help_subcommand(true);
    cmd.build();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd)
        .manual("sonde manual")
        .render(&mut page)?;
    let page = String::from_utf8_lossy(&page);
    let at = page.find(".SH VERSION").unwrap_or(page.len());
    out.write_all(page[..at].as_bytes())?;
    out.write_all(MAIN_PAGE_EXTRA.as_bytes())?;
    out.write_all(page[at..].as_bytes())
}

/// Write sonde.1 and one page per visible subcommand into `dir`; their paths, sorted.
///
/// # Errors
/// The directory or a page cannot be written.
pub fn write_man_pages(dir: &Path) -> io::Result<Vec<PathBuf>> {
    fn sub_pages(cmd: &clap::Command, dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            sub_pages(sub, dir, out)?;
            let man = clap_mangen::Man::new(sub.clone()).manual("sonde manual");
            out.push(man.generate_to(dir)?);
        }
        Ok(())
    }
    fs::create_dir_all(dir)?;
    let mut cmd = command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    sub_pages(&cmd, dir, &mut pages)?;
    let main = dir.join("sonde.1");
    let mut f = io::BufWriter::new(fs::File::create(&main)?);
    write_main_page(&mut f)?;
    f.flush()?;
    pages.push(main);
    pages.sort();
    Ok(pages)
}

/// `sonde completions SHELL`.
///
/// # Errors
/// Writing to stdout failed.
pub fn completions(a: &CompletionsArgs) -> anyhow::Result<()> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    out.write_all(completion_script(a.shell).as_bytes())
        .and_then(|()| out.flush())
        .context("writing the completion script")
}

/// `sonde man [DIR]`.
///
/// # Errors
/// A page cannot be written.
pub fn man(a: &ManArgs) -> anyhow::Result<()> {
    match &a.dir {
        Some(dir) => {
            let pages = write_man_pages(dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
            for p in pages {
                println!("{}", p.display());
            }
            Ok(())
        }
        None => {
            let mut page = Vec::new();
            write_main_page(&mut page).context("rendering sonde.1")?;
            let stdout = io::stdout();
            let mut out = stdout.lock();
            out.write_all(&page)
                .and_then(|()| out.flush())
                .context("writing sonde.1")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_name_the_subcommands_and_global_options() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let s = completion_script(shell);
            for word in [
                "status",
                "validate",
                "run",
                "log-format",
                "socket",
                "state-dir",
            ] {
                assert!(s.contains(word), "{shell}: {word} missing");
            }
            assert!(s.contains("json"), "{shell}: --log-format values");
        }
    }

    #[test]
    fn main_page_has_clap_and_extra_sections() {
        let mut buf = Vec::new();
        write_main_page(&mut buf).expect("renders");
        let page = String::from_utf8(buf).expect("utf-8");
        assert!(page.contains(".TH sonde 1"), "{page}");
        for s in [
            ".SH NAME",
            ".SH SYNOPSIS",
            ".SH OPTIONS",
            ".SH SUBCOMMANDS",
            ".SH FILES",
            ".SH VERSION",
        ] {
            assert!(page.contains(s), "{s} missing");
        }
        assert!(page.find(".SH FILES") < page.find(".SH VERSION"));
        assert!(page.contains("log\\-format"));
        assert!(
            !page.contains("sonde\\-completions") && !page.contains("sonde\\-man("),
            "hidden subcommands stay hidden"
        );
    }

    #[test]
    fn man_pages_cover_every_visible_subcommand() {
        let dir = std::env::temp_dir().join(format!("sonde-man-{}", std::process::id()));
        let pages = write_man_pages(&dir).expect("writes");
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let _ = fs::remove_dir_all(&dir);
        for n in [
            "sonde.1",
            "sonde-run.1",
            "sonde-status.1",
            "sonde-check-add.1",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        assert!(!names
            .iter()
            .any(|n| n.contains("completions") || n == "sonde-man.1"));
    }
}
