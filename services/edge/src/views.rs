//! Asking the views: NATS request/reply to the handlers' micro services (`views.<view>.<query>`),
//! with a deadline. No responder or no answer in time is `unavailable`, never a hang; the edge
//! never links a projection.

use std::time::Duration;

use async_nats::{Client, RequestErrorKind};
use chatlog_events::queries;
use serde::{Serialize, de::DeserializeOwned};

use crate::error::{ApiError, Code};

#[derive(Clone)]
pub struct Views {
    client: Client,
    deadline: Duration,
}

impl Views {
    pub fn new(client: Client, deadline: Duration) -> Self {
        Self { client, deadline }
    }

    /// Asks `view` the `query` with `request` and reads the JSON answer.
    pub async fn ask<Req: Serialize, Ans: DeserializeOwned>(
        &self,
        view: &str,
        query: &str,
        request: &Req,
    ) -> Result<Ans, ApiError> {
        self.ask_at(view, query, request, None).await
    }

    /// Like [`Views::ask`], answered once the view has applied stream sequence `min_seq` (or
    /// after a short wait): read-your-writes for what was just appended.
    pub async fn ask_at<Req: Serialize, Ans: DeserializeOwned>(
        &self,
        view: &str,
        query: &str,
        request: &Req,
        min_seq: Option<u64>,
    ) -> Result<Ans, ApiError> {
        let header = min_seq.map(|seq| (queries::MIN_SEQ_HEADER, seq));
        let body: bytes::Bytes = serde_json::to_vec(request)
            .map_err(ApiError::internal)?
            .into();
        let mut lost = false;
        loop {
            match self.request(view, query, body.clone(), header).await {
                Err(Failure::Lost(_)) if !lost => lost = true,
                answer => return answer.map_err(Failure::into_error),
            }
        }
    }

    /// Answered only by a view that has applied stream sequence `seq`: for decisions (membership)
    /// where an older answer is a wrong one. A replica still behind after a short wait refuses;
    /// the question then goes to the queue group again (another replica may be ahead), and
    /// `unavailable` is the answer when none is.
    pub async fn ask_strict<Req: Serialize, Ans: DeserializeOwned>(
        &self,
        view: &str,
        query: &str,
        request: &Req,
        seq: u64,
    ) -> Result<Ans, ApiError> {
        let header = Some((queries::REQUIRE_SEQ_HEADER, seq));
        let body: bytes::Bytes = serde_json::to_vec(request)
            .map_err(ApiError::internal)?
            .into();
        let (mut tries, mut lost) = (0, false);
        loop {
            match self.request(view, query, body.clone(), header).await {
                Err(Failure::Behind(_)) if tries < 2 => tries += 1,
                Err(Failure::Lost(_)) if !lost => lost = true,
                answer => return answer.map_err(Failure::into_error),
            }
        }
    }

    async fn request<Ans: DeserializeOwned>(
        &self,
        view: &str,
        query: &str,
        body: bytes::Bytes,
        header: Option<(&'static str, u64)>,
    ) -> Result<Ans, Failure> {
        let subject = queries::subject(view, query);
        let mut headers = async_nats::HeaderMap::new();
        if let Some((name, seq)) = header {
            headers.insert(name, seq.to_string().as_str());
        }
        let request = self.client.request_with_headers(subject, headers, body);
        let asked = tokio::time::timeout(self.deadline + MIN_SEQ_PATIENCE, request)
            .await
            .map_err(|_| Failure::Lost(unavailable(view)))?;
        let message = match asked {
            Ok(m) => m,
            Err(e) => {
                return Err(match e.kind() {
                    RequestErrorKind::TimedOut => Failure::Lost(unavailable(view)),
                    RequestErrorKind::NoResponders => Failure::Other(unavailable(view)),
                    _ if !crate::log::is_connected(&self.client) => {
                        Failure::Other(unavailable(view))
                    }
                    _ => Failure::Other(ApiError::internal(e)),
                });
            }
        };
        if let Some(headers) = &message.headers
            && let Some(code) = headers.get(async_nats::service::NATS_SERVICE_ERROR_CODE)
        {
            let text = headers
                .get(async_nats::service::NATS_SERVICE_ERROR)
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            return Err(match code.as_str().parse::<u16>() {
                Ok(400) => Failure::Other(ApiError::bad_request(text)),
                Ok(404) => Failure::Other(ApiError::new(Code::NotFound, text)),
                Ok(queries::NOT_CAUGHT_UP) => Failure::Behind(ApiError::new(
                    Code::Unavailable,
                    format!("{view} view: {text}"),
                )),
                _ => Failure::Other(ApiError::internal(format!("{view} view: {text}"))),
            });
        }
        serde_json::from_slice(&message.payload).map_err(|e| Failure::Other(ApiError::internal(e)))
    }
}

/// Why a question to a view got no answer.
enum Failure {
    /// The replica asked has not applied the seq required: another may have.
    Behind(ApiError),
    /// No answer in time: the replica that had the question may have died with it. Asked once
    /// more, the queue group gives it to a live one.
    Lost(ApiError),
    Other(ApiError),
}

impl Failure {
    fn into_error(self) -> ApiError {
        match self {
            Failure::Behind(e) | Failure::Lost(e) | Failure::Other(e) => e,
        }
    }
}

/// How long a view may wait for a seq before answering.
const MIN_SEQ_PATIENCE: Duration = Duration::from_secs(2);

fn unavailable(view: &str) -> ApiError {
    ApiError::new(
        Code::Unavailable,
        format!("the {view} view is unavailable, retry later"),
    )
}
