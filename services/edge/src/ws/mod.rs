//! One WebSocket connection: `GET /ws?token=` (docs/protocol.md §3).
//!
//! Laid out as mini-redis is:
//! - this file: the upgrade (origin, token, seats) and the close codes;
//! - [`connection`]: the socket's I/O, one task per connection, with its three inputs (client
//!   frames, the room feeds' deliveries, answers of spawned work) and its bounded writes;
//! - [`session`]: what the connection has joined and which frames it writes next (catch-up,
//!   live, dedup on the last seq written), a synchronous state machine with unit tests;
//! - [`commands`]: each client frame, parsed by [`crate::frames::ClientFrame::parse`], checked
//!   against the user's budgets, decided, and appended.

mod commands;
pub(crate) mod connection;
pub mod session;

use std::time::Duration;

use axum::{
    extract::{State, WebSocketUpgrade, ws::rejection::WebSocketUpgradeRejection},
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use serde::Deserialize;

pub use connection::MAX_APPENDS_IN_FLIGHT;

use crate::{
    AppState,
    error::{ApiError, Code},
    http::ApiQuery,
};

/// Close codes the edge uses beside the standard ones.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The edge is shutting down: reconnect (to any edge) and rejoin with `since`.
    pub const GOING_AWAY: u16 = 1001;
    /// The client did not read fast enough: reconnect and rejoin with `since`.
    pub const SLOW_CONSUMER: u16 = 1008;
    /// A frame over the size limit.
    pub const TOO_BIG: u16 = 1009;
}

#[derive(Debug, Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

/// `GET /ws?token=`: refused before the upgrade with 403 for a foreign origin, 401 for a
/// missing or bad token, 400 for what is not a WebSocket handshake, 429 for a user over its
/// connection limit.
#[utoipa::path(get, path = "/ws", summary = "Open a WebSocket", tag = "websocket",
    description = "The WebSocket protocol (docs/protocol.md §3): after the upgrade, one JSON object per text \
        frame, told apart by `type`. A browser's `Origin` must be the edge's own, localhost, or one of the \
        configured origins (`--cors-origins`).",
    params(
        ("Connection" = String, Header, pattern = "[Uu][Pp][Gg][Rr][Aa][Dd][Ee]", example = "Upgrade",
            description = "Names `upgrade`."),
        ("Upgrade" = String, Header, pattern = "^[Ww][Ee][Bb][Ss][Oo][Cc][Kk][Ee][Tt]$", example = "websocket"),
        ("Sec-WebSocket-Version" = String, Header, pattern = "^13$", example = "13"),
        ("Sec-WebSocket-Key" = String, Header, pattern = "^[A-Za-z0-9+/]{21}[AQgw]==$",
            example = "dGhlIHNhbXBsZSBub25jZQ==", description = "16 random bytes, base64 (RFC 6455)."),
    ),
    security(("token" = [])),
    responses(
        (status = 101, description = "Switched to the WebSocket protocol."),
        (status = 400, description = "Not a WebSocket handshake.", body = ApiError),
        (status = 401, description = "No token, or a bad or expired one.", body = ApiError),
        (status = 403, description = "A browser page from a foreign origin.", body = ApiError),
        (status = 429, description = "The user (or address) holds its most connections on this edge.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "The log is unavailable.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ))]
