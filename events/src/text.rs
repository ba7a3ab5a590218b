//! A message's text: what it may hold, and the users it mentions. Shared by the edge (a
//! client's message) and the functions runtime (a function's answer), so both judge and read a
//! text alike.

use crate::UserId;

/// Most mentions one message makes: each is looked up (does someone hold the name?), and a text
/// of a thousand `@x` must not cost a thousand reads of the log.
pub const MAX_MENTIONS: usize = 50;

/// The valid user ids written as `@id` in `text`, each once, in order of appearance, at most
/// [`MAX_MENTIONS`]. An `@` counts only at the start or after a character that cannot be part of
/// an id (so `a@b.c` is no mention).
pub fn mentions(text: &str) -> Vec<UserId> {
    let is_id_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    let mut found: Vec<UserId> = Vec::new();
    let mut previous: Option<char> = None;
    for (at, c) in text.char_indices() {
        if c == '@' && !previous.is_some_and(|p| is_id_char(p) || p == '@') {
            let rest = &text[at + 1..];
            let end = rest.find(|c: char| !is_id_char(c)).unwrap_or(rest.len());
            if let Ok(user) = UserId::parse(&rest[..end])
                && !found.contains(&user)
            {
                found.push(user);
                if found.len() == MAX_MENTIONS {
                    break;
                }
            }
        }
        previous = Some(c);
    }
    found
}

/// Whether `c` may not appear in text, names or topics: C0 controls but newline and tab, DEL
/// and C1, and the bidirectional overrides and isolates that make text read otherwise than it is
/// stored.
pub fn is_refused_control(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Why a message's text is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextError {
    Blank,
    /// Holds this refused control character ([`is_refused_control`]).
    Control(char),
    /// Longer than the limit, in characters.
    TooLong,
}

/// A message's text must not be blank, must hold no refused control character and must have at
/// most `max_chars` characters.
pub fn check(text: &str, max_chars: usize) -> Result<(), TextError> {
    if text.trim().is_empty() {
        return Err(TextError::Blank);
    }
    if let Some(c) = text.chars().find(|&c| is_refused_control(c)) {
        return Err(TextError::Control(c));
    }
    if text.chars().count() > max_chars {
        return Err(TextError::TooLong);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(users: Vec<UserId>) -> Vec<String> {
        users.into_iter().map(|u| u.as_str().to_string()).collect()
    }

    #[test]
    fn it_finds_mentions() {
        assert_eq!(
            ids(mentions("hi @bob and @eve-2, @bob again")),
            ["bob", "eve-2"]
        );
        assert_eq!(ids(mentions("@ada: look")), ["ada"]);
        assert!(mentions("mail a@b.c or @ or @UPPER or @-x").is_empty());
        assert!(mentions(&format!("@{}", "x".repeat(33))).is_empty());
        let many: String = (0..200).map(|n| format!("@u{n} ")).collect();
        assert_eq!(mentions(&many).len(), MAX_MENTIONS);
    }
}
