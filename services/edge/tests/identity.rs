//! Identity: a guest name is held by the secret its first login got; reserved, taken and
//! malformed ids are refused with a clear error and change nothing on the log.

mod common;

use chatlog_events::Stream;
use chatlog_test_support::client::Answer;
use common::{TestApp, spawn_app};
use serde_json::{Value, json};

/// The events stored on `chat.account.<user>`.
async fn account_events(app: &TestApp, user: &str) -> Vec<Value> {
    app.stored(Stream::Accounts, &format!("chat.account.{user}"))
        .await
}

async fn guest(app: &TestApp, body: Value) -> Answer {
    app.request("POST", "/api/auth/guest", None, Some(body))
        .await
}

#[tokio::test]
async fn a_guest_name_is_held_by_the_secret_its_first_login_got() {
    let app = spawn_app().await;
    let first = guest(&app, json!({"user": "alice"})).await;
    assert_eq!(first.status, 200, "{first:?}");
    let secret = first.body["secret"].as_str().unwrap().to_string();
    assert!(secret.len() >= 32, "{secret}");
    let token = first.body["token"].as_str().unwrap().to_string();
    assert_eq!(app.get("/api/rooms", &token).await.status, 200);

    // Anyone else asking for alice: 409 without the secret, 401 with a wrong one.
    let other = guest(&app, json!({"user": "alice"})).await;
    assert_eq!(other.status, 409, "{other:?}");
    assert_eq!(other.body["code"], "conflict");
    assert!(other.body.get("token").is_none());
    let wrong = guest(&app, json!({"user": "alice", "secret": "x".repeat(64)})).await;
    assert_eq!(wrong.status, 401, "{wrong:?}");

    // alice again, with her secret (a reload, a new token): the same identity.
    let again = guest(&app, json!({"user": "alice", "secret": secret})).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body["secret"], secret.as_str());
    let token2 = again.body["token"].as_str().unwrap();
    assert_eq!(app.get("/api/rooms", token2).await.status, 200);

    // One claim on the log, holding a hash of the secret and never the secret itself.
    let stored = account_events(&app, "alice").await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["type"], "chat.guest.claimed");
    assert!(!stored[0].to_string().contains(&secret));

    // The name is held: it cannot be registered as an account either.
    let register = app
        .request(
            "POST",
            "/api/auth/register",
            None,
            Some(json!({"user": "alice", "password": "long enough"})),
        )
        .await;
    assert_eq!(register.status, 409, "{register:?}");
    assert_eq!(account_events(&app, "alice").await.len(), 1);
}

#[tokio::test]
async fn reserved_and_malformed_ids_are_refused_and_nothing_is_stored() {
    let app = common::spawn_app_with(|c| c.reserved_ids = vec!["moderator".into()]).await;
    for user in [
        "chatlog",
        "admin",
        "system",
        "root",
        "edge",
        "handlers",
        "moderator",
    ] {
        let a = guest(&app, json!({"user": user})).await;
        assert_eq!(a.status, 400, "guest {user}: {a:?}");
        assert!(
            a.body["message"].as_str().unwrap().contains("reserved"),
            "{a:?}"
        );
        let a = app
            .request(
                "POST",
                "/api/auth/register",
                None,
                Some(json!({"user": user, "password": "long enough"})),
            )
            .await;
        assert_eq!(a.status, 400, "register {user}: {a:?}");
        assert!(account_events(&app, user).await.is_empty(), "{user}");
    }
    for body in [
        json!({"user": "Alice"}),
        json!({"user": "a.b"}),
        json!({"user": "bob", "secret": "short"}),
        json!({"user": "bob", "secret": "has spaces in it, sixteen+"}),
        json!({"user": "bob", "secret": 5}),
    ] {
        let a = guest(&app, body.clone()).await;
        assert_eq!(a.status, 400, "{body}: {a:?}");
    }
    assert!(account_events(&app, "bob").await.is_empty());
    // A registered account is no guest's.
    let a = app
        .request(
            "POST",
            "/api/auth/register",
            None,
            Some(json!({"user": "carol", "password": "long enough"})),
        )
        .await;
    assert_eq!(a.status, 201);
    let a = guest(&app, json!({"user": "carol"})).await;
    assert_eq!(a.status, 409, "{a:?}");
    assert_eq!(account_events(&app, "carol").await.len(), 1);
}

#[tokio::test]
async fn twenty_guests_racing_for_one_name_leave_one_claim_and_one_winner() {
    let app = spawn_app().await;
    let tries = (0..20).map(|_| guest(&app, json!({"user": "dana"})));
    let answers = futures::future::join_all(tries).await;
    let won: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
    assert_eq!(won.len(), 1, "{answers:?}");
    assert!(
        answers.iter().all(|a| a.status == 200 || a.status == 409),
        "{answers:?}"
    );
    let stored = account_events(&app, "dana").await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    // The winner's secret is the one that works.
    let secret = won[0].body["secret"].as_str().unwrap();
    assert_eq!(
        guest(&app, json!({"user": "dana", "secret": secret}))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_guest_token_of_a_name_nobody_holds_is_refused() {
    let app = spawn_app().await;
    // A token signed with the edge's secret but for a name no guest claimed (as tokens issued
    // before names were claimed are): refused, the name is free for whoever claims it.
    let token = app
        .state
        .auth
        .issue(
            &chatlog_events::UserId::parse("erin").unwrap(),
            chatlog_edge::auth::Kind::Guest,
        )
        .unwrap();
    let a = app.get("/api/rooms", &token).await;
    assert_eq!(a.status, 401, "{a:?}");
}
