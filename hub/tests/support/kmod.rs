//! Test support for the signing tests: a real `.ko` compiled from tests/fixtures/kmod-sign
//! against the installed Debian cloud kernel headers, keys and certificates made by openssl,
//! Debian's `scripts/sign-file` and `modinfo`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

use super::run;

/// The only entry of a glob-like listing: `dir/<prefix>*<suffix>`, sorted, the last one.
fn find_one(dir: &str, prefix: &str, suffix: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(prefix) && name.ends_with(suffix)
        })
        .collect();
    found.sort();
    found.pop()
}

/// Debian's `scripts/sign-file` (package linux-kbuild-*).
pub fn sign_file_tool() -> PathBuf {
    let kbuild = find_one("/usr/lib", "linux-kbuild-", "")
        .expect("no /usr/lib/linux-kbuild-* (run scripts/test-deps)");
    let tool = kbuild.join("scripts/sign-file");
    assert!(
        tool.exists(),
        "{} is missing (run scripts/test-deps)",
        tool.display()
    );
    tool
}

/// A scratch directory under the target dir, removed when dropped.
pub fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("kmm-sign-{name}-"))
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (run scripts/test-deps)"))
}

/// The unsigned test module, compiled once per test binary (about 2 s).
pub fn unsigned_module() -> &'static [u8] {
    static MODULE: OnceLock<Vec<u8>> = OnceLock::new();
    MODULE.get_or_init(|| {
        let tmp = temp_dir("build");
        let dir = tmp.path();
        let fixtures = kmm_test_kit::repo_root().join("tests/fixtures/kmod-sign");
        for file in ["Kbuild", "kmm_sign_test.c"] {
            std::fs::copy(fixtures.join(file), dir.join(file)).unwrap();
        }
        kmm_test_kit::kmod::make(dir).unwrap();
        let module = std::fs::read(dir.join("kmm_sign_test.ko")).unwrap();
        assert!(module.starts_with(b"\x7fELF"));
        assert!(
            !module.ends_with(b"~Module signature appended~\n"),
            "the build signed the module"
        );
        module
    })
}

/// A key pair made by openssl: the files in every format the signer reads.
pub struct TestKey {
    /// PKCS#8 PEM (`BEGIN PRIVATE KEY`), what `openssl req -keyout` writes.
    pub pkcs8_pem: PathBuf,
    /// PKCS#1 PEM (`BEGIN RSA PRIVATE KEY`).
    pub pkcs1_pem: PathBuf,
    /// PKCS#8 DER.
    pub pkcs8_der: PathBuf,
    /// PKCS#1 DER.
    pub pkcs1_der: PathBuf,
    pub cert_der: PathBuf,
    pub cert_pem: PathBuf,
    /// The certificate's serial as modinfo prints it (`AB:CD:...`).
    pub serial: String,
    pub common_name: String,
}

/// An RSA key of `bits` and a self-signed certificate with CN `common_name`, in `dir`.
pub fn make_rsa_key(dir: &Path, name: &str, bits: u32, common_name: &str) -> TestKey {
    let path = |suffix: &str| dir.join(format!("{name}.{suffix}"));
    let key = TestKey {
        pkcs8_pem: path("pkcs8.pem"),
        pkcs1_pem: path("pkcs1.pem"),
        pkcs8_der: path("pkcs8.der"),
        pkcs1_der: path("pkcs1.der"),
        cert_der: path("crt.der"),
        cert_pem: path("crt.pem"),
        serial: String::new(),
        common_name: common_name.to_owned(),
    };
    // As the KMM docs create it (openssl req -x509 -new -nodes -utf8 -sha256 -outform DER).
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-new", "-nodes", "-utf8", "-sha256", "-days", "36500", "-batch",
        ])
        .args(["-newkey", &format!("rsa:{bits}")])
        .args(["-subj", &format!("/CN={common_name}/O=kmm-fleet tests")])
        .args([
            "-addext",
            "keyUsage=digitalSignature",
            "-addext",
            "extendedKeyUsage=codeSigning",
        ])
        .arg("-outform")
        .arg("DER")
        .arg("-out")
        .arg(&key.cert_der)
        .arg("-keyout")
        .arg(&key.pkcs8_pem));
    run(Command::new("openssl")
        .args(["x509", "-inform", "DER", "-in"])
        .arg(&key.cert_der)
        .arg("-out")
        .arg(&key.cert_pem));
    run(Command::new("openssl")
        .args(["rsa", "-traditional", "-in"])
        .arg(&key.pkcs8_pem)
        .arg("-out")
        .arg(&key.pkcs1_pem));
    run(Command::new("openssl")
        .args(["rsa", "-traditional", "-outform", "DER", "-in"])
        .arg(&key.pkcs8_pem)
        .arg("-out")
        .arg(&key.pkcs1_der));
    run(Command::new("openssl")
        .args(["pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in"])
        .arg(&key.pkcs8_pem)
        .arg("-out")
        .arg(&key.pkcs8_der));
    let serial = run(Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-inform", "DER", "-in"])
        .arg(&key.cert_der));
    let hex = serial.trim().trim_start_matches("serial=");
    let hex = if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex.to_owned()
    };
    let bytes: Vec<String> = hex
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    TestKey {
        serial: bytes.join(":"),
        ..key
    }
}

/// Signs `module` (a path) in place with Debian's sign-file.
pub fn sign_with_sign_file(hash: &str, key: &Path, cert: &Path, module: &Path) {
    run(Command::new(sign_file_tool())
        .arg(hash)
        .arg(key)
        .arg(cert)
        .arg(module));
}

/// One field of `modinfo -F <field>`, trimmed (multi-line values joined).
pub fn modinfo(module: &Path, field: &str) -> String {
    let out = run(Command::new("modinfo").arg("-F").arg(field).arg(module));
    out.lines().map(str::trim).collect::<Vec<_>>().join("")
}
