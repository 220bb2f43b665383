//! The API server on a real unix socket and loopback port, driven by the CLI's own
//! client and commands, with an in-memory `Control`. No root needed; every wait is
//! bounded.

use std::{
    io::{Read, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use prom_text_format_parser::Scrape;
use sonde::{
    api::{
        server::Server, ApiError, ApiOptions, CheckHistory, Control, DaemonInfo, Event,
        MemoryControl, ReloadReport,
    },
    cli::{
        check::{self, AddArgs, CheckArgs, CheckCommand},
        client::{Client, ClientError, Endpoint, Exit},
        history::{self, HistoryArgs},
        reload,
        status::{self, StatusArgs},
        watch::{self, Follow, WatchArgs},
    },
    engine::{result::Reason, spec::CheckId},
    health::{Health, HistoryEntry, Transition},
};
use tokio::sync::watch as tokio_watch;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("sonde-api-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn info() -> DaemonInfo {
    DaemonInfo {
        version: "test".into(),
        uptime_secs: 1,
        clock: "userspace".into(),
        kernel_unavailable: Some("not loaded in tests".into()),
        iface: None,
        config_path: None,
        checks: 0,
        per_target_pps: 50.0,
        syn_ack_reset: None,
        answer_hook: None,
    }
}

fn control() -> Arc<MemoryControl> {
    let c = Arc::new(MemoryControl::new(info()));
    for check in [
        serde_json::json!({"id": "web-1", "target": "127.0.0.1:80", "kind": "tcp_connect", "labels": {"pool": "a"}}),
        serde_json::json!({"id": "icmp-1", "target": "127.0.0.1", "kind": "icmp", "labels": {"pool": "b"}}),
    ] {
        c.add_check(&check).expect("valid check");
    }
    c
}

/// A running server and how to reach it.
struct Harness {
    rt: tokio::runtime::Runtime,
    stop: tokio_watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<Result<(), ApiError>>>,
    control: Arc<MemoryControl>,
    socket: PathBuf,
    http: std::net::SocketAddr,
    token_file: PathBuf,
}

fn options(dir: &Path) -> ApiOptions {
    ApiOptions {
        socket: Some(dir.join("run").join("sonde.sock")),
        http: Some("127.0.0.1:0".parse().unwrap()),
        token_file: dir.join("lib").join("token"),
        ..ApiOptions::default()
    }
}

impl Harness {
    fn start(opts: ApiOptions, control: Arc<MemoryControl>) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = rt.block_on(Server::bind(opts.clone())).expect("bind");
        let http = server.http_addr().expect("http bound");
        let (stop, shutdown) = tokio_watch::channel(false);
        let dyn_control: Arc<dyn Control> = control.clone();
        let task = rt.spawn(server.run(dyn_control, shutdown));
        Self {
            rt,
            stop,
            task: Some(task),
            control,
            socket: opts.socket.expect("socket"),
            http,
            token_file: opts.token_file,
        }
    }

    fn unix(&self) -> Client {
        Client {
            timeout: Duration::from_secs(5),
            ..Client::unix(&self.socket, &self.token_file)
        }
    }

    fn tcp(&self) -> Client {
        Client {
            endpoint: Endpoint::Tcp(self.http),
            ..self.unix()
        }
    }

    fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let joined = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), task).await });
            joined
                .expect("server stops in time")
                .expect("task")
                .expect("run");
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn out_of(f: impl FnOnce(&mut Vec<u8>) -> Result<Exit, ClientError>) -> (Exit, String) {
    let mut out = Vec::new();
    let exit = f(&mut out).expect("command works");
    (exit, String::from_utf8(out).expect("utf-8 output"))
}

