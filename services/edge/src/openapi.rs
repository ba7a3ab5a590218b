//! The HTTP API's OpenAPI 3.1 document, generated from the code: each handler's
//! `#[utoipa::path]` (route, parameters, body, answers with their statuses) and the `ToSchema` of
//! the types it reads and writes (the views' answers' in `chatlog_events::queries`). Served at
//! `GET /api/openapi.json`; `GET /api/docs` is a page that renders it, one self-contained file
//! embedded in the binary (no CDN, no script from elsewhere).
//!
//! `tests/openapi.rs` checks that the document lists exactly the routes of [`crate::app`], so a
//! route without its annotation fails; `infra/api-check.sh` runs schemathesis against a running
//! system with it (`make test`).

use std::sync::OnceLock;

use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use utoipa::{
    Modify, OpenApi, PartialSchema, ToSchema,
    openapi::{
        RefOr,
        schema::{ObjectBuilder, Schema, SchemaFormat, Type},
        security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "chatlog",
        description = "The HTTP API of chatlog's edge (docs/protocol.md). JSON in and out; every error is \
            `{\"code\",\"message\"}` with its status, `Retry-After` on 429 and 503. Tokens come from `/api/auth/*` \
            and go in `Authorization: Bearer`, or as `?token=` where a browser cannot set headers (`/ws`, \
            `/stream`, `/events`, `/api/files/{id}`)."
    ),
    paths(
        crate::http::healthz,
        crate::http::readyz,
        crate::http::metrics,
        crate::ws::upgrade,
        crate::http::guest,
        crate::http::register,
        crate::http::login,
        crate::http::list_rooms,
        crate::http::create_room,
        crate::http::room_messages,
        crate::http::post_message,
        crate::http::room_events,
        crate::sse::stream,
        crate::http::room_presence,
        crate::files::upload,
        crate::files::download,
        crate::files::meta,
        crate::http::add_member,
        crate::http::remove_member,
        crate::http::list_notifications,
        crate::http::read_notifications,
        crate::http::unread,
        document,
        page,
    ),
    modifiers(&Security),
    tags(
        (name = "auth", description = "Tokens: a guest's, an account's."),
        (name = "rooms", description = "The room directory, membership and presence."),
        (name = "messages", description = "Posting and reading a room's messages and events; the event \
            stream and the long poll for clients without WebSocket."),
        (name = "notifications", description = "Mentions and unread counts."),
        (name = "files", description = "Files uploaded to rooms, and their download."),
        (name = "websocket", description = "The WebSocket protocol's upgrade."),
        (name = "operations", description = "Probes and metrics (not routed by the Ingress)."),
        (name = "docs", description = "This document."),
    )
)]
pub struct ApiDoc;

/// The two ways to present a token: `bearer` everywhere, `token` (the query) where a browser
/// cannot set a header.
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A token from /api/auth/guest, /register or /login (HS256, 24 hours by default).",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The same token as `?token=`, for an EventSource or a WebSocket (which cannot set headers).",
            ))),
        );
    }
}

/// The document as JSON, built once.
pub fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    })
}

/// `GET /api/openapi.json`: this document.
#[utoipa::path(get, path = "/api/openapi.json", summary = "This document", tag = "docs",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", body = Object, content_type = "application/json")))]
pub async fn document() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        json(),
    )
        .into_response()
}

/// The page that renders the document (HTML, CSS and script in one file).
const PAGE: &str = include_str!("openapi/docs.html");

/// `GET /api/docs`: a readable page of the document.
#[utoipa::path(get, path = "/api/docs", summary = "This document, as a page", tag = "docs",
    responses((status = 200, description = "A page that renders /api/openapi.json.", body = String, content_type = "text/html")))]
pub async fn page() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        PAGE,
    )
        .into_response()
}

/// A character text may hold: anything but the refused controls
/// ([`crate::messages::is_refused_control`]: C0 but tab and newline, DEL, C1, the bidirectional
/// overrides and isolates).
const ALLOWED: &str = r"[^\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]";
/// An allowed character that is not white space (Unicode `White_Space`, as `str::trim`).
const NOT_BLANK: &str = r"[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202a-\u202f\u205f\u2066-\u2069\u3000]";

