//! sonde against a real etcd that requires TLS with client certificates and, on top,
//! user/password authentication (etcd's RBAC): the daemon registers and leads, the CLI
//! adds a check and reads its quorum verdict, all over TLS with a user whose role only
//! covers sonde's prefix. Without the client certificate, with the wrong CA, or with a
//! wrong password, the CLI fails with a clear error naming the cause and exit code 2
//! (never 1, which `sonde status` uses for "something is unhealthy").
//!
//! etcd runs in the prober namespace on its loopback (https://127.0.0.1:23790), next to
//! the daemon; the check's target is in the lab's target namespace (198.18.0.2).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use sonde::lab::{self, Lab, Netns};
use sonde_tests::{
    daemon::{sonde_bin, Daemon, TempDir},
    servers::tcp_acceptor,
};

const CLIENT_PORT: u16 = 23790;
const PEER_PORT: u16 = 23800;
const URL: &str = "https://127.0.0.1:23790";

struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    other_ca: PathBuf,
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write pem");
    p
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate signed by it, and
/// an unrelated CA.
fn pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sonde test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");

    let server_key = KeyPair::generate().expect("key");
    let mut sp = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("params");
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = sp.signed_by(&server_key, &ca, &ca_key).expect("server");

    let client_key = KeyPair::generate().expect("key");
    let mut cp = CertificateParams::new(Vec::<String>::new()).expect("params");
    cp.distinguished_name.push(DnType::CommonName, "sonde-node");
    cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = cp.signed_by(&client_key, &ca, &ca_key).expect("client");

    let other_key = KeyPair::generate().expect("key");
    let mut op = CertificateParams::new(Vec::<String>::new()).expect("params");
    op.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other = op.self_signed(&other_key).expect("other ca");
    Pki {
        ca: write(dir, "ca.pem", &ca.pem()),
        server_cert: write(dir, "server.pem", &server.pem()),
        server_key: write(dir, "server.key", &server_key.serialize_pem()),
        client_cert: write(dir, "client.pem", &client.pem()),
        client_key: write(dir, "client.key", &client_key.serialize_pem()),
        other_ca: write(dir, "other-ca.pem", &other.pem()),
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `etcdctl` with the client certificate (and `user` if given) in `ns`.
fn etcdctl(ns: &Netns, pki: &Pki, user: Option<&str>, args: &[&str]) -> String {
    let (ca, cert, key) = (s(&pki.ca), s(&pki.client_cert), s(&pki.client_key));
    let mut cmd: Vec<String> = vec![
        "env".into(),
        "ETCDCTL_API=3".into(),
        "etcdctl".into(),
        format!("--endpoints={URL}"),
        format!("--cacert={ca}"),
        format!("--cert={cert}"),
        format!("--key={key}"),
    ];
    if let Some(u) = user {
        cmd.push(format!("--user={u}"));
    }
    cmd.extend(args.iter().map(|a| (*a).to_owned()));
    let argv: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let out = ns.exec_unchecked(&argv).expect("etcdctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "etcdctl {args:?}: {text}");
    text
}

/// The sonde CLI in `ns` with `etcd` options; (exit code, stdout+stderr).
fn sonde(ns: &Netns, etcd: &[String], args: &[&str]) -> (i32, String) {
    let bin = s(&sonde_bin());
    let mut argv: Vec<&str> = vec![bin.as_str()];
    argv.extend(args);
    argv.extend(etcd.iter().map(String::as_str));
    let out = ns.exec_unchecked(&argv).expect("sonde");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn tls_client_certificates_and_user_password() {
    if !lab::privileged_or_skip() {
        return;
    }
    let lab = Lab::two_hosts().expect("lab");
    let _target = tcp_acceptor(&lab.target, "198.18.0.2:80");
    let dir = TempDir::new("etcd-tls");
    let pki = pki(&dir.0);
    let data = dir.0.join("etcd-data");
    let peer = format!("http://127.0.0.1:{PEER_PORT}");
    let (cert, key, ca) = (s(&pki.server_cert), s(&pki.server_key), s(&pki.ca));
    let log = std::fs::File::create(dir.0.join("etcd.log")).expect("log");
    let data_s = s(&data);
    let initial = format!("m0={peer}");
    lab.prober
        .spawn_with(
            &[
                "etcd",
                "--name",
                "m0",
                "--data-dir",
                &data_s,
                "--listen-client-urls",
                URL,
                "--advertise-client-urls",
                URL,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &initial,
                "--cert-file",
                &cert,
                "--key-file",
                &key,
                "--trusted-ca-file",
                &ca,
                "--client-cert-auth",
            ],
            std::process::Stdio::null(),
            std::process::Stdio::from(log),
        )
        .expect("etcd");
    lab.prober
        .wait_listening(CLIENT_PORT, Duration::from_secs(15))
        .expect("etcd listens");
    // RBAC: root (needed to enable auth), and a user `sonde` whose role covers /sonde only.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let out = lab
            .prober
            .exec_unchecked(&[
                "env",
                "ETCDCTL_API=3",
                "etcdctl",
                &format!("--endpoints={URL}"),
                &format!("--cacert={ca}"),
                &format!("--cert={}", s(&pki.client_cert)),
                &format!("--key={}", s(&pki.client_key)),
                "endpoint",
                "health",
            ])
            .expect("etcdctl");
        if out.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    etcdctl(&lab.prober, &pki, None, &["user", "add", "root:rootpw"]);
    etcdctl(
        &lab.prober,
        &pki,
        None,
        &["user", "grant-role", "root", "root"],
    );
    etcdctl(&lab.prober, &pki, None, &["user", "add", "sonde:s3cret"]);
    etcdctl(&lab.prober, &pki, None, &["role", "add", "sonde"]);
    etcdctl(
        &lab.prober,
        &pki,
        None,
        &[
            "role",
            "grant-permission",
            "sonde",
            "--prefix=true",
            "readwrite",
            "/sonde",
        ],
    );
    etcdctl(
        &lab.prober,
        &pki,
        None,
        &["user", "grant-role", "sonde", "sonde"],
    );
    etcdctl(&lab.prober, &pki, None, &["auth", "enable"]);

    let good: Vec<String> = [
        "--etcd",
        URL,
        "--etcd-ca",
        &ca,
        "--etcd-cert",
        &s(&pki.client_cert),
        "--etcd-key",
        &s(&pki.client_key),
        "--etcd-user",
        "sonde",
        "--etcd-password",
        "s3cret",
    ]
    .map(str::to_owned)
    .to_vec();

    // The daemon, over TLS with the user.
    let ddir = dir.0.join("n1");
    std::fs::create_dir_all(&ddir).expect("dir");
    let config = ddir.join("daemon.toml");
    std::fs::write(
        &config,
        "[defaults]\ninterval = \"300ms\"\nrise = 1\nfall = 2\n",
    )
    .expect("config");
    let mut args: Vec<&str> = vec!["--node-id", "n1", "--lease-ttl", "3"];
    args.extend(good.iter().map(String::as_str));
    let d = Daemon::start(&lab.prober, &ddir, &config, &args);

    // It registers and leads.
    let start = Instant::now();
    let (code, out) = loop {
        let (code, out) = sonde(&lab.prober, &good, &["leader", "--json"]);
        if code == 0 && out.contains("\"n1\"") {
            break (code, out);
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "n1 never led: {out}\n{}",
            d.log(&ddir)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    println!(
        "over TLS + user/password, n1 leads after {:?}: {}",
        start.elapsed(),
        out.trim()
    );
    assert_eq!(code, 0);

    // A check added through the CLI over TLS is assigned, probed and judged.
    let (code, out) = sonde(
        &lab.prober,
        &good,
        &[
            "check",
            "add",
            "--id",
            "web",
            "--target",
            "198.18.0.2:80",
            "--kind",
            "tcp_connect",
            "--replicas",
            "1",
        ],
    );
    assert_eq!(code, 0, "check add: {out}");
    let start = Instant::now();
    loop {
        let (code, out) = sonde(&lab.prober, &good, &["status", "--json"]);
        if code == 0 && out.contains("\"healthy\"") && out.contains("web") {
            println!("web healthy by quorum after {:?}", start.elapsed());
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "web not healthy: {code} {out}\n{}",
            d.log(&ddir)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Refusals, each with exit code 2 and the cause named.
    let without_cert: Vec<String> = good
        .iter()
        .enumerate()
        .filter(|(i, _)| !(4..8).contains(i))
        .map(|(_, a)| a.clone())
        .collect();
    let (code, out) = sonde(&lab.prober, &without_cert, &["status"]);
    println!("without a client certificate: exit {code}: {}", out.trim());
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(URL), "names the endpoint: {out}");
    assert!(out.contains("--etcd-cert"), "says what is missing: {out}");

    let mut other_ca = good.clone();
    other_ca[3] = s(&pki.other_ca);
    let (code, out) = sonde(&lab.prober, &other_ca, &["status"]);
    println!("with the wrong CA: exit {code}: {}", out.trim());
    assert_eq!(code, 2, "{out}");
    assert!(
        out.to_lowercase().contains("certificate") || out.contains("tls"),
        "{out}"
    );

    let mut wrong_pw = good.clone();
    wrong_pw[11] = "wrong".into();
    let (code, out) = sonde(&lab.prober, &wrong_pw, &["status"]);
    println!("with a wrong password: exit {code}: {}", out.trim());
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("authentication failed"), "{out}");
    drop(d);
}
