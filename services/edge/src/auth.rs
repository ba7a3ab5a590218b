//! Tokens: JWT HS256 with the algorithm pinned, `sub` the user id and `exp` enforced. The secret
//! comes from config, or is generated once and kept under the data directory.

use std::{
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{extract::FromRequestParts, http::request::Parts};
use chatlog_events::UserId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::{
    AppState,
    error::{ApiError, Code},
};

/// What kind of login a token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Guest,
    Account,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iat: u64,
    exp: u64,
    kind: Kind,
}

/// Issues and verifies tokens.
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl Auth {
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
        }
    }

    /// A token for `user`, valid for the configured time.
    pub fn issue(&self, user: &UserId, kind: Kind) -> Result<String, ApiError> {
        let now = unix_now();
        let claims = Claims {
            sub: user.to_string(),
            iat: now,
            exp: now + self.ttl.as_secs(),
            kind,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(ApiError::internal)
    }

    /// The user a token names and its kind, if it is ours, unexpired and signed with HS256.
    pub fn verify(&self, token: &str) -> Result<(UserId, Kind), ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| ApiError::new(Code::Unauthorized, "invalid or expired token"))?;
        let user = UserId::parse(data.claims.sub)
            .map_err(|_| ApiError::new(Code::Unauthorized, "invalid token subject"))?;
        Ok((user, data.claims.kind))
    }
}

/// The user behind `token`. A guest token counts only while a guest holds its name (a token
/// issued before guests claimed names, or for a name since registered, is refused).
pub async fn authenticate(state: &AppState, token: &str) -> Result<UserId, ApiError> {
    let (user, kind) = state.auth.verify(token)?;
    if kind == Kind::Guest {
        match state.accounts.holder(&state.log, &user).await? {
            crate::accounts::Holder::Guest { .. } => {}
            crate::accounts::Holder::Account { .. } => {
                return Err(ApiError::new(
                    Code::Unauthorized,
                    "that name is a registered account: log in",
                ));
            }
            crate::accounts::Holder::Free | crate::accounts::Holder::Reserved => {
                return Err(ApiError::new(
                    Code::Unauthorized,
                    "that guest name is not held: log in as a guest again",
                ));
            }
        }
    }
    Ok(user)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The token secret kept in `<data>/jwt.secret`, created on first use.
pub fn load_or_create_secret(data_dir: &Path) -> std::io::Result<Vec<u8>> {
    let path = data_dir.join("jwt.secret");
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= 32 => return Ok(s.trim().as_bytes().to_vec()),
        Ok(_) => tracing::warn!(path = %path.display(), "token secret too short, replacing it"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(data_dir)?;
    // Two v4 UUIDs: 244 bits from the operating system's random source.
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    write_private(&path, secret.as_bytes())?;
    tracing::info!(path = %path.display(), "generated a token secret");
    Ok(secret.into_bytes())
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// The caller of an `/api/` route, from `Authorization: Bearer <token>`.
pub struct AuthUser(pub UserId);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::new(Code::Unauthorized, "missing bearer token"))?;
        authenticate(state, token.trim()).await.map(AuthUser)
    }
}

/// The caller, from `Authorization: Bearer <token>` or else `?token=` (an `EventSource` cannot
/// set headers): the event stream and the long poll.
pub struct StreamUser(pub UserId);

impl FromRequestParts<AppState> for StreamUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if parts
            .headers
            .contains_key(axum::http::header::AUTHORIZATION)
        {
            return AuthUser::from_request_parts(parts, state)
                .await
                .map(|AuthUser(user)| StreamUser(user));
        }
        let token = parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .ok_or_else(|| ApiError::new(Code::Unauthorized, "missing bearer token or ?token="))?;
        authenticate(state, token).await.map(StreamUser)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_verifies_its_own_tokens_only() {
        let auth = Auth::new(b"0123456789abcdef0123456789abcdef", Duration::from_secs(60));
        let ada = UserId::parse("ada").unwrap();
        let token = auth.issue(&ada, Kind::Guest).unwrap();
        assert_eq!(auth.verify(&token).unwrap(), (ada, Kind::Guest));

        let other = Auth::new(b"another-secret-another-secret-xx", Duration::from_secs(60));
        assert_eq!(other.verify(&token).unwrap_err().code, Code::Unauthorized);
        assert_eq!(auth.verify("garbage").unwrap_err().code, Code::Unauthorized);
    }

    #[test]
    fn it_refuses_expired_tokens() {
        let auth = Auth::new(b"0123456789abcdef0123456789abcdef", Duration::ZERO);
        let claims = Claims {
            sub: "ada".into(),
            iat: 1,
            exp: unix_now() - 60,
            kind: Kind::Guest,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &auth.encoding).unwrap();
        assert_eq!(auth.verify(&token).unwrap_err().code, Code::Unauthorized);
    }
}
