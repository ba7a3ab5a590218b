//! The shared fixtures of the history fold (`events/fixtures/fold/`, see the README there), each
//! through the real projection as the host applies it (a sled view, in batches), read back
//! through the `messages` query. The web client's fold runs the same files
//! (`tests/web/fold.test.mjs`). An event's `served` form must be what the edge serves of it once
//! every event is applied: `redaction::as_now` with the view's `current` answer, as `served.rs`
//! does.

use std::path::{Path, PathBuf};

use chatlog_events::{
    ChatEvent, RoomId,
    queries::{
        CurrentAnswer, CurrentRequest, MessageView, MessagesAnswer, MessagesRequest, history,
    },
    redaction,
};
use chatlog_history::{History, MAX_PAGE};
use chatlog_runtime::{Projection, View, testing::replay};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Fixture {
    name: String,
    room: RoomId,
    events: Vec<Entry>,
    messages: Vec<Value>,
}

#[derive(Deserialize)]
struct Entry {
    room: RoomId,
    seq: u64,
    event: Value,
    #[serde(default)]
    served: Option<Value>,
}

/// (file name, fixture) of every fixture.
fn fixtures() -> Vec<(String, Fixture)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events/fixtures/fold");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let fixture =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, fixture)
        })
        .collect()
}

fn ask<T: DeserializeOwned>(view: &View, query: &str, request: &impl Serialize) -> T {
    let request = serde_json::to_vec(request).unwrap();
    let answer = History
        .query(view, query, &request)
        .unwrap_or_else(|e| panic!("{query}: {e:?}"));
    serde_json::from_slice(&answer).unwrap()
}

/// A message in the shape the fixtures give (the web client's test makes the same of its own).
fn common(m: &MessageView) -> Value {
    assert!(
        m.reaction_counts.is_empty(),
        "a fixture's reactions are under the answer's caps"
    );
    let mut common = json!({
        "seq": m.seq,
        "id": m.id,
        "author": m.user,
        "text": m.text,
        "edited": m.edited,
        "deleted": m.deleted,
        "reply_to": m.reply_to,
        "reactions": m.reactions,
    });
    if m.moderated {
        common["moderated"] = json!(true);
    }
    if !m.attachments.is_empty() {
        common["attachments"] = json!(m.attachments);
    }
    common
}

/// The fixture's events applied to a fresh view, `batch` at a time.
fn folded(fixture: &Fixture, dir: &Path, batch: usize) -> View {
    let view = View::open(dir, History.name(), History.version()).unwrap();
    let events: Vec<(u64, ChatEvent)> = fixture
        .events
        .iter()
        .map(|entry| {
            let body = serde_json::to_vec(&entry.event).unwrap();
            let event = ChatEvent::decode(&body)
                .unwrap_or_else(|e| panic!("{}: seq {}: {e}", fixture.name, entry.seq));
            assert_eq!(
                event.room().as_ref(),
                Some(&entry.room),
                "seq {}",
                entry.seq
            );
            (entry.seq, event)
        })
        .collect();
    replay(&History, &view, &events, batch);
    view
}

#[test]
fn every_fixture_folds_into_its_messages() {
    let all = fixtures();
    assert!(all.len() >= 10, "{} fixtures", all.len());
    for (file, fixture) in &all {
        for batch in [1, 64] {
            let dir = tempfile::tempdir().unwrap();
            let view = folded(fixture, dir.path(), batch);
            let answer: MessagesAnswer = ask(
                &view,
                history::MESSAGES,
                &MessagesRequest {
                    room: fixture.room.clone(),
                    before: None,
                    limit: MAX_PAGE,
                },
            );
            assert!(!answer.has_more, "{file}");
            let got: Vec<Value> = answer.messages.iter().map(common).collect();
            assert!(
                got == fixture.messages,
                "{file} ({}), batches of {batch}:\n got  {}\n want {}",
                fixture.name,
                serde_json::to_string_pretty(&got).unwrap(),
                serde_json::to_string_pretty(&fixture.messages).unwrap(),
            );
        }
    }
}

#[test]
fn every_served_form_is_what_the_edge_serves() {
    for (file, fixture) in &fixtures() {
        let dir = tempfile::tempdir().unwrap();
        let view = folded(fixture, dir.path(), 64);
        for entry in &fixture.events {
            let body = serde_json::to_vec(&entry.event).unwrap();
            let served = redaction::text_of(&body).and_then(|id| {
                let now: CurrentAnswer = ask(
                    &view,
                    history::CURRENT,
                    &CurrentRequest {
                        room: entry.room.clone(),
                        ids: vec![id],
                        partial: false,
                    },
                );
                let current = now.messages.get(&id)?;
                let body = redaction::as_now(&body, current)?;
                Some(serde_json::from_slice::<Value>(&body).unwrap())
            });
            assert_eq!(
                served, entry.served,
                "{file} ({}): seq {}: `served` (None: served as stored)",
                fixture.name, entry.seq
            );
        }
    }
}
