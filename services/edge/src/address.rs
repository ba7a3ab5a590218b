//! Who is asking, by network address: the peer of the TCP connection, or, when that peer is a
//! trusted proxy, the nearest untrusted address its `X-Forwarded-For` names. The per-address
//! limits (unauthenticated routes, connections) key on it; a client cannot choose it unless the
//! operator trusts its proxy.

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderMap, request::Parts},
};

use crate::{AppState, error::ApiError, limits::Cidr};

/// The client's address (`None` when the server was not given connection info, as in tests that
/// drive the router directly).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Infallible> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        Ok(Self(peer.map(|peer| {
            client_of(peer, &parts.headers, &state.config.trusted_proxies)
        })))
    }
}

/// The address a request came from: `peer`, unless `peer` is a trusted proxy; then the rightmost
/// `X-Forwarded-For` entry that is not a trusted proxy (the entries left of it could be forged by
/// the client).
pub fn client_of(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .collect::<Vec<_>>();
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !is_trusted(*ip))
        .unwrap_or(peer)
}

impl ClientAddr {
    /// The address to count, unless it is exempt from the per-address limits (or unknown).
    pub fn limited(self, state: &AppState) -> Option<IpAddr> {
        self.0
            .filter(|ip| !state.config.limits_exempt.iter().any(|c| c.contains(*ip)))
    }

    /// Takes one of the address's unauthenticated requests (guest, register, login).
    pub fn take_auth(self, state: &AppState) -> Result<(), ApiError> {
        let Some(ip) = self.limited(state) else {
            return Ok(());
        };
        state
            .budgets
            .auth_by_address
            .take(&ip)
            .map_err(|wait| ApiError::rate_limited("too many logins from this address, wait", wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy_and_only_its_nearest_entry() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // A direct client cannot choose its address.
        assert_eq!(
            client_of(ip("203.0.113.9"), &headers(&["1.2.3.4"]), &trusted),
            ip("203.0.113.9")
        );
        // Through the proxy: the entry the proxy added, not what the client wrote before it.
        assert_eq!(
            client_of(
                ip("10.0.0.2"),
                &headers(&["6.6.6.6, 198.51.100.7"]),
                &trusted
            ),
            ip("198.51.100.7")
        );
        // Through two proxies of ours.
        assert_eq!(
            client_of(
                ip("10.0.0.2"),
                &headers(&["6.6.6.6", "198.51.100.7, 10.0.0.3"]),
                &trusted
            ),
            ip("198.51.100.7")
        );
        // A proxy that sent nothing usable: the proxy itself.
        assert_eq!(
            client_of(ip("10.0.0.2"), &headers(&["garbage"]), &trusted),
            ip("10.0.0.2")
        );
    }
}
