//! The signature the kernel expects at the end of a module, as `scripts/sign-file` appends it:
//!
//! ```text
//! <module> <CMS SignedData (DER)> <struct module_signature, 12 bytes> "~Module signature appended~\n"
//! ```
//!
//! The CMS is a detached SignedData (content type id-data, no content), without certificates
//! and without signed attributes, whose one SignerInfo names the signer by issuer and serial
//! number. `struct module_signature` is `{ u8 algo, hash, id_type, signer_len, key_id_len;
//! u8 pad[3]; __be32 sig_len }` with everything zero but `id_type = PKEY_ID_PKCS7 (2)` and
//! `sig_len`, as the kernel's `mod_check_sig` requires.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use cms::{
    cert::IssuerAndSerialNumber,
    content_info::{CmsVersion, ContentInfo},
    signed_data::{EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos},
};
use der::{
    Any, Decode, Encode,
    asn1::{ObjectIdentifier, OctetString, SetOfVec},
};
use x509_cert::spki::AlgorithmIdentifierOwned;

use super::{HashAlgorithm, SignError, Signer};

/// The marker that ends a signed module.
pub const MARKER: &[u8] = b"~Module signature appended~\n";
/// `sizeof(struct module_signature)`.
const INFO_LEN: usize = 12;
/// `PKEY_ID_PKCS7`.
const PKEY_ID_PKCS7: u8 = 2;

const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const ID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const ID_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");

/// Whether `module` ends with a signature marker.
pub fn is_signed(module: &[u8]) -> bool {
    module.ends_with(MARKER)
}

/// `module` without its appended signature(s); unchanged when it has none. A module signed
/// twice (signed again without stripping) loses both. Each block is checked as the kernel's
/// `mod_check_sig` does, and its signature must be a whole CMS SignedData of exactly the length
/// the trailer claims: a forged `sig_len` is refused rather than cutting into the module.
pub fn strip_signature(module: &[u8]) -> Result<&[u8], SignError> {
    let malformed = |why: String| SignError::MalformedSignature(why);
    let mut rest = module;
    while is_signed(rest) {
        let end = rest.len() - MARKER.len();
        let info_start = end
            .checked_sub(INFO_LEN)
            .ok_or_else(|| malformed("no room for the signature info".to_owned()))?;
        let info = &rest[info_start..end];
        if info[..8] != [0, 0, PKEY_ID_PKCS7, 0, 0, 0, 0, 0] {
            return Err(malformed(format!(
                "its signature info {:02x?} is not a PKCS#7 one (algo, hash, signer and key-id lengths zero, id_type 2)",
                &info[..8]
            )));
        }
        let sig_len = u32::from_be_bytes([info[8], info[9], info[10], info[11]]) as usize;
        let sig_start = info_start.checked_sub(sig_len).ok_or_else(|| {
            malformed(format!(
                "it claims {sig_len} signature bytes in a {}-byte file",
                module.len()
            ))
        })?;
        check_cms(&rest[sig_start..info_start]).map_err(|e| {
            malformed(format!(
                "the {sig_len} bytes its trailer names are not a CMS SignedData: {e}"
            ))
        })?;
        rest = &rest[..sig_start];
    }
    Ok(rest)
}

/// `bytes` is exactly one DER ContentInfo holding a SignedData.
fn check_cms(bytes: &[u8]) -> Result<(), String> {
    let info = ContentInfo::from_der(bytes).map_err(|e| e.to_string())?;
    if info.content_type != ID_SIGNED_DATA {
        return Err(format!(
            "content type {} instead of signedData",
            info.content_type
        ));
    }
    info.content
        .decode_as::<SignedData>()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The detached CMS signature of `content`, DER-encoded, as sign-file writes it.
pub fn cms_signature(signer: &Signer, content: &[u8], hash: HashAlgorithm) -> Result<Vec<u8>, SignError> {
    let crypto = |e: der::Error| SignError::Crypto(e.to_string());
    let digest_oid = match hash {
        HashAlgorithm::Sha256 => ID_SHA256,
        HashAlgorithm::Sha384 => ID_SHA384,
        HashAlgorithm::Sha512 => ID_SHA512,
    };
    // OpenSSL leaves the SHA-2 parameters absent and gives rsaEncryption an explicit NULL.
    let digest_alg = AlgorithmIdentifierOwned {
        oid: digest_oid,
        parameters: None,
    };
    let signature = signer.rsa_signature(content, hash)?;
    let signer_info = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: signer.issuer().clone(),
            serial_number: signer.serial().clone(),
        }),
        digest_alg: digest_alg.clone(),
        signed_attrs: None,
        signature_algorithm: AlgorithmIdentifierOwned {
            oid: RSA_ENCRYPTION,
            parameters: Some(Any::null()),
        },
        signature: OctetString::new(signature).map_err(crypto)?,
        unsigned_attrs: None,
    };
    let signed_data = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::try_from(vec![digest_alg]).map_err(crypto)?,
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: ID_DATA,
            econtent: None,
        },
        certificates: None,
        crls: None,
        signer_infos: SignerInfos(SetOfVec::try_from(vec![signer_info]).map_err(crypto)?),
    };
    ContentInfo {
        content_type: ID_SIGNED_DATA,
        content: Any::encode_from(&signed_data).map_err(crypto)?,
    }
    .to_der()
    .map_err(crypto)
}

