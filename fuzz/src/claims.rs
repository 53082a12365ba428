//! A spoke's kernel claims as the hub decodes them, and the kernel grammar.

use kmm_api::{
    claims::{MAX_KERNELS_PER_CLUSTER, continuation_claim_name, decode_kernels, encode_kernel_claims},
    kernel::{KernelVars, grammar::check_kernel, normalize_kernel, trim_kernel},
    ocm::KERNEL_VERSIONS_CLAIM,
};

/// The input is the claim values, NUL-separated: the first is `kernel-versions`, the next ones
/// its continuation claims 2, 3, ...
pub fn claims(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let values: Vec<&str> = text.split('\0').collect();
    let lookup = |name: &str| -> Option<&str> {
        if name == KERNEL_VERSIONS_CLAIM {
            return values.first().copied();
        }
        (2..=values.len())
            .find(|i| continuation_claim_name(*i) == name)
            .and_then(|i| values.get(i - 1).copied())
    };
    for line in values.iter().flat_map(|v| v.lines()) {
        kernel(line);
    }
    let Ok(decoded) = decode_kernels(lookup) else {
        return;
    };
    let kernels = &decoded.kernels;
    assert!(
        kernels.len() <= MAX_KERNELS_PER_CLUSTER,
        "{} kernels kept",
        kernels.len()
    );
    assert!(
        kernels.windows(2).all(|w| w[0] < w[1]),
        "not sorted and unique: {kernels:?}"
    );
    for k in kernels {
        assert_eq!(
            check_kernel(k),
            Ok(()),
            "a decoded kernel breaks the grammar: {k:?}"
        );
    }
    // What the hub decoded, written back by a spoke, reads back as the same list trimmed once.
    if let Ok(encoded) = encode_kernel_claims(kernels.iter().map(String::as_str)) {
        let again = decode_kernels(|name| encoded.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()));
        let mut expected: Vec<String> = kernels.iter().map(|k| trim_kernel(k).to_owned()).collect();
        expected.sort_unstable();
        expected.dedup();
        assert_eq!(
            again.map(|d| d.kernels).ok(),
            Some(expected),
            "round trip of {kernels:?}"
        );
    }
}

/// One kernel string: any string gets a tag-safe spelling; variables may be refused (a
/// grammar-valid `5.018+` has no `X.Y.Z`), which the decoder reports as a refused line.
fn kernel(raw: &str) {
    let normalized = normalize_kernel(raw);
    assert!(
        normalized
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
        "{normalized:?}"
    );
    let _ = check_kernel(raw);
    let _ = KernelVars::new(trim_kernel(raw));
}
