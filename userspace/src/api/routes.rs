//! Routing: a request's method and target to a [`Route`], and a route to the
//! [`Control`] call and its JSON [`Response`]. No I/O here (the watch stream is run by
//! [`super::watch`]).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    control::{Control, ControlError},
    http::{percent_decode, percent_encode, Response, PROMETHEUS_TEXT},
};
use crate::health::{CheckStatus, Health};

/// Filters of `GET /v1/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusFilter {
    /// Only unhealthy checks (`?unhealthy=1`).
    pub unhealthy: bool,
    /// Only checks carrying every one of these labels (`?label=k=v`, repeatable).
    pub labels: Vec<(String, String)>,
}

impl StatusFilter {
    /// Whether `s` passes the filter.
    #[must_use]
    pub fn matches(&self, s: &CheckStatus) -> bool {
        (!self.unhealthy || s.state == Health::Unhealthy)
            && self
                .labels
                .iter()
                .all(|(k, v)| s.labels.get(k).is_some_and(|have| have == v))
    }
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /v1/info`.
    Info,
    /// `GET /v1/status`.
    Status(StatusFilter),
    /// `GET /v1/checks`: every spec.
    Checks,
    /// `GET /v1/checks/{id}`: spec and status.
    Check(String),
    /// `GET /v1/checks/{id}/history`.
    History(String),
    /// `POST /v1/checks`.
    AddCheck,
    /// `DELETE /v1/checks/{id}`.
    RemoveCheck(String),
    /// `POST /v1/reload`.
    Reload,
    /// `GET /v1/watch`.
    Watch,
    /// `GET /metrics`.
    Metrics,
    /// `GET /v1/cluster`: the cluster view (`{"mode":"standalone"}` without etcd).
    Cluster,
    /// `GET /v1/rtts?n=N`: the latest N round-trip times of every check.
    Rtts(usize),
    /// `GET /` and `GET /ui/...`: the status page's embedded files.
    Ui(&'static super::ui::Asset),
}

impl Route {
    /// Whether the route changes the daemon (and so needs the bearer token).
    #[must_use]
    pub fn mutating(&self) -> bool {
        matches!(
            self,
            Route::AddCheck | Route::RemoveCheck(_) | Route::Reload
        )
    }

    /// Whether the route reads a request body.
    #[must_use]
    pub fn takes_body(&self) -> bool {
        matches!(self, Route::AddCheck)
    }
}

fn bad_request(msg: &str) -> Response {
    Response::error(400, "bad_request", msg)
}

fn status_filter(query: Option<&str>) -> Result<StatusFilter, Response> {
    let mut f = StatusFilter::default();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k, true).map_err(|e| bad_request(&e.to_string()))?;
        let v = percent_decode(v, true).map_err(|e| bad_request(&e.to_string()))?;
        match k.as_str() {
            "unhealthy" => {
                f.unhealthy = match v.as_str() {
                    "" | "1" | "true" => true,
                    "0" | "false" => false,
                    _ => return Err(bad_request(&format!("unhealthy={v:?}: expected 1 or 0"))),
                };
            }
            "label" => {
                let (lk, lv) = v.split_once('=').ok_or_else(|| {
                    bad_request(&format!("label={v:?}: expected label=KEY=VALUE"))
                })?;
                f.labels.push((lk.to_owned(), lv.to_owned()));
            }
            other => {
                return Err(bad_request(&format!(
                    "unknown query parameter {other:?} (known: unhealthy, label)"
                )))
            }
        }
    }
    Ok(f)
}

fn method_not_allowed(method: &str, path: &str, allow: &'static str) -> Response {
    Response::error(
        405,
        "method_not_allowed",
        &format!("{method} is not allowed on {path}; allowed: {allow}"),
    )
    .with_header("Allow", allow.to_owned())
}

/// The route of `method` on `target` (origin form), or the error response.
///
/// # Errors
/// 400 for a malformed target or query, 404 for an unknown path, 405 for a known path
/// with another method.
pub fn plan(method: &str, target: &str) -> Result<Route, Response> {
    if !target.starts_with('/') {
        return Err(bad_request(
            "request target must be a path starting with '/'",
        ));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let trimmed = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    let segments = trimmed[1..]
        .split('/')
        .map(|s| percent_decode(s, false))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_request(&e.to_string()))?;
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let m = method;
    let route = match (segs.as_slice(), m) {
        (["v1", "info"], "GET") => Route::Info,
        (["v1", "status"], "GET") => Route::Status(status_filter(query)?),
        (["v1", "checks"], "GET") => Route::Checks,
        (["v1", "checks"], "POST") => Route::AddCheck,
        (["v1", "checks", id], "GET") if !id.is_empty() => Route::Check((*id).to_owned()),
        (["v1", "checks", id], "DELETE") if !id.is_empty() => Route::RemoveCheck((*id).to_owned()),
        (["v1", "checks", id, "history"], "GET") if !id.is_empty() => {
            Route::History((*id).to_owned())
        }
        (["v1", "reload"], "POST") => Route::Reload,
        (["v1", "watch"], "GET") => Route::Watch,
        (["metrics"], "GET") => Route::Metrics,
        (["v1", "cluster"], "GET") => Route::Cluster,
        (["v1", "rtts"], "GET") => Route::Rtts(rtts_count(query)?),
        ([""] | ["index.html"] | ["ui", ..], "GET") => match super::ui::asset(trimmed) {
            Some(a) => Route::Ui(a),
            None => return Err(not_found(path)),
        },
        (["v1", "info" | "status" | "watch" | "cluster" | "rtts"] | ["metrics"] | [""], _) => {
            return Err(method_not_allowed(m, path, "GET"))
        }
        (["v1", "checks"], _) => return Err(method_not_allowed(m, path, "GET, POST")),
        (["v1", "checks", id], _) if !id.is_empty() => {
            return Err(method_not_allowed(m, path, "GET, DELETE"))
        }
        (["v1", "checks", id, "history"], _) if !id.is_empty() => {
            return Err(method_not_allowed(m, path, "GET"))
        }
        (["v1", "reload"], _) => return Err(method_not_allowed(m, path, "POST")),
        _ => return Err(not_found(path)),
    };
    Ok(route)
}

fn not_found(path: &str) -> Response {
    let shown: String = path.chars().take(200).collect();
    Response::error(404, "not_found", &format!("no route for {shown:?}"))
}

/// Most RTTs per check `GET /v1/rtts` accepts (the health layer keeps 32 results per
/// check by default, so fewer may come back).
pub const MAX_RTTS: usize = 32;

fn rtts_count(query: Option<&str>) -> Result<usize, Response> {
    let mut n = 30;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("n", v)) => {
                n = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_RTTS).contains(n))
                    .ok_or_else(|| {
                        bad_request(&format!("n={v:?}: expected a count from 1 to {MAX_RTTS}"))
                    })?;
            }
            _ => {
                return Err(bad_request(&format!(
                    "unknown query parameter {pair:?} (known: n)"
                )))
            }
        }
    }
    Ok(n)
}

/// The response to a refused [`Control`] call.
#[must_use]
pub fn control_error(e: &ControlError) -> Response {
    let (status, kind) = match e {
        ControlError::UnknownCheck(_) => (404, "unknown_check"),
        ControlError::Duplicate(_) => (409, "duplicate"),
        ControlError::Invalid(_) => (400, "invalid"),
        ControlError::Unsupported(_) => (409, "unsupported"),
        ControlError::Internal(_) => (500, "internal"),
    };
    Response::error(status, kind, &e.to_string())
}

fn unknown(id: &str) -> Response {
    control_error(&ControlError::UnknownCheck(id.to_owned()))
}

#[derive(Serialize)]
struct CheckView<'a> {
    spec: &'a crate::engine::spec::CheckSpec,
    status: &'a CheckStatus,
}

/// Run a non-streaming route against `control`; `body` is the request body (empty
/// unless [`Route::takes_body`]). [`Route::Watch`] is answered with a 500 here: the
/// server streams it instead.
#[must_use]
pub fn execute(control: &dyn Control, route: &Route, body: &[u8]) -> Response {
    match route {
        Route::Info => Response::json(200, &control.info()),
        Route::Status(filter) => {
            let list: Vec<CheckStatus> = control
                .status()
                .into_iter()
                .filter(|s| filter.matches(s))
                .collect();
            Response::json(200, &list)
        }
        Route::Checks => {
            let specs: Vec<_> = control
                .status()
                .iter()
                .filter_map(|s| control.spec(s.id.as_str()))
                .collect();
            Response::json(200, &specs)
        }
        Route::Check(id) => match (control.spec(id), control.check(id)) {
            (Some(spec), Some(status)) => Response::json(
                200,
                &CheckView {
                    spec: &spec,
                    status: &status,
                },
            ),
            _ => unknown(id),
        },
        Route::History(id) => control
            .history(id)
            .map_or_else(|| unknown(id), |h| Response::json(200, &h)),
        Route::AddCheck => add_check(control, body),
        Route::RemoveCheck(id) => match control.remove_check(id) {
            Ok(()) => Response::json(200, &BTreeMap::from([("removed", id)])),
            Err(e) => control_error(&e),
        },
        Route::Reload => match control.reload() {
            Ok(report) => Response::json(200, &report),
            Err(e) => control_error(&e),
        },
        Route::Metrics => Response {
            status: 200,
            content_type: PROMETHEUS_TEXT,
            headers: Vec::new(),
            body: control.metrics().into_bytes(),
        },
        Route::Watch => Response::error(500, "internal", "watch is a stream"),
        Route::Cluster => match control.cluster() {
            Some(view) => Response::json(
                200,
                &serde_json::json!({ "mode": "cluster", "cluster": view }),
            ),
            None => Response::json(200, &serde_json::json!({ "mode": "standalone" })),
        },
        Route::Rtts(n) => Response::json(200, &control.recent_rtts(*n)),
        Route::Ui(asset) => asset.response(),
    }
}

fn add_check(control: &dyn Control, body: &[u8]) -> Response {
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Response::error(400, "invalid", &format!("request body is not JSON: {e}"))
        }
    };
    if !value.is_object() {
        return Response::error(
            400,
            "invalid",
            "request body must be one check as a JSON object, shaped like a [[check]] table",
        );
    }
    match control.add_check(&value) {
        Ok(id) => Response::json(201, &BTreeMap::from([("id", id.as_str())])).with_header(
            "Location",
            format!("/v1/checks/{}", percent_encode(id.as_str())),
        ),
        Err(e) => control_error(&e),
    }
}
