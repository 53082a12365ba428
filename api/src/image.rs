//! Image reference helpers.

/// Splits `image` into repository and tag; a `:` before the last `/` is a registry port, not a tag.
/// A digest (`@sha256:...`) is not split off; callers check for `@` first.
pub fn split_tag(image: &str) -> (&str, Option<&str>) {
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(colon) => (
            &image[..last_slash + colon],
            Some(&image[last_slash + colon + 1..]),
        ),
        None => (image, None),
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case("quay.io/org/kmod:5.14.0", "quay.io/org/kmod", Some("5.14.0"))]
    #[case("localhost:5000/org/kmod:v1", "localhost:5000/org/kmod", Some("v1"))]
    #[case("localhost:5000/org/kmod", "localhost:5000/org/kmod", None)]
    #[case("kmod", "kmod", None)]
    fn splits_tags_but_not_ports(#[case] image: &str, #[case] repo: &str, #[case] tag: Option<&str>) {
        assert_eq!(split_tag(image), (repo, tag));
    }
}
