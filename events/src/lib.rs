//! `chatlog-events`: the one place that knows the log's format.
//!
//! It holds the validated ids ([`RoomId`], [`UserId`], [`EventId`]), the subject builders that
//! only accept them ([`subjects`]), the JetStream stream configurations ([`streams`]), every event
//! type of the protocol as a typed enum ([`Payload`]) and its CloudEvents 1.0 structured-JSON
//! encoding ([`ChatEvent`]). It opens no sockets and keeps no state: everything else uses these
//! types, so a change here is a change of the wire format.

pub mod event;
pub mod functions;
pub mod ids;
pub mod membership;
pub mod nats;
pub mod queries;
pub mod redaction;
pub mod streams;
pub mod subjects;
pub mod text;

pub use event::{ChatEvent, DecodeError, Encoded, EventType, Payload};
pub use ids::{EventId, IdError, RoomId, UserId};
pub use streams::Stream;
