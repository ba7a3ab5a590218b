//! What the generator needs to talk to an edge: the target, with an HTTP client for the few JSON
//! calls (guest tokens, room creation, metrics), WebSocket connections with `TCP_NODELAY`, and a
//! scanner that reads only what the bench needs out of a server frame (no `serde_json::Value`).

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, anyhow, bail};
use futures::{SinkExt, StreamExt, TryStreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, protocol::WebSocketConfig},
};

/// A WebSocket client connection.
pub type Ws = WebSocketStream<TcpStream>;

/// The edge under test: `http://host:port`, and an HTTP client for the few JSON calls the bench
/// makes, whose clones share one pool of kept-alive connections.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` as given (for `Host:` and the WebSocket URL).
    pub authority: String,
    /// Where to connect.
    pub addr: SocketAddr,
    http: reqwest::Client,
}

impl Target {
    /// Parses `http://host:port[/...]` (or `ws://`) and resolves it once.
    pub async fn resolve(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("ws://"))
            .ok_or_else(|| {
                anyhow!("--url must look like http://host:port (TLS is not supported)")
            })?;
        let authority = rest.split('/').next().unwrap_or_default();
        anyhow::ensure!(!authority.is_empty(), "--url {url:?} names no host");
        let (host, with_port) = match authority.rsplit_once(':') {
            Some((host, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                (host, authority.to_string())
            }
            _ => (authority, format!("{authority}:80")),
        };
        let addr = tokio::net::lookup_host(with_port.as_str())
            .await
            .with_context(|| format!("resolving {with_port}"))?
            .next()
            .ok_or_else(|| anyhow!("{with_port} resolves to nothing"))?;
        // HTTP goes to the address resolved here, as the WebSocket connections do.
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .resolve(host, addr)
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            authority: with_port,
            addr,
            http,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.authority)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.authority)
    }

    /// `POST path` with a JSON body; answers the status and the body.
    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> anyhow::Result<(u16, String)> {
        let request = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string());
        send(request, token).await
    }

    /// `GET path`; answers the status and the body.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        send(self.http.get(self.url(path)), None).await
    }

    /// `GET path` with a token.
    pub async fn get_as(&self, path: &str, token: &str) -> anyhow::Result<(u16, String)> {
        send(self.http.get(self.url(path)), Some(token)).await
    }
}

