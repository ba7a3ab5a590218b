//! The HTTP API (docs/protocol.md §4) as far as the edge serves it by itself: health, guest login,
//! the room directory, posting messages and reading a room's stored events.

use axum::{
    Json,
    extract::{
        FromRequest, FromRequestParts, Path, Query, Request, State, rejection::JsonRejection,
    },
    http::{StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use chatlog_events::{
    EventId, RoomId, Stream, UserId,
    queries::{
        MarkersAnswer, MarkersRequest, MessagesAnswer, MessagesRequest, NotificationsAnswer,
        NotificationsRequest, PresenceAnswer, PresenceRequest, RoomView, RoomsRequest,
        UnreadAnswer, UnreadRequest, history, notifications, presence,
    },
    subjects,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;

use crate::{
    AppState,
    address::ClientAddr,
    auth::{AuthUser, StreamUser},
    decide::{Command, Given, decide},
    error::{ApiError, Code},
    rooms::NewRoom,
};

/// A room as `GET /api/rooms` and `POST /api/rooms` answer it.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Room)]
pub struct RoomListing {
    id: RoomId,
    name: String,
    topic: String,
    private: bool,
    /// Members of a private room (empty for a public one).
    members: Vec<UserId>,
    member_count: usize,
    last_seq: u64,
}

impl From<chatlog_events::queries::ListedRoom> for RoomListing {
    fn from(listed: chatlog_events::queries::ListedRoom) -> Self {
        Self {
            member_count: listed.member_count,
            ..Self::from(listed.room)
        }
    }
}

impl From<RoomView> for RoomListing {
    fn from(r: RoomView) -> Self {
        Self {
            member_count: r.members.len(),
            id: r.id,
            name: r.name,
            topic: r.topic,
            private: r.private,
            members: r.members,
            last_seq: r.last_seq,
        }
    }
}

/// A JSON body whose rejection is a protocol error (`400 {"code","message"}`).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        // A body trickled in slower than this holds the request no longer.
        let within = state.config.limits.request_body;
        let Ok(parsed) = tokio::time::timeout(within, Json::<T>::from_request(req, state)).await
        else {
            return Err(ApiError::bad_request(format!(
                "the body did not arrive within {} s",
                within.as_secs()
            )));
        };
        match parsed {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(JsonRejection::BytesRejection(_)) => {
                Err(ApiError::new(Code::TooLarge, "body too large"))
            }
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// Path parameters whose rejection (a segment that is not UTF-8 once decoded) is a protocol
/// error (`400 {"code","message"}`), not axum's plain text.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| ApiPath(value))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// A query string whose rejection is a protocol error (`400 {"code","message"}`).
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// `GET /healthz`: 200 while the process runs (a liveness probe).
#[utoipa::path(get, path = "/healthz", summary = "Liveness", tag = "operations",
    responses((status = 200, description = "The process runs.", body = String, content_type = "text/plain", example = "ok")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 when NATS is reachable, the streams exist and the views in this process
/// answer (a readiness probe).
#[utoipa::path(get, path = "/readyz", summary = "Readiness", tag = "operations",
    responses(
        (status = 200, description = "Ready.", body = String, content_type = "text/plain", example = "ready"),
        (status = 503, description = "NATS unreachable, streams missing, or views catching up.", body = String, content_type = "text/plain"),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    if !state.log.ready().await {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "nats unreachable or streams missing",
        )
            .into_response()
    } else if !state.config.extra_ready.0.iter().all(|ready| ready()) {
        (StatusCode::SERVICE_UNAVAILABLE, "views catching up").into_response()
    } else {
        (StatusCode::OK, "ready").into_response()
    }
}

/// `GET /metrics`: Prometheus text (not routed by the Ingress).
#[utoipa::path(get, path = "/metrics", summary = "Prometheus metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4.", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut body = state
        .metrics
        .render(state.hub.rooms(), state.log.connected());
    for source in &state.config.extra_metrics.0 {
        body.push_str(&source());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestLogin {
    /// Not a reserved id: chatlog, admin, system, root, edge, handlers, and `--reserved-ids`.
    #[schema(value_type = UserId)]
    user: String,
    /// The name's secret: needed once a guest holds the name; a first login may choose it.
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::GuestSecret>)]
    secret: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenAnswer {
    /// A JWT (HS256) for `Authorization: Bearer`, valid 24 hours by default.
    token: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct GuestAnswer {
    /// A JWT (HS256) for `Authorization: Bearer`, valid 24 hours by default.
    token: String,
    /// What this guest must send to log in as this name again.
    #[schema(value_type = crate::openapi::GuestSecret)]
    secret: String,
}

/// `POST /api/auth/guest {"user","secret"?}`: a token for a guest name, claimed by its first
/// request (which gets the secret later requests need).
#[utoipa::path(post, path = "/api/auth/guest", summary = "Log in as a guest",
    description = "The first request for a free name claims it, with the `secret` given or a new one (answered); later requests for the name need that secret.", tag = "auth",
    request_body = GuestLogin,
    responses(
        (status = 200, description = "A token, and the name's secret.", body = GuestAnswer),
        (status = 400, description = "A malformed body, a bad id, a bad secret or a reserved id.", body = ApiError),
        (status = 401, description = "A guest holds the name and this is not its secret.", body = ApiError),
        (status = 403, description = "Guest logins are switched off.", body = ApiError),
        (status = 409, description = "A guest holds the name and no secret was given, or it is an account's.", body = ApiError),
        (status = 413, description = "The body is over the size limit.", body = ApiError),
        (status = 429, description = "Too many logins from this address.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "The log is unavailable.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ))]
pub async fn guest(
    State(state): State<AppState>,
    client: ClientAddr,
    ApiJson(login): ApiJson<GuestLogin>,
) -> Result<Json<GuestAnswer>, ApiError> {
    client.take_auth(&state)?;
    if !state.config.allow_guests {
        return Err(ApiError::new(
            Code::Forbidden,
            "guest login is switched off",
        ));
    }
    let user = parse_user(&login.user)?;
    let (token, secret) = crate::accounts::guest(&state, &user, login.secret).await?;
    Ok(Json(GuestAnswer { token, secret }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Not a reserved id: chatlog, admin, system, root, edge, handlers, and `--reserved-ids`.
    #[schema(value_type = UserId)]
    user: String,
    #[schema(value_type = crate::openapi::Password)]
    password: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    user: String,
    password: String,
}

/// `POST /api/auth/register {"user","password"}`: 201 `{"token"}`; 409 taken.
#[utoipa::path(post, path = "/api/auth/register", summary = "Register an account", tag = "auth",
    request_body = Registration,
    responses(
        (status = 201, description = "Registered: a token.", body = TokenAnswer),
        (status = 400, description = "A malformed body, a bad or reserved id, or a password shorter than 8 characters or over 1 024 bytes.", body = ApiError),
        (status = 409, description = "The name is taken (an account's or a guest's).", body = ApiError),
        (status = 413, description = "The body is over the size limit.", body = ApiError),
        (status = 429, description = "Too many registrations from this address.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "The log is unavailable.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ))]
pub async fn register(
    State(state): State<AppState>,
    client: ClientAddr,
    ApiJson(creds): ApiJson<Registration>,
) -> Result<(StatusCode, Json<TokenAnswer>), ApiError> {
    client.take_auth(&state)?;
    let user = parse_user(&creds.user)?;
    let token = crate::accounts::register(&state, &user, creds.password).await?;
    Ok((StatusCode::CREATED, Json(TokenAnswer { token })))
}

/// `POST /api/auth/login {"user","password"}`: 200 `{"token"}`; 401.
#[utoipa::path(post, path = "/api/auth/login", summary = "Log in to an account", tag = "auth",
    request_body = Credentials,
    responses(
        (status = 200, description = "A token.", body = TokenAnswer),
        (status = 400, description = "A malformed body.", body = ApiError),
        (status = 401, description = "Wrong name or password.", body = ApiError),
        (status = 413, description = "The body is over the size limit.", body = ApiError),
        (status = 429, description = "Too many logins from this address, or failed logins of this account.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "The log is unavailable.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ))]
pub async fn login(
    State(state): State<AppState>,
    client: ClientAddr,
    ApiJson(creds): ApiJson<Credentials>,
) -> Result<Json<TokenAnswer>, ApiError> {
    client.take_auth(&state)?;
    // A malformed name cannot be an account: the same 401 as a wrong password.
    let user = UserId::parse(creds.user.as_str())
        .map_err(|_| ApiError::new(Code::Unauthorized, "wrong name or password"))?;
    let token = crate::accounts::login(&state, &user, creds.password).await?;
    Ok(Json(TokenAnswer { token }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RoomsQuery {
    /// Only rooms whose id sorts after this one (the last of the page before).
    #[serde(default)]
    #[param(value_type = Option<RoomId>)]
    after: Option<String>,
    /// At most this many rooms (default 100).
    #[serde(default)]
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
}

/// `GET /api/rooms?after=ID&limit=N`: the rooms the caller may see, by id, from the history view
/// once it holds every room event stored when asked (a room just created is listed).
#[utoipa::path(get, path = "/api/rooms", summary = "List the rooms the caller may see",
    description = "By id, after `after`. Read once the history view holds every room event stored when asked: a room just created is listed. Private rooms list their members (at most 1 000), every room its `member_count`.", tag = "rooms",
    params(RoomsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The rooms the caller may see, by id.", body = Vec<RoomListing>),
        (status = 400, description = "A bad `after` or `limit`.", body = ApiError),
        (status = 401, description = "No token, or a bad or expired one.", body = ApiError),
        (status = 503, description = "The log or a view is unavailable.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ))]
pub async fn list_rooms(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiQuery(query): ApiQuery<RoomsQuery>,
) -> Result<Json<Vec<RoomListing>>, ApiError> {
    let after = query.after.as_deref().map(parse_room).transpose()?;
    let limit = query
        .limit
        .unwrap_or(chatlog_events::queries::DEFAULT_ROOMS);
    if limit == 0 || limit > chatlog_events::queries::MAX_ROOMS {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {}",
            chatlog_events::queries::MAX_ROOMS
        )));
    }
    Ok(Json(rooms_of(&state, &user, after, limit).await?))
}

/// Up to `limit` rooms `user` may see, by id after `after`, read once the view holds every room
/// event stored when asked (a room just created is listed).
pub async fn rooms_of(
    state: &AppState,
    user: &UserId,
    after: Option<RoomId>,
    limit: usize,
) -> Result<Vec<RoomListing>, ApiError> {
    let head = state.log.stream_head(Stream::Rooms).await?;
    // The view cuts a page by bytes too; the page ends short only at the end, so ask on.
    let mut listed: Vec<RoomListing> = Vec::new();
    let mut after = after;
    loop {
        let request = RoomsRequest {
            user: user.clone(),
            after: after.clone(),
            limit: Some(limit - listed.len()),
        };
        let page: chatlog_events::queries::RoomsAnswer = state
            .views
            .ask_at(history::VIEW, history::ROOMS, &request, Some(head))
            .await?;
        after = page.rooms.last().map(|r| r.room.id.clone());
        listed.extend(page.rooms.into_iter().map(RoomListing::from));
        if !page.has_more || listed.len() >= limit || after.is_none() {
            break;
        }
    }
    Ok(listed)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoom {
    #[schema(value_type = RoomId)]
    id: String,
    /// Shown instead of the id (default: the id).
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::RoomName>)]
    name: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::Topic>)]
    topic: Option<String>,
    /// Private: visible to its members only, who add others.
    #[serde(default)]
    private: bool,
    /// A private room's first members (its creator is one).
    #[serde(default)]
    #[schema(value_type = Vec<UserId>, max_items = 1000)]
    members: Vec<String>,
}

const MAX_NAME_CHARS: usize = 100;
const MAX_TOPIC_CHARS: usize = 1000;
const MAX_MEMBERS: usize = 1000;

/// `POST /api/rooms`: 201 the room; 409 when it exists.
#[utoipa::path(post, path = "/api/rooms", summary = "Create a room", tag = "rooms",
    request_body = CreateRoom,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created.", body = RoomListing),
        (status = 400, description = "A malformed body, a bad id, a blank name, or a control character.", body = ApiError),
        (status = 401, description = "No token, or a bad or expired one.", body = ApiError),
        (status = 409, description = "The room exists.", body = ApiError),
        (status = 413, description = "A name over 100 characters, a topic over 1 000, or a body over the size limit.", body = ApiError),
        (status = 429, description = "Too many rooms created by this user.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "The log is unavailable.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ))]
pub async fn create_room(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(req): ApiJson<CreateRoom>,
) -> Result<(StatusCode, Json<RoomListing>), ApiError> {
    let id = parse_room(&req.id)?;
    let name = req.name.unwrap_or_else(|| id.to_string());
    let topic = req.topic.unwrap_or_default();
    if name.trim().is_empty() {
        return Err(ApiError::bad_request("name is empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::new(
            Code::TooLarge,
            format!("name must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if topic.chars().count() > MAX_TOPIC_CHARS {
        return Err(ApiError::new(
            Code::TooLarge,
            format!("topic must be at most {MAX_TOPIC_CHARS} characters"),
        ));
    }
    crate::messages::refuse_controls("name", &name)?;
    crate::messages::refuse_controls("topic", &topic)?;
    if req.members.len() > MAX_MEMBERS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_MEMBERS} members"
        )));
    }
    let members = req
        .members
        .iter()
        .map(|m| parse_user(m))
        .collect::<Result<Vec<_>, _>>()?;
    let new = NewRoom {
        id,
        name,
        topic,
        private: req.private,
        members,
    };
    state
        .budgets
        .room_creates
        .take(&user)
        .map_err(|wait| ApiError::rate_limited("too many rooms created, wait a minute", wait))?;
    let (room, last_seq) = state.rooms.create(&user, new).await?;
    let listing = RoomView {
        last_seq,
        ..RoomView::clone(&room)
    };
    Ok((StatusCode::CREATED, Json(listing.into())))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    #[schema(value_type = crate::openapi::Text)]
    text: String,
    /// The message's id, for a retry to be stored once (default: a new UUIDv7).
    #[serde(default)]
    #[schema(value_type = Option<EventId>)]
    id: Option<String>,
    /// The message this one answers.
    #[serde(default)]
    #[schema(value_type = Option<EventId>)]
    reply_to: Option<String>,
    /// Ids of files the caller uploaded to this room (`POST /api/rooms/{room}/files`), at most
    /// 10; with some, `text` may be empty.
    #[serde(default)]
    #[schema(value_type = Vec<crate::openapi::FileIdSchema>)]
    attachments: Vec<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Posted {
    #[schema(value_type = EventId)]
    id: String,
    /// The message's seq in the room.
    seq: u64,
}

