//! The signing key and its certificate: RSA private keys in PEM (PKCS#1 `RSA PRIVATE KEY` or
//! PKCS#8 `PRIVATE KEY`) or DER, X.509 certificates in PEM or DER. A PEM file may hold other
//! blocks too (the kernel's `signing_key.pem` holds the key and the certificate).

use std::{fmt, path::Path};

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{KeyPair, RSA_PKCS1_SHA256, RSA_PKCS1_SHA384, RSA_PKCS1_SHA512, RsaKeyPair},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use der::{Decode, asn1::ObjectIdentifier};
use x509_cert::{Certificate, name::Name, serial_number::SerialNumber};
use zeroize::Zeroizing;

use super::{HashAlgorithm, SignError};

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// A private key with the certificate that identifies it in signatures (issuer and serial).
pub struct Signer {
    /// An AWS-LC `EVP_PKEY`, freed on drop through `OPENSSL_free`, which overwrites every
    /// allocation (the key's bignums and its cached Montgomery and blinding values) with zeros
    /// before releasing it.
    key: RsaKeyPair,
    issuer: Name,
    serial: SerialNumber,
    subject: String,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("subject", &self.subject)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Signer {
    /// Reads the key and the certificate from files (key bytes are zeroized after parsing).
    pub fn from_files(key: &Path, cert: &Path) -> Result<Self, SignError> {
        let key_bytes =
            Zeroizing::new(std::fs::read(key).map_err(|e| SignError::io("read the key", key, e))?);
        let cert_bytes = std::fs::read(cert).map_err(|e| SignError::io("read the certificate", cert, e))?;
        Self::from_bytes(&key_bytes, &cert_bytes)
    }

    /// Parses a key and a certificate (each PEM or DER) and checks that they belong together.
    pub fn from_bytes(key: &[u8], cert: &[u8]) -> Result<Self, SignError> {
        let key = parse_key(key)?;
        let cert = parse_certificate(cert)?;
        let tbs = cert.tbs_certificate;
        let subject = tbs.subject.to_string();
        let spki = &tbs.subject_public_key_info;
        if spki.algorithm.oid != RSA_ENCRYPTION {
            return Err(SignError::UnsupportedKeyType(format!(
                "the certificate's public key is {}",
                algorithm_name(&spki.algorithm.oid)
            )));
        }
        // Both are the DER RSAPublicKey (n, e), which is canonical: equal keys, equal bytes.
        if Some(key.public_key().as_ref()) != spki.subject_public_key.as_bytes() {
            return Err(SignError::KeyMismatch { subject });
        }
        Ok(Self {
            key,
            issuer: tbs.issuer,
            serial: tbs.serial_number,
            subject,
        })
    }

    /// The certificate's subject (RFC 4514), for messages.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub(crate) fn issuer(&self) -> &Name {
        &self.issuer
    }

    pub(crate) fn serial(&self) -> &SerialNumber {
        &self.serial
    }

    /// The RSA PKCS#1 v1.5 signature of `content`'s digest (no signed attributes: the digest
    /// of the content itself is signed, as sign-file does).
    pub(crate) fn rsa_signature(&self, content: &[u8], hash: HashAlgorithm) -> Result<Vec<u8>, SignError> {
        let padding = match hash {
            HashAlgorithm::Sha256 => &RSA_PKCS1_SHA256,
            HashAlgorithm::Sha384 => &RSA_PKCS1_SHA384,
            HashAlgorithm::Sha512 => &RSA_PKCS1_SHA512,
        };
        let mut signature = vec![0u8; self.key.public_modulus_len()];
        // AWS-LC hashes `content` itself and blinds the private-key operation; the output is
        // the same either way (PKCS#1 v1.5 padding is deterministic).
        self.key
            .sign(padding, &SystemRandom::new(), content, &mut signature)
            .map_err(|e| SignError::Crypto(format!("RSA signing failed: {e}")))?;
        Ok(signature)
    }
}

/// One `-----BEGIN <label>-----` block of a PEM file.
struct PemBlock {
    label: String,
    encrypted: bool,
    body: Zeroizing<String>,
}

impl PemBlock {
    /// The block's bytes, decoded into one buffer sized up front (no reallocation leaves an
    /// unzeroed copy behind). The error names no byte or offset of the key.
    fn decode(&self) -> Result<Zeroizing<Vec<u8>>, String> {
        let mut out = Zeroizing::new(vec![0u8; self.body.len().div_ceil(4) * 3]);
        let len = STANDARD
            .decode_slice(self.body.as_bytes(), out.as_mut_slice())
            .map_err(|_| format!("the {} PEM block is not valid base64", self.label))?;
        out.truncate(len);
        Ok(out)
    }
}

