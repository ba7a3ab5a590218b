//! The line protocol's client side (docs/protocol.md §7), as much of it as the bench needs: log
//! in as a guest, join a room, send `MSG` lines, and read the server's lines as the [`Frame`]s the
//! bench reads out of WebSocket frames, so that a workload handles both alike.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, anyhow, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

use crate::client::{Frame, leading_number};

/// How long the edge may take to greet, log in or answer a join.
const PATIENCE: Duration = Duration::from_secs(15);

/// The read buffer of a connection: a few event lines (a `MSG` line is its text and ~40 bytes).
const READ_BUFFER: usize = 4096;

/// A logged-in line connection, with `TCP_NODELAY`.
pub struct LineConn {
    lines: tokio::io::Lines<BufReader<TcpStream>>,
}

impl LineConn {
    /// Connects to the edge's line address, reads its greeting and logs in as guest `user` with
    /// `secret` (a free name is claimed with it).
    pub async fn connect(addr: SocketAddr, user: &str, secret: &str) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to the line protocol at {addr}"))?;
        tcp.set_nodelay(true)?;
        let mut conn = Self {
            lines: BufReader::with_capacity(READ_BUFFER, tcp).lines(),
        };
        let greeting = conn.answer("the greeting").await?;
        if !greeting.starts_with("OK ") {
            bail!("{addr} greeted with {greeting:?}: is it the edge's line address?");
        }
        conn.send(&format!("LOGIN {user} {secret}\n")).await?;
        let answer = conn.answer("LOGIN").await?;
        if !answer.starts_with(&format!("OK login {user}")) {
            bail!("line login of {user:?}: {answer}");
        }
        Ok(conn)
    }

    /// `JOIN <room>` (no `since`: the room's last messages, then live); answers the room's head.
    /// The messages of the backlog that follow have seqs up to the head.
    pub async fn join(&mut self, room: &str) -> anyhow::Result<u64> {
        self.send(&format!("JOIN {room}\n")).await?;
        let wait = async {
            loop {
                let line = self.answer("JOIN").await?;
                match scan(&line) {
                    Some(Frame::Joined { head }) => return Ok(head),
                    Some(Frame::Error { code, message, .. }) => {
                        bail!("joining {room}: {code}: {message}")
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .map_err(|_| anyhow!("joining {room}: no answer in {PATIENCE:?}"))?
    }

    /// Writes `lines` (each ending in `\n`) as they are.
    pub async fn send(&mut self, lines: &str) -> std::io::Result<()> {
        self.lines
            .get_mut()
            .get_mut()
            .write_all(lines.as_bytes())
            .await
    }

    /// The next line the edge sent, without its `\n`; `None` at the end. Cancel-safe: a line
    /// partly read stays buffered for the next call.
    pub async fn next_line(&mut self) -> std::io::Result<Option<String>> {
        self.lines.next_line().await
    }

    /// Says `QUIT` and closes the writing half.
    pub async fn close(&mut self) {
        let tcp = self.lines.get_mut().get_mut();
        let _ = tcp.write_all(b"QUIT\n").await;
        let _ = tcp.shutdown().await;
    }

    /// The next line, within [`PATIENCE`], the end of the connection being an error.
    async fn answer(&mut self, to: &str) -> anyhow::Result<String> {
        match tokio::time::timeout(PATIENCE, self.next_line()).await {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Ok(None)) => bail!("waiting for the answer to {to}: the connection closed"),
            Ok(Err(e)) => Err(e).with_context(|| format!("waiting for the answer to {to}")),
            Err(_) => bail!("no answer to {to} in {PATIENCE:?}"),
        }
    }
}

/// Reads a server line as the frame it renders: `MSG <room> <seq> <user> <text>` is an event
/// (with the `t=<nanos>` the bench wrote at the start of the text, if any), `OK sent <seq>` an
/// ack (the line protocol's carry no id), `JOINED <room> <head>` and `ERR <code> <message>` what
/// they say; any other line is [`Frame::Other`] with its first word.
pub fn scan(line: &str) -> Option<Frame<'_>> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    Some(match word {
        "MSG" => {
            // room, seq, user, text: the text is everything after the user and one space.
            let mut fields = rest.splitn(4, ' ');
            let (_room, seq) = (fields.next()?, fields.next()?);
            let (_user, text) = (fields.next()?, fields.next().unwrap_or_default());
            Frame::Event {
                seq: seq.parse().ok()?,
                t: text.strip_prefix("t=").and_then(leading_number),
            }
        }
        "OK" => match rest.split_once(' ') {
            Some(("sent", seq)) => Frame::Ack {
                id: "",
                seq: seq.parse().ok()?,
            },
            _ => Frame::Other(word),
        },
        "JOINED" => Frame::Joined {
            head: rest.split_once(' ')?.1.parse().ok()?,
        },
        "ERR" => {
            let (code, message) = rest.split_once(' ').unwrap_or((rest, ""));
            Frame::Error {
                id: None,
                code,
                message,
            }
        }
        "" => return None,
        other => Frame::Other(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_scans_the_lines_the_edge_writes() {
        assert_eq!(
            scan("MSG bench-1 42 bench-1-3 t=0000123456789 xxxx  x"),
            Some(Frame::Event {
                seq: 42,
                t: Some(123_456_789)
            })
        );
        // A text that is not the bench's, or none at all.
        assert_eq!(
            scan("MSG lobby 7 ada hello t=5"),
            Some(Frame::Event { seq: 7, t: None })
        );
        assert_eq!(
            scan("MSG lobby 8 ada "),
            Some(Frame::Event { seq: 8, t: None })
        );
        assert_eq!(scan("MSG lobby eight ada hi"), None);
        assert_eq!(scan("MSG lobby 8"), None);
        assert_eq!(scan("OK sent 43\r"), Some(Frame::Ack { id: "", seq: 43 }));
        assert_eq!(scan("OK login ada"), Some(Frame::Other("OK")));
        assert_eq!(scan("JOINED bench-1 41"), Some(Frame::Joined { head: 41 }));
        assert_eq!(
            scan("ERR rate_limited too many sends, slow down"),
            Some(Frame::Error {
                id: None,
                code: "rate_limited",
                message: "too many sends, slow down"
            })
        );
        assert_eq!(
            scan("ERR unavailable"),
            Some(Frame::Error {
                id: None,
                code: "unavailable",
                message: ""
            })
        );
        assert_eq!(
            scan("PRESENCE bench-1 ada online"),
            Some(Frame::Other("PRESENCE"))
        );
        assert_eq!(scan("EDIT lobby 7 ada hi"), Some(Frame::Other("EDIT")));
        assert_eq!(scan(""), None);
    }
}
