//! The kernel module signer against the real thing: a `.ko` compiled from
//! tests/fixtures/kmod-sign, keys made by openssl, Debian's `scripts/sign-file` as the oracle
//! for the bytes, `modinfo` (kmod) for what the kernel tools read back.
#![allow(clippy::unwrap_used)]

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use kmm_hub::sign::{HashAlgorithm, SignError, Signer, module::sign_file};
use support::kmod::{TestKey, make_rsa_key, modinfo, output, sign_with_sign_file, temp_dir, unsigned_module};

fn write_module(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, unsigned_module()).unwrap();
    path
}

fn kmm_hub() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kmm-hub"))
}

/// Signs a fresh copy with sign-file and returns its bytes.
fn oracle(dir: &Path, key: &TestKey, hash: &str) -> Vec<u8> {
    let path = write_module(dir, &format!("oracle-{hash}.ko"));
    sign_with_sign_file(hash, &key.pkcs8_pem, &key.cert_der, &path);
    std::fs::read(path).unwrap()
}

#[test]
fn signatures_are_byte_identical_to_sign_file_for_every_hash_and_key_format() {
    let tmp = temp_dir("identical");
    let dir = tmp.path();
    let key = make_rsa_key(dir, "rsa2048", 2048, "kmm-fleet identical test key");
    let unsigned = unsigned_module();
    // The kernel's certs/signing_key.pem layout: key and certificate in one PEM file.
    let combined = dir.join("signing_key.pem");
    let mut text = std::fs::read_to_string(&key.pkcs8_pem).unwrap();
    text.push_str(&std::fs::read_to_string(&key.cert_pem).unwrap());
    std::fs::write(&combined, text).unwrap();
    for hash in ["sha256", "sha384", "sha512"] {
        let expected = oracle(dir, &key, hash);
        assert!(
            expected.len() > unsigned.len() + 256,
            "sign-file appended a signature"
        );
        assert_eq!(&expected[..unsigned.len()], unsigned);
        // Every key and certificate format gives the same bytes as sign-file.
        for (key_file, cert_file) in [
            (&key.pkcs8_pem, &key.cert_der),
            (&key.pkcs1_pem, &key.cert_pem),
            (&key.pkcs8_der, &key.cert_der),
            (&key.pkcs1_der, &key.cert_pem),
            (&combined, &combined),
        ] {
            let ours = write_module(dir, &format!("ours-{hash}.ko"));
            let signer = Signer::from_files(key_file, cert_file).unwrap();
            sign_file(&signer, &ours, hash.parse().unwrap(), false).unwrap();
            let ours = std::fs::read(ours).unwrap();
            assert!(
                ours == expected,
                "{hash} with {} and {}: our module ({} bytes) differs from sign-file's ({} bytes)",
                key_file.display(),
                cert_file.display(),
                ours.len(),
                expected.len()
            );
        }
    }
}

