//! The status page in a real headless browser (Debian's Chromium through ChromeDriver),
//! against the real daemon in a lab namespace: the page loads with no console errors,
//! shows the lab's checks with state, latency and a chart, filters by state and label,
//! turns a target that was taken down red (text and colour) as soon as the daemon
//! decides it, and reconnects by itself when the daemon is killed and restarted. A
//! screenshot is saved as `target/artefacts/status-page.png`.

use std::time::{Duration, Instant};

use serde_json::Value;
use sonde::lab::{self, Lab};
use sonde_tests::{
    browser::{self, Browser},
    daemon::{Daemon, TempDir},
    servers::{http_server, tcp_acceptor, HttpReply},
};

const CHECKS: &str = r#"
[defaults]
interval = "300ms"
timeout = "100ms"
jitter = 0.0
rise = 2
fall = 3

[[check]]
id = "web"
target = "198.18.0.2:80"
kind = "http"
labels = { pool = "origin-a" }
[check.http]
path = "/health"
expect_body = "OK"

[[check]]
id = "conn"
target = "198.18.0.2:81"
kind = "tcp_connect"
labels = { pool = "origin-b" }

[[check]]
id = "ping"
target = "198.18.0.2"
kind = "icmp"
labels = { pool = "origin-b" }
"#;

const HTTP: &str = "127.0.0.1:8089";

/// Rows of the checks table: `[id, data-state, state text, background colour]`.
const ROWS: &str = "return Array.from(document.querySelectorAll('#checks tbody tr')).map(r => {
    const b = r.querySelector('.state');
    return [r.dataset.check, r.dataset.state, b.textContent, getComputedStyle(b).backgroundColor];
});";

