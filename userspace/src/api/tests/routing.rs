//! Routes: paths and methods to routes, routes to answers.

use super::*;
use crate::{
    api::{
        control::{Control, Event, ReloadReport},
        routes::{execute, plan, Route, StatusFilter},
    },
    health::Health,
};

#[test]
fn plans_paths_and_methods() {
    assert_eq!(plan("GET", "/v1/info"), Ok(Route::Info));
    assert_eq!(plan("GET", "/v1/checks/"), Ok(Route::Checks));
    assert_eq!(
        plan("GET", "/v1/checks/a%3Ab"),
        Ok(Route::Check("a:b".into()))
    );
    assert_eq!(
        plan("GET", "/v1/checks/x/history"),
        Ok(Route::History("x".into()))
    );
    assert_eq!(
        plan("DELETE", "/v1/checks/x"),
        Ok(Route::RemoveCheck("x".into()))
    );
    assert_eq!(plan("POST", "/v1/checks"), Ok(Route::AddCheck));
    assert_eq!(plan("POST", "/v1/reload"), Ok(Route::Reload));
    assert_eq!(plan("GET", "/metrics"), Ok(Route::Metrics));
    assert_eq!(plan("GET", "/v1/cluster"), Ok(Route::Cluster));
    assert_eq!(plan("GET", "/v1/rtts"), Ok(Route::Rtts(30)));
    assert_eq!(plan("GET", "/v1/rtts?n=5"), Ok(Route::Rtts(5)));
    for bad in [
        "/v1/rtts?n=0",
        "/v1/rtts?n=33",
        "/v1/rtts?n=x",
        "/v1/rtts?m=1",
    ] {
        assert_eq!(plan("GET", bad).unwrap_err().status, 400, "{bad}");
    }
    for (path, served) in [
        ("/", "/"),
        ("/index.html", "/"),
        ("/ui/app.js", "/ui/app.js"),
    ] {
        match plan("GET", path) {
            Ok(Route::Ui(a)) => assert_eq!(a.path, served),
            other => panic!("{path}: {other:?}"),
        }
    }
    assert_eq!(plan("GET", "/ui/../v1/info").unwrap_err().status, 404);
    assert_eq!(plan("POST", "/").unwrap_err().status, 405);
    assert_eq!(plan("POST", "/v1/cluster").unwrap_err().status, 405);
    assert_eq!(
        plan("GET", "/v1/status?unhealthy=1&label=pool%3Da&label=x=y%3Dz"),
        Ok(Route::Status(StatusFilter {
            unhealthy: true,
            labels: vec![("pool".into(), "a".into()), ("x".into(), "y=z".into())],
        }))
    );
    let e = plan("PUT", "/v1/checks/x").unwrap_err();
    assert_eq!(e.status, 405);
    assert!(e.headers.contains(&("Allow", "GET, DELETE".to_owned())));
    assert_eq!(plan("GET", "/v1/nope").unwrap_err().status, 404);
    assert_eq!(plan("GET", "/v1/checks//history").unwrap_err().status, 404);
    assert_eq!(plan("GET", "*").unwrap_err().status, 400);
    assert_eq!(plan("GET", "/v1/checks/%zz").unwrap_err().status, 400);
    assert_eq!(
        plan("GET", "/v1/status?unhealthy=maybe")
            .unwrap_err()
            .status,
        400
    );
    assert_eq!(
        plan("GET", "/v1/status?label=novalue").unwrap_err().status,
        400
    );
    assert_eq!(
        plan("GET", "/v1/status?colour=red").unwrap_err().status,
        400
    );
    assert!(Route::Reload.mutating() && !Route::Watch.mutating());
}

fn body_of(r: &crate::api::http::Response) -> serde_json::Value {
    json(&String::from_utf8_lossy(&r.body))
}

#[test]
fn status_filters_by_state_and_label() {
    let c = control();
    let mut dns = c.check("dns-1").unwrap();
    dns.state = Health::Unhealthy;
    c.set_status(dns);
    let ids = |route: &str| -> Vec<String> {
        let r = execute(c.as_ref(), &plan("GET", route).unwrap(), b"");
        assert_eq!(r.status, 200);
        body_of(&r)
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids("/v1/status"), ["dns-1", "web-1"]);
    assert_eq!(ids("/v1/status?unhealthy=1"), ["dns-1"]);
    assert_eq!(ids("/v1/status?label=pool=a"), ["web-1"]);
    assert!(ids("/v1/status?label=pool=a&unhealthy=1").is_empty());
}

