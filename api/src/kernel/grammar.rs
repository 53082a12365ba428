//! What a kernel version reported by a spoke may look like, checked on both sides: the spoke
//! before it writes its claims, the hub when it decodes them.
//!
//! Why these bounds: `uname -r` prints the kernel's `UTS_RELEASE`, a field of `struct
//! new_utsname` that holds at most 64 bytes plus its NUL, so nothing longer comes from a real
//! node. Kbuild builds it from `VERSION.PATCHLEVEL.SUBLEVEL`, `EXTRAVERSION` and `LOCALVERSION`,
//! and the kernels shipped by distributions and clouds use only ASCII letters, digits, `.`, `_`,
//! `-` and `+` there (`5.14.0-70.el9.x86_64`, `6.1.0-18-cloud-amd64`, `6.1.58+`,
//! `4.18.0-305.el8.x86_64+debug`). Everything else (`/`, `$`, `;`, spaces, non-ASCII) is refused:
//! it would only reach image tags, build arguments and Job names as something the hub did not
//! mean, and it lets two spellings collapse onto one image tag.

use thiserror::Error;

/// Longest kernel version accepted: the 64 bytes `uname -r` can return.
pub const MAX_KERNEL_LEN: usize = 64;

/// Why a string is not a kernel version.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KernelGrammarError {
    #[error("is empty")]
    Empty,
    #[error("is {len} bytes long; `uname -r` returns at most {MAX_KERNEL_LEN}")]
    TooLong { len: usize },
    #[error("contains {0:?}; a kernel version holds only ASCII letters, digits, '.', '_', '-' and '+'")]
    Character(char),
    #[error("does not start with a digit")]
    NoLeadingDigit,
}

/// Is `c` a character a kernel release may hold?
pub fn is_kernel_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+')
}

/// Checks `kernel` (as a node reports it, before trimming) against the grammar above.
pub fn check_kernel(kernel: &str) -> Result<(), KernelGrammarError> {
    if kernel.is_empty() {
        return Err(KernelGrammarError::Empty);
    }
    if kernel.len() > MAX_KERNEL_LEN {
        return Err(KernelGrammarError::TooLong { len: kernel.len() });
    }
    if let Some(bad) = kernel.chars().find(|c| !is_kernel_char(*c)) {
        return Err(KernelGrammarError::Character(bad));
    }
    if !kernel.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(KernelGrammarError::NoLeadingDigit);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case("5.14.0-70.el9.x86_64")]
    #[case("6.1.0-18-cloud-amd64")]
    #[case("6.1.58+")]
    #[case("4.18.0-305.el8.x86_64+debug")]
    #[case("5.15.0-1034-gke")]
    fn real_kernels_pass(#[case] kernel: &str) {
        assert_eq!(check_kernel(kernel), Ok(()));
    }

    #[rstest]
    #[case("", KernelGrammarError::Empty)]
    #[case("5.14.0-70.el9.x86/64", KernelGrammarError::Character('/'))]
    #[case("5.14.0-70.el9.x86é64", KernelGrammarError::Character('é'))]
    #[case("5.14.0-$(id)", KernelGrammarError::Character('$'))]
    #[case("5.14.0;reboot", KernelGrammarError::Character(';'))]
    #[case("5.14.0/../../x", KernelGrammarError::Character('/'))]
    #[case("5.14.0 1", KernelGrammarError::Character(' '))]
    #[case("5.14.0\u{202e}1", KernelGrammarError::Character('\u{202e}'))]
    #[case("x5.14.0", KernelGrammarError::NoLeadingDigit)]
    fn invented_kernels_are_refused(#[case] kernel: &str, #[case] want: KernelGrammarError) {
        assert_eq!(check_kernel(kernel), Err(want));
    }

    #[test]
    fn length_is_bounded_by_uname() {
        let ok = format!("5.14.0-{}", "a".repeat(MAX_KERNEL_LEN - 7));
        assert_eq!(check_kernel(&ok), Ok(()));
        let long = format!("{ok}a");
        assert_eq!(check_kernel(&long), Err(KernelGrammarError::TooLong { len: 65 }));
    }
}
