//! The status page: one HTML file, one script and one stylesheet, embedded in the
//! binary (nothing is fetched from elsewhere) and served on the API's addresses.
//!
//! The page reads the same API as the CLI: `GET /v1/status`, `/v1/rtts`, `/v1/info`
//! and `/v1/cluster`, and follows `GET /v1/watch` as Server-Sent Events, so a
//! transition shows as soon as the daemon decides it. It polls every 2 s as well (for
//! latencies and charts, which change with every result), reconnects by itself when
//! the daemon restarts, and says when it is disconnected. Every text from the daemon
//! is put in the page with `textContent`, never as HTML: check ids, labels and reasons
//! come from config files and targets and are not trusted. A strict
//! Content-Security-Policy (`'self'` only, no inline script) backs that up.

use super::http::Response;

/// One embedded file.
#[derive(Debug, PartialEq, Eq)]
pub struct Asset {
    /// Path it is served at.
    pub path: &'static str,
    /// Content-Type.
    pub content_type: &'static str,
    /// The file.
    pub body: &'static str,
}

/// Served with every asset: only this origin, no inline script, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                       form-action 'none'; frame-ancestors 'none'";

/// The page's files.
pub static ASSETS: [Asset; 3] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("ui/index.html"),
    },
    Asset {
        path: "/ui/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("ui/app.js"),
    },
    Asset {
        path: "/ui/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("ui/app.css"),
    },
];

/// The asset served at `path` (`/index.html` is `/`).
#[must_use]
pub fn asset(path: &str) -> Option<&'static Asset> {
    let path = if path == "/index.html" || path == "/ui" {
        "/"
    } else {
        path
    };
    ASSETS.iter().find(|a| a.path == path)
}

impl Asset {
    /// The response serving it.
    #[must_use]
    pub fn response(&self) -> Response {
        Response {
            status: 200,
            content_type: self.content_type,
            headers: vec![
                ("Content-Security-Policy", CSP.to_owned()),
                ("X-Content-Type-Options", "nosniff".to_owned()),
                ("X-Frame-Options", "DENY".to_owned()),
                ("Referrer-Policy", "no-referrer".to_owned()),
            ],
            body: self.body.as_bytes().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_found_and_self_contained() {
        for a in &ASSETS {
            assert_eq!(asset(a.path), Some(a));
            // Nothing from elsewhere: no absolute URLs to other origins (the SVG
            // namespace name is an identifier, not fetched).
            let body = a.body.replace("'http://www.w3.org/2000/svg'", "");
            for needle in ["http://", "https://", "//cdn", "@import", "url("] {
                assert!(
                    !body.contains(needle),
                    "{} refers to {needle}: the page must be self-contained",
                    a.path
                );
            }
        }
        assert_eq!(asset("/index.html").map(|a| a.path), Some("/"));
        assert!(asset("/ui/other.js").is_none());
        let html = asset("/").unwrap().body;
        assert!(html.contains("/ui/app.js") && html.contains("/ui/app.css"));
        // No inline script: the CSP forbids it, so it would not run.
        assert!(!html.contains("<script>"));
    }
}
