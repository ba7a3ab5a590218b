//! Files (docs/protocol.md §10): `POST /api/rooms/{room}/files` streams an upload into the
//! `CHAT_FILES` bucket ([`store`]), `GET /api/files/{id}` streams it back to whoever may read the
//! room, `GET /api/files/{id}/meta` says what it is.
//!
//! **Invariants.** Who may upload to a room is who may post there, who may download is who may
//! read it ([`crate::rooms::Directory::visible`]: the same rule); a file a caller may not read is
//! answered exactly as one that does not exist. An upload is never whole in memory (chunks of
//! [`store::CHUNK_SIZE`] go to NATS as they arrive) and a refused or broken upload leaves nothing
//! stored. A file is served so that a browser cannot run it: `nosniff`, a sandboxing CSP, and
//! inline only for raster images ([`sniff::inline`]), checked against their bytes at upload. A
//! file whose messages are all deleted is answered as one that does not exist ([`sweep`]).

pub mod sniff;
pub mod store;
pub mod sweep;

use axum::{
    Json,
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::BytesMut;
use chatlog_events::{RoomId, UserId};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::{
    AppState,
    auth::{AuthUser, StreamUser},
    error::{ApiError, Code},
    http::{ApiPath, ApiQuery, parse_room},
    metrics::counters::{self, FileRejection},
};
pub use store::{FileId, FileMeta, Files};

/// Longest file name, in characters.
pub const MAX_NAME_CHARS: usize = 255;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The file's name (default `file`): at most 255 characters, no control character, no `/`
    /// or `\`.
    #[serde(default)]
    #[param(inline, value_type = Option<crate::openapi::FileName>)]
    name: Option<String>,
}

/// A stored file, as an upload answers it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Uploaded {
    #[schema(value_type = crate::openapi::FileIdSchema)]
    id: String,
    name: String,
    size: u64,
    content_type: String,
    /// The bytes' SHA-256, lower-case hex (also the `ETag` of a download).
    sha256: String,
}

/// A stored file's metadata (`GET /api/files/{id}/meta`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct FileInfo {
    #[schema(value_type = crate::openapi::FileIdSchema)]
    id: String,
    name: String,
    size: u64,
    content_type: String,
    sha256: String,
    room: RoomId,
    /// When it was first uploaded (RFC 3339).
    created: String,
}

impl From<&FileMeta> for Uploaded {
    fn from(meta: &FileMeta) -> Self {
        Self {
            id: meta.id.to_string(),
            name: meta.name.clone(),
            size: meta.size,
            content_type: meta.content_type.clone(),
            sha256: meta.id.sha256().to_string(),
        }
    }
}

