//! The HTTP API (docs/protocol.md §4) as far as the edge serves it by itself: health, guest login,
//! the room directory, posting messages and reading a room's stored events.

use axum::{
    Json,
    extract::{FromRequest, Path, Query, Request, State, rejection::JsonRejection},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use chatlog_events::{
    RoomId, Stream, UserId,
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
#[derive(Serialize)]
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

pub async fn healthz() -> &'static str {
    "ok"
}

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

pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut body = state
        .metrics
        .render(state.hub.rooms(), state.log.connected());
    for source in &state.config.extra_metrics.0 {
        body.push_str(&source());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestLogin {
    user: String,
    #[serde(default)]
    secret: Option<String>,
}

#[derive(Serialize)]
pub struct TokenAnswer {
    token: String,
}

#[derive(Serialize)]
pub struct GuestAnswer {
    token: String,
    /// What this guest must send to log in as this name again.
    secret: String,
}

/// `POST /api/auth/guest {"user","secret"?}`: a token for a guest name, claimed by its first
/// request (which gets the secret later requests need).
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    user: String,
    password: String,
}

/// `POST /api/auth/register {"user","password"}`: 201 `{"token"}`; 409 taken.
pub async fn register(
    State(state): State<AppState>,
    client: ClientAddr,
    ApiJson(creds): ApiJson<Credentials>,
) -> Result<(StatusCode, Json<TokenAnswer>), ApiError> {
    client.take_auth(&state)?;
    let user = parse_user(&creds.user)?;
    let token = crate::accounts::register(&state, &user, creds.password).await?;
    Ok((StatusCode::CREATED, Json(TokenAnswer { token })))
}

/// `POST /api/auth/login {"user","password"}`: 200 `{"token"}`; 401.
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

#[derive(Deserialize)]
pub struct RoomsQuery {
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /api/rooms?after=ID&limit=N`: the rooms the caller may see, by id, from the history view
/// once it holds every room event stored when asked (a room just created is listed).
pub async fn list_rooms(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    query: Result<Query<RoomsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<RoomListing>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRoom {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    private: bool,
    #[serde(default)]
    members: Vec<String>,
}

const MAX_NAME_CHARS: usize = 100;
const MAX_TOPIC_CHARS: usize = 1000;
const MAX_MEMBERS: usize = 1000;

/// `POST /api/rooms`: 201 the room; 409 when it exists.
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    text: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    reply_to: Option<String>,
}

#[derive(Serialize)]
pub struct Posted {
    id: String,
    seq: u64,
}

/// `POST /api/rooms/{room}/messages`: 201 `{"id","seq"}`, idempotent on `id`.
pub async fn post_message(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(room): Path<String>,
    ApiJson(req): ApiJson<PostMessage>,
) -> Result<(StatusCode, Json<Posted>), ApiError> {
    let room = parse_room(&room)?;
    crate::limits::take_append(&state, &user)?;
    let event = crate::messages::post(
        &state,
        &user,
        &room,
        req.text,
        req.id.as_deref(),
        req.reply_to.as_deref(),
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

#[derive(Deserialize)]
pub struct MessagesQuery {
    #[serde(default)]
    before: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
}

const DEFAULT_MESSAGES: usize = 50;
const MAX_MESSAGES: usize = 200;

/// `GET /api/rooms/{room}/messages?before=S&limit=N`: the latest N messages before S, oldest
/// first, edits, deletes and reactions folded in (from the history view, once it has caught up
/// with the room as it was when asked). N is at most 200.
pub async fn room_messages(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(room): Path<String>,
    query: Result<Query<MessagesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<MessagesAnswer>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
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

#[derive(Deserialize)]
pub struct EventsQuery {
    #[serde(default)]
    since: u64,
    #[serde(default)]
    limit: Option<usize>,
    /// Seconds to wait for an event after `since` when there is none yet (a long poll).
    #[serde(default)]
    wait: u64,
}

const DEFAULT_EVENTS: usize = 100;
const MAX_EVENTS: usize = 1000;

#[derive(Serialize)]
pub struct StoredEvent {
    seq: u64,
    event: Box<RawValue>,
}

/// `GET /api/rooms/{room}/events?since=S&limit=N&wait=W`: the stored CloudEvents after S,
/// oldest first, as they are now (a deleted message's redacted, an edited one's with its latest
/// text). With none yet and `wait`, the answer waits up to W seconds for the next one.
pub async fn room_events(
    State(state): State<AppState>,
    StreamUser(user): StreamUser,
    Path(room): Path<String>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<StoredEvent>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
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
    if events.is_empty()
        && !within.is_zero()
        && crate::sse::wait_for_event(&state, &user, &room, query.since, within).await?
    {
        events = stored_after(&state, &room, query.since, limit).await?;
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
pub async fn room_presence(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(room): Path<String>,
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

#[derive(Deserialize)]
pub struct NotificationsQuery {
    #[serde(default)]
    unread: bool,
    /// Only notifications older than this one (the last of the page before).
    #[serde(default)]
    before: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

const DEFAULT_NOTIFICATIONS: usize = 100;
const MAX_NOTIFICATIONS: usize = 500;

/// `GET /api/notifications?unread=true`: the caller's notifications, newest first.
pub async fn list_notifications(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    query: Result<Query<NotificationsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<NotificationsAnswer>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadNotifications {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
}

const MAX_READ_IDS: usize = 1000;

/// `POST /api/notifications/read {"ids":[...]}` or `{"all":true}`: 204.
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    user: String,
}

/// `POST /api/rooms/{room}/members {"user"}`: a member of a private room adds another (204).
pub async fn add_member(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(room): Path<String>,
    ApiJson(req): ApiJson<AddMember>,
) -> Result<StatusCode, ApiError> {
    let room = parse_room(&room)?;
    let member = parse_user(&req.user)?;
    membership(&state, &room, &user, Command::AddMember { member }).await
}

/// `DELETE /api/rooms/{room}/members/{user}`: leave a room, or (a private room's creator)
/// remove someone from it (204).
pub async fn remove_member(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path((room, member)): Path<(String, String)>,
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