/// `module` with a signature appended. An already signed module is refused unless `replace`,
/// which strips the old signature first.
pub fn sign_module(
    signer: &Signer,
    module: &[u8],
    hash: HashAlgorithm,
    replace: bool,
) -> Result<Vec<u8>, SignError> {
    if !module.starts_with(b"\x7fELF") {
        return Err(SignError::NotAModule);
    }
    let content = if is_signed(module) {
        if !replace {
            return Err(SignError::AlreadySigned);
        }
        strip_signature(module)?
    } else {
        module
    };
    let cms = cms_signature(signer, content, hash)?;
    let sig_len =
        u32::try_from(cms.len()).map_err(|_| SignError::Crypto("signature too large".to_owned()))?;
    let mut out = Vec::with_capacity(content.len() + cms.len() + INFO_LEN + MARKER.len());
    out.extend_from_slice(content);
    out.extend_from_slice(&cms);
    out.extend_from_slice(&[0, 0, PKEY_ID_PKCS7, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&sig_len.to_be_bytes());
    out.extend_from_slice(MARKER);
    Ok(out)
}

/// Signs the module at `path` in place: the signed module is written next to it and renamed
/// over it, so a failure never leaves a half-written module (not fsynced: like sign-file, this
/// does not promise durability across a power loss). The file keeps its permissions.
pub fn sign_file(signer: &Signer, path: &Path, hash: HashAlgorithm, replace: bool) -> Result<(), SignError> {
    let module = fs::read(path).map_err(|e| SignError::io("read", path, e))?;
    let signed = sign_module(signer, &module, hash, replace)?;
    let tmp = temp_path(path);
    let write = || -> std::io::Result<()> {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&signed)?;
        file.set_permissions(fs::metadata(path)?.permissions())?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        SignError::io("write", path, e)
    })
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".kmm-sign-{}.tmp", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use der::{Tag, asn1::SetOfVec};

    use super::*;

    /// A structurally valid detached-signature CMS whose "signature" is `marker`.
    fn cms(marker: &[u8]) -> Vec<u8> {
        let signed_data = SignedData {
            version: CmsVersion::V1,
            digest_algorithms: SetOfVec::new(),
            encap_content_info: EncapsulatedContentInfo {
                econtent_type: ID_DATA,
                econtent: Some(Any::new(Tag::OctetString, marker).unwrap()),
            },
            certificates: None,
            crls: None,
            signer_infos: SignerInfos(SetOfVec::new()),
        };
        ContentInfo {
            content_type: ID_SIGNED_DATA,
            content: Any::encode_from(&signed_data).unwrap(),
        }
        .to_der()
        .unwrap()
    }

    /// `body` with `sig` appended as sign-file does, the trailer claiming `sig_len` bytes.
    fn signed_claiming(body: &[u8], sig: &[u8], info: [u8; 8], sig_len: usize) -> Vec<u8> {
        let mut out = body.to_vec();
        out.extend_from_slice(sig);
        out.extend_from_slice(&info);
        out.extend_from_slice(&(sig_len as u32).to_be_bytes());
        out.extend_from_slice(MARKER);
        out
    }

    fn signed(body: &[u8], sig: &[u8]) -> Vec<u8> {
        signed_claiming(body, sig, [0, 0, 2, 0, 0, 0, 0, 0], sig.len())
    }

    #[test]
    fn strip_removes_one_or_several_signatures_and_keeps_unsigned_modules() {
        let body = b"\x7fELF module body".as_slice();
        assert_eq!(strip_signature(body).unwrap(), body);
        let once = signed(body, &cms(b"first signature"));
        assert!(is_signed(&once));
        assert_eq!(strip_signature(&once).unwrap(), body);
        let twice = signed(&once, &cms(b"second"));
        assert_eq!(strip_signature(&twice).unwrap(), body);
    }

    #[test]
    fn a_forged_or_foreign_signature_block_is_malformed_not_cut() {
        let body = b"\x7fELF module body with code".as_slice();
        let sig = cms(b"sig");
        let cases = [
            // Longer than the file.
            signed_claiming(b"\x7fELF", &[], [0, 0, 2, 0, 0, 0, 0, 0], 0x1000),
            // A sig_len that reaches into the module body.
            signed_claiming(body, &sig, [0, 0, 2, 0, 0, 0, 0, 0], sig.len() + 8),
            // Shorter than the signature: what it names is not a whole CMS.
            signed_claiming(body, &sig, [0, 0, 2, 0, 0, 0, 0, 0], sig.len() - 3),
            // Bytes that are not CMS at all.
            signed(body, b"not a signature"),
            // Not PKCS#7 (id_type 1), or with signer/key-id lengths set.
            signed_claiming(body, &sig, [0, 0, 1, 0, 0, 0, 0, 0], sig.len()),
            signed_claiming(body, &sig, [0, 0, 2, 4, 0, 0, 0, 0], sig.len()),
        ];
        for (i, module) in cases.iter().enumerate() {
            assert!(
                matches!(strip_signature(module), Err(SignError::MalformedSignature(_))),
                "case {i}"
            );
        }
        assert!(matches!(
            strip_signature(MARKER),
            Err(SignError::MalformedSignature(_))
        ));
    }
}