pub async fn upgrade(
    State(state): State<AppState>,
    client: crate::address::ClientAddr,
    ApiQuery(query): ApiQuery<WsQuery>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !origin_allowed(&headers, &state.config.cors_origins) {
        return ApiError::new(Code::Forbidden, "websocket from a foreign origin").into_response();
    }
    let Some(token) = query.token.as_deref() else {
        return ApiError::new(Code::Unauthorized, "missing token").into_response();
    };
    let user = match crate::auth::authenticate(&state, token).await {
        Ok(user) => user,
        Err(e) => return e.into_response(),
    };
    let ws = match ws {
        Ok(ws) if key_is_valid(&headers) => ws,
        Ok(_) => {
            return ApiError::bad_request(
                "Sec-WebSocket-Key must be 16 bytes in base64 (RFC 6455)",
            )
            .into_response();
        }
        Err(e) => {
            return ApiError::bad_request(format!("not a WebSocket handshake: {}", e.body_text()))
                .into_response();
        }
    };
    let seat = match reserve_seats(&state, &user, client) {
        Ok(seat) => seat,
        Err(e) => return e.into_response(),
    };
    let max = state.config.limits.max_frame_bytes;
    // Small buffers: chat frames are small, tungstenite zero-fills its read buffer on every read,
    // and both buffers stay allocated for the life of the connection (bench/README.md, "Where the
    // edge's time goes"). Frames written in one turn still leave in one write.
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(512)
        .write_buffer_size(4 * 1024)
        .on_upgrade(move |socket| {
            // Split here, not in the task: a future keeps the storage of what it was given for
            // its whole life, and the socket (368 bytes) moved into the split would stay as dead
            // weight in every connection's task, twice (serve and run_loop).
            let (sink, stream) = socket.split();
            let stream = stream.map(|m| m.map(connection::Incoming::from));
            let fut = connection::serve(
                state,
                user,
                seat,
                (sink, stream),
                connection::Peer::WebSocket,
            );
            if std::env::var_os("CHATLOG_SIZES").is_some() {
                eprintln!("serve future: {} bytes", std::mem::size_of_val(&fut));
            }
            fut
        })
}

/// A connection's seats for `user` from `client`, reserved under the lock that counts them:
/// `rate_limited` when the user or the address holds its maximum already.
pub(crate) fn reserve_seats(
    state: &AppState,
    user: &chatlog_events::UserId,
    client: crate::address::ClientAddr,
) -> Result<connection::Seat, ApiError> {
    let limits = &state.config.limits;
    let max = limits.max_connections_per_user;
    let Some(user_seat) = state.budgets.user_seats.reserve(user, max) else {
        return Err(ApiError::rate_limited(
            format!("at most {max} connections per user"),
            Duration::from_secs(1),
        ));
    };
    let address_seat = match client.limited(state) {
        Some(ip) => {
            let max = limits.max_connections_per_address;
            match state.budgets.address_seats.reserve(&ip, max) {
                Some(seat) => Some(seat),
                None => {
                    return Err(ApiError::rate_limited(
                        format!("at most {max} connections per address"),
                        Duration::from_secs(1),
                    ));
                }
            }
        }
        None => None,
    };
    Ok((user_seat, address_seat))
}

/// Whether the handshake's `Sec-WebSocket-Key` is 16 bytes in base64, as RFC 6455 §4.2.1 asks
/// (axum only checks that there is one).
fn key_is_valid(headers: &HeaderMap) -> bool {
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return false;
    };
    let key = key.as_bytes();
    let base64 = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    // 16 bytes: 21 characters, one that carries 2 bits (then zeros), and `==`.
    key.len() == 24
        && key[..21].iter().all(base64)
        && matches!(key[21], b'A' | b'Q' | b'g' | b'w')
        && &key[22..] == b"=="
}

/// Browsers send `Origin`; other clients (websocat, bots) do not and are let through. A browser
/// page may connect from the edge's own origin, from localhost, or from a configured origin.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed.iter().any(|a| a == origin) {
        return true;
    }
    let Some((_, host_port)) = origin.split_once("://") else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if host_port == host {
        return true; // same origin
    }
    let host_only = host_port
        .rsplit_once(':')
        .filter(|(h, p)| !h.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        .map_or(host_port, |(h, _)| h);
    matches!(host_only, "localhost" | "127.0.0.1" | "[::1]")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn origins_allowed_are_same_origin_localhost_and_configured() {
        let none: &[String] = &[];
        assert!(origin_allowed(&headers(None, "chat.example:8080"), none));
        assert!(origin_allowed(
            &headers(Some("http://chat.example:8080"), "chat.example:8080"),
            none
        ));
        assert!(origin_allowed(
            &headers(Some("http://localhost:5173"), "chat.example:8080"),
            none
        ));
        assert!(origin_allowed(
            &headers(Some("http://127.0.0.1"), "chat.example"),
            none
        ));
        assert!(!origin_allowed(
            &headers(Some("https://evil.example"), "chat.example"),
            none
        ));
        assert!(!origin_allowed(
            &headers(Some("http://localhost.evil.example"), "chat.example"),
            none
        ));
        assert!(!origin_allowed(
            &headers(Some("null"), "chat.example"),
            none
        ));
        let allowed = vec!["https://app.example".to_string()];
        assert!(origin_allowed(
            &headers(Some("https://app.example"), "api.example"),
            &allowed
        ));
    }
}
