//! What a file's first bytes say it is, and whether that agrees with the `Content-Type` its
//! uploader declared (docs/protocol.md §10). Hand-written and small on purpose: the few formats
//! a browser would treat specially (images shown inline, markup it would render) are what
//! matters, and a mismatch there is refused (415) before anything is stored.

/// How many leading bytes [`sniff`] looks at (as the WHATWG sniffing algorithm does).
pub const SNIFF_LEN: usize = 512;

/// What the first bytes look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    Png,
    Jpeg,
    Gif,
    Webp,
    Pdf,
    Zip,
    Html,
    Svg,
    Xml,
    /// No NUL byte (nor other C0 controls than tab, newline, form feed, return, escape).
    Text,
    /// None of the above.
    Binary,
}

impl Sniffed {
    /// The content type to store when the upload declared none.
    pub fn content_type(self) -> &'static str {
        match self {
            Sniffed::Png => "image/png",
            Sniffed::Jpeg => "image/jpeg",
            Sniffed::Gif => "image/gif",
            Sniffed::Webp => "image/webp",
            Sniffed::Pdf => "application/pdf",
            Sniffed::Zip => "application/zip",
            Sniffed::Html => "text/html",
            Sniffed::Svg => "image/svg+xml",
            Sniffed::Xml => "application/xml",
            Sniffed::Text => "text/plain",
            Sniffed::Binary => "application/octet-stream",
        }
    }
}

/// Sniffs `head`, the first [`SNIFF_LEN`] bytes of a file (fewer when the file is shorter).
pub fn sniff(head: &[u8]) -> Sniffed {
    let starts = |magic: &[u8]| head.starts_with(magic);
    if starts(b"\x89PNG\r\n\x1a\n") {
        return Sniffed::Png;
    }
    if starts(b"\xff\xd8\xff") {
        return Sniffed::Jpeg;
    }
    if starts(b"GIF87a") || starts(b"GIF89a") {
        return Sniffed::Gif;
    }
    if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        return Sniffed::Webp;
    }
    if starts(b"%PDF-") {
        return Sniffed::Pdf;
    }
    if starts(b"PK\x03\x04") || starts(b"PK\x05\x06") || starts(b"PK\x07\x08") {
        return Sniffed::Zip;
    }
    if let Some(markup) = markup(head) {
        return markup;
    }
    if looks_like_text(head) {
        Sniffed::Text
    } else {
        Sniffed::Binary
    }
}

/// HTML, SVG or XML, by the first tag after a byte-order mark, whitespace, comments and an XML
/// declaration (anywhere in the head for `<svg`, which often follows a doctype or comment).
fn markup(head: &[u8]) -> Option<Sniffed> {
    let text = head.strip_prefix(b"\xef\xbb\xbf").unwrap_or(head);
    let start = text.iter().position(|b| !b.is_ascii_whitespace())?;
    let text = &text[start..];
    if text.first() != Some(&b'<') {
        return None;
    }
    let lower: Vec<u8> = text.iter().map(u8::to_ascii_lowercase).collect();
    let has = |needle: &[u8]| lower.windows(needle.len()).any(|w| w == needle);
    const HTML_TAGS: [&[u8]; 12] = [
        b"<!doctype html",
        b"<html",
        b"<head",
        b"<body",
        b"<script",
        b"<iframe",
        b"<title",
        b"<style",
        b"<div",
        b"<a ",
        b"<img",
        b"<meta",
    ];
    if HTML_TAGS.iter().any(|tag| lower.starts_with(tag)) {
        return Some(Sniffed::Html);
    }
    if has(b"<svg") {
        return Some(Sniffed::Svg);
    }
    if lower.starts_with(b"<?xml") {
        return Some(Sniffed::Xml);
    }
    // A comment, then HTML (say, a page saved by a browser).
    if lower.starts_with(b"<!--") && HTML_TAGS.iter().any(|tag| has(tag)) {
        return Some(Sniffed::Html);
    }
    None
}

