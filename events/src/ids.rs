//! Validated identifiers. A [`RoomId`] or [`UserId`] can only be built from a string matching
//! `^[a-z0-9][a-z0-9_-]{0,31}$`, so no `.`, `*`, `>`, space or upper-case letter can ever reach a
//! NATS subject. An [`EventId`] is a UUID.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Longest room or user id, in bytes (all allowed characters are ASCII).
pub const MAX_ID_LEN: usize = 32;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("id is empty")]
    Empty,
    #[error("id is longer than {MAX_ID_LEN} characters")]
    TooLong,
    #[error("id must start with a-z or 0-9 and hold only a-z, 0-9, '_' and '-'")]
    BadCharacter,
    #[error("event id is not a uuid")]
    NotUuid,
}

fn check_id(s: &str) -> Result<(), IdError> {
    let bytes = s.as_bytes();
    let Some(first) = bytes.first() else {
        return Err(IdError::Empty);
    };
    if bytes.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    let lower_or_digit = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !lower_or_digit(*first) {
        return Err(IdError::BadCharacter);
    }
    if !bytes[1..]
        .iter()
        .all(|&b| lower_or_digit(b) || b == b'_' || b == b'-')
    {
        return Err(IdError::BadCharacter);
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates `s` and wraps it.
            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_id(&s)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;
                Self::parse(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_id!(
    /// A room id: the last token of `chat.room.<room>` and `chat.presence.<room>`.
    RoomId
);
name_id!(
    /// A user id: the last token of `chat.user.<user>` and `chat.account.<user>`.
    UserId
);

/// An event id: a UUID, the client's own for an action when it gave one, else a new UUIDv7.
/// It is also the `Nats-Msg-Id` of the append, which makes a retried append idempotent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(Uuid);

impl EventId {
    /// A new time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Parses a client's id; any UUID version is accepted.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        Uuid::try_parse(s).map(Self).map_err(|_| IdError::NotUuid)
    }

    /// A deterministic id derived from `namespace` and `name` (UUIDv5), for derived events:
    /// emitting the same derivation twice gives the same id and is stored once.
    pub fn derived(namespace: &EventId, name: &str) -> Self {
        Self(Uuid::new_v5(&namespace.0, name.as_bytes()))
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl std::str::FromStr for EventId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0.hyphenated())
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The ids' JSON Schemas, for the edge's OpenAPI document: what [`RoomId::parse`] and
/// [`EventId::parse`] accept.
#[cfg(feature = "openapi")]
mod schemas {
    use utoipa::openapi::{
        RefOr,
        schema::{ObjectBuilder, Schema, SchemaFormat, Type},
    };

    use super::{EventId, MAX_ID_LEN, RoomId, UserId};

    /// The pattern of room and user ids (docs/protocol.md §1).
    pub const ID_PATTERN: &str = "^[a-z0-9][a-z0-9_-]{0,31}$";

    fn name_id(what: &str, example: &str) -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(ID_PATTERN))
            .min_length(Some(1))
            .max_length(Some(MAX_ID_LEN))
            .description(Some(format!(
                "A {what} id: a-z, 0-9, '_' and '-', starting with a letter or digit, at most 32."
            )))
            .examples([example])
            .into()
    }

    impl utoipa::PartialSchema for RoomId {
        fn schema() -> RefOr<Schema> {
            name_id("room", "lobby")
        }
    }
    impl utoipa::ToSchema for RoomId {}

    impl utoipa::PartialSchema for UserId {
        fn schema() -> RefOr<Schema> {
            name_id("user", "ada")
        }
    }
    impl utoipa::ToSchema for UserId {}

    impl utoipa::PartialSchema for EventId {
        fn schema() -> RefOr<Schema> {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::Custom("uuid".into())))
                .description(Some("An event id: a UUID."))
                .into()
        }
    }
    impl utoipa::ToSchema for EventId {}
}

#[cfg(feature = "openapi")]
pub use schemas::ID_PATTERN;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_accepts_ids_of_the_protocol() {
        for ok in ["a", "0", "lobby", "room-1", "a_b-c", &"x".repeat(32)] {
            assert!(RoomId::parse(ok).is_ok(), "{ok:?} should be valid");
            assert!(UserId::parse(ok).is_ok(), "{ok:?} should be valid");
        }
    }

    #[test]
    fn it_rejects_anything_that_could_change_a_subject() {
        let cases = [
            ("", IdError::Empty),
            ("a.b", IdError::BadCharacter),
            ("*", IdError::BadCharacter),
            (">", IdError::BadCharacter),
            ("a*", IdError::BadCharacter),
            ("a>", IdError::BadCharacter),
            ("UPPER", IdError::BadCharacter),
            ("lobbY", IdError::BadCharacter),
            ("with space", IdError::BadCharacter),
            (" lead", IdError::BadCharacter),
            ("-dash", IdError::BadCharacter),
            ("_under", IdError::BadCharacter),
            ("tab\t", IdError::BadCharacter),
            ("new\nline", IdError::BadCharacter),
            ("é", IdError::BadCharacter),
            ("a\u{0}", IdError::BadCharacter),
        ];
        for (bad, why) in cases {
            assert_eq!(RoomId::parse(bad), Err(why.clone()), "{bad:?}");
            assert_eq!(UserId::parse(bad), Err(why), "{bad:?}");
        }
        assert_eq!(RoomId::parse("x".repeat(33)), Err(IdError::TooLong));
    }

    #[test]
    fn it_validates_ids_when_deserializing() {
        assert!(serde_json::from_str::<RoomId>("\"lobby\"").is_ok());
        assert!(serde_json::from_str::<RoomId>("\"a.b\"").is_err());
        assert!(serde_json::from_str::<UserId>("\">\"").is_err());
        assert!(serde_json::from_str::<EventId>("\"not-a-uuid\"").is_err());
    }

    #[test]
    fn it_round_trips_event_ids() {
        let id = EventId::new();
        let s = id.to_string();
        assert_eq!(EventId::parse(&s), Ok(id));
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{s}\""));
    }

    #[test]
    fn derived_ids_are_deterministic() {
        let base = EventId::parse("0190f7a2-0000-7000-8000-000000000001").unwrap();
        assert_eq!(
            EventId::derived(&base, "bob"),
            EventId::derived(&base, "bob")
        );
        assert_ne!(
            EventId::derived(&base, "bob"),
            EventId::derived(&base, "eve")
        );
    }
}
