//! A real headless Chromium, driven through ChromeDriver's WebDriver protocol (plain
//! HTTP + JSON), inside a lab namespace, so it can reach a daemon's loopback address
//! there. Debian's `chromium` and `chromium-driver` packages (installed by
//! `cargo xtask setup`).
//!
//! Chromium is started with the flags that keep it off the network it cannot reach
//! (no background networking, no component updates, no sync) and a fresh profile in
//! a temporary directory. ChromeDriver and its browser live in the namespace, so the
//! namespace guard kills them on drop, also when a test fails.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use sonde::lab::Netns;

/// Where Debian puts them.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Where Debian puts it.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Port ChromeDriver listens on inside the namespace.
const DRIVER_PORT: u16 = 9515;

/// Whether both binaries are installed.
#[must_use]
pub fn available() -> bool {
    Path::new(CHROMIUM).is_file() && Path::new(CHROMEDRIVER).is_file()
}

/// One browser session.
pub struct Browser<'a> {
    ns: &'a Netns,
    session: String,
}

/// One browser console message.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// `SEVERE`, `WARNING`, `INFO`, ...
    pub level: String,
    /// The message.
    pub message: String,
}

/// One response: the head, then Content-Length bytes of body (ChromeDriver keeps the
/// connection open despite `Connection: close`, so reading to the end would hang).
fn read_response(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if let Some(len) = len {
                if out.len() >= end + 4 + len {
                    out.truncate(end + 4 + len);
                    return Ok(out);
                }
            }
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

fn call(ns: &Netns, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{DRIVER_PORT}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let raw = ns
        .run(move || -> std::io::Result<Vec<u8>> {
            let mut s = TcpStream::connect(("127.0.0.1", DRIVER_PORT))?;
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
            s.write_all(req.as_bytes())?;
            read_response(&mut s)
        })
        .context("entering the namespace")?
        .with_context(|| format!("WebDriver {method} {path}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("WebDriver {method} {path}: no HTTP head in {text:?}"))?;
    let v: Value = serde_json::from_str(body)
        .with_context(|| format!("WebDriver {method} {path}: not JSON: {body:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("WebDriver {method} {path}: {head:?}: {v}");
    }
    Ok(v["value"].clone())
}

/// Wait until no address in `ns` is tentative (IPv6 duplicate address detection).
fn settle_addresses(ns: &Netns, limit: Duration) -> Result<()> {
    let start = std::time::Instant::now();
    loop {
        let out = ns.ip(&["-6", "addr", "show", "tentative"])?;
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!(
                "addresses in {} still tentative after {limit:?}: {}",
                ns.name(),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl<'a> Browser<'a> {
    /// Start ChromeDriver in `ns` and open a headless Chromium session with a fresh
    /// profile under `profile`.
    ///
    /// # Errors
    /// ChromeDriver does not come up or the session cannot be created.
    pub fn start(ns: &'a Netns, profile: &Path) -> Result<Self> {
        // Chromium aborts requests in flight with ERR_NETWORK_CHANGED when an address
        // of its namespace changes, e.g. a fresh veth's IPv6 link-local address leaving
        // duplicate address detection a second or two after the lab came up (seen once
        // in CI: the page's event stream failed right after loading). Start it once
        // the namespace's addresses are settled.
        settle_addresses(ns, Duration::from_secs(5))?;
        let port = format!("--port={DRIVER_PORT}");
        ns.spawn(&[CHROMEDRIVER, &port])
            .context("starting chromedriver")?;
        ns.wait_listening(DRIVER_PORT, Duration::from_secs(15))
            .context("chromedriver did not listen")?;
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:loggingPrefs": { "browser": "ALL" },
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        "--disable-dev-shm-usage", "--window-size=1400,900",
                        format!("--user-data-dir={}", profile.display()),
                    ],
                },
            }},
        });
        let v = call(ns, "POST", "/session", Some(&caps))?;
        let session = v["sessionId"]
            .as_str()
            .with_context(|| format!("no sessionId in {v}"))?
            .to_owned();
        Ok(Self { ns, session })
    }

    fn at(&self, what: &str) -> String {
        format!("/session/{}/{what}", self.session)
    }

    /// Navigate to `url`.
    ///
    /// # Errors
    /// WebDriver refuses.
    pub fn goto(&self, url: &str) -> Result<()> {
        call(
            self.ns,
            "POST",
            &self.at("url"),
            Some(&json!({ "url": url })),
        )
        .map(drop)
    }

    /// Run `script` (a function body; `arguments` holds `args`) in the page and return
    /// its result.
    ///
    /// # Errors
    /// The script throws or WebDriver refuses.
    pub fn eval(&self, script: &str, args: &[Value]) -> Result<Value> {
        call(
            self.ns,
            "POST",
            &self.at("execute/sync"),
            Some(&json!({ "script": script, "args": args })),
        )
    }

    /// Poll `script` until it returns something truthy (not null/false/empty), at most
    /// `limit`; returns the value and how long it took.
    ///
    /// # Errors
    /// Not reached within `limit` (the error shows the last value).
    pub fn wait_for(&self, script: &str, limit: Duration) -> Result<(Value, Duration)> {
        let start = Instant::now();
        loop {
            let v = self.eval(script, &[])?;
            let truthy = match &v {
                Value::Null | Value::Bool(false) => false,
                Value::Array(a) => !a.is_empty(),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return Ok((v, start.elapsed()));
            }
            if start.elapsed() > limit {
                bail!("not within {limit:?}: {script} -> {v}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Console messages since the last call.
    ///
    /// # Errors
    /// WebDriver refuses.
    pub fn console(&self) -> Result<Vec<LogEntry>> {
        let v = call(
            self.ns,
            "POST",
            &self.at("se/log"),
            Some(&json!({ "type": "browser" })),
        )?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .map(|e| LogEntry {
                        level: e["level"].as_str().unwrap_or_default().to_owned(),
                        message: e["message"].as_str().unwrap_or_default().to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// A PNG screenshot of the viewport, written to `path`.
    ///
    /// # Errors
    /// WebDriver refuses or the file cannot be written.
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        let v = call(self.ns, "GET", &self.at("screenshot"), None)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().context("screenshot is not a string")?)
            .context("screenshot is not base64")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        let _ = call(
            self.ns,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
    }
}

/// Where tests put artefacts (screenshots): `<target dir>/artefacts/`.
#[must_use]
pub fn artefacts_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("target dir")
        .join("artefacts")
}