fn api_err(r: Result<serde_json::Value, ClientError>) -> (u16, String, String) {
    match r {
        Err(ClientError::Api {
            status,
            kind,
            message,
        }) => (status, kind, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[test]
fn status_check_history_reload_and_metrics_through_the_cli() {
    let dir = TempDir::new("routes");
    let h = Harness::start(options(&dir.0), control());
    let c = h.unix();

    let (exit, text) = out_of(|o| status::run(&c, &StatusArgs::default(), o));
    assert_eq!(exit, Exit::Success, "unknown is not unhealthy");
    assert!(text.starts_with("CHECK"), "{text}");
    assert!(text.contains("web-1") && text.contains("127.0.0.1:80") && text.contains("UNKNOWN"));

    let mut web = h.control.check("web-1").unwrap();
    web.state = Health::Unhealthy;
    h.control.set_status(web);
    let (exit, text) = out_of(|o| status::run(&c, &StatusArgs::default(), o));
    assert_eq!(exit, Exit::Failure);
    assert!(text.contains("UNHEALTHY"));
    let only = StatusArgs {
        unhealthy: true,
        ..StatusArgs::default()
    };
    let (exit, text) = out_of(|o| status::run(&c, &only, o));
    assert_eq!((exit, text.lines().count()), (Exit::Failure, 2), "{text}");
    let pool_b = StatusArgs {
        label: vec![("pool".into(), "b".into())],
        json: true,
        ..StatusArgs::default()
    };
    let (exit, text) = out_of(|o| status::run(&c, &pool_b, o));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (exit, v[0]["id"].as_str(), v.as_array().unwrap().len()),
        (Exit::Success, Some("icmp-1"), 1)
    );

    // Over loopback HTTP too.
    let info = h.tcp().get("/v1/info").expect("info over http");
    assert_eq!(info["checks"], 2);

    let list = CheckArgs {
        command: CheckCommand::List { json: false },
    };
    let (_, text) = out_of(|o| check::run(&c, &list, o));
    assert!(
        text.contains("icmp-1") && text.contains("tcp_connect"),
        "{text}"
    );
    let file = dir.0.join("check.json");
    std::fs::write(&file, r#"{"id": "api-1", "target": "127.0.0.1:8080", "kind": "http", "http": {"path": "/health"}}"#).unwrap();
    let add = CheckArgs {
        command: CheckCommand::Add(Box::new(AddArgs {
            file: Some(file),
            ..AddArgs::default()
        })),
    };
    assert_eq!(out_of(|o| check::run(&c, &add, o)).1, "added api-1\n");
    let flags = AddArgs {
        id: Some("syn-1".into()),
        target: Some("127.0.0.1:443".into()),
        kind: Some("tcp_syn".into()),
        interval: Some("2s".into()),
        label: vec![("pool".into(), "c".into())],
        ..AddArgs::default()
    };
    let add = CheckArgs {
        command: CheckCommand::Add(Box::new(flags)),
    };
    assert_eq!(out_of(|o| check::run(&c, &add, o)).1, "added syn-1\n");
    let show = CheckArgs {
        command: CheckCommand::Show {
            id: "syn-1".into(),
            json: false,
        },
    };
    let (_, text) = out_of(|o| check::run(&c, &show, o));
    assert!(
        text.contains("interval 2s") && text.contains("pool=c"),
        "{text}"
    );
    let rm = CheckArgs {
        command: CheckCommand::Rm { id: "syn-1".into() },
    };
    assert_eq!(out_of(|o| check::run(&c, &rm, o)).1, "removed syn-1\n");
    let (status, kind, msg) = api_err(c.get("/v1/checks/syn-1"));
    assert_eq!((status, kind.as_str()), (404, "unknown_check"));
    assert!(msg.contains("syn-1"), "{msg}");

    let now = tokio::time::Instant::now();
    h.control.set_history(CheckHistory {
        id: CheckId::new("web-1"),
        results: vec![HistoryEntry {
            seq: 7,
            ok: false,
            reason: "timeout",
            rtt: None,
            clock: sonde::engine::Clock::Userspace,
            at: now,
            at_ms: 1500,
        }],
        transitions: vec![Transition {
            check: CheckId::new("web-1"),
            from: Health::Unknown,
            to: Health::Unhealthy,
            at: now,
            at_ms: 1500,
            at_wall: std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_001_500),
            reason: Reason::Timeout,
            results: vec![(false, Reason::Timeout)],
        }],
    });
    let args = HistoryArgs {
        id: "web-1".into(),
        json: false,
    };
    let (_, text) = out_of(|o| history::run(&c, &args, o));
    assert!(
        text.contains("2023-11-14T22:13:21.500Z") && text.contains("FAIL"),
        "{text}"
    );
    assert!(text.contains("unknown -> unhealthy"), "{text}");
    let ghost = HistoryArgs {
        id: "gh/ost".into(),
        json: true,
    };
    match history::run(&c, &ghost, &mut Vec::new()) {
        Err(ClientError::Api {
            status: 404,
            message,
            ..
        }) => assert!(message.contains("gh/ost")),
        other => panic!("{other:?}"),
    }

    let (status, kind, _) = api_err(c.call("POST", "/v1/reload", None));
    assert_eq!((status, kind.as_str()), (409, "unsupported"));
    h.control.set_reload(Ok(ReloadReport {
        added: vec![CheckId::new("n")],
        ..ReloadReport::default()
    }));
    let (exit, text) = out_of(|o| reload::run(&c, false, o));
    assert_eq!(exit, Exit::Success);
    assert!(text.contains("added:     n"), "{text}");

    let text = h.tcp().metrics().expect("metrics");
    let scrape = Scrape::parse(&text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    let state = scrape
        .metrics
        .iter()
        .find(|m| m.name == "sonde_check_state")
        .expect("state family");
    let unhealthy_web = state.samples.iter().find(|s| {
        s.labels
            .iter()
            .any(|l| l.key == "check" && l.value == "web-1")
            && s.labels
                .iter()
                .any(|l| l.key == "state" && l.value == "unhealthy")
    });
    assert_eq!(unhealthy_web.map(|s| s.value.value.as_f64()), Some(1.0));
    let reply = c.request("GET", "/metrics", None).unwrap();
    let ct = reply
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .unwrap();
    assert!(ct.1.starts_with("text/plain; version=0.0.4"), "{ct:?}");
}

#[test]
fn token_sizes_and_malformed_requests() {
    let dir = TempDir::new("limits");
    let h = Harness::start(options(&dir.0), control());
    let token_mode = std::fs::metadata(&h.token_file)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(token_mode, 0o600);

    let no_file = Client {
        token_file: dir.0.join("missing"),
        ..h.unix()
    };
    assert!(matches!(
        no_file.call("DELETE", "/v1/checks/web-1", None),
        Err(ClientError::Token(_))
    ));
    let wrong = dir.0.join("wrong-token");
    std::fs::write(&wrong, "not-the-token\n").unwrap();
    let intruder = Client {
        token_file: wrong,
        ..h.tcp()
    };
    let (status, kind, _) = api_err(intruder.call("DELETE", "/v1/checks/web-1", None));
    assert_eq!((status, kind.as_str()), (401, "unauthorized"));
    assert!(h.control.check("web-1").is_some(), "nothing removed");

    let big = vec![b' '; 100 * 1024];
    let reply = h
        .unix()
        .request("POST", "/v1/checks", Some(&big))
        .expect("answer");
    assert_eq!(reply.status, 413);

    for endpoint in ["unix", "tcp"] {
        let raw = |req: &[u8]| -> String {
            let mut out = String::new();
            if endpoint == "unix" {
                let mut s = UnixStream::connect(&h.socket).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(req).unwrap();
                s.read_to_string(&mut out).unwrap();
            } else {
                let mut s = std::net::TcpStream::connect(h.http).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(req).unwrap();
                s.read_to_string(&mut out).unwrap();
            }
            out
        };
        let out = raw(b"HELLO THERE\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        assert!(out.contains("\"kind\":\"bad_request\""), "{out}");
        let out = raw(b"GET /v1/nothing HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 404 "), "{out}");
    }
}

#[test]
fn connections_beyond_the_limit_get_503() {
    let dir = TempDir::new("conns");
    let opts = ApiOptions {
        max_connections: 1,
        read_timeout: Duration::from_secs(5),
        ..options(&dir.0)
    };
    let mut h = Harness::start(opts, control());
    let idle = UnixStream::connect(&h.socket).unwrap();
    // The idle connection holds the only slot once accepted: poll until refused.
    wait_until("a 503", || {
        match h.unix().request("GET", "/v1/info", None) {
            Ok(r) => r.status == 503,
            Err(_) => false,
        }
    });
    drop(idle);
    wait_until("the slot back", || h.unix().get("/v1/info").is_ok());
    // An idle connection does not hold up shutdown (its read timeout is 5 s).
    let _idle = UnixStream::connect(&h.socket).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    h.stop();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn watch_follows_events_across_a_daemon_restart() {
    let dir = TempDir::new("watch");
    let opts = options(&dir.0);
    let mut first = Harness::start(opts.clone(), control());
    let client = first.unix();

    // The raw stream first.
    let mut stream = client.watch().expect("watch");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    wait_until("a subscriber", || first.control.subscribers() == 1);
    first.control.publish(Event::CheckAdded {
        id: CheckId::new("w-1"),
    });
    let line = stream.next_line().unwrap().expect("an event");
    assert_eq!(line, r#"{"event":"check_added","id":"w-1"}"#);
    drop(stream);
    wait_until("the subscriber gone", || first.control.subscribers() == 0);

    // The follower reports through a channel, so that a lost event fails the test
    // after a while instead of hanging it.
    let (done, follower) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let opts = Follow {
            max_events: Some(2),
            backoff_start: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
            max_retries: Some(100),
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let exit = watch::follow(
            &client,
            &WatchArgs { json: false },
            &opts,
            &mut out,
            &mut err,
        );
        let _ = done.send((
            exit.map_err(|e| e.to_string()),
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        ));
    });
    wait_until("the follower", || first.control.subscribers() == 1);
    first.control.publish(Event::CheckRemoved {
        id: CheckId::new("web-1"),
    });
    first.stop();
    assert!(!first.socket.exists(), "socket removed on shutdown");

    let second = Harness::start(opts, control());
    wait_until("the follower back", || second.control.subscribers() == 1);
    let now = tokio::time::Instant::now();
    second.control.publish(Event::Transition(Transition {
        check: CheckId::new("icmp-1"),
        from: Health::Unknown,
        to: Health::Healthy,
        at: now,
        at_ms: 0,
        at_wall: std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        reason: Reason::Ok,
        results: vec![(true, Reason::Ok)],
    }));
    let (exit, out, err) = follower
        .recv_timeout(Duration::from_secs(30))
        .expect("the follower saw both events in time");
    assert_eq!(exit, Ok(Exit::Success));
    assert!(out.contains("web-1  removed"), "{out}");
    assert!(
        out.contains("2023-11-14T22:13:20.000Z  icmp-1  UNKNOWN -> HEALTHY  (ok)"),
        "{out}"
    );
    assert!(
        err.contains("reconnecting") && err.contains("reconnected"),
        "{err}"
    );
}

#[test]
fn binding_rules() {
    let dir = TempDir::new("bind");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for addr in ["0.0.0.0:0", "192.0.2.1:9911", "[::]:0"] {
        let opts = ApiOptions {
            socket: None,
            http: Some(addr.parse().unwrap()),
            ..options(&dir.0)
        };
        let err = rt.block_on(Server::bind(opts)).expect_err("refused");
        assert!(matches!(err, ApiError::NotLoopback { .. }), "{err}");
        assert!(err.to_string().contains("loopback"), "{err}");
    }

    let opts = options(&dir.0);
    let path = opts.socket.clone().unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // A stale socket: bound once, listener gone.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let h = Harness::start(opts.clone(), control());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    assert_eq!(h.unix().get("/v1/info").unwrap()["checks"], 2);
    // A live one is not taken over.
    let err = rt.block_on(Server::bind(opts.clone())).expect_err("in use");
    assert!(matches!(err, ApiError::SocketInUse { .. }), "{err}");
    drop(h);

    std::fs::write(&path, "precious").unwrap();
    let err = rt.block_on(Server::bind(opts)).expect_err("not a socket");
    assert!(matches!(err, ApiError::NotASocket { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}