/// `POST /api/rooms/{room}/files?name=N`: the body's bytes stored as a file of the room.
#[utoipa::path(post, path = "/api/rooms/{room}/files", summary = "Upload a file to a room",
    description = "The body is the file's bytes (not JSON), streamed into the `CHAT_FILES` bucket. `Content-Type` is its type (default: what its first bytes say); a type the bytes contradict is refused with 415. The same bytes uploaded to the same room are one file: the same id, stored once. At most 25 MiB a file (`--max-file-bytes`) and 200 MiB per user a day (`--file-quota-bytes`).", tag = "files",
    params(("room" = RoomId, Path), UploadQuery),
    request_body(content = crate::openapi::FileBytes, content_type = "application/octet-stream", description = "The file's bytes, with its type as `Content-Type`."),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Stored (or already stored: the same bytes in the same room).", body = Uploaded),
        (status = 400, description = "A bad room id, name or `Content-Type`, an empty file, or a body that ended short or stalled.", body = ApiError),
        (status = 401, description = "No token, or a bad or expired one.", body = ApiError),
        (status = 404, description = "No such room, or a private one the caller is not a member of.", body = ApiError),
        (status = 413, description = "Over the size limit (by `Content-Length`, or counted).", body = ApiError),
        (status = 415, description = "The declared `Content-Type` contradicts the bytes.", body = ApiError),
        (status = 429, description = "Over the user's daily upload quota, its appends a second, or its connections (an upload holds one while its body arrives).", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "The log or the bucket is unavailable.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ))]
pub async fn upload(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    client: crate::address::ClientAddr,
    ApiPath(room): ApiPath<String>,
    ApiQuery(query): ApiQuery<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    // An upload is a write (the user's append budget) and, while its body arrives, holds one of
    // the user's connections, as a socket would: twenty slow uploads are twenty connections.
    let started = crate::limits::take_append(&state, &user)
        .and_then(|()| crate::ws::reserve_seats(&state, &user, client));
    let _seat = match started {
        Ok(seat) => seat,
        Err(e) => {
            FileRejection::Quota.count();
            return Err(e);
        }
    };
    match receive(&state, &user, &room, query, &headers, body).await {
        Ok(meta) => {
            counters::add(&counters::FILE_UPLOADS, 1);
            Ok((StatusCode::CREATED, Json(Uploaded::from(&meta))))
        }
        Err((reason, e)) => {
            reason.count();
            Err(e)
        }
    }
}

/// Everything an upload checks before its first byte is read, then its bytes into the bucket.
async fn receive(
    state: &AppState,
    user: &UserId,
    room: &str,
    query: UploadQuery,
    headers: &HeaderMap,
    body: Body,
) -> Result<FileMeta, (FileRejection, ApiError)> {
    let bad = |e: ApiError| (FileRejection::BadRequest, e);
    let room = parse_room(room).map_err(bad)?;
    let name = file_name(query.name).map_err(bad)?;
    let declared = match headers.get(header::CONTENT_TYPE) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(sniff::essence)
                .ok_or_else(|| bad(ApiError::bad_request("Content-Type is not a media type")))?,
        ),
    };
    let limits = &state.config.limits;
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|n| n > limits.max_file_bytes) {
        return Err(too_large(limits.max_file_bytes));
    }
    state
        .budgets
        .file_bytes
        .check(user, length.unwrap_or(1).max(1))
        .map_err(over_quota)?;
    state
        .rooms
        .visible(&room, user, &state.views)
        .await
        .map_err(|e| (rejection_of(&e), e))?;

    let mut body = body.into_data_stream();
    let mut upload = state.files.upload();
    let stalled = limits.request_body;
    // The first bytes, held until there are enough to sniff (or the body ended).
    let mut head = BytesMut::new();
    let mut sniffed = None;
    loop {
        let next = match tokio::time::timeout(stalled, body.next()).await {
            Ok(next) => next,
            Err(_) => {
                upload.abort().await;
                return Err((
                    FileRejection::Aborted,
                    ApiError::bad_request(format!("the body stalled for {} s", stalled.as_secs())),
                ));
            }
        };
        let data = match next {
            None => break,
            Some(Ok(data)) => data,
            Some(Err(e)) => {
                upload.abort().await;
                tracing::debug!(error = %e, "an upload's body ended short");
                return Err((
                    FileRejection::Aborted,
                    ApiError::bad_request("the body ended before it was whole"),
                ));
            }
        };
        let taken = upload.size() + head.len() as u64 + data.len() as u64;
        if taken > limits.max_file_bytes {
            upload.abort().await;
            return Err(too_large(limits.max_file_bytes));
        }
        if let Err(wait) = state.budgets.file_bytes.take(user, data.len() as u64) {
            upload.abort().await;
            return Err(over_quota(wait));
        }
        counters::add(&counters::FILE_BYTES_IN, data.len() as u64);
        let written = if sniffed.is_some() {
            upload.write(&data).await
        } else {
            head.extend_from_slice(&data);
            if head.len() < sniff::SNIFF_LEN {
                continue;
            }
            sniffed = Some(check_type(declared.as_deref(), &head)?);
            upload.write(&std::mem::take(&mut head)).await
        };
        if let Err(e) = written {
            upload.abort().await;
            return Err((FileRejection::Unavailable, e.into()));
        }
    }
    let sniffed = match sniffed {
        Some(sniffed) => sniffed,
        None => {
            if head.is_empty() {
                return Err(bad(ApiError::bad_request("the file is empty")));
            }
            let sniffed = check_type(declared.as_deref(), &head)?;
            if let Err(e) = upload.write(&head).await {
                upload.abort().await;
                return Err((FileRejection::Unavailable, e.into()));
            }
            sniffed
        }
    };
    let content_type = declared.unwrap_or_else(|| sniffed.content_type().to_string());
    // On a task of its own: a client that goes away now must not cancel the naming half done
    // (the object's info stored, and then its chunks purged as an abandoned upload's).
    let user = user.clone();
    let finished =
        tokio::spawn(async move { upload.finish(&room, &user, name, content_type).await }).await;
    match finished {
        Ok(Ok(meta)) => Ok(meta),
        Ok(Err(e)) => Err((FileRejection::Unavailable, e.into())),
        Err(e) => Err((FileRejection::Unavailable, ApiError::internal(e))),
    }
}