fn text(max_chars: usize, blank_allowed: bool, description: &str) -> RefOr<Schema> {
    let pattern = if blank_allowed {
        format!("^{ALLOWED}*$")
    } else {
        format!("^{ALLOWED}*{NOT_BLANK}{ALLOWED}*$")
    };
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length((!blank_allowed).then_some(1))
        .max_length(Some(max_chars))
        .pattern(Some(pattern))
        .description(Some(description))
        .into()
}

macro_rules! schema {
    ($(#[$doc:meta])* $name:ident => $schema:expr) => {
        $(#[$doc])*
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                $schema
            }
        }

        impl ToSchema for $name {}
    };
}

schema!(
    /// A message's text.
    Text => text(
        crate::Limits::default().max_text_chars,
        false,
        "Not blank, no control character but newline and tab; at most 4 000 characters by default \
         (`--max-text`).",
    )
);

schema!(
    /// A room's name.
    RoomName => text(100, false, "Not blank, no control character but newline and tab.")
);

schema!(
    /// A room's topic.
    Topic => text(1000, true, "No control character but newline and tab.")
);

schema!(
    /// A guest name's secret.
    GuestSecret => ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[A-Za-z0-9_-]{16,128}$"))
        .description(Some("16 to 128 of A-Z, a-z, 0-9, - and _."))
        .into()
);

schema!(
    /// A new account's password.
    Password => ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(8))
        .max_length(Some(1024))
        .description(Some("At least 8 characters, at most 1 024 bytes in UTF-8."))
        .into()
);

schema!(
    /// A stored event, as `/events` and the event stream serve it.
    CloudEvent => ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "A CloudEvent 1.0 (structured JSON), as stored (docs/protocol.md §2), a deleted message's \
             redacted and an edited one's with its latest text.",
        ))
        .property("specversion", ObjectBuilder::new().schema_type(Type::String).enum_values(Some(["1.0"])))
        .property("id", chatlog_events::EventId::schema())
        .property("source", ObjectBuilder::new().schema_type(Type::String))
        .property("type", ObjectBuilder::new().schema_type(Type::String).examples(["chat.message.posted"]))
        .property("subject", ObjectBuilder::new().schema_type(Type::String))
        .property(
            "time",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::DateTime))),
        )
        .property("datacontenttype", ObjectBuilder::new().schema_type(Type::String))
        .property("data", ObjectBuilder::new().schema_type(Type::Object))
        .required("specversion")
        .required("id")
        .required("source")
        .required("type")
        .into()
);

schema!(
    /// One server-sent event of `/api/rooms/{room}/stream` (the `schema` of a `text/event-stream`
    /// describes each event, before OpenAPI 3.2's `itemSchema`).
    SseEvent => ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "A room event: `id` its seq, `event` the CloudEvent's type, `data` the CloudEvent (JSON). \
             Or `event: left` (the caller was removed from the room: the end), `event: error`, \
             `event: close` (the edge stops), whose `data` is JSON too.",
        ))
        .property("id", ObjectBuilder::new().schema_type(Type::String).pattern(Some("^[0-9]+$")))
        .property("event", ObjectBuilder::new().schema_type(Type::String))
        .property(
            "data",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .content_media_type("application/json"),
        )
        .required("data")
        .into()
);

schema!(
    /// A file's bytes.
    FileBytes => ObjectBuilder::new()
        .schema_type(Type::String)
        .content_media_type("application/octet-stream")
        .description(Some("The file's bytes, as they are."))
        .into()
);

schema!(
    /// A file's name.
    FileName => ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(crate::files::MAX_NAME_CHARS))
        .pattern(Some(r"^[^\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069/\\]+$"))
        .description(Some("At most 255 characters, not blank, no control character, no / or \\."))
        .into()
);

schema!(
    /// A file's id.
    FileIdSchema => ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[a-z0-9][a-z0-9_-]{0,31}\\.[0-9a-f]{64}$"))
        .description(Some("`<room>.<sha256 hex>`: the room the file belongs to, and its bytes' digest."))
        .into()
);
