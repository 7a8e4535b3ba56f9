//! What of a layout's content may appear in an error message, and how.
//!
//! A layout may be hostile: its bytes can hold terminal escapes (which would
//! act on the terminal of whoever reads the error), and a blob that is not
//! what it claims can be anything readable (a secret its owner never meant
//! to print). So errors name things (digests, tags, media types, member
//! names) with every control character escaped and long text cut, and
//! parse errors report where and what was expected, never the bytes found.

use crate::archive::ArchiveError;
use crate::error::CoreError;

/// The most characters of one input string an error shows: enough to
/// recognise a tag or a media type, not enough to carry a file along.
const MAX_SHOWN_CHARS: usize = 200;

/// `text` as it may appear in a message: control characters (C0, DEL, C1:
/// every terminal escape starts with one) and the invisible characters that
/// reorder or hide text (bidi controls, zero-width ones) are written as
/// `\u{..}`, a backslash as `\\`, and anything past `MAX_SHOWN_CHARS` is
/// replaced by a count.
pub fn shown(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_SHOWN_CHARS) + 8);
    for (count, c) in text.chars().enumerate() {
        if count == MAX_SHOWN_CHARS {
            let rest = text.chars().count() - count;
            out.push_str(&format!("...({rest} more characters)"));
            break;
        }
        if c == '\\' {
            out.push_str("\\\\");
        } else if c.is_control() || is_invisible(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Characters that print nothing yet change what the text around them
/// looks like.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{200b}'..='\u{200f}'   // zero-width spaces and joiners, LRM, RLM
        | '\u{202a}'..='\u{202e}' // bidi embeddings and overrides
        | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
        | '\u{2066}'..='\u{2069}' // bidi isolates
        | '\u{feff}'              // zero-width no-break space
    )
}

/// A message text built elsewhere (the tar reader, the layer applier) made
/// safe to show: control characters escaped, and the tar reader's quotes of
/// header bytes dropped.
///
/// The `tar` crate is the one source here that quotes raw input: a numeric
/// header field that does not parse comes back as "numeric field was not a
/// number: <the field's bytes> when getting <field> for <the member's
/// name>". Fed a file that is not a tar, that quotes the file's first
/// lines. What is kept is which field it was; the field name is the crate's
/// own identifier, checked to be one.
pub fn content_free(text: &str) -> String {
    const QUOTING: &str = "numeric field ";
    const FIELD: &str = " when getting ";
    let Some(at) = text.find(QUOTING) else {
        return shown_message(text);
    };
    // The quoted field is at most 12 bytes (the widest numeric field), too
    // short to hold FIELD, so its first occurrence is the crate's own.
    let field = text[at..]
        .find(FIELD)
        .map(|w| &text[at + w + FIELD.len()..])
        .and_then(|rest| rest.split(' ').next())
        .filter(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
    let what = match field {
        Some(field) => format!("the tar header's {field} field is not an octal number"),
        None => "a tar header's numeric field is not an octal number".to_string(),
    };
    format!("{}{what}", shown_message(&text[..at]))
}

/// A whole message (not one input string): control characters escaped, no
/// length cut (the message is ours; what it quotes was cut when quoted).
fn shown_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || is_invisible(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// An error from applying a layer's stream, with what it says about the
/// stream made content-free (see `content_free`). Member names stay: they
/// are how a member is found, and `ArchiveError` shows them escaped.
pub fn layer_error(error: CoreError) -> CoreError {
    match error {
        CoreError::Archive { layer, source } => CoreError::Archive {
            layer,
            source: match source {
                ArchiveError::Input(e) => {
                    ArchiveError::Input(std::io::Error::new(e.kind(), content_free(&e.to_string())))
                }
                ArchiveError::Entry { entry, reason } => ArchiveError::Entry {
                    entry,
                    reason: content_free(&reason),
                },
                ArchiveError::Unsafe { entry, reason } => ArchiveError::Unsafe {
                    entry,
                    reason: content_free(&reason),
                },
                other => other,
            },
        },
        CoreError::Blob { blob, source } => CoreError::Blob {
            blob,
            source: Box::new(layer_error(*source)),
        },
        other => other,
    }
}

/// A JSON parse error of `what` without the input it quotes: where it is
/// (line and column) and what was expected there.
///
/// serde_json's syntax messages are fixed texts ("expected `,` or `}`",
/// "control character (\u0000-\u001F) found while parsing a string"), but
/// its data messages quote the value found ("invalid type: string
/// \"...\", expected u32"); of those only the expectation, which comes from
/// the types strata reads into, is kept.
pub fn json_error(error: &serde_json::Error) -> String {
    let position = format!(" at line {} column {}", error.line(), error.column());
    let full = error.to_string();
    let message = full.strip_suffix(&position).unwrap_or(&full);
    let what = match error.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            shown_message(message)
        }
        serde_json::error::Category::Data => {
            if message.starts_with("missing field `")
                || message.starts_with("duplicate field `")
                || message.starts_with("invalid length ")
            {
                // The field named is one of the type's own; a length is a
                // count the parser made, and what it expected is the type's.
                shown_message(message)
            } else if let Some((_, expected)) = message.rsplit_once(", expected ") {
                format!(
                    "a value of the wrong type or out of range (expected {})",
                    shown(expected)
                )
            } else {
                "a value of the wrong type or out of range".to_string()
            }
        }
        serde_json::error::Category::Io => "the input could not be read".to_string(),
    };
    format!("{what}{position}")
}