async fn send(
    mut request: reqwest::RequestBuilder,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

/// The secret the bench claims guest `user` with: derived from the name, so that a bench run
/// again on the same log logs the same guests in again (over HTTP or the line protocol) rather
/// than finding their names held.
pub fn guest_secret(user: &str) -> String {
    format!("bench-secret-for-{user}")
}

/// Guest tokens for `users`, in order, fetched `parallel` at a time (over as many kept-alive
/// connections).
pub async fn guest_tokens(
    target: &Target,
    users: &[String],
    parallel: usize,
) -> anyhow::Result<Vec<String>> {
    futures::stream::iter(users)
        .map(|user| async move {
            let secret = guest_secret(user);
            let body = serde_json::json!({ "user": user, "secret": secret }).to_string();
            let (status, answer) = target.post("/api/auth/guest", None, &body).await?;
            if status != 200 {
                bail!("guest login of {user:?}: HTTP {status} {answer}");
            }
            #[derive(serde::Deserialize)]
            struct Token {
                token: String,
            }
            let token: Token = serde_json::from_str(&answer)
                .with_context(|| format!("guest login answer {answer:?}"))?;
            Ok(token.token)
        })
        .buffered(parallel.max(1))
        .try_collect()
        .await
}

/// Creates the public rooms that do not exist yet (409: it exists, which is fine).
pub async fn create_rooms(target: &Target, token: &str, rooms: &[String]) -> anyhow::Result<()> {
    for room in rooms {
        let body = serde_json::json!({ "id": room, "name": room }).to_string();
        let (status, answer) = target.post("/api/rooms", Some(token), &body).await?;
        match status {
            201 | 409 => {}
            _ => bail!("creating room {room:?}: HTTP {status} {answer}"),
        }
    }
    Ok(())
}

/// How the bench's WebSocket clients are configured: small buffers (there are thousands of them),
/// frames written as soon as they are sent. Keep `read_buffer` small: tungstenite zero-fills the
/// whole read buffer on every read attempt (`BytesMut::resize`), i.e. on every poll.
pub fn ws_config(read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// Opens `GET /ws?token=` with `TCP_NODELAY`.
pub async fn connect_ws(
    target: &Target,
    token: &str,
    config: WebSocketConfig,
) -> anyhow::Result<Ws> {
    let tcp = TcpStream::connect(target.addr)
        .await
        .with_context(|| format!("connecting to {}", target.addr))?;
    tcp.set_nodelay(true)?;
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(target.ws_url(token), tcp, Some(config))
            .await
            .context("websocket handshake")?;
    Ok(ws)
}

/// Sends `join` and waits for `joined`; answers the room's head.
pub async fn join(ws: &mut Ws, room: &str) -> anyhow::Result<u64> {
    let frame = format!(r#"{{"type":"join","room":"{room}"}}"#);
    ws.send(Message::Text(frame.into())).await?;
    let wait = async {
        while let Some(msg) = ws.next().await {
            if let Message::Text(text) = msg? {
                match scan(&text) {
                    Some(Frame::Joined { head }) => return Ok(head),
                    Some(Frame::Error { code, message, .. }) => {
                        bail!("joining {room}: {code}: {message}")
                    }
                    _ => {}
                }
            }
        }
        bail!("joining {room}: the connection closed")
    };
    tokio::time::timeout(Duration::from_secs(15), wait)
        .await
        .map_err(|_| anyhow!("joining {room}: no answer in 15 s"))?
}

/// The parts of a server frame the bench reads.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// `event`: its seq and the `t=<nanos>` the bench wrote at the start of the text, if any.
    Event {
        seq: u64,
        t: Option<u64>,
    },
    Ack {
        id: &'a str,
        seq: u64,
    },
    Joined {
        head: u64,
    },
    Error {
        id: Option<&'a str>,
        code: &'a str,
        message: &'a str,
    },
    Other(&'a str),
}

/// Reads a server frame without building a JSON tree. The edge writes `type` first and, in an
/// `event`, the frame's `seq` before the embedded event, so the first `"seq":` is the frame's.
pub fn scan(text: &str) -> Option<Frame<'_>> {
    let ty = str_after(text, "\"type\":\"")?;
    Some(match ty {
        "event" => {
            let seq = num_after(text, "\"seq\":")?;
            let event_at = text.find("\"event\":").unwrap_or(0);
            let t = num_after(&text[event_at..], "\"text\":\"t=");
            Frame::Event { seq, t }
        }
        "ack" => Frame::Ack {
            id: str_after(text, "\"id\":\"")?,
            seq: num_after(text, "\"seq\":")?,
        },
        "joined" => Frame::Joined {
            head: num_after(text, "\"head\":")?,
        },
        "error" => Frame::Error {
            id: str_after(text, "\"id\":\""),
            code: str_after(text, "\"code\":\"")?,
            message: str_after(text, "\"message\":\"").unwrap_or_default(),
        },
        other => Frame::Other(other),
    })
}

/// The string value after `key` (which ends with the opening quote), up to the next quote.
fn str_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

/// The unsigned number right after `key`.
fn num_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    leading_number(&text[start..])
}

/// The unsigned number `text` starts with (`None` when it starts with no digit).
pub(crate) fn leading_number(text: &str) -> Option<u64> {
    text.bytes()
        .take_while(u8::is_ascii_digit)
        .fold(None, |acc: Option<u64>, d| {
            Some(acc.unwrap_or(0).wrapping_mul(10) + u64::from(d - b'0'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_scans_the_frames_the_edge_writes() {
        let event = r#"{"type":"event","room":"bench-1","seq":42,"event":{"specversion":"1.0","id":"0190f7a2-5b1c-7000-8000-000000000004","source":"/chatlog/edge","type":"chat.message.posted","subject":"bench-1","time":"2026-11-23T12:00:00.123456Z","datacontenttype":"application/json","data":{"user":"ada","text":"t=123456789 xxxx","mentions":[]}}}"#;
        assert_eq!(
            scan(event),
            Some(Frame::Event {
                seq: 42,
                t: Some(123_456_789)
            })
        );
        assert_eq!(
            scan(r#"{"type":"ack","id":"0190f7a2-5b1c-7000-8000-000000000004","seq":7}"#),
            Some(Frame::Ack {
                id: "0190f7a2-5b1c-7000-8000-000000000004",
                seq: 7
            })
        );
        assert_eq!(
            scan(r#"{"type":"joined","room":"a","head":0}"#),
            Some(Frame::Joined { head: 0 })
        );
        assert_eq!(
            scan(r#"{"type":"error","code":"rate_limited","message":"too many sends, slow down"}"#),
            Some(Frame::Error {
                id: None,
                code: "rate_limited",
                message: "too many sends, slow down"
            })
        );
        assert_eq!(scan(r#"{"type":"pong"}"#), Some(Frame::Other("pong")));
        assert_eq!(scan("nonsense"), None);
        let foreign = r#"{"type":"event","room":"a","seq":3,"event":{"data":{"text":"hello"}}}"#;
        assert_eq!(scan(foreign), Some(Frame::Event { seq: 3, t: None }));
    }
}