/// What `head` looks like; 415 when the declared type contradicts it.
fn check_type(
    declared: Option<&str>,
    head: &[u8],
) -> Result<sniff::Sniffed, (FileRejection, ApiError)> {
    let sniffed = sniff::sniff(&head[..head.len().min(sniff::SNIFF_LEN)]);
    match declared {
        Some(declared) if !sniff::fits(declared, sniffed) => Err((
            FileRejection::Type,
            ApiError::new(
                Code::UnsupportedMediaType,
                format!(
                    "the file was declared {declared} but its bytes look like {}",
                    sniffed.content_type()
                ),
            ),
        )),
        _ => Ok(sniffed),
    }
}

fn too_large(max: u64) -> (FileRejection, ApiError) {
    (
        FileRejection::TooLarge,
        ApiError::new(
            Code::TooLarge,
            format!("a file may hold at most {max} bytes"),
        ),
    )
}

fn over_quota(wait: std::time::Duration) -> (FileRejection, ApiError) {
    (
        FileRejection::Quota,
        ApiError::rate_limited("over today's upload quota", wait),
    )
}

fn rejection_of(e: &ApiError) -> FileRejection {
    match e.code {
        Code::Unavailable | Code::Internal => FileRejection::Unavailable,
        _ => FileRejection::BadRequest,
    }
}

/// A file's name as given (default `file`): at most [`MAX_NAME_CHARS`] characters, not blank,
/// no control character, no path separator.
fn file_name(name: Option<String>) -> Result<String, ApiError> {
    let Some(name) = name else {
        return Ok("file".to_string());
    };
    if name.trim().is_empty() || name == "." || name == ".." {
        return Err(ApiError::bad_request("name is empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::bad_request(format!(
            "name must be at most {MAX_NAME_CHARS} characters"
        )));
    }
    if name.contains(['/', '\\']) {
        return Err(ApiError::bad_request("name must not hold / or \\"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_control() || crate::messages::is_refused_control(*c))
    {
        return Err(ApiError::bad_request(format!(
            "name holds a control character (U+{:04X})",
            u32::from(c)
        )));
    }
    Ok(name)
}

/// The file `id` if `user` may read its room; `not_found` (the same for every reason) if not.
async fn readable(state: &AppState, user: &UserId, id: &str) -> Result<FileMeta, ApiError> {
    let missing = || ApiError::not_found("file");
    let id = FileId::parse(id).ok_or_else(missing)?;
    match state.rooms.visible(id.room(), user, &state.views).await {
        Ok(_) => {}
        Err(e) if matches!(e.code, Code::NotFound | Code::Forbidden) => return Err(missing()),
        Err(e) => return Err(e),
    }
    let meta = state.files.get(&id).await?.ok_or_else(missing)?;
    // A deleted message's files go with it at once, for readers; their bytes a moment later.
    if sweep::released(state, &meta).await? {
        return Err(missing());
    }
    Ok(meta)
}

/// `GET /api/files/{id}`: the file's bytes.
#[utoipa::path(get, path = "/api/files/{id}", summary = "Download a file",
    description = "The bytes of a file of a room the caller may read, streamed. `ETag` is the SHA-256 (`If-None-Match` answers 304); one `Range: bytes=a-b` is served as 206 (several ranges: the whole file). Served so that no browser runs it: `X-Content-Type-Options: nosniff`, `Content-Security-Policy: default-src 'none'; sandbox`, and `Content-Disposition: attachment` for all but PNG, JPEG, GIF and WebP images (`inline`).", tag = "files",
    params(("id" = crate::openapi::FileIdSchema, Path)),
    security(("bearer" = []), ("token" = [])),
    responses(
        (status = 200, description = "The whole file.", body = crate::openapi::FileBytes, content_type = "application/octet-stream",
            headers(("ETag" = String), ("Content-Disposition" = String), ("Accept-Ranges" = String))),
        (status = 206, description = "The range asked for.", body = crate::openapi::FileBytes, content_type = "application/octet-stream",
            headers(("Content-Range" = String), ("ETag" = String))),
        (status = 304, description = "`If-None-Match` names this file's `ETag`."),
        (status = 401, description = "No token, or a bad or expired one.", body = ApiError),
        (status = 404, description = "No such file, one of a room the caller may not read, or one whose messages were all deleted.", body = ApiError),
        (status = 416, description = "The range starts past the file's end (`Content-Range: bytes */size`).", body = ApiError, headers(("Content-Range" = String))),
        (status = 429, description = "All of the user's connections are in use (a download holds one while its bytes go out).", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "The log or the bucket is unavailable.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ))]
pub async fn download(
    State(state): State<AppState>,
    StreamUser(user): StreamUser,
    client: crate::address::ClientAddr,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let meta = readable(&state, &user, &id).await?;
    let etag = format!("\"{}\"", meta.id.sha256());
    let mut answer = HeaderMap::new();
    let static_header = |v: &'static str| HeaderValue::from_static(v);
    answer.insert(header::ETAG, header_value(&etag)?);
    answer.insert(header::ACCEPT_RANGES, static_header("bytes"));
    answer.insert(header::X_CONTENT_TYPE_OPTIONS, static_header("nosniff"));
    answer.insert(
        header::CONTENT_SECURITY_POLICY,
        static_header("default-src 'none'; sandbox"),
    );
    // The id names the bytes for good, but access to the room may end: keep it, ask again.
    answer.insert(header::CACHE_CONTROL, static_header("private, no-cache"));
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| etag_matches(v, &etag))
    {
        return Ok((StatusCode::NOT_MODIFIED, answer).into_response());
    }
    answer.insert(header::CONTENT_TYPE, header_value(&meta.content_type)?);
    answer.insert(
        header::CONTENT_DISPOSITION,
        header_value(&disposition(&meta))?,
    );
    let if_range_fails = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() != etag);
    let range = if if_range_fails {
        Range::Whole
    } else {
        range(headers.get(header::RANGE), meta.size)
    };
    let (status, start, end) = match range {
        Range::Whole => (StatusCode::OK, 0, meta.size),
        Range::Part(start, last) => {
            answer.insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes {start}-{last}/{}", meta.size))?,
            );
            (StatusCode::PARTIAL_CONTENT, start, last + 1)
        }
        Range::Unsatisfiable => {
            let mut refused = ApiError::new(
                Code::RangeNotSatisfiable,
                format!("the file has {} bytes", meta.size),
            )
            .into_response();
            refused.headers_mut().insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes */{}", meta.size))?,
            );
            return Ok(refused);
        }
    };
    // While its bytes go out, a download holds one of the user's connections, as an upload does.
    let seat = crate::ws::reserve_seats(&state, &user, client)?;
    answer.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    counters::add(&counters::FILE_DOWNLOADS, 1);
    let body = Body::from_stream(state.files.read(&meta, start, end).map(move |chunk| {
        let _held = &seat;
        chunk
    }));
    Ok((status, answer, body).into_response())
}

