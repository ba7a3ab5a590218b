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
    known: RwLock<HashMap<RoomId, Arc<RoomView>>>,
}

impl Directory {
    pub fn new(log: Log) -> Self {
        Self {
            log,
            known: RwLock::new(HashMap::new()),
        }
    }

    /// The room, if it exists.
    pub async fn get(&self, id: &RoomId) -> Result<Option<Arc<RoomView>>, LogError> {
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

    /// The room as of its head, for [`crate::decide`]: when `needs_members(private)`, which of
    /// the `asked` users are members, read from the history view once that view holds the room's
    /// last seq (never from a view or a replica that lags); else as its `chat.room.created` made
    /// it (enough for a public room's posts). `not_found` when it does not exist. Returns the room and the head read (0 when
    /// none was).
    pub async fn at_head(
        &self,
        id: &RoomId,
        views: &Views,
        asked: &[UserId],
        needs_members: impl FnOnce(bool) -> bool,
    ) -> Result<(Arc<RoomView>, u64), ApiError> {
        let Some(room) = self.get(id).await? else {
            return Err(ApiError::not_found(&format!("room {id}")));
        };
        if !needs_members(room.private) {
            return Ok((room, 0));
        }
        let head = self.log.room_head(id).await?;
        let current: Option<RoomView> = views
            .ask_strict(
                history::VIEW,
                history::ROOM,
                &RoomRequest {
                    room: id.clone(),
                    members: Some(asked.to_vec()),
                },
                head,
            )
            .await?;
        // The view holds the head, so it knows the room; a view that does not is broken.
        let current = current.ok_or_else(|| {
            ApiError::new(
                Code::Unavailable,
                "the history view does not hold the room yet",
            )
        })?;
        Ok((Arc::new(current), head))
    }

    /// The room if `user` may see it (a private room: is a member as of its head); `not_found`
    /// otherwise, whether it exists or not.
    pub async fn visible(
        &self,
        id: &RoomId,
        user: &UserId,
        views: &Views,
    ) -> Result<Arc<RoomView>, ApiError> {
        let (room, _) = self
            .at_head(id, views, std::slice::from_ref(user), |private| private)
            .await?;
        crate::decide::decide(
            user,
            &crate::decide::Given {
                room: &room,
                message: None,
            },
            crate::decide::Command::Look,
        )?;
        Ok(room)
    }

    /// Appends `chat.room.created`, only if the room's subject is empty: `conflict` otherwise.
    /// Returns the room and the seq of its creation.
    pub async fn create(
        &self,
        creator: &UserId,
        new: NewRoom,
    ) -> Result<(Arc<RoomView>, u64), ApiError> {
        let created = RoomCreated {
            members: if new.private {
                first_members(creator, new.members)
            } else {
                Vec::new()
            },
            name: new.name,
            topic: new.topic,
            private: new.private,
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
        let room = Arc::new(created_view(new.id.clone(), creator.clone(), created));
        self.write().insert(new.id, room.clone());
        Ok((room, seq))
    }

    fn cached(&self, id: &RoomId) -> Option<Arc<RoomView>> {
        self.known
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<RoomId, Arc<RoomView>>> {
        self.known.write().unwrap_or_else(|e| e.into_inner())
    }

    fn remember(&self, id: &RoomId, first_body: &[u8]) -> Option<Arc<RoomView>> {
        let event = ChatEvent::decode(first_body).ok()?;
        let Payload::RoomCreated(created) = event.payload else {
            return None;
        };
        let room = Arc::new(created_view(id.clone(), event.user, created));
        self.write().insert(id.clone(), room.clone());
        Some(room)
    }
}

/// A private room's first members: its creator first unless listed, then each listed user once,
/// in the order given.
fn first_members(creator: &UserId, listed: Vec<UserId>) -> Vec<UserId> {
    let mut members = Vec::with_capacity(listed.len() + 1);
    if !listed.contains(creator) {
        members.push(creator.clone());
    }
    for member in listed {
        if !members.contains(&member) {
            members.push(member);
        }
    }
    members
}

/// The room as its creation made it (a private room's members as listed then).
fn created_view(id: RoomId, creator: UserId, created: RoomCreated) -> RoomView {
    RoomView {
        id,
        name: created.name,
        topic: created.topic,
        private: created.private,
        members: created.members,
        creator,
        last_seq: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_room_lists_each_first_member_once() {
        let ids = |l: &[&str]| {
            l.iter()
                .map(|u| UserId::parse(*u).unwrap())
                .collect::<Vec<_>>()
        };
        let ada = UserId::parse("ada").unwrap();
        // `Vec::dedup` dropped only neighbours: bob was listed twice.
        assert_eq!(
            first_members(&ada, ids(&["bob", "cy", "bob"])),
            ids(&["ada", "bob", "cy"])
        );
        assert_eq!(
            first_members(&ada, ids(&["bob", "ada", "ada"])),
            ids(&["bob", "ada"])
        );
        assert_eq!(first_members(&ada, Vec::new()), ids(&["ada"]));
    }
}
