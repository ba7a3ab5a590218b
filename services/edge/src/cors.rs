//! CORS for browser clients hosted elsewhere: an allowlist of origins (`--cors-origins`, the
//! list [`crate::ws::origin_allowed`] lets open WebSockets too), empty by default.
//!
//! A preflight (`OPTIONS` with `Access-Control-Request-Method`) from a listed origin is answered
//! here, 204 with the methods, the headers a client sends (`Authorization`, `Content-Type`,
//! `Last-Event-ID`, and a download's `Range` and `If-None-Match`) and how long to keep it; any
//! other request from a listed origin gets `Access-Control-Allow-Origin` echoed, and
//! `Retry-After` exposed with what a page needs of a download (`ETag`, `Content-Range`,
//! `Content-Disposition`, `Content-Length`, `Accept-Ranges`). An origin not listed gets
//! no CORS header at all (its preflight goes on to the router: 405), so its browser keeps the
//! answers from the page. No credentials: tokens travel in `Authorization`, never in cookies.

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::AppState;

/// The methods of the API.
pub const ALLOW_METHODS: &str = "GET, POST, DELETE";
/// The request headers a client of the API sends beside the CORS-safelisted ones.
/// `Range` is safelisted only for a single simple range and `If-None-Match` not at all: a page
/// resuming or revalidating a download (docs/protocol.md §10) names them.
pub const ALLOW_HEADERS: &str = "Authorization, Content-Type, Last-Event-ID, Range, If-None-Match";
/// What a client may read of an answer beside the CORS-safelisted headers: a download's name,
/// size, range and tag are in headers.
pub const EXPOSE_HEADERS: &str =
    "Retry-After, ETag, Content-Range, Content-Disposition, Content-Length, Accept-Ranges";
/// Seconds a browser may keep a preflight's answer (Chromium keeps at most 2 hours).
pub const MAX_AGE_SECS: u32 = 7200;

/// The layer: answers preflights from listed origins, marks the other answers to them.
pub async fn middleware(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let origins = &state.config.cors_origins;
    if origins.is_empty() {
        return next.run(request).await;
    }
    let allowed = listed(request.headers(), origins);
    if let Some(origin) = &allowed
        && request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return preflight(origin.clone());
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    // An answer that depends on `Origin` says so, for caches between the edge and browsers.
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = allowed {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
    }
    response
}

/// The request's `Origin` when it is one of `origins` (compared exactly, as browsers send it:
/// `scheme://host[:port]`).
fn listed(headers: &HeaderMap, origins: &[String]) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    origins.iter().any(|o| o == text).then(|| origin.clone())
}

fn preflight(origin: HeaderValue) -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin),
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOW_METHODS),
            ),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOW_HEADERS),
            ),
            (
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from(MAX_AGE_SECS),
            ),
            (
                header::VARY,
                HeaderValue::from_static(
                    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
                ),
            ),
        ],
    )
        .into_response()
}

/// The origins of a comma-separated list (`--cors-origins`), as browsers write them: trimmed,
/// without a trailing `/`, empty entries skipped. An entry that is not `scheme://host[:port]`
/// (a path, a wildcard) could never match and is refused.
pub fn parse_origins(list: &[String]) -> Result<Vec<String>, String> {
    let mut origins = Vec::new();
    for entry in list {
        let origin = entry.trim().trim_end_matches('/');
        if origin.is_empty() {
            continue;
        }
        let Some((scheme, host)) = origin.split_once("://") else {
            return Err(format!("{entry:?} is not an origin (scheme://host[:port])"));
        };
        let ok = matches!(scheme, "http" | "https")
            && !host.is_empty()
            && !host.contains(['/', '*', '?', '#', ' ', '@']);
        if !ok {
            return Err(format!("{entry:?} is not an origin (scheme://host[:port])"));
        }
        origins.push(origin.to_string());
    }
    Ok(origins)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_trimmed_and_anything_else_refused() {
        let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_origins(&list(&[
                " https://app.example/ ",
                "",
                "http://localhost:5173"
            ])),
            Ok(list(&["https://app.example", "http://localhost:5173"]))
        );
        for bad in [
            "*",
            "app.example",
            "https://*.example",
            "https://a.example/path",
            "ftp://a",
        ] {
            assert!(parse_origins(&list(&[bad])).is_err(), "{bad}");
        }
    }
}
