//! Names and who holds them. The first event on `chat.account.<user>` decides: `register` appends
//! `chat.account.registered` (an argon2id hash, never the password) and a guest's first login
//! appends `chat.guest.claimed` (the SHA-256 of its secret), each only if the subject is empty, so
//! two requests racing for a name store one holder. `login` and later guest logins read the
//! holder straight from the log (a direct get; no other database).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use argon2::{
    Argon2,
    password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash},
};
use chatlog_events::{ChatEvent, Payload, Stream, UserId, event::AccountRegistered, subjects};

use crate::{
    AppState,
    auth::Kind,
    decide::GuestLogin,
    error::{ApiError, Code},
    log::{Log, LogError},
};

pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longer passwords are refused: hashing cost must stay bounded.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Ids nobody may take as a guest or an account: the system's own names.
pub const RESERVED: &[&str] = &["chatlog", "admin", "system", "root", "edge", "handlers"];

/// Who holds a name, as the first event on `chat.account.<user>` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// Nobody: the first guest or account to ask takes it.
    Free,
    /// A registered account, with its argon2id hash.
    Account { password_hash: String },
    /// A guest, with the SHA-256 (hex) of its secret.
    Guest { secret_sha256: String },
    /// A name the operator reserved on the log (a function's: its answers' author); nobody
    /// logs in with it.
    Reserved,
}

impl Holder {
    fn from_event(event: ChatEvent) -> Result<Self, ApiError> {
        match event.payload {
            Payload::AccountRegistered(a) => Ok(Holder::Account {
                password_hash: a.password_hash,
            }),
            Payload::GuestClaimed(g) => Ok(Holder::Guest {
                secret_sha256: g.secret_sha256,
            }),
            Payload::AccountReserved(_) => Ok(Holder::Reserved),
            _ => Err(ApiError::internal(
                "the account subject holds another event",
            )),
        }
    }
}

/// The holders of names as far as this edge has seen. A name is held for good (accounts are
/// never deleted, guest claims never lapse), so what was seen held is cached; a miss asks the log.
#[derive(Default)]
pub struct Registry {
    known: RwLock<HashMap<UserId, Holder>>,
}

impl Registry {
    /// Who holds `user`.
    pub async fn holder(&self, log: &Log, user: &UserId) -> Result<Holder, ApiError> {
        if let Some(h) = self
            .known
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
        {
            return Ok(h.clone());
        }
        let Some(stored) = log
            .first_message(Stream::Accounts, &subjects::account(user))
            .await?
        else {
            return Ok(Holder::Free);
        };
        let holder =
            Holder::from_event(ChatEvent::decode(&stored.body).map_err(ApiError::internal)?)?;
        self.remember(user, holder.clone());
        Ok(holder)
    }

    /// Whether `user` is a registered account.
    pub async fn is_registered(&self, log: &Log, user: &UserId) -> Result<bool, ApiError> {
        Ok(matches!(
            self.holder(log, user).await?,
            Holder::Account { .. }
        ))
    }

    fn remember(&self, user: &UserId, holder: Holder) {
        self.known
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(user.clone(), holder);
    }
}

/// Refuses the system's names and the operator's reserved ones (400).
pub fn check_not_reserved(user: &UserId, extra: &[String]) -> Result<(), ApiError> {
    let id = user.as_str();
    if RESERVED.contains(&id) || extra.iter().any(|r| r == id) {
        return Err(reserved(user));
    }
    Ok(())
}

/// 400: `user` is a name nobody may take.
pub fn reserved(user: &UserId) -> ApiError {
    ApiError::bad_request(format!("the id {user} is reserved"))
}

/// Shortest and longest secret a guest may present (the edge's own are 64 hex characters).
const SECRET_BYTES: std::ops::RangeInclusive<usize> = 16..=128;

fn check_secret(secret: &str) -> Result<(), ApiError> {
    let ok = SECRET_BYTES.contains(&secret.len())
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "secret must be 16 to 128 characters of a-z, A-Z, 0-9, - and _",
        ))
    }
}

