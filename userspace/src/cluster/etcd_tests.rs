//! Unit tests of the etcd wrapper that need no etcd (live tests: `tests/tests/etcd_harness.rs`).

use std::time::{Duration, Instant};

use super::*;

fn quick() -> EtcdOptions {
    EtcdOptions {
        timeout: Duration::from_millis(200),
        deadline: Duration::from_millis(500),
        ..EtcdOptions::default()
    }
}

#[tokio::test]
async fn rejects_keepalive_below_etcd_minimum() {
    let opts = EtcdOptions {
        keepalive_interval: Duration::from_secs(1),
        ..EtcdOptions::default()
    };
    let err = Etcd::connect(&["http://127.0.0.1:1"], opts)
        .await
        .unwrap_err();
    assert!(matches!(err, EtcdError::Config(_)), "{err}");
    assert!(err.to_string().contains("grpc-keepalive-min-time"), "{err}");
}

#[tokio::test]
async fn rejects_half_credentials_and_missing_tls_files() {
    let opts = EtcdOptions {
        user: Some("root".into()),
        ..EtcdOptions::default()
    };
    let err = Etcd::connect(&["http://127.0.0.1:1"], opts)
        .await
        .unwrap_err();
    assert!(matches!(err, EtcdError::Config(_)), "{err}");

    let opts = EtcdOptions {
        tls: Some(EtcdTls {
            ca: "/nonexistent/sonde-ca.pem".into(),
            cert: None,
            key: None,
        }),
        ..EtcdOptions::default()
    };
    let err = Etcd::connect(&["https://127.0.0.1:1"], opts)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/sonde-ca.pem"),
        "{err}"
    );
}

#[tokio::test]
async fn tls_needs_https_endpoints() {
    let dir = std::env::temp_dir().join(format!("sonde-etcd-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (ca, key) = (dir.join("ca.pem"), dir.join("key.pem"));
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let tls = EtcdTls {
        ca: ca.clone(),
        cert: Some(ca.clone()),
        key: Some(key),
    };
    let opts = EtcdOptions {
        tls: Some(tls),
        ..quick()
    };
    let err = Etcd::connect(&["http://127.0.0.1:1"], opts.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EtcdError::Rejected { call, .. } if call.op == "connect"),
        "{err}"
    );
    // An https endpoint is accepted (nothing listens: calls fail as unavailable).
    let etcd = Etcd::connect(&["https://127.0.0.1:1"], opts).await.unwrap();
    assert!(etcd.get("k").await.unwrap_err().is_unavailable());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn unreachable_endpoints_fail_within_deadline_naming_op_key_endpoint() {
    let eps = ["http://127.0.0.1:1", "http://127.0.0.1:2"];
    let etcd = Etcd::connect(&eps, quick()).await.unwrap();
    let t = Instant::now();
    let err = etcd.put("/x/key", "v", None).await.unwrap_err();
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert!(err.is_unavailable(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("put") && msg.contains("/x/key") && msg.contains("127.0.0.1:"),
        "{msg}"
    );
    let call = err.call().expect("call info");
    assert_eq!((call.op, call.key.as_str()), ("put", "/x/key"));
    assert!(call.attempts >= 2, "{call}");
}

#[test]
fn backoff_doubles_up_to_its_cap_with_jitter() {
    let opts = EtcdOptions {
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
        ..EtcdOptions::default()
    };
    let mut b = Backoff::new(&opts);
    let got: Vec<Duration> = (0..5).map(|_| b.next()).collect();
    for (d, base) in got.iter().zip([100u64, 200, 400, 400, 400]) {
        let base = Duration::from_millis(base);
        assert!(
            *d >= base.mul_f64(0.75) && *d <= base.mul_f64(1.25),
            "{got:?}"
        );
    }
    b.reset();
    assert!(b.next() <= Duration::from_millis(125));
}

#[tokio::test]
async fn lease_state_starts_not_alive() {
    let etcd = Etcd::connect(&["http://127.0.0.1:1"], quick())
        .await
        .unwrap();
    let keeper = etcd.keep_alive(42, Duration::from_secs(3));
    let s = keeper.current();
    assert!(!s.alive && !s.lost);
    assert_eq!(keeper.lease_id(), 42);
}