/// `POST /api/rooms/{room}/messages`: 201 `{"id","seq"}`, idempotent on `id`.
#[utoipa::path(post, path = "/api/rooms/{room}/messages", summary = "Post a message", tag = "messages",
    params(("room" = RoomId, Path)),
    request_body = PostMessage,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Stored (again: the same `id` is stored once and answered with the same seq).", body = Posted),
        (status = 400, description = "A malformed body, a bad room id, a blank text or a control character.", body = ApiError),
        (status = 401, description = "No token, or a bad or expired one.", body = ApiError),
        (status = 404, description = "No such room, or a private one the caller is not a member of.", body = ApiError),
        (status = 413, description = "A text over 4 000 characters, or a body over the size limit.", body = ApiError),
        (status = 429, description = "Too many writes by this user.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "The log is unavailable: retry with the same `id`.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ))]
pub async fn post_message(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiPath(room): ApiPath<String>,
    ApiJson(req): ApiJson<PostMessage>,
) -> Result<(StatusCode, Json<Posted>), ApiError> {
    let room = parse_room(&room)?;
    crate::limits::take_append(&state, &user)?;
    let event = crate::messages::post(
        &state,
        &user,
        &room,
        crate::messages::Post {
            text: req.text,
            id: req.id.as_deref(),
            reply_to: req.reply_to.as_deref(),
            attachments: &req.attachments,
        },
    )
    .await?;
    let started = std::time::Instant::now();
    let appended = state.log.append(&event).await?;
    state.metrics.appended(started.elapsed());
    Ok((
        StatusCode::CREATED,
        Json(Posted {
            id: event.id.to_string(),
            seq: appended.seq,
        }),
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessagesQuery {
    /// Only messages with a seq below this one (the oldest of the page before).
    #[serde(default)]
    #[param(maximum = 18446744073709551615_u64)]
    before: Option<u64>,
    /// At most this many (default 50; more than 200 counts as 200).
    #[serde(default)]
    #[param(minimum = 1, maximum = 18446744073709551615_u64)]
    limit: Option<usize>,
}

const DEFAULT_MESSAGES: usize = 50;
const MAX_MESSAGES: usize = 200;

/// `GET /api/rooms/{room}/messages?before=S&limit=N`: the latest N messages before S, oldest
/// first, edits, deletes and reactions folded in (from the history view, once it has caught up
/// with the room as it was when asked). N is at most 200.
#[utoipa::path(get, path = "/api/rooms/{room}/messages", summary = "Read a room's messages",
    description = "The latest `limit` messages with a seq below `before` (all, without it), oldest first, with edits, deletes and reactions folded in; `has_more` says whether older ones exist (ask again with `before` = the oldest seq answered). Read once the history view holds the room as it was when asked: a message just posted is on it.", tag = "messages",
    params(("room" = RoomId, Path), MessagesQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The latest messages before `before`, oldest first, edits, deletes and reactions folded in.", body = MessagesAnswer),
        (status = 400, description = "A bad room id, `before` or `limit`.", body = ApiError),
        (status = 401, description = "No token, or a bad or expired one.", body = ApiError),
        (status = 404, description = "No such room, or a private one the caller is not a member of.", body = ApiError),
        (status = 503, description = "The log or the history view is unavailable.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ))]
pub async fn room_messages(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiPath(room): ApiPath<String>,
    ApiQuery(query): ApiQuery<MessagesQuery>,
) -> Result<Json<MessagesAnswer>, ApiError> {
    let room = parse_room(&room)?;
    state.rooms.visible(&room, &user, &state.views).await?;
    let limit = query.limit.unwrap_or(DEFAULT_MESSAGES);
    if limit == 0 {
        return Err(ApiError::bad_request("limit must be at least 1"));
    }
    // Read-your-writes: the page is read once the view holds everything the room had when it
    // was asked for (below `before`, with one), so a message just posted is on it.
    let head = state.log.room_head(&room).await?;
    let min_seq = query
        .before
        .map_or(head, |before| before.saturating_sub(1).min(head));
    let request = MessagesRequest {
        room,
        before: query.before,
        limit: limit.min(MAX_MESSAGES),
    };
    let answer = state
        .views
        .ask_at(history::VIEW, history::MESSAGES, &request, Some(min_seq))
        .await?;
    Ok(Json(answer))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events with a seq above this one (the last seen; default 0: from the start).
    #[serde(default)]
    #[param(maximum = 18446744073709551615_u64)]
    since: u64,
    /// At most this many (default 100).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Seconds to wait for an event after `since` when there is none yet (a long poll).
    #[serde(default)]
    #[param(maximum = 30)]
    wait: u64,
}

const DEFAULT_EVENTS: usize = 100;
const MAX_EVENTS: usize = 1000;

#[derive(Serialize, utoipa::ToSchema)]
pub struct StoredEvent {
    seq: u64,
    #[schema(value_type = crate::openapi::CloudEvent)]
    event: Box<RawValue>,
}

/// `GET /api/rooms/{room}/events?since=S&limit=N&wait=W`: the stored CloudEvents after S,
/// oldest first, as they are now (a deleted message's redacted, an edited one's with its latest
/// text). With none yet and `wait`, the answer waits up to W seconds for the next one.
#[utoipa::path(get, path = "/api/rooms/{room}/events", summary = "Read a room's stored events (long poll with wait)",
    description = "The stored events after `since`, oldest first, served as the messages are now (a deleted message's `chat.message.posted` and `chat.message.edited` carry `\"data\":{\"deleted\":true}`, an edited one's its latest text). With none yet and `wait`, the answer waits up to `wait` seconds for the next one, then answers `[]`.", tag = "messages",
    params(("room" = RoomId, Path), EventsQuery),
    security(("bearer" = []), ("token" = [])),
    responses(
        (status = 200, description = "The stored CloudEvents after `since`, oldest first, as they are now (a deleted message's redacted).", body = Vec<StoredEvent>),
        (status = 400, description = "A bad room id, `since`, `limit` or `wait`.", body = ApiError),
        (status = 401, description = "No token, or a bad or expired one.", body = ApiError),
        (status = 404, description = "No such room, or a private one the caller is not a member of.", body = ApiError),
        (status = 429, description = "A poll that would wait while the user (or address) holds its most connections on this edge.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "The log or a view is unavailable.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ))]
pub async fn room_events(
    State(state): State<AppState>,
    StreamUser(user): StreamUser,
    client: ClientAddr,
    ApiPath(room): ApiPath<String>,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Json<Vec<StoredEvent>>, ApiError> {
    let room = parse_room(&room)?;
    state.rooms.visible(&room, &user, &state.views).await?;
    let limit = query.limit.unwrap_or(DEFAULT_EVENTS);
    if limit == 0 || limit > MAX_EVENTS {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_EVENTS}"
        )));
    }
    if query.wait > crate::sse::MAX_WAIT_SECS {
        return Err(ApiError::bad_request(format!(
            "wait must be at most {} seconds",
            crate::sse::MAX_WAIT_SECS
        )));
    }
    let mut events = stored_after(&state, &room, query.since, limit).await?;
    let within = std::time::Duration::from_secs(query.wait);
    if events.is_empty() && !within.is_zero() {
        // A waiting poll holds a connection's seat while it waits, as a socket would.
        let _seat = crate::ws::reserve_seats(&state, &user, client)?;
        if crate::sse::wait_for_event(&state, &user, &room, query.since, within).await? {
            events = stored_after(&state, &room, query.since, limit).await?;
        }
    }
    Ok(Json(events))
}

/// Up to `limit` stored events of `room` after `since`, as they are served now (redacted).
async fn stored_after(
    state: &AppState,
    room: &RoomId,
    since: u64,
    limit: usize,
) -> Result<Vec<StoredEvent>, ApiError> {
    let subject = subjects::room(room);
    let head = state.log.last_seq(Stream::Rooms, &subject).await?;
    if head <= since {
        return Ok(Vec::new());
    }
    let mut stored = state
        .log
        .read(
            Stream::Rooms,
            &subject,
            since.saturating_add(1),
            head,
            limit,
        )
        .await?;
    crate::served::as_now(&state.views, room, head, &mut stored).await?;
    Ok(stored
        .into_iter()
        .filter_map(|m| {
            let event = RawValue::from_string(String::from_utf8(m.body.to_vec()).ok()?).ok()?;
            Some(StoredEvent { seq: m.seq, event })
        })
        .collect())
}

/// `GET /api/rooms/{room}/presence`: who is online and typing, from the presence view.
#[utoipa::path(get, path = "/api/rooms/{room}/presence", summary = "Who is online and typing", tag = "rooms",
    params(("room" = RoomId, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Who is online and typing.", body = PresenceAnswer),
        (status = 400, description = "A bad room id.", body = ApiError),
        (status = 401, description = "No token, or a bad or expired one.", body = ApiError),
        (status = 404, description = "No such room, or a private one the caller is not a member of.", body = ApiError),
        (status = 503, description = "The log or a view is unavailable.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ))]
pub async fn room_presence(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiPath(room): ApiPath<String>,
) -> Result<Json<PresenceAnswer>, ApiError> {
    let room = parse_room(&room)?;
    Ok(Json(presence_of(&state, &user, room).await?))
}

/// Who is online and typing in `room`, for a `user` who may see it.
pub async fn presence_of(
    state: &AppState,
    user: &UserId,
    room: RoomId,
) -> Result<PresenceAnswer, ApiError> {
    state.rooms.visible(&room, user, &state.views).await?;
    // Read-your-writes: once the view holds the room's last presence event (a join's `online`).
    let head = state
        .log
        .last_seq(Stream::Presence, &subjects::presence(&room))
        .await?;
    state
        .views
        .ask_at(
            presence::VIEW,
            presence::ROOM,
            &PresenceRequest { room },
            Some(head),
        )
        .await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NotificationsQuery {
    /// Unread ones only.
    #[serde(default)]
    unread: bool,
    /// Only notifications older than this one (the last of the page before).
    #[serde(default)]
    #[param(value_type = Option<EventId>)]
    before: Option<String>,
    /// At most this many (default 100; 0 counts as 1, more than 500 as 500).
    #[serde(default)]
    #[param(maximum = 18446744073709551615_u64)]
    limit: Option<usize>,
}

const DEFAULT_NOTIFICATIONS: usize = 100;
const MAX_NOTIFICATIONS: usize = 500;

/// `GET /api/notifications?unread=true`: the caller's notifications, newest first.
#[utoipa::path(get, path = "/api/notifications", summary = "The caller's notifications", tag = "notifications",
    params(NotificationsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's notifications, newest first; each `text` as its message is now (empty once deleted).", body = NotificationsAnswer),
        (status = 400, description = "A bad `unread`, `before` or `limit`.", body = ApiError),
        (status = 401, description = "No token, or a bad or expired one.", body = ApiError),
        (status = 503, description = "The log or a view is unavailable.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ))]
pub async fn list_notifications(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiQuery(query): ApiQuery<NotificationsQuery>,
) -> Result<Json<NotificationsAnswer>, ApiError> {
    // Read-your-writes: once the view holds the user's last event (a notification marked read).
    let head = state
        .log
        .last_seq(Stream::Users, &subjects::user(&user))
        .await?;
    let before = query
        .before
        .as_deref()
        .map(chatlog_events::EventId::parse)
        .transpose()
        .map_err(|_| ApiError::bad_request("before must be a notification id"))?;
    let request = NotificationsRequest {
        before,
        user,
        unread_only: query.unread,
        limit: query
            .limit
            .unwrap_or(DEFAULT_NOTIFICATIONS)
            .clamp(1, MAX_NOTIFICATIONS),
    };
    let mut answer: NotificationsAnswer = state
        .views
        .ask_at(
            notifications::VIEW,
            notifications::LIST,
            &request,
            Some(head),
        )
        .await?;
    notifications_as_now(&state, &mut answer).await?;
    Ok(Json(answer))
}

/// Each notification's text as its message is now: empty once deleted, the latest once edited
/// (asked of the history view once it holds every room event stored before the read).
async fn notifications_as_now(
    state: &AppState,
    answer: &mut NotificationsAnswer,
) -> Result<(), ApiError> {
    use chatlog_events::queries::CurrentAnswer;
    use futures::{StreamExt, TryStreamExt};
    use std::collections::BTreeMap;
    let mut by_room: BTreeMap<RoomId, Vec<chatlog_events::EventId>> = BTreeMap::new();
    for n in &answer.notifications {
        by_room
            .entry(n.room.clone())
            .or_default()
            .push(n.message_id);
    }
    if by_room.is_empty() {
        return Ok(());
    }
    let head = state.log.stream_head(Stream::Rooms).await?;
    let asks = by_room.into_iter().map(|(room, ids)| async move {
        let answer = crate::served::current(&state.views, &room, ids, head).await?;
        Ok::<_, ApiError>((room, answer))
    });
    // A few rooms at a time: a page of notifications may span hundreds of rooms.
    let now: BTreeMap<RoomId, CurrentAnswer> = futures::stream::iter(asks)
        .buffer_unordered(8)
        .try_collect()
        .await?;
    for n in &mut answer.notifications {
        if let Some(current) = now.get(&n.room).and_then(|a| a.messages.get(&n.message_id)) {
            n.text.clone_from(&current.text);
        }
    }
    Ok(())
}

/// `{"ids":[…]}` or `{"all":true}` (one of them at least).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadNotifications {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
}

impl utoipa::PartialSchema for ReadNotifications {
    /// Some ids, or `all: true` (both may be given).
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::{
            ToSchema,
            openapi::schema::{
                AdditionalProperties, AnyOfBuilder, ArrayBuilder, ObjectBuilder, Ref, Type,
            },
        };
        let ids = || {
            ArrayBuilder::new()
                .items(Ref::from_schema_name(EventId::name()))
                .max_items(Some(MAX_READ_IDS))
        };
        let all = || ObjectBuilder::new().schema_type(Type::Boolean);
        let base = || {
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        };
        AnyOfBuilder::new()
            .item(
                base()
                    .property("ids", ids().min_items(Some(1)))
                    .property("all", all())
                    .required("ids"),
            )
            .item(
                base()
                    .property("ids", ids())
                    .property("all", all().enum_values(Some([true])))
                    .required("all"),
            )
            .description(Some(
                "Some notifications by id, or all of them (`\"all\": true`).",
            ))
            .into()
    }
}

impl utoipa::ToSchema for ReadNotifications {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        use utoipa::{PartialSchema, ToSchema};
        schemas.push((<EventId as ToSchema>::name().into(), EventId::schema()));
    }
}

const MAX_READ_IDS: usize = 1000;

/// `POST /api/notifications/read {"ids":[...]}` or `{"all":true}`: 204.
#[utoipa::path(post, path = "/api/notifications/read", summary = "Mark notifications read", tag = "notifications",
    request_body = ReadNotifications,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Marked read."),
        (status = 400, description = "A malformed body, neither `ids` nor `all`, or a bad id.", body = ApiError),
        (status = 401, description = "No token, or a bad or expired one.", body = ApiError),
        (status = 413, description = "The body is over the size limit.", body = ApiError),
        (status = 429, description = "Too many writes by this user.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "The log is unavailable.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ))]
pub async fn read_notifications(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(req): ApiJson<ReadNotifications>,
) -> Result<StatusCode, ApiError> {
    use chatlog_events::{ChatEvent, EventId, Payload, event::NotificationRead};
    if !req.all && req.ids.is_empty() {
        return Err(ApiError::bad_request("give ids or all: true"));
    }
    if req.ids.len() > MAX_READ_IDS {
        return Err(ApiError::bad_request(format!("at most {MAX_READ_IDS} ids")));
    }
    let ids = req
        .ids
        .iter()
        .map(|id| EventId::parse(id))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ApiError::bad_request("ids must be notification ids"))?;
    crate::limits::take_append(&state, &user)?;
    let payload = Payload::NotificationRead(NotificationRead { ids, all: req.all });
    let event = ChatEvent::for_user(&user, user.clone(), "edge", payload);
    state.log.append(&event).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/unread`: per room the caller joined, the messages after its read marker (all of
/// them without one), not counting its own.
#[utoipa::path(get, path = "/api/unread", summary = "Unread counts per room", tag = "notifications",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Per room the caller joined, its unread messages (not its own, not deleted; counted up to 10 000).", body = UnreadAnswer),
        (status = 401, description = "No token, or a bad or expired one.", body = ApiError),
        (status = 503, description = "The log or a view is unavailable.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ))]
pub async fn unread(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<UnreadAnswer>, ApiError> {
    // Read-your-writes: the markers once the view holds the user's last event (a read marker),
    // the counts once the history view holds every room event stored before the read.
    let user_subject = subjects::user(&user);
    let (user_head, rooms_head) = futures::try_join!(
        state.log.last_seq(Stream::Users, &user_subject),
        state.log.stream_head(Stream::Rooms),
    )?;
    let markers: MarkersAnswer = state
        .views
        .ask_at(
            notifications::VIEW,
            notifications::MARKERS,
            &MarkersRequest { user: user.clone() },
            Some(user_head),
        )
        .await?;
    let answer = state
        .views
        .ask_at(
            history::VIEW,
            history::UNREAD,
            &UnreadRequest { user, markers },
            Some(rooms_head),
        )
        .await?;
    Ok(Json(answer))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    #[schema(value_type = UserId)]
    user: String,
}

/// `POST /api/rooms/{room}/members {"user"}`: a member of a private room adds another (204).
#[utoipa::path(post, path = "/api/rooms/{room}/members", summary = "Add a member to a private room", tag = "rooms",
    params(("room" = RoomId, Path)),
    request_body = AddMember,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "A member (already, or now: `chat.member.joined`)."),
        (status = 400, description = "A malformed body, a bad id, or a public room (anyone may join it).", body = ApiError),
        (status = 401, description = "No token, or a bad or expired one.", body = ApiError),
        (status = 403, description = "Refused by the membership rules.", body = ApiError),
        (status = 404, description = "No such room, or a private one the caller is not a member of.", body = ApiError),
        (status = 413, description = "The body is over the size limit.", body = ApiError),
        (status = 429, description = "Too many writes by this user.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "The log or the history view is unavailable, or the room too busy.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ))]
pub async fn add_member(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiPath(room): ApiPath<String>,
    ApiJson(req): ApiJson<AddMember>,
) -> Result<StatusCode, ApiError> {
    let room = parse_room(&room)?;
    let member = parse_user(&req.user)?;
    membership(&state, &room, &user, Command::AddMember { member }).await
}

/// `DELETE /api/rooms/{room}/members/{user}`: leave a room, or (a private room's creator)
/// remove someone from it (204).
#[utoipa::path(delete, path = "/api/rooms/{room}/members/{user}", summary = "Leave a room, or remove a member", tag = "rooms",
    params(("room" = RoomId, Path), ("user" = UserId, Path)),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Out of the room (`chat.member.left`)."),
        (status = 400, description = "A bad id, or someone else in a public room.", body = ApiError),
        (status = 401, description = "No token, or a bad or expired one.", body = ApiError),
        (status = 403, description = "Someone else's removal, by other than the private room's creator.", body = ApiError),
        (status = 404, description = "No such room, one invisible to the caller, or not a member.", body = ApiError),
        (status = 429, description = "Too many writes by this user.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "The log or the history view is unavailable, or the room too busy.", body = ApiError, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ))]
pub async fn remove_member(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiPath((room, member)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let room = parse_room(&room)?;
    let member = parse_user(&member)?;
    membership(&state, &room, &user, Command::RemoveMember { member }).await
}

/// Decides a membership change on the room as of its head and appends it only if the room is
/// still at that head, so a decision on a membership that changed meanwhile is taken again.
pub async fn membership(
    state: &AppState,
    room: &RoomId,
    user: &UserId,
    command: Command,
) -> Result<StatusCode, ApiError> {
    use crate::log::LogError;
    crate::limits::take_append(state, user)?;
    let mut tries = 0;
    loop {
        let concerns = command.concerns(user);
        let (view, head) = state
            .rooms
            .at_head(room, &state.views, &concerns, |_| true)
            .await?;
        let given = Given {
            room: &view,
            message: None,
        };
        let Some(payload) = decide(user, &given, command.clone())?.into_iter().next() else {
            return Ok(StatusCode::NO_CONTENT);
        };
        let event = chatlog_events::ChatEvent::in_room(room, user.clone(), "edge", payload);
        match state.log.append_if_last(&event, head).await {
            Ok(_) => return Ok(StatusCode::NO_CONTENT),
            Err(LogError::Conflict) if tries < MEMBERSHIP_TRIES => tries += 1,
            Err(LogError::Conflict) => {
                return Err(ApiError::new(
                    Code::Unavailable,
                    "the room is too busy to change its members now, retry",
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// How often a membership change is decided again when the room moved under it.
const MEMBERSHIP_TRIES: usize = 20;

pub fn parse_room(room: &str) -> Result<RoomId, ApiError> {
    RoomId::parse(room).map_err(|e| ApiError::bad_request(format!("bad room id: {e}")))
}

pub fn parse_user(user: &str) -> Result<UserId, ApiError> {
    UserId::parse(user).map_err(|e| ApiError::bad_request(format!("bad user id: {e}")))
}

/// Any other path: a JSON 404.
pub async fn fallback() -> ApiError {
    ApiError::not_found("route")
}

/// A route's path with a method it does not have: a JSON 405 (axum adds `Allow`).
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(Code::MethodNotAllowed, "method not allowed")
}
