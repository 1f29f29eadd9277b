//! Input text as the parsers see it: decoded with the line of the first
//! bad byte named, and words quoted into error messages without flooding
//! them.

use crate::parse::ParseError;

/// The longest part of a word an error message repeats.
const QUOTE_MAX: usize = 40;

/// `word` as an error message shows it: in backticks, control characters
/// escaped, and cut after [`QUOTE_MAX`] characters with its full length
/// given (a 10 MB word must not become a 10 MB message).
pub(crate) fn quote(word: &str) -> String {
    let shown: String = word
        .chars()
        .take(QUOTE_MAX)
        .flat_map(char::escape_default)
        .collect();
    if word.chars().nth(QUOTE_MAX).is_some() {
        format!("`{shown}`… ({} bytes)", word.len())
    } else {
        format!("`{shown}`")
    }
}

/// Decodes a script or a report read as bytes. Both formats are text; a
/// NUL byte or invalid UTF-8 means binary input, reported with its line.
///
/// # Errors
///
/// A [`ParseError`] naming the first line that is not UTF-8 text.
pub fn decode(bytes: &[u8]) -> Result<&str, ParseError> {
    let bad_at = match std::str::from_utf8(bytes) {
        Ok(text) => match text.find('\0') {
            None => return Ok(text),
            Some(at) => at,
        },
        Err(e) => e.valid_up_to(),
    };
    let line = 1 + bytes[..bad_at].iter().filter(|b| **b == b'\n').count();
    Err(ParseError {
        line,
        message: format!(
            "binary data (byte {bad_at:#x} of the input is not text): expected UTF-8 text"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_words_are_cut_and_measured() {
        let word = "x".repeat(10_000_000);
        let quoted = quote(&word);
        assert!(quoted.len() < 80, "{quoted}");
        assert!(quoted.ends_with("… (10000000 bytes)"), "{quoted}");
        assert_eq!(quote("rq"), "`rq`");
        assert_eq!(quote("a\u{1b}b"), "`a\\u{1b}b`");
    }

    #[test]
    fn binary_input_names_its_line() {
        assert_eq!(decode(b"fork\n").unwrap(), "fork\n");
        let err = decode(b"fork\nfork\nmm\xffap\n").unwrap_err();
        assert_eq!(err.line, 3, "{err}");
        assert!(err.to_string().contains("binary data"), "{err}");
        assert_eq!(decode(b"fork\n\0").unwrap_err().line, 2);
    }
}