#[test]
fn checks_and_errors() {
    let c = control();
    let r = execute(c.as_ref(), &Route::Checks, b"");
    assert_eq!(body_of(&r).as_array().unwrap().len(), 2);
    let r = execute(c.as_ref(), &Route::Check("web-1".into()), b"");
    let v = body_of(&r);
    assert_eq!(v["spec"]["id"], "web-1");
    assert_eq!(v["status"]["state"], "unknown");
    for route in [
        Route::Check("ghost".into()),
        Route::History("ghost".into()),
        Route::RemoveCheck("ghost".into()),
    ] {
        let r = execute(c.as_ref(), &route, b"");
        assert_eq!(r.status, 404);
        let v = body_of(&r);
        assert_eq!(v["kind"], "unknown_check");
        assert!(v["error"].as_str().unwrap().contains("\"ghost\""), "{v}");
    }
    let dup = br#"{"id": "web-1", "target": "127.0.0.1:81", "kind": "tcp_connect"}"#;
    let r = execute(c.as_ref(), &Route::AddCheck, dup);
    assert_eq!(
        (r.status, body_of(&r)["kind"].clone()),
        (409, "duplicate".into())
    );
    let bad = br#"{"id": "x", "target": "127.0.0.1", "kind": "http"}"#;
    let r = execute(c.as_ref(), &Route::AddCheck, bad);
    assert_eq!(r.status, 400);
    assert!(body_of(&r)["error"].as_str().unwrap().contains("port"));
    for junk in [&b"{"[..], b"[1]", b"\xff\xfe"] {
        let r = execute(c.as_ref(), &Route::AddCheck, junk);
        assert_eq!(
            (r.status, body_of(&r)["kind"].clone()),
            (400, "invalid".into())
        );
    }
    let r = execute(c.as_ref(), &Route::Reload, b"");
    assert_eq!(
        (r.status, body_of(&r)["kind"].clone()),
        (409, "unsupported".into())
    );
    c.set_reload(Err("checks.toml:3:1: bad".into()));
    assert_eq!(execute(c.as_ref(), &Route::Reload, b"").status, 400);
    c.set_reload(Ok(ReloadReport::default()));
    assert_eq!(execute(c.as_ref(), &Route::Reload, b"").status, 200);
    let r = execute(c.as_ref(), &Route::Metrics, b"");
    assert!(r.content_type.starts_with("text/plain; version=0.0.4"));
}

#[tokio::test]
async fn add_and_remove_over_a_connection() {
    let f = fixture(ApiOptions::default());
    let mut events = f.control.subscribe();
    let body =
        r#"{"id": "new-1", "target": "127.0.0.1:8080", "kind": "http", "http": {"path": "/h"}}"#;
    let (h, b) = exchange(
        &f,
        false,
        &with_body("POST", "/v1/checks", Some(TOKEN), body),
    )
    .await;
    assert_eq!(h.status, 201, "{b}");
    assert_eq!(json(&b)["id"], "new-1");
    assert_eq!(
        http::header(&h.headers, "location"),
        Some("/v1/checks/new-1")
    );
    assert!(
        matches!(&*events.recv().await.unwrap(), Event::CheckAdded { id } if id.as_str() == "new-1")
    );
    let (h, b) = exchange(
        &f,
        false,
        &with_body("DELETE", "/v1/checks/new-1", Some(TOKEN), ""),
    )
    .await;
    assert_eq!(
        (h.status, json(&b)["removed"].clone()),
        (200, "new-1".into())
    );
    let (h, b) = exchange(&f, false, &get("/v1/checks/new-1")).await;
    assert_eq!(h.status, 404);
    assert!(b.contains("new-1"));
    let (h, b) = exchange(&f, false, &get("/v1/info")).await;
    assert_eq!((h.status, json(&b)["checks"].clone()), (200, 2.into()));
    assert_eq!(
        http::header(&h.headers, "content-type"),
        Some("application/json")
    );
}

/// `serve_stream` (what the fuzz target drives) serves a connection on any byte stream
/// exactly as the server does: same answers, same refusals, same Host rule.
#[tokio::test]
async fn serve_stream_is_the_server_path() {
    let f = fixture(ApiOptions::default());
    for (request, tcp, status) in [
        (get("/v1/info"), true, 200),
        (
            b"GET /v1/info HTTP/1.1\r\nHost: evil.example\r\n\r\n".to_vec(),
            true,
            400,
        ),
        (
            b"GET /v1/info HTTP/1.1\r\nHost: evil.example\r\n\r\n".to_vec(),
            false,
            200,
        ),
        (with_body("POST", "/v1/reload", None, ""), false, 401),
        (b"BAD\r\n\r\n".to_vec(), false, 400),
    ] {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let control: std::sync::Arc<dyn crate::api::Control> = f.control.clone();
        let serve = tokio::spawn(crate::api::server::serve_stream(
            server,
            control,
            TOKEN,
            ApiOptions::default(),
            tcp,
        ));
        client.write_all(&request).await.unwrap();
        client.shutdown().await.unwrap();
        let mut raw = Vec::new();
        client.read_to_end(&mut raw).await.unwrap();
        serve.await.unwrap();
        let (h, b) = split(&raw);
        assert_eq!(
            h.status,
            status,
            "{}: {b}",
            String::from_utf8_lossy(&request)
        );
    }
}