/// No control byte a text would not hold (in any ASCII-compatible encoding: legacy ones too).
fn looks_like_text(head: &[u8]) -> bool {
    !head
        .iter()
        .any(|&b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\x0c' | b'\r' | b'\x1b'))
}

/// The media type's essence (`type/subtype`, lower case, parameters dropped), if `declared` is
/// one: a token, a slash, a token.
pub fn essence(declared: &str) -> Option<String> {
    let essence = declared.split(';').next()?.trim().to_ascii_lowercase();
    let (kind, sub) = essence.split_once('/')?;
    let token = |s: &str| {
        !s.is_empty()
            && s.len() <= 127
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    (token(kind) && token(sub)).then_some(essence)
}

/// Whether a file declared `declared` (an [`essence`]) may have bytes sniffed as `sniffed`.
/// `application/octet-stream` claims nothing and fits anything. A type whose format has a magic
/// number (the images, PDF, ZIP) needs its magic number; a text type needs text (markup counts);
/// and bytes with a magic number need their own type.
pub fn fits(declared: &str, sniffed: Sniffed) -> bool {
    if declared == "application/octet-stream" {
        return true;
    }
    let textual = declared.starts_with("text/")
        || declared.ends_with("+xml")
        || declared.ends_with("+json")
        || matches!(
            declared,
            "application/json" | "application/xml" | "application/javascript"
        );
    match sniffed {
        Sniffed::Png => declared == "image/png",
        Sniffed::Jpeg => declared == "image/jpeg" || declared == "image/jpg",
        Sniffed::Gif => declared == "image/gif",
        Sniffed::Webp => declared == "image/webp",
        Sniffed::Pdf => declared == "application/pdf",
        Sniffed::Zip => is_zip_type(declared),
        // Text may be declared as any text type, or as an application type without a magic
        // number (YAML, shell scripts, ...).
        Sniffed::Html | Sniffed::Svg | Sniffed::Xml | Sniffed::Text => {
            textual || (declared.starts_with("application/") && !has_magic(declared))
        }
        Sniffed::Binary => !textual && !has_magic(declared),
    }
}

/// Types whose files start with a magic number [`sniff`] knows: bytes without it are not one.
fn has_magic(declared: &str) -> bool {
    matches!(
        declared,
        "image/png" | "image/jpeg" | "image/jpg" | "image/gif" | "image/webp" | "application/pdf"
    ) || is_zip_type(declared)
}

/// ZIP and the formats that are ZIP archives (office documents, EPUB, JAR).
fn is_zip_type(declared: &str) -> bool {
    matches!(
        declared,
        "application/zip"
            | "application/x-zip-compressed"
            | "application/epub+zip"
            | "application/java-archive"
    ) || declared.starts_with("application/vnd.openxmlformats-officedocument.")
        || declared.starts_with("application/vnd.oasis.opendocument.")
}

/// Whether a file of type `content_type` (an [`essence`]) may be shown inline: raster images
/// only. Never SVG, which can hold scripts.
pub fn inline(content_type: &str) -> bool {
    matches!(
        content_type,
        "image/png" | "image/jpeg" | "image/gif" | "image/webp"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    #[test]
    fn magic_numbers_and_markup_are_recognised() {
        assert_eq!(sniff(PNG), Sniffed::Png);
        assert_eq!(sniff(b"\xff\xd8\xff\xe0\0\x10JFIF"), Sniffed::Jpeg);
        assert_eq!(sniff(b"GIF89a\x01\0"), Sniffed::Gif);
        assert_eq!(sniff(b"RIFF\x24\0\0\0WEBPVP8 "), Sniffed::Webp);
        assert_eq!(sniff(b"%PDF-1.7\n"), Sniffed::Pdf);
        assert_eq!(sniff(b"PK\x03\x04\x14\0"), Sniffed::Zip);
        assert_eq!(sniff(b"  <!DOCTYPE html><p>hi"), Sniffed::Html);
        assert_eq!(
            sniff(b"\xef\xbb\xbf<script>alert(1)</script>"),
            Sniffed::Html
        );
        assert_eq!(sniff(b"<!-- saved --><html>"), Sniffed::Html);
        assert_eq!(
            sniff(b"<?xml version=\"1.0\"?><svg xmlns=\"http://www.w3.org/2000/svg\">"),
            Sniffed::Svg
        );
        assert_eq!(sniff(b"<?xml version=\"1.0\"?><note/>"), Sniffed::Xml);
        assert_eq!(sniff("plain text, é\n".as_bytes()), Sniffed::Text);
        assert_eq!(sniff(b"a < b"), Sniffed::Text);
        assert_eq!(sniff(b"\0\x01\x02binary"), Sniffed::Binary);
        assert_eq!(sniff(b"\xff\xfe\x00\x01"), Sniffed::Binary);
        // Latin-1 is text too.
        assert_eq!(sniff(b"caf\xe9"), Sniffed::Text);
    }

    #[test]
    fn a_declared_type_must_agree_with_the_bytes() {
        assert!(fits("image/png", Sniffed::Png));
        assert!(!fits("image/png", Sniffed::Html), "HTML posing as an image");
        assert!(!fits("image/png", Sniffed::Jpeg));
        assert!(!fits("text/plain", Sniffed::Png), "an image posing as text");
        assert!(!fits("text/plain", Sniffed::Binary));
        assert!(fits("text/plain", Sniffed::Html), "markup is text");
        assert!(fits("text/html", Sniffed::Html));
        assert!(fits("image/svg+xml", Sniffed::Svg));
        assert!(!fits("image/gif", Sniffed::Svg));
        assert!(fits("application/pdf", Sniffed::Pdf));
        assert!(!fits("application/pdf", Sniffed::Text));
        assert!(fits(
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            Sniffed::Zip
        ));
        assert!(fits("audio/mpeg", Sniffed::Binary));
        assert!(fits("application/x-yaml", Sniffed::Text));
        assert!(!fits("video/mp4", Sniffed::Text));
        assert!(!fits("audio/mpeg", Sniffed::Png));
        for sniffed in [Sniffed::Png, Sniffed::Html, Sniffed::Binary, Sniffed::Text] {
            assert!(fits("application/octet-stream", sniffed));
        }
    }

    #[test]
    fn only_raster_images_are_inline_and_types_are_parsed() {
        assert!(inline("image/png") && inline("image/webp"));
        assert!(!inline("image/svg+xml") && !inline("text/html"));
        assert_eq!(
            essence("Text/Plain; charset=utf-8").as_deref(),
            Some("text/plain")
        );
        assert_eq!(essence("image/png").as_deref(), Some("image/png"));
        for bad in ["", "png", "image/", "/png", "image/png\r\nx: y", "a b/c"] {
            assert_eq!(essence(bad), None, "{bad:?}");
        }
    }
}