/// `GET /api/files/{id}/meta`: what the file is.
#[utoipa::path(get, path = "/api/files/{id}/meta", summary = "A file's metadata", tag = "files",
    params(("id" = crate::openapi::FileIdSchema, Path)),
    security(("bearer" = []), ("token" = [])),
    responses(
        (status = 200, description = "The file's name (its first uploader's), size, type, digest, room and first upload.", body = FileInfo),
        (status = 401, description = "No token, or a bad or expired one.", body = ApiError),
        (status = 404, description = "No such file, one of a room the caller may not read, or one whose messages were all deleted.", body = ApiError),
        (status = 503, description = "The log or the bucket is unavailable.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ))]
pub async fn meta(
    State(state): State<AppState>,
    StreamUser(user): StreamUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<FileInfo>, ApiError> {
    let meta = readable(&state, &user, &id).await?;
    Ok(Json(FileInfo {
        id: meta.id.to_string(),
        sha256: meta.id.sha256().to_string(),
        room: meta.id.room().clone(),
        name: meta.name,
        size: meta.size,
        content_type: meta.content_type,
        created: meta.created,
    }))
}

fn header_value(s: &str) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(s).map_err(ApiError::internal)
}

/// Whether an `If-None-Match` list names `etag` (or is `*`); weak tags compare as strong ones,
/// as RFC 9110 says for this header.
fn etag_matches(list: &str, etag: &str) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// `inline` for the raster images, `attachment` for everything else; the name as RFC 8187's
/// `filename*` (UTF-8, percent-encoded: no quote or separator of the name reaches the header).
fn disposition(meta: &FileMeta) -> String {
    let kind = if sniff::inline(&meta.content_type) {
        "inline"
    } else {
        "attachment"
    };
    let mut encoded = String::with_capacity(meta.name.len());
    for b in meta.name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{kind}; filename*=UTF-8''{encoded}")
}

/// What a `Range` header asks for, of a file of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Range {
    /// No range, or one this edge does not serve (several, another unit, bad syntax): RFC 9110
    /// lets a server answer those with the whole file.
    Whole,
    /// Bytes `start..=last`.
    Part(u64, u64),
    /// Starts past the end (416).
    Unsatisfiable,
}

fn range(header: Option<&HeaderValue>, size: u64) -> Range {
    let Some(spec) = header
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Range::Whole;
    };
    if spec.contains(',') {
        return Range::Whole;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Range::Whole;
    };
    let number = |s: &str| s.trim().parse::<u64>().ok();
    match (first.trim(), last.trim()) {
        ("", suffix) => match number(suffix) {
            None => Range::Whole,
            Some(0) => Range::Unsatisfiable,
            Some(_) if size == 0 => Range::Unsatisfiable,
            Some(n) => Range::Part(size.saturating_sub(n), size - 1),
        },
        (first, "") => match number(first) {
            None => Range::Whole,
            Some(start) if start >= size => Range::Unsatisfiable,
            Some(start) => Range::Part(start, size - 1),
        },
        (first, last) => match (number(first), number(last)) {
            (Some(start), Some(last)) if start <= last => {
                if start >= size {
                    Range::Unsatisfiable
                } else {
                    Range::Part(start, last.min(size - 1))
                }
            }
            _ => Range::Whole,
        },
    }
}

