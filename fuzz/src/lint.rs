//! `kmm-hub lint` on arbitrary YAML.

/// Lints the input as a YAML stream; every document gets a report.
pub fn lint(data: &[u8]) {
    let Ok(yaml) = std::str::from_utf8(data) else {
        return;
    };
    let _ = kmm_hub::lint::lint_str(yaml);
}