/// A byte count for people: "4 MiB", "512 KiB", "1234 bytes".
pub fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_invisible_characters_are_escaped() {
        assert_eq!(shown("a\u{1b}[31mb"), "a\\u{1b}[31mb");
        assert_eq!(shown("\u{9b}2J\u{7}\n"), "\\u{9b}2J\\u{7}\\u{a}");
        assert_eq!(shown("x\u{202e}y\\"), "x\\u{202e}y\\\\");
        assert_eq!(shown("app:v1.0"), "app:v1.0");
        let long = shown(&"x".repeat(1000));
        assert!(
            long.len() < 250 && long.ends_with("(800 more characters)"),
            "{long}"
        );
    }

    #[test]
    fn the_tar_readers_quotes_are_dropped() {
        let text = "not a tar stream: numeric field was not a number: :19000:0 when getting cksum for root:SECRET:19000:0:99999:7:::\nroot:SECRET";
        let free = content_free(text);
        assert_eq!(
            free,
            "not a tar stream: the tar header's cksum field is not an octal number"
        );
        let free = content_free("mode: numeric field did not have utf-8 text: \u{fffd}x");
        assert_eq!(
            free,
            "mode: a tar header's numeric field is not an octal number"
        );
        assert_eq!(
            content_free("\u{1b}]0;x: the stream ends inside the member's data (1 of 2 bytes)"),
            "\\u{1b}]0;x: the stream ends inside the member's data (1 of 2 bytes)"
        );
    }

    #[test]
    fn json_errors_say_where_and_what_was_expected_not_what_was_found() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct T {
            n: u32,
        }
        let data = serde_json::from_slice::<T>(b"{\"n\": \"SECRET\\u001b\"}").unwrap_err();
        let message = json_error(&data);
        assert!(!message.contains("SECRET"), "{message}");
        assert!(
            message.contains("expected u32") && message.contains("line 1 column"),
            "{message}"
        );
        let syntax = serde_json::from_slice::<T>(b"{\"n\": SECRET}").unwrap_err();
        let message = json_error(&syntax);
        assert!(
            !message.contains("SECRET") && message.contains("expected value"),
            "{message}"
        );
        let missing = serde_json::from_slice::<T>(b"{}").unwrap_err();
        assert!(json_error(&missing).contains("missing field `n`"));
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size(4 << 20), "4 MiB");
        assert_eq!(size(4 << 10), "4 KiB");
        assert_eq!(size(1000), "1000 bytes");
    }
}