fn rows(b: &Browser<'_>) -> Vec<Vec<String>> {
    let v = b.eval(ROWS, &[]).expect("rows");
    v.as_array()
        .expect("array")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("row")
                .iter()
                .map(|c| c.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .collect()
}

fn ids(rows: &[Vec<String>]) -> Vec<&str> {
    rows.iter().map(|r| r[0].as_str()).collect()
}

fn no_console_errors(b: &Browser<'_>, when: &str) {
    let errors: Vec<_> = b
        .console()
        .expect("console")
        .into_iter()
        .filter(|e| e.level == "SEVERE")
        .collect();
    assert!(errors.is_empty(), "console errors {when}: {errors:?}");
}

const RED: &str = "rgb(207, 34, 46)";
const GREEN: &str = "rgb(26, 127, 55)";

#[test]
fn status_page_in_a_real_browser() {
    if !lab::privileged_or_skip() {
        return;
    }
    if !browser::available() {
        lab::skip_or_fail("chromium and chromium-driver are not installed (cargo xtask setup)");
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let web = http_server(
        &lab.target,
        "198.18.0.2:80",
        HttpReply::new(200, "service OK"),
        None,
    );
    let _conn = tcp_acceptor(&lab.target, "198.18.0.2:81");
    let dir = TempDir::new("page");
    let config = dir.0.join("checks.toml");
    std::fs::write(&config, CHECKS).expect("write config");
    let iface = lab.link.a.name.clone();
    let args = ["--iface", iface.as_str(), "--http", HTTP];
    let d = Daemon::start(&lab.prober, &dir.0, &config, &args);
    d.wait_all(&["web", "conn", "ping"], "healthy", Duration::from_secs(5));

    let profile = TempDir::new("chromium");
    let b = Browser::start(&lab.prober, &profile.0).expect("browser");
    let url = format!("http://{HTTP}/");
    b.goto(&url).expect("open the page");

    // Every check shows, healthy in text and in green, with a latency and a chart.
    let (_, took) = b
        .wait_for(
            "const r = document.querySelectorAll('#checks tbody tr[data-state=healthy]');
             return r.length === 3 && document.getElementById('conn').dataset.live === '1';",
            Duration::from_secs(10),
        )
        .expect("checks shown healthy and live");
    println!("page showed 3 healthy checks {took:?} after loading");
    let r = rows(&b);
    assert_eq!(ids(&r), ["conn", "ping", "web"], "{r:?}");
    for row in &r {
        assert_eq!(
            row[2], "healthy",
            "state as text, not colour alone: {row:?}"
        );
        assert_eq!(row[3], GREEN, "{row:?}");
    }
    let details = b
        .wait_for(
            "const r = document.querySelector('#checks tr[data-check=web]');
             const poly = r.querySelector('svg.spark polyline');
             const p50 = r.children[6].textContent;
             return poly && p50 !== '–' ? [p50, poly.getAttribute('points').split(' ').length,
               r.querySelector('.labels').textContent, r.querySelector('.last').textContent] : null;",
            Duration::from_secs(10),
        )
        .expect("latency and chart")
        .0;
    println!(
        "web row: p50 {}, chart points {}, labels {}, last {}",
        details[0], details[1], details[2], details[3]
    );
    assert!(
        details[0].as_str().unwrap_or_default().ends_with('s'),
        "{details}"
    );
    assert!(details[1].as_u64().unwrap_or(0) >= 2, "{details}");
    assert_eq!(details[2], "pool=origin-a");
    assert!(
        details[3].as_str().unwrap_or_default().starts_with("ok"),
        "{details}"
    );
    let info = b
        .eval("return document.getElementById('daemon').textContent;", &[])
        .expect("info");
    assert!(
        info.as_str().unwrap_or_default().contains("3 checks"),
        "{info}"
    );
    let cluster_hidden = b
        .eval("return document.getElementById('cluster').hidden;", &[])
        .expect("cluster section");
    assert_eq!(
        cluster_hidden,
        Value::Bool(true),
        "standalone: no cluster section"
    );
    no_console_errors(&b, "after loading");

    // Label filter.
    b.eval(
        "const f = document.getElementById('f-label'); f.value = 'pool=origin-b';
         f.dispatchEvent(new Event('input', { bubbles: true }));",
        &[],
    )
    .expect("type a label");
    assert_eq!(ids(&rows(&b)), ["conn", "ping"]);
    b.eval(
        "const f = document.getElementById('f-label'); f.value = '';
         f.dispatchEvent(new Event('input', { bubbles: true }));",
        &[],
    )
    .expect("clear the label");
    assert_eq!(rows(&b).len(), 3);

    // Take the web target down: its row turns red, in text and colour, within
    // fall x interval + timeout (+ one interval already scheduled, + the page).
    let down = Instant::now();
    drop(web);
    let (_, on_page) = b
        .wait_for(
            "const r = document.querySelector('#checks tr[data-check=web]');
             return r && r.dataset.state === 'unhealthy';",
            Duration::from_secs(10),
        )
        .expect("web turns unhealthy on the page");
    let total = down.elapsed();
    let r = rows(&b);
    let web_row = r.iter().find(|x| x[0] == "web").expect("web row");
    assert_eq!(web_row[2], "unhealthy", "{web_row:?}");
    assert_eq!(web_row[3], RED, "{web_row:?}");
    let bound =
        Duration::from_millis(300) * 4 + Duration::from_millis(100) + Duration::from_secs(1);
    println!(
        "target down -> red on the page after {total:?} (waited {on_page:?}; bound {bound:?})"
    );
    assert!(total <= bound, "red after {total:?}, bound {bound:?}");
    assert!(
        r.iter()
            .filter(|x| x[0] != "web")
            .all(|x| x[1] == "healthy"),
        "the others stay healthy: {r:?}"
    );

    let shot = browser::artefacts_dir().join("status-page.png");
    b.screenshot(&shot).expect("screenshot");
    println!("screenshot: {}", shot.display());

    // Unhealthy filter.
    b.eval("document.getElementById('f-unhealthy').click();", &[])
        .expect("click");
    assert_eq!(ids(&rows(&b)), ["web"]);
    b.eval("document.getElementById('f-unhealthy').click();", &[])
        .expect("click");
    no_console_errors(&b, "after the transition");

    // Kill the daemon: the page says it is disconnected; restart it: the page
    // reconnects by itself and shows the resumed state.
    lab.prober.kill(d.pid).expect("kill -9 the daemon");
    b.wait_for(
        "return document.getElementById('conn').dataset.live === '0';",
        Duration::from_secs(10),
    )
    .expect("page notices the daemon is gone");
    let gone = b
        .eval("return document.getElementById('conn').textContent;", &[])
        .expect("conn text");
    println!("while the daemon is down the page says: {gone}");
    let restarted = Instant::now();
    let d2 = Daemon::start(&lab.prober, &dir.0, &config, &args);
    let (_, back) = b
        .wait_for(
            "return document.getElementById('conn').dataset.live === '1'
                && document.querySelectorAll('#checks tbody tr').length === 3;",
            Duration::from_secs(15),
        )
        .expect("page reconnects after the restart");
    println!(
        "page live again {:?} after the restart ({back:?} of polling)",
        restarted.elapsed()
    );
    let (_, _) = b
        .wait_for(
            "const r = document.querySelector('#checks tr[data-check=web]');
             return r && r.dataset.state === 'unhealthy';",
            Duration::from_secs(5),
        )
        .expect("web still unhealthy after the restart");
    drop(b);
    let _ = d2;
}