/// The PEM blocks of `bytes`, or `None` when it is not PEM text (then it is taken as DER).
fn pem_blocks(bytes: &[u8]) -> Option<Vec<PemBlock>> {
    let text = std::str::from_utf8(bytes).ok()?;
    if !text.contains("-----BEGIN ") {
        return None;
    }
    let mut blocks = Vec::new();
    let mut current: Option<PemBlock> = None;
    for line in text.lines().map(str::trim) {
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            current = Some(PemBlock {
                label: label.to_owned(),
                encrypted: false,
                // Room for the whole text: the body never grows past its capacity, so no
                // reallocation leaves an unzeroed copy of key material behind.
                body: Zeroizing::new(String::with_capacity(text.len())),
            });
        } else if line.starts_with("-----END ") {
            blocks.extend(current.take());
        } else if let Some(block) = current.as_mut() {
            if line.contains(':') {
                // RFC 1421 headers: `Proc-Type: 4,ENCRYPTED` marks an encrypted PKCS#1 key.
                block.encrypted |= line.contains("ENCRYPTED");
            } else {
                block.body.push_str(line);
            }
        }
    }
    Some(blocks)
}

fn parse_key(bytes: &[u8]) -> Result<RsaKeyPair, SignError> {
    match pem_blocks(bytes) {
        Some(blocks) => {
            let block = blocks
                .iter()
                .find(|b| b.label.ends_with("PRIVATE KEY"))
                .ok_or_else(|| SignError::InvalidKey("the PEM file holds no PRIVATE KEY block".to_owned()))?;
            if block.encrypted || block.label == "ENCRYPTED PRIVATE KEY" {
                return Err(SignError::UnsupportedKeyType(
                    "an encrypted (passphrase-protected) key".to_owned(),
                ));
            }
            let der = block.decode().map_err(SignError::InvalidKey)?;
            match block.label.as_str() {
                "PRIVATE KEY" => key_from_pkcs8(&der),
                "RSA PRIVATE KEY" => {
                    key_from_pkcs1(&der).map_err(|e| SignError::InvalidKey(format!("PKCS#1: {e}")))
                }
                other => Err(SignError::UnsupportedKeyType(format!("a PEM {other}"))),
            }
        }
        None => match pkcs8::PrivateKeyInfo::from_der(bytes) {
            Ok(_) => key_from_pkcs8(bytes),
            Err(pkcs8_error) => key_from_pkcs1(bytes).map_err(|pkcs1_error| match pkcs1_error {
                SignError::UnsupportedKeyType(_) => pkcs1_error,
                _ => SignError::InvalidKey(format!(
                    "neither PKCS#8 ({pkcs8_error}) nor PKCS#1 ({pkcs1_error}) DER"
                )),
            }),
        },
    }
}

/// Smallest RSA modulus accepted: below 2048 bits a signature is forgeable with public means.
pub const MIN_RSA_BITS: usize = 2048;

/// Bits of the modulus of a DER PKCS#1 `RSAPrivateKey` (read before AWS-LC sees the key, so a
/// short key is refused with its size named).
fn modulus_bits(pkcs1_der: &[u8]) -> Result<usize, SignError> {
    let key = pkcs1::RsaPrivateKey::from_der(pkcs1_der).map_err(|e| SignError::InvalidKey(e.to_string()))?;
    let n = key.modulus.as_bytes();
    Ok(n.first()
        .map_or(0, |top| n.len() * 8 - top.leading_zeros() as usize))
}

fn check_key_size(bits: usize) -> Result<(), SignError> {
    if bits < MIN_RSA_BITS {
        return Err(SignError::UnsupportedKeyType(format!(
            "an RSA key of {bits} bits (at least {MIN_RSA_BITS} are required)"
        )));
    }
    Ok(())
}

/// A DER PKCS#1 key; AWS-LC checks that its parts are consistent (`RSA_check_key`).
fn key_from_pkcs1(der: &[u8]) -> Result<RsaKeyPair, SignError> {
    check_key_size(modulus_bits(der)?)?;
    RsaKeyPair::from_der(der).map_err(|e| SignError::InvalidKey(format!("inconsistent RSA key: {e}")))
}

fn key_from_pkcs8(der: &[u8]) -> Result<RsaKeyPair, SignError> {
    let info =
        pkcs8::PrivateKeyInfo::from_der(der).map_err(|e| SignError::InvalidKey(format!("PKCS#8: {e}")))?;
    if info.algorithm.oid != RSA_ENCRYPTION {
        return Err(SignError::UnsupportedKeyType(format!(
            "a {} key",
            algorithm_name(&info.algorithm.oid)
        )));
    }
    check_key_size(modulus_bits(info.private_key)?)?;
    RsaKeyPair::from_pkcs8(der).map_err(|e| SignError::InvalidKey(format!("PKCS#8 RSA key: {e}")))
}

