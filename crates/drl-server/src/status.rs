//! `GET /`: the node's status page, one self-contained HTML file (`status.html`, compiled in).
//!
//! The page holds no data of its own: its script reads the node's existing routes, `/metrics`
//! and `/readyz` for anyone, and with the admin token typed into it (kept in the page's memory,
//! sent as a Bearer header) the admin routes (`/v1/config`, `/v1/offenders`, `/v1/blocks`, and
//! `PUT`/`DELETE /v1/blocks/{user_id}` to block and unblock). So the page shows nothing that
//! `/metrics` does not without the token, and needs no route of its own beyond this one.
//!
//! The Content-Security-Policy allows the page's inline script and style and requests to its
//! own node only: no external asset, no frame, no form posted elsewhere.

use axum::http::HeaderValue;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS,
};
use axum::response::{IntoResponse, Response};

/// The page.
pub(crate) const PAGE: &str = include_str!("status.html");

const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                      connect-src 'self'; base-uri 'none'; form-action 'none'; \
                      frame-ancestors 'none'";

/// `GET /`.
pub(crate) async fn page() -> Response {
    (
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY)),
            (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        PAGE,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_page_is_served_self_contained_under_its_policy() {
        let response = page().await;
        let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok());
        assert_eq!(header(CONTENT_TYPE), Some("text/html; charset=utf-8"));
        assert_eq!(header(CONTENT_SECURITY_POLICY), Some(POLICY));
        assert!(PAGE.contains("<title>drl node status</title>"));
        // No asset from elsewhere: every URL the page names is one of the node's own routes.
        for needle in ["http://", "https://", "src=\"", "href=\""] {
            assert!(!PAGE.contains(needle), "the page names {needle}");
        }
        // Values from requests are written as text, never parsed as HTML.
        assert!(!PAGE.contains("innerHTML") && !PAGE.contains("insertAdjacentHTML"));
    }
}
