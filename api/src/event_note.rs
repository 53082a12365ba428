//! Event notes within what events.k8s.io accepts.
//!
//! The apiserver refuses an `events.k8s.io/v1` Event whose `note` is longer than 1 KiB (bytes,
//! not characters), and a refused Event is simply lost. Worker failure messages can be 4 KiB,
//! so every note goes through [`note`].

/// Longest `note` events.k8s.io accepts, in bytes.
pub const MAX_NOTE_BYTES: usize = 1024;

/// `text` cut to at most [`MAX_NOTE_BYTES`] bytes on a character boundary, ending in `...`
/// when something was cut.
pub fn note(text: &str) -> String {
    crate::text::fit(text, MAX_NOTE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_notes_are_kept_and_long_ones_fit_in_bytes() {
        assert_eq!(note("loaded"), "loaded");
        let exact = "x".repeat(MAX_NOTE_BYTES);
        assert_eq!(note(&exact), exact);
        // 4 KiB of two-byte characters: 1024 characters would be 2 KiB.
        let wide = "é".repeat(2048);
        let cut = note(&wide);
        assert!(cut.len() <= MAX_NOTE_BYTES, "{} bytes", cut.len());
        assert!(cut.ends_with("..."));
        assert!(cut.starts_with("éé"));
    }
}
