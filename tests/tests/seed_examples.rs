//! Every Module and ManagedClusterModule example of the user documentation (shared/seeds, copied
//! into tests/fixtures/seeds with placeholders filled) must lint clean, and the documentation's
//! known mistakes must be caught with the message a user needs.

use std::{fs, path::PathBuf};

use kmm_hub::lint::lint_str;

fn fixtures(kind: &str) -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/seeds")
        .join(kind);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (
                name,
                fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_seed_example_lints_clean() {
    let files = fixtures("valid");
    assert!(
        files.len() >= 8,
        "expected the seed examples, found {} files",
        files.len()
    );
    let mut checked = 0;
    for (name, text) in &files {
        let reports = lint_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        for report in reports.iter().filter(|r| r.checked) {
            checked += 1;
            assert!(
                report.problems.is_empty(),
                "{name} ({}): {:#?}",
                report.object,
                report.problems
            );
        }
    }
    assert!(
        checked >= files.len(),
        "every fixture holds a Module or ManagedClusterModule"
    );
}

#[test]
fn documented_typos_are_caught_with_a_suggestion() {
    let files = fixtures("invalid");
    assert!(
        !files.is_empty(),
        "expected the lower-case field examples of seed 001"
    );
    for (name, text) in &files {
        let expected: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: unknown field "))
            .map(|path| path.trim().to_owned())
            .collect();
        assert!(!expected.is_empty(), "{name} lists no `# expect:` line");
        let problems: Vec<String> = lint_str(text)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .into_iter()
            .flat_map(|r| r.problems)
            .map(|p| p.to_string())
            .collect();
        for path in expected {
            let field = path.rsplit('.').next().unwrap_or_default();
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with(&format!("{path}: unknown field \"{field}\"; did you mean"))),
                "{name}: expected an unknown-field problem with a suggestion at {path}, got {problems:#?}"
            );
        }
    }
}