fn parse_certificate(bytes: &[u8]) -> Result<Certificate, SignError> {
    let decoded;
    let der: &[u8] = match pem_blocks(bytes) {
        Some(blocks) => {
            let block = blocks
                .iter()
                .find(|b| b.label == "CERTIFICATE" || b.label == "X509 CERTIFICATE")
                .ok_or_else(|| {
                    SignError::InvalidCertificate("the PEM file holds no CERTIFICATE block".to_owned())
                })?;
            decoded = block.decode().map_err(SignError::InvalidCertificate)?;
            &decoded
        }
        None => bytes,
    };
    Certificate::from_der(der).map_err(|e| SignError::InvalidCertificate(e.to_string()))
}

fn algorithm_name(oid: &ObjectIdentifier) -> String {
    match oid.to_string().as_str() {
        "1.2.840.10045.2.1" => "EC (ECDSA)".to_owned(),
        "1.3.101.112" => "Ed25519".to_owned(),
        "1.3.101.113" => "Ed448".to_owned(),
        "1.2.840.113549.1.1.10" => "RSA-PSS".to_owned(),
        "1.2.840.10040.4.1" => "DSA".to_owned(),
        other => format!("OID {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_are_split_by_label_and_encrypted_headers_are_seen() {
        let text = "junk\n-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES\n\nQUJD\n-----END RSA PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----\nQUJD\nREVG\n-----END CERTIFICATE-----\n";
        let blocks = pem_blocks(text.as_bytes()).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].label, "RSA PRIVATE KEY");
        assert!(blocks[0].encrypted);
        assert_eq!(blocks[1].label, "CERTIFICATE");
        assert!(!blocks[1].encrypted);
        assert_eq!(blocks[1].decode().unwrap().as_slice(), b"ABCDEF");
        assert!(pem_blocks(b"\x30\x82binary").is_none());
    }

    /// A DER PKCS#1 key with a `bits`-bit modulus (the other parts are not a real key).
    fn pkcs1_with_modulus(bits: usize) -> Vec<u8> {
        use der::{Encode, asn1::UintRef};
        let n = vec![0xffu8; bits / 8];
        let one = UintRef::new(&[1]).unwrap();
        pkcs1::RsaPrivateKey {
            modulus: UintRef::new(&n).unwrap(),
            public_exponent: UintRef::new(&[1, 0, 1]).unwrap(),
            private_exponent: one,
            prime1: one,
            prime2: one,
            exponent1: one,
            exponent2: one,
            coefficient: one,
            other_prime_infos: None,
        }
        .to_der()
        .unwrap()
    }

    #[test]
    fn keys_under_2048_bits_are_refused_with_their_size() {
        assert_eq!(modulus_bits(&pkcs1_with_modulus(512)).unwrap(), 512);
        let err = parse_key(&pkcs1_with_modulus(512)).unwrap_err();
        assert!(matches!(err, SignError::UnsupportedKeyType(_)), "{err}");
        assert!(err.to_string().contains("512 bits"), "{err}");
    }

    #[test]
    fn an_inconsistent_key_is_invalid() {
        let err = parse_key(&pkcs1_with_modulus(2048)).unwrap_err();
        assert!(matches!(err, SignError::InvalidKey(_)), "{err}");
    }

    #[test]
    fn a_bad_pem_body_error_quotes_nothing_of_it() {
        let err = parse_key(b"-----BEGIN PRIVATE KEY-----\nQU$D\n-----END PRIVATE KEY-----\n").unwrap_err();
        let text = err.to_string();
        assert!(
            !text.contains('$') && !text.contains("offset") && !text.contains("36"),
            "{text}"
        );
    }

    #[test]
    fn an_encrypted_key_is_an_unsupported_key_type() {
        let err =
            parse_key(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nQUJD\n-----END ENCRYPTED PRIVATE KEY-----\n")
                .unwrap_err();
        assert!(matches!(err, SignError::UnsupportedKeyType(_)), "{err}");
    }

    #[test]
    fn garbage_is_an_invalid_key_and_an_invalid_certificate() {
        assert!(matches!(
            parse_key(b"\x30\x03\x02\x01\x00"),
            Err(SignError::InvalidKey(_))
        ));
        assert!(matches!(
            parse_key(b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n"),
            Err(SignError::InvalidKey(_))
        ));
        assert!(matches!(
            parse_certificate(b"not a certificate"),
            Err(SignError::InvalidCertificate(_))
        ));
    }
}
