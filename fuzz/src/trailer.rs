//! The module signature trailer that `sign-kmod --replace` strips before signing again.

use kmm_hub::sign::{is_signed, strip_signature};

/// The input is a module file: stripping keeps a prefix with no signature marker left.
pub fn trailer(data: &[u8]) {
    if let Ok(rest) = strip_signature(data) {
        assert!(data.starts_with(rest));
        assert!(!is_signed(rest), "a marker is left after stripping");
        if !is_signed(data) {
            assert_eq!(rest.len(), data.len(), "an unsigned module was cut");
        }
    }
}
