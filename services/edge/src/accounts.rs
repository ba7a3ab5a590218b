//! Accounts: `register` appends `chat.account.registered` (an argon2id hash, never the password)
//! on `chat.account.<user>`, only if that subject is empty; `login` reads the subject's last
//! message straight from the log (a direct get; no other database) and verifies the password.

use std::{
    collections::HashSet,
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
    error::{ApiError, Code},
    log::{Log, LogError},
};

pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longer passwords are refused: hashing cost must stay bounded.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Which names are registered, as far as this edge has seen. Accounts are never deleted, so a
/// name seen registered is cached for good; a miss asks the log.
#[derive(Default)]
pub struct Registry {
    known: RwLock<HashSet<UserId>>,
}

impl Registry {
    /// Whether `user` is a registered account.
    pub async fn is_registered(&self, log: &Log, user: &UserId) -> Result<bool, LogError> {
        if self
            .known
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(user)
        {
            return Ok(true);
        }
        let found = log
            .last_message(Stream::Accounts, &subjects::account(user))
            .await?
            .is_some();
        if found {
            self.remember(user);
        }
        Ok(found)
    }

    fn remember(&self, user: &UserId) {
        self.known
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(user.clone());
    }
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
    check_password(&password)?;
    if state.accounts.is_registered(&state.log, user).await? {
        return Err(taken());
    }
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
    state.accounts.remember(user);
    state.auth.issue(user, Kind::Account)
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
    let Some(stored) = state
        .log
        .last_message(Stream::Accounts, &subjects::account(user))
        .await?
    else {
        return Err(refused());
    };
    let event = ChatEvent::decode(&stored.body).map_err(ApiError::internal)?;
    let Payload::AccountRegistered(account) = event.payload else {
        return Err(ApiError::internal(
            "the account subject holds another event",
        ));
    };
    let hash = Arc::new(account.password_hash);
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
    if !ok {
        return Err(refused());
    }
    state.accounts.remember(user);
    state.auth.issue(user, Kind::Account)
}
