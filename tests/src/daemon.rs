//! Running the real `sonde` binary as a daemon inside a lab namespace.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::Value;
use sonde::{cli::client::Client, lab::Netns};

/// The `sonde` binary built next to the test binary (`cargo test --workspace` builds it).
///
/// # Panics
/// The binary is missing.
#[must_use]
pub fn sonde_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("sonde");
    assert!(
        bin.is_file(),
        "{} missing: build it with `cargo build -p sonde` (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// A unique temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Create one named after `tag`.
    ///
    /// # Panics
    /// The directory cannot be created.
    #[must_use]
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "sonde-{tag}-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A daemon started in a namespace with a config file and a state dir.
pub struct Daemon {
    /// Its pid (owned by the namespace guard, which kills it on drop).
    pub pid: u32,
    /// API socket.
    pub socket: PathBuf,
    /// Token file.
    pub token: PathBuf,
}

impl Daemon {
    /// Start `sonde run` in `ns` and wait until its API answers.
    ///
    /// # Panics
    /// It does not come up within 10 s.
    #[must_use]
    pub fn start(ns: &Netns, dir: &Path, config: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(ns, dir, config, extra, &[])
    }

    /// [`Daemon::start`] with environment variables set for the daemon.
    ///
    /// # Panics
    /// It does not come up within 10 s.
    #[must_use]
    pub fn start_with_env(
        ns: &Netns,
        dir: &Path,
        config: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let socket = dir.join("sonde.sock");
        let token = dir.join("token");
        let bin = sonde_bin();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("daemon.log"))
            .expect("log file");
        let mut args: Vec<String> = vec!["env".into()];
        args.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        args.extend([
            bin.display().to_string(),
            "run".into(),
            "--config".into(),
            config.display().to_string(),
            "--state-dir".into(),
            dir.join("state").display().to_string(),
            "--socket".into(),
            socket.display().to_string(),
            "--token-file".into(),
            token.display().to_string(),
        ]);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let pid = ns
            .spawn_with(
                &argv,
                std::process::Stdio::null(),
                std::process::Stdio::from(log),
            )
            .expect("spawn daemon");
        let d = Self { pid, socket, token };
        let start = Instant::now();
        while d.client().get("/v1/info").is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "daemon did not come up; log:\n{}",
                d.log(dir)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    /// SIGTERM, then wait (at most 5 s) for the daemon to exit and reap it; its wait
    /// status.
    ///
    /// # Panics
    /// It does not stop in time (its log is shown).
    #[must_use]
    pub fn terminate(&self, dir: &Path) -> i32 {
        let pid = i32::try_from(self.pid).expect("pid");
        // SAFETY: kill(2) on the pid of the daemon this harness started (not reaped yet).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let start = Instant::now();
        let mut wstatus = 0;
        // SAFETY: waitpid on our own child, WNOHANG, valid status pointer.
        while unsafe { libc::waitpid(pid, &raw mut wstatus, libc::WNOHANG) } == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "daemon did not stop on SIGTERM; log:\n{}",
                self.log(dir)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        wstatus
    }

    /// A client of its API.
    #[must_use]
    pub fn client(&self) -> Client {
        Client::unix(&self.socket, &self.token)
    }

    /// Its log so far.
    #[must_use]
    pub fn log(&self, dir: &Path) -> String {
        std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
    }

    /// `GET /v1/status` as (id, state) pairs.
    ///
    /// # Panics
    /// The API does not answer.
    #[must_use]
    pub fn states(&self) -> Vec<(String, String)> {
        let v = self.client().get("/v1/status").expect("status");
        let arr = v
            .as_array()
            .cloned()
            .or_else(|| v.get("checks").and_then(Value::as_array).cloned())
            .unwrap_or_default();
        arr.iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap_or("").to_owned(),
                    c["state"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    /// Results per check so far (every outcome), from `sonde_probes_total` in /metrics.
    ///
    /// # Panics
    /// /metrics does not answer or does not parse.
    #[must_use]
    pub fn results_per_check(&self) -> std::collections::HashMap<String, u64> {
        let text = self.client().metrics().expect("metrics");
        let mut out = std::collections::HashMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("sonde_probes_total{check=\"") else {
                continue;
            };
            let (id, rest) = rest.split_once('"').expect("check label");
            let n: f64 = rest
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .expect("sample value");
            *out.entry(id.to_owned()).or_default() += n as u64;
        }
        out
    }

    /// Wait until every check in `ids` is in `state`; returns how long it took.
    ///
    /// # Panics
    /// Not reached within `limit`.
    pub fn wait_all(&self, ids: &[&str], state: &str, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let s = self.states();
            if ids
                .iter()
                .all(|id| s.iter().any(|(i, st)| i == id && st == state))
            {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "not all {state} within {limit:?}: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
