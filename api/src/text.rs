//! Cutting text to a size in bytes without splitting a character: Kubernetes limits messages,
//! notes and annotations in bytes, and slicing a `str` elsewhere than on a character boundary
//! panics.

/// The longest prefix of `text` that is at most `max_bytes` bytes long and ends on a character
/// boundary.
pub fn head(text: &str, max_bytes: usize) -> &str {
    let mut end = text.len().min(max_bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `text` when it is at most `max_bytes` long; else its [`head`] ending in `...`, the whole at
/// most `max_bytes` bytes (`max_bytes` must be at least 3).
pub fn fit(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_owned();
    }
    format!("{}...", head(text, max_bytes.saturating_sub(3)))
}

#[cfg(test)]
mod tests {
    use super::{fit, head};

    #[test]
    fn fit_keeps_short_text_and_cuts_long_text_to_the_limit() {
        assert_eq!(fit("loaded", 8), "loaded");
        assert_eq!(fit("abcdefghij", 8), "abcde...");
        let cut = fit(&"é".repeat(10), 8);
        assert_eq!(cut, "éé...");
        assert!(cut.len() <= 8);
    }

    #[test]
    fn cuts_on_character_boundaries_only() {
        assert_eq!(head("short", 64), "short");
        assert_eq!(head("abcdef", 3), "abc");
        // "é" is two bytes: a cut inside it backs off to before it.
        assert_eq!(head("aé", 2), "a");
        assert_eq!(head("aé", 3), "aé");
        assert_eq!(head("é", 0), "");
    }
}
