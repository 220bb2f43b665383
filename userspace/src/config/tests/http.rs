//! `[check.http]` and `[check.tls]` rules: the problem names the right line and field.
//! `one_check` puts the check header on line 1, id on 2, target on 3, kind on 4.

use super::{assert_problem, one_check, parse_ok, problems};
use crate::engine::spec::ProbeSpec;

const V4: &str = "198.18.0.1:80";

#[test]
fn status_ranges() {
    let t = one_check(
        V4,
        "http",
        "http.expect_status = [\"200-299\", \"99\", \"300-200\", 600, \"x\", true]\n",
    );
    let f = |i| format!("check[0].http.expect_status[{i}]");
    assert_problem(&t, 5, &f(1), "status \"99\" is not in 100-599");
    assert_problem(&t, 5, &f(2), "range 300-200 is reversed");
    assert_problem(&t, 5, &f(3), "status \"600\" is not in 100-599");
    assert_problem(&t, 5, &f(4), "status \"x\" is not in 100-599");
    assert_problem(&t, 5, &f(5), "found a boolean");
    assert_eq!(problems(&t).len(), 5);
    assert_problem(
        &one_check(V4, "http", "http.expect_status = []\n"),
        5,
        "check[0].http.expect_status",
        "empty",
    );
    let c = parse_ok(&one_check(V4, "http", "http.expect_status = \"204\"\n"));
    let ProbeSpec::Http(h) = &c.checks[0].probe else {
        panic!()
    };
    assert_eq!(
        (h.expect.statuses[0].lo, h.expect.statuses[0].hi),
        (204, 204)
    );
}

#[test]
fn body_regex_must_compile_within_the_size_limit() {
    let f = "check[0].http.expect_body_regex";
    assert_problem(
        &one_check(V4, "http", "http.expect_body_regex = \"(\"\n"),
        5,
        f,
        "invalid regular expression",
    );
    let huge = one_check(V4, "http", "http.expect_body_regex = '(\\w{100}){100}'\n");
    assert_problem(&huge, 5, f, "larger than 1 MiB");
}

#[test]
fn control_characters_in_requests() {
    let t = |rest: &str| one_check(V4, "http", &format!("[check.http]\n{rest}\n"));
    assert_problem(
        &t("path = \"/a\\r\\nX: y\""),
        6,
        "check[0].http.path",
        "CR, LF, NUL",
    );
    assert_problem(
        &t("path = \"/a\\u0000\""),
        6,
        "check[0].http.path",
        "CR, LF, NUL",
    );
    assert_problem(&t("path = \"/a b\""), 6, "check[0].http.path", "spaces");
    assert_problem(
        &t("path = \"health\""),
        6,
        "check[0].http.path",
        "must start with '/'",
    );
    assert_problem(
        &t("headers = { \"X-A\\r\" = \"1\" }"),
        6,
        "check[0].http.headers.\"X-A\\r\"",
        "CR, LF, NUL",
    );
    assert_problem(
        &t("headers = { \"X-A\" = \"1\\nX-B: 2\" }"),
        6,
        "check[0].http.headers.X-A",
        "CR, LF and NUL are not allowed",
    );
    assert_problem(
        &t("host = \"a\\u0000b\""),
        6,
        "check[0].http.host",
        "CR, LF and NUL",
    );
    assert_problem(
        &t("method = \"GET /\""),
        6,
        "check[0].http.method",
        "HTTP token",
    );
    assert_problem(
        &t("expect_header = { name = \"X\\n\", value = \"up\" }"),
        6,
        "check[0].http.expect_header.name",
        "HTTP token",
    );
    assert_problem(
        &t("expect_header = { value = \"up\" }"),
        6,
        "check[0].http.expect_header",
        "missing field `name`",
    );
}

#[test]
fn http_limits() {
    let t = |rest: &str| one_check(V4, "http", &format!("[check.http]\n{rest}\n"));
    assert_problem(
        &t("max_body = -1"),
        6,
        "check[0].http.max_body",
        "expected 0 to 16777216 bytes",
    );
    assert_problem(
        &t("max_body = 4\nexpect_body = \"hello\""),
        7,
        "check[0].http.expect_body",
        "longer than max_body",
    );
    assert_problem(
        &t("max_body = 0\nexpect_body_regex = \"x\""),
        6,
        "check[0].http.max_body",
        "reads no body",
    );
    assert_problem(
        &t("proxy_protocol = \"v3\""),
        6,
        "check[0].http.proxy_protocol",
        "expected \"v1\" or \"v2\"",
    );
    assert_problem(
        &t("keepalive = \"yes\""),
        6,
        "check[0].http.keepalive",
        "expected true or false",
    );
}

#[test]
fn tls_fields() {
    let t = |rest: &str| one_check("198.18.0.1:443", "https", &format!("[check.tls]\n{rest}\n"));
    assert_problem(
        &t("sni = \"bad name\""),
        6,
        "check[0].tls.sni",
        "invalid SNI name",
    );
    assert_problem(
        &t("ca_file = \"\""),
        6,
        "check[0].tls.ca_file",
        "expected a PEM file",
    );
    let c = parse_ok(&t("verify = false"));
    let ProbeSpec::Http(h) = &c.checks[0].probe else {
        panic!()
    };
    assert_eq!(h.tls.as_ref().map(|t| t.verify), Some(false));
}
