//! The kept fuzz corpus (`fuzz/corpus/<target>/`), replayed through the targets' bodies: what
//! CI runs of the fuzzing, with no special toolchain flags. A crash the fuzzer found is kept
//! here as a file, so its fix stays tested.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is a failed test

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect()
}

#[test]
fn every_kept_input_replays_without_a_panic() {
    for (target, run) in kmm_fuzz::TARGETS {
        let inputs = corpus(target);
        assert!(!inputs.is_empty(), "no corpus for {target}");
        for (path, data) in inputs {
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target} panics on {}", path.display());
        }
    }
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(target)
            .join(name),
    )
    .unwrap()
}

/// The seeds get past the parsers' front doors, so a fuzzing run starts from inputs that reach
/// the deeper code rather than from ones refused at the first byte.
#[test]
fn the_seeds_are_accepted_where_they_should_be() {
    let claims = String::from_utf8(seed("claims", "two-kernels")).unwrap();
    let decoded = kmm_api::claims::decode_kernels(|n| {
        (n == kmm_api::ocm::KERNEL_VERSIONS_CLAIM).then_some(claims.as_str())
    })
    .unwrap();
    assert_eq!(decoded.kernels, ["5.14.0-70.el9.x86_64", "6.1.0-18-cloud-amd64"]);

    let signed = seed("trailer", "signed");
    let body = kmm_hub::sign::strip_signature(&signed).unwrap();
    assert_eq!(body, seed("trailer", "unsigned"));
    assert!(kmm_hub::sign::strip_signature(&seed("trailer", "forged-length")).is_err());

    let blob = seed("layers", "one-layer.tar");
    let layer = oci_client::manifest::OciDescriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar".to_owned(),
        digest: "sha256:seed".to_owned(),
        size: blob.len() as i64,
        ..Default::default()
    };
    let patterns = kmm_hub::sign::layers::compile_patterns(&["/lib/modules/*/*.ko".to_owned()]).unwrap();
    let selection = kmm_hub::sign::layers::select_files(&[layer], &[blob], &patterns).unwrap();
    assert_eq!(
        selection.selected.keys().collect::<Vec<_>>(),
        ["/lib/modules/6.1/a.ko"]
    );

    let reports = kmm_hub::lint::lint_str(&String::from_utf8(seed("lint", "module.yaml")).unwrap()).unwrap();
    assert_eq!(reports.len(), 2, "two documents, two reports");
    assert!(reports[0].problems.is_empty(), "{:?}", reports[0].problems);
    assert!(!reports[1].problems.is_empty(), "the broken regexp is caught");
}
