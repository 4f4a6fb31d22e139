//! The "Restricted accounts" web page served at `GET /` (README, "HTTP API and web page"): one HTML file, its stylesheet
//! and its script, compiled into the binary so the page needs nothing from outside.
//!
//! The page itself is public; it holds no data. Its script asks the administrator for the bearer
//! token and calls the `/api` routes with it. The script and the style are separate routes so
//! the `Content-Security-Policy` can forbid every inline script and style and every other origin.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("index.html");
const PAGE_CSS: &str = include_str!("page.css");
const PAGE_JS: &str = include_str!("page.js");

/// Same origin only, nothing inline; `img-src data:` for the empty favicon, which spares the
/// browser a request (and a logged 404) for `/favicon.ico`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The page's routes: `/`, `/page.css`, `/page.js`. They carry no state and want no token.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/page.css", get(|| async { asset("text/css; charset=utf-8", PAGE_CSS) }))
        .route("/page.js", get(|| async { asset("text/javascript; charset=utf-8", PAGE_JS) }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // A new binary may bring a new page: have the browser ask again each time.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn get(path: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        let app: Router = routes();
        let response = app.oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = to_bytes(body, 1 << 20).await.unwrap();
        (parts.status, parts.headers, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn each_asset_has_its_content_type_and_the_strict_policy() {
        for (path, content_type, needle) in [
            ("/", "text/html; charset=utf-8", "<h1>Restricted accounts</h1>"),
            ("/page.css", "text/css; charset=utf-8", ":focus-visible"),
            ("/page.js", "text/javascript; charset=utf-8", "/api/v1/restricted"),
        ] {
            let (status, headers, body) = get(path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(headers[header::CONTENT_TYPE], content_type, "{path}");
            assert_eq!(headers[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY, "{path}");
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
            assert!(body.contains(needle), "{path} lacks {needle:?}");
        }
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_nothing_inline() {
        // The SVG namespace is a name `createElementNS` wants, not an address anything is loaded from.
        let script = PAGE_JS.replace("'http://www.w3.org/2000/svg'", "SVG_NAMESPACE");
        for (name, text) in [("index.html", INDEX_HTML), ("page.css", PAGE_CSS), ("page.js", script.as_str())] {
            for outside in ["http://", "https://", "//fonts", "@import", "url("] {
                assert!(!text.contains(outside), "{name} refers to {outside:?}");
            }
        }
        // The strict policy would block these; the page must not depend on them.
        for inline in ["<style", "style=\"", "onclick", "onload", "onsubmit", "javascript:"] {
            assert!(!INDEX_HTML.contains(inline), "index.html has inline {inline:?}");
        }
        assert_eq!(INDEX_HTML.matches("<script").count(), 1);
        assert!(INDEX_HTML.contains("<script src=\"page.js\" defer></script>"));
        assert!(!PAGE_JS.contains("innerHTML"), "values from the API go in as text only");
        assert!(!PAGE_JS.contains("eval("));
    }

    #[test]
    fn every_table_header_has_a_scope_and_every_input_a_label() {
        let ths = INDEX_HTML.matches("<th ").count() + INDEX_HTML.matches("<th>").count();
        assert!(ths > 0);
        assert_eq!(ths, INDEX_HTML.matches("<th scope=\"col\"").count(), "every header cell has scope=col");
        for id in INDEX_HTML.split("<input id=\"").skip(1).map(|rest| rest.split('"').next().unwrap()) {
            assert!(INDEX_HTML.contains(&format!("<label for=\"{id}\"")), "input #{id} has no label");
        }
        assert!(INDEX_HTML.contains("aria-live=\"polite\""));
    }
}