/// Routes of this module that another layer must not limit: an upload's body is counted here.
pub fn unlimited_body() -> axum::extract::DefaultBodyLimit {
    axum::extract::DefaultBodyLimit::disable()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(header: &str, size: u64) -> Range {
        range(Some(&HeaderValue::from_str(header).unwrap()), size)
    }

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        assert_eq!(range(None, 10), Range::Whole);
        assert_eq!(parse("bytes=0-3", 10), Range::Part(0, 3));
        assert_eq!(parse("bytes=4-", 10), Range::Part(4, 9));
        assert_eq!(parse("bytes=-3", 10), Range::Part(7, 9));
        assert_eq!(parse("bytes=-30", 10), Range::Part(0, 9));
        assert_eq!(parse("bytes=5-100", 10), Range::Part(5, 9));
        assert_eq!(parse("bytes=10-", 10), Range::Unsatisfiable);
        assert_eq!(parse("bytes=10-12", 10), Range::Unsatisfiable);
        assert_eq!(parse("bytes=-0", 10), Range::Unsatisfiable);
        for ignored in [
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=3-1",
            "bytes=x-",
            "bytes=1",
        ] {
            assert_eq!(parse(ignored, 10), Range::Whole, "{ignored}");
        }
    }

    #[test]
    fn names_are_checked_and_encoded() {
        assert_eq!(file_name(None).unwrap(), "file");
        assert_eq!(file_name(Some("a b.png".into())).unwrap(), "a b.png");
        for bad in ["", " ", "..", "a/b", "a\\b", "a\nb", "a\u{202e}b"] {
            assert!(file_name(Some(bad.into())).is_err(), "{bad:?}");
        }
        assert!(file_name(Some("é".repeat(255))).is_ok());
        assert!(file_name(Some("x".repeat(256))).is_err());
        let meta = |name: &str, content_type: &str| {
            let mut meta =
                FileMeta::for_tests(FileId::new(RoomId::parse("lobby").unwrap(), &[0; 32]));
            meta.name = name.into();
            meta.content_type = content_type.into();
            meta
        };
        assert_eq!(
            disposition(&meta("a \"b\";.html", "text/html")),
            "attachment; filename*=UTF-8''a%20%22b%22%3B.html"
        );
        assert_eq!(
            disposition(&meta("é.png", "image/png")),
            "inline; filename*=UTF-8''%C3%A9.png"
        );
        assert!(disposition(&meta("x.svg", "image/svg+xml")).starts_with("attachment"));
    }

    #[test]
    fn if_none_match_lists_are_read() {
        assert!(etag_matches("\"a\"", "\"a\""));
        assert!(etag_matches("\"b\", W/\"a\"", "\"a\""));
        assert!(etag_matches("*", "\"a\""));
        assert!(!etag_matches("\"b\"", "\"a\""));
    }
}