/// The SHA-256 of a guest's secret, hex: what its claim keeps.
pub fn sha256_hex(secret: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// `POST /api/auth/guest`: a token and the secret of a guest name. A free name is claimed with
/// the secret given, or a new one; a name a guest holds needs its secret. Returns (token, secret).
pub async fn guest(
    state: &AppState,
    user: &UserId,
    secret: Option<String>,
) -> Result<(String, String), ApiError> {
    check_not_reserved(user, &state.config.reserved_ids)?;
    if let Some(secret) = &secret {
        check_secret(secret)?;
    }
    // Twice at most: a claim that lost a race is decided again on the winner's.
    for _ in 0..2 {
        let holder = state.accounts.holder(&state.log, user).await?;
        let secret = match crate::decide::guest(&holder, secret.as_deref(), new_secret)? {
            GuestLogin::LogIn { secret } => {
                return Ok((state.auth.issue(user, Kind::Guest)?, secret));
            }
            GuestLogin::Claim { secret, claim } => {
                let event = ChatEvent::for_user(
                    user,
                    user.clone(),
                    "edge",
                    Payload::GuestClaimed(claim.clone()),
                );
                match state.log.append_if_last(&event, 0).await {
                    Ok(_) => {}
                    Err(LogError::Conflict) => continue,
                    Err(e) => return Err(e.into()),
                }
                state.accounts.remember(
                    user,
                    Holder::Guest {
                        secret_sha256: claim.secret_sha256,
                    },
                );
                secret
            }
        };
        return Ok((state.auth.issue(user, Kind::Guest)?, secret));
    }
    Err(ApiError::new(
        Code::Conflict,
        "that name is held by another guest",
    ))
}

/// A new guest secret: two v4 UUIDs, 244 bits from the operating system's random source.
fn new_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn check_password(password: &str) -> Result<(), ApiError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(ApiError::bad_request(format!(
            "password must be at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::bad_request(format!(
            "password must be at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Registers `user`: 409 when the name is taken.
pub async fn register(
    state: &AppState,
    user: &UserId,
    password: String,
) -> Result<String, ApiError> {
    check_not_reserved(user, &state.config.reserved_ids)?;
    check_password(&password)?;
    match state.accounts.holder(&state.log, user).await? {
        Holder::Free => {}
        Holder::Reserved => return Err(reserved(user)),
        Holder::Account { .. } | Holder::Guest { .. } => return Err(taken()),
    }
    let _permit = hashing_permit(state).await?;
    let hash = tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let event = ChatEvent::for_user(
        user,
        user.clone(),
        "edge",
        Payload::AccountRegistered(AccountRegistered {
            password_hash: hash,
        }),
    );
    match state.log.append_if_last(&event, 0).await {
        Ok(_) => {}
        Err(LogError::Conflict) => return Err(taken()),
        Err(e) => return Err(e.into()),
    }
    state.accounts.remember(
        user,
        Holder::Account {
            password_hash: match event.payload {
                Payload::AccountRegistered(a) => a.password_hash,
                _ => String::new(),
            },
        },
    );
    state.auth.issue(user, Kind::Account)
}

/// A turn to compute a password hash: a few at once, the others wait their turn.
async fn hashing_permit(state: &AppState) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
    state.hashing.acquire().await.map_err(ApiError::internal)
}

fn taken() -> ApiError {
    ApiError::new(Code::Conflict, "that name is taken")
}

/// Logs `user` in: 401 for an unknown name or a wrong password alike.
pub async fn login(state: &AppState, user: &UserId, password: String) -> Result<String, ApiError> {
    let refused = || ApiError::new(Code::Unauthorized, "wrong name or password");
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(refused());
    }
    // An account that failed too often lately is not tried again (its guesser waits).
    state
        .budgets
        .login_failures
        .check(user)
        .map_err(|wait| ApiError::rate_limited("too many failed logins, wait", wait))?;
    let Holder::Account { password_hash } = state.accounts.holder(&state.log, user).await? else {
        return Err(refused());
    };
    let hash = Arc::new(password_hash);
    let permit = hashing_permit(state).await?;
    let ok = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .map_err(ApiError::internal)?;
    drop(permit);
    if !ok {
        let _ = state.budgets.login_failures.take(user);
        return Err(refused());
    }
    state.auth.issue(user, Kind::Account)
}
