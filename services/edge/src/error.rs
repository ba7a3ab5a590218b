//! Errors a client sees. [`ApiError`] carries one of the protocol's error codes (docs/protocol.md
//! §3) and a message meant for the client; HTTP maps the code to a status, WebSocket puts it in an
//! `error` frame. Internal causes are logged, never shown.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;

/// The error codes of the protocol (`conflict`, `method_not_allowed`, `unsupported_media_type` and
/// `range_not_satisfiable` are HTTP-only: 409, 405, 415, 416).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    TooLarge,
    /// A file whose declared type its bytes contradict (HTTP-only: 415).
    UnsupportedMediaType,
    /// A `Range` that starts past a file's end (HTTP-only: 416).
    RangeNotSatisfiable,
    RateLimited,
    Unavailable,
    Internal,
}

impl Code {
    /// The code as the protocol spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::NotFound => "not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::Conflict => "conflict",
            Code::TooLarge => "too_large",
            Code::UnsupportedMediaType => "unsupported_media_type",
            Code::RangeNotSatisfiable => "range_not_satisfiable",
            Code::RateLimited => "rate_limited",
            Code::Unavailable => "unavailable",
            Code::Internal => "internal",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Code::BadRequest => StatusCode::BAD_REQUEST,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::Conflict => StatusCode::CONFLICT,
            Code::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error answered to a client: on HTTP, the body of every status 400 and over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ApiError {
    pub code: Code,
    /// Meant for a person; not a stable value.
    pub message: String,
    /// When to try again (`rate_limited`): HTTP's `Retry-After`.
    #[serde(skip)]
    pub retry_after: Option<std::time::Duration>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Over a limit: try again after `wait`.
    pub fn rate_limited(message: impl Into<String>, wait: std::time::Duration) -> Self {
        crate::metrics::counters::add(&crate::metrics::counters::RATE_LIMITED, 1);
        Self {
            retry_after: Some(wait),
            ..Self::new(Code::RateLimited, message)
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Code::BadRequest, message)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(Code::NotFound, format!("{what} not found"))
    }

    pub fn unavailable() -> Self {
        Self::new(
            Code::Unavailable,
            "the log is unavailable, retry with the same id",
        )
    }

    /// Logs `cause` and answers a generic message.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(Code::Internal, "internal error")
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Whatever is unavailable (the log, a view) is so for moments: an election, a reconnect,
        // a view catching up. Say when to try again.
        let retry_after = self.retry_after.or_else(|| {
            (self.code == Code::Unavailable).then_some(std::time::Duration::from_secs(1))
        });
        let retry_after = retry_after.map(|wait| {
            // Whole seconds, rounded up: a client that waits that long finds a token.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            secs.max(1).to_string()
        });
        let mut response = (self.code.status(), Json(self)).into_response();
        if let Some(secs) = retry_after
            && let Ok(value) = axum::http::HeaderValue::from_str(&secs)
        {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, value);
        }
        response
    }
}

impl From<crate::log::LogError> for ApiError {
    fn from(e: crate::log::LogError) -> Self {
        use crate::log::LogError;
        match e {
            LogError::Unavailable => ApiError::unavailable(),
            LogError::Conflict => ApiError::new(Code::Conflict, "already exists"),
            LogError::TooLarge => ApiError::new(Code::TooLarge, "event too large"),
            LogError::Internal(cause) => ApiError::internal(cause),
        }
    }
}
