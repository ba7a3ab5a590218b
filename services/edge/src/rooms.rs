//! The room directory, read from the log: a room exists when the first event on its subject is
//! `chat.room.created`. Rooms are never deleted, so what was read once is cached for good.
//! The edge decides existence and visibility here, from the log itself, so that sending needs no
//! view; listing the rooms is the history view's job.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use chatlog_events::{ChatEvent, Payload, RoomId, Stream, UserId, event::RoomCreated, subjects};

use chatlog_events::queries::{RoomRequest, RoomView, history};

use crate::{
    error::{ApiError, Code},
    log::{Log, LogError},
    views::Views,
};

/// What a room is, from its `chat.room.created` event.
#[derive(Debug, Clone)]
pub struct Room {
    pub id: RoomId,
    pub name: String,
    pub topic: String,
    pub private: bool,
    pub members: Vec<UserId>,
    pub creator: UserId,
}

impl Room {
    /// A private room is invisible to anyone but its members.
    pub fn visible_to(&self, user: &UserId) -> bool {
        !self.private || &self.creator == user || self.members.contains(user)
    }
}

/// What `POST /api/rooms` asks for, validated.
#[derive(Debug, Clone)]
pub struct NewRoom {
    pub id: RoomId,
    pub name: String,
    pub topic: String,
    pub private: bool,
    pub members: Vec<UserId>,
}

pub struct Directory {
    log: Log,
    known: RwLock<HashMap<RoomId, Arc<Room>>>,
}

impl Directory {
    pub fn new(log: Log) -> Self {
        Self {
            log,
            known: RwLock::new(HashMap::new()),
        }
    }

    /// The room, if it exists.
    pub async fn get(&self, id: &RoomId) -> Result<Option<Arc<Room>>, LogError> {
        if let Some(room) = self.cached(id) {
            return Ok(Some(room));
        }
        let Some(first) = self
            .log
            .first_message(Stream::Rooms, &subjects::room(id))
            .await?
        else {
            return Ok(None);
        };
        Ok(self.remember(id, &first.body))
    }

    /// The room if `user` may see it; `not_found` otherwise, whether it exists or not. A public
    /// room is decided from the log alone; a private one by its current members, which the
    /// history view folds from the membership events (its creation's list until the view has
    /// the room).
    pub async fn visible(
        &self,
        id: &RoomId,
        user: &UserId,
        views: &Views,
    ) -> Result<Arc<Room>, ApiError> {
        let not_found = || ApiError::not_found(&format!("room {id}"));
        let Some(room) = self.get(id).await? else {
            return Err(not_found());
        };
        if !room.private {
            return Ok(room);
        }
        let current: Option<RoomView> = views
            .ask(
                history::VIEW,
                history::ROOM,
                &RoomRequest { room: id.clone() },
            )
            .await?;
        let member = match current {
            Some(view) => view.visible_to(user),
            None => room.visible_to(user),
        };
        if member { Ok(room) } else { Err(not_found()) }
    }

    /// Appends `chat.room.created`, only if the room's subject is empty: `conflict` otherwise.
    /// Returns the room and the seq of its creation.
    pub async fn create(
        &self,
        creator: &UserId,
        new: NewRoom,
    ) -> Result<(Arc<Room>, u64), ApiError> {
        let mut members = new.members;
        if new.private && !members.contains(creator) {
            members.insert(0, creator.clone());
        }
        members.dedup();
        let created = RoomCreated {
            name: new.name,
            topic: new.topic,
            private: new.private,
            members: if new.private { members } else { Vec::new() },
        };
        let event = ChatEvent::in_room(
            &new.id,
            creator.clone(),
            "edge",
            Payload::RoomCreated(created.clone()),
        );
        let seq = match self.log.append_if_last(&event, 0).await {
            Ok(appended) => appended.seq,
            Err(LogError::Conflict) => {
                return Err(ApiError::new(Code::Conflict, "room already exists"));
            }
            Err(e) => return Err(e.into()),
        };
        let room = Arc::new(room_from(new.id.clone(), creator.clone(), created));
        self.write().insert(new.id, room.clone());
        Ok((room, seq))
    }

    fn cached(&self, id: &RoomId) -> Option<Arc<Room>> {
        self.known
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<RoomId, Arc<Room>>> {
        self.known.write().unwrap_or_else(|e| e.into_inner())
    }

    fn remember(&self, id: &RoomId, first_body: &[u8]) -> Option<Arc<Room>> {
        let event = ChatEvent::decode(first_body).ok()?;
        let Payload::RoomCreated(created) = event.payload else {
            return None;
        };
        let room = Arc::new(room_from(id.clone(), event.user, created));
        self.write().insert(id.clone(), room.clone());
        Some(room)
    }
}

fn room_from(id: RoomId, creator: UserId, created: RoomCreated) -> Room {
    Room {
        id,
        name: created.name,
        topic: created.topic,
        private: created.private,
        members: created.members,
        creator,
    }
}
