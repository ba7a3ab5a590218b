//! `Chatlog-Signature: sha256=<hex of HMAC-SHA256(secret, body)>`: a function checks that a
//! delivery comes from the runtime (which alone, with the operator, knows the secret).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header's value for `body`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// Whether `header` is the signature of `body` (in constant time, as a function should check).
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Some(expected) = decode_hex(hex) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_is_rfc_4231_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn it_verifies_only_the_right_signature() {
        let header = sign(b"a secret of sixteen", b"{}");
        assert!(verify(b"a secret of sixteen", b"{}", &header));
        assert!(!verify(b"another secret....", b"{}", &header));
        assert!(!verify(b"a secret of sixteen", b"{ }", &header));
        assert!(!verify(b"a secret of sixteen", b"{}", &header[7..]));
        assert!(!verify(b"a secret of sixteen", b"{}", "sha256=zz"));
        assert!(!verify(b"a secret of sixteen", b"{}", "sha256=abc"));
    }
}