#[test]
fn the_command_signs_several_files_like_sign_file_with_a_4096_bit_key() {
    let tmp = temp_dir("command");
    let dir = tmp.path();
    let key = make_rsa_key(dir, "rsa4096", 4096, "kmm-fleet 4096");
    let expected = oracle(dir, &key, "sha512");
    let files = [write_module(dir, "one.ko"), write_module(dir, "two.ko")];
    let out = output(
        kmm_hub()
            .args(["sign-kmod", "--hash", "sha512", "--key"])
            .arg(&key.pkcs1_pem)
            .arg("--cert")
            .arg(&key.cert_der)
            .args(&files),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for file in &files {
        assert!(
            std::fs::read(file).unwrap() == expected,
            "{} differs from sign-file's",
            file.display()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("signed ")).count(),
        2,
        "{stdout}"
    );
}

#[test]
fn modinfo_shows_our_signer_key_id_and_hash() {
    let tmp = temp_dir("modinfo");
    let dir = tmp.path();
    let key = make_rsa_key(dir, "rsa", 2048, "kmm-fleet modinfo signer");
    let signer = Signer::from_files(&key.pkcs8_pem, &key.cert_der).unwrap();
    for hash in HashAlgorithm::ALL {
        let path = write_module(dir, &format!("m-{hash}.ko"));
        assert_eq!(modinfo(&path, "signer"), "", "the unsigned module has no signer");
        sign_file(&signer, &path, hash, false).unwrap();
        assert_eq!(modinfo(&path, "sig_id"), "PKCS#7");
        assert_eq!(modinfo(&path, "signer"), key.common_name);
        assert_eq!(modinfo(&path, "sig_key").trim_start_matches("00:"), key.serial);
        assert_eq!(modinfo(&path, "sig_hashalgo"), hash.name());
        // The module itself is still intact.
        assert_eq!(modinfo(&path, "name"), "kmm_sign_test");
    }
}

#[test]
fn signed_modules_are_refused_unless_the_signature_is_replaced() {
    let tmp = temp_dir("replace");
    let dir = tmp.path();
    let first = make_rsa_key(dir, "first", 2048, "kmm-fleet first key");
    let second = make_rsa_key(dir, "second", 2048, "kmm-fleet second key");
    let path = write_module(dir, "m.ko");
    let sign = |key: &TestKey, replace: bool| {
        let mut cmd = kmm_hub();
        cmd.args(["sign-kmod", "--key"])
            .arg(&key.pkcs8_pem)
            .arg("--cert")
            .arg(&key.cert_der);
        if replace {
            cmd.arg("--replace");
        }
        output(cmd.arg(&path))
    };
    assert!(sign(&first, false).status.success());
    let signed_once = std::fs::read(&path).unwrap();

    let refused = sign(&second, false);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("already signed") && stderr.contains("--replace"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        signed_once,
        "a refused module is left as it was"
    );

    assert!(sign(&second, true).status.success());
    assert!(
        std::fs::read(&path).unwrap() == oracle(dir, &second, "sha256"),
        "the old signature is stripped first"
    );
    assert_eq!(modinfo(&path, "signer"), second.common_name);
}

/// The first 40 lines of a PEM key with one base64 character changed in the middle.
fn corrupt(pem: &Path, out: &Path, truncate: bool) {
    let text = std::fs::read_to_string(pem).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    if truncate {
        let end = lines.pop().unwrap();
        lines.truncate(lines.len() / 2);
        lines.push(end);
    } else {
        let middle = lines.len() / 2;
        let line = &mut lines[middle];
        let c = if line.starts_with('A') { "B" } else { "A" };
        line.replace_range(0..1, c);
    }
    std::fs::write(out, lines.join("\n") + "\n").unwrap();
}

#[test]
fn corrupted_wrong_and_unsupported_keys_give_clear_errors() {
    let tmp = temp_dir("errors");
    let dir = tmp.path();
    let key = make_rsa_key(dir, "good", 2048, "kmm-fleet good key");
    let other = make_rsa_key(dir, "other", 2048, "kmm-fleet other key");

    let truncated = dir.join("truncated.pem");
    corrupt(&key.pkcs8_pem, &truncated, true);
    let err = Signer::from_files(&truncated, &key.cert_der).unwrap_err();
    assert!(matches!(err, SignError::InvalidKey(_)), "{err}");

    // A flipped byte inside the key material still parses as DER: the key no longer agrees
    // with itself or with the certificate, and either is refused.
    let flipped = dir.join("flipped.pem");
    corrupt(&key.pkcs1_pem, &flipped, false);
    let err = Signer::from_files(&flipped, &key.cert_der).unwrap_err();
    assert!(
        matches!(err, SignError::InvalidKey(_) | SignError::KeyMismatch { .. }),
        "{err}"
    );

    let err = Signer::from_files(&other.pkcs8_pem, &key.cert_der).unwrap_err();
    assert!(matches!(err, SignError::KeyMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("does not match the certificate"),
        "{err}"
    );
    assert!(err.to_string().contains("kmm-fleet good key"), "{err}");

    let err = Signer::from_files(&key.pkcs8_pem, &key.pkcs8_pem).unwrap_err();
    assert!(matches!(err, SignError::InvalidCertificate(_)), "{err}");

    let err = Signer::from_files(&dir.join("missing.pem"), &key.cert_der).unwrap_err();
    assert!(matches!(err, SignError::Io { .. }), "{err}");
    assert!(err.to_string().contains("missing.pem"), "{err}");

    // An EC key with its certificate: a real key, just not one we sign with.
    let ec_key = dir.join("ec.pem");
    let ec_cert = dir.join("ec.der");
    support::run(
        Command::new("openssl")
            .args([
                "req", "-x509", "-new", "-nodes", "-batch", "-subj", "/CN=ec", "-newkey", "ec",
            ])
            .args([
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-outform",
                "DER",
                "-out",
            ])
            .arg(&ec_cert)
            .arg("-keyout")
            .arg(&ec_key),
    );
    let err = Signer::from_files(&ec_key, &ec_cert).unwrap_err();
    assert!(matches!(err, SignError::UnsupportedKeyType(_)), "{err}");
    assert!(err.to_string().contains("EC"), "{err}");
    let err = Signer::from_files(&key.pkcs8_pem, &ec_cert).unwrap_err();
    assert!(matches!(err, SignError::UnsupportedKeyType(_)), "{err}");

    // Through the command: exit code 1, a one-line reason, the module untouched, and never
    // any key material in the output.
    let path = write_module(dir, "m.ko");
    for (key_file, cert_file, expected) in [
        (&truncated, &key.cert_der, "not a valid RSA private key"),
        (&other.pkcs8_pem, &key.cert_der, "does not match the certificate"),
        (&ec_key, &ec_cert, "unsupported key type"),
    ] {
        let out = output(
            kmm_hub()
                .args(["sign-kmod", "--key"])
                .arg(key_file)
                .arg("--cert")
                .arg(cert_file)
                .arg(&path),
        );
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{}: {stderr}", key_file.display());
        assert!(
            !stderr.contains("PRIVATE KEY") && !stderr.contains("MII"),
            "{stderr}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), unsigned_module());
    }
}

#[test]
fn a_file_that_is_not_a_module_is_reported_and_the_others_are_signed() {
    let tmp = temp_dir("not-a-module");
    let dir = tmp.path();
    let key = make_rsa_key(dir, "k", 2048, "kmm-fleet k");
    let text = dir.join("readme.ko");
    std::fs::write(&text, "not an ELF file").unwrap();
    let module = write_module(dir, "m.ko");
    let out = output(
        kmm_hub()
            .args(["sign-kmod", "--key"])
            .arg(&key.pkcs8_pem)
            .arg("--cert")
            .arg(&key.cert_der)
            .arg(&text)
            .arg(&module),
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("readme.ko") && stderr.contains("not a kernel module"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&text).unwrap(), "not an ELF file");
    assert_eq!(modinfo(&module, "signer"), "kmm-fleet k");
}
