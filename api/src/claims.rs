//! The kernel-versions ClusterClaim: how kmm-spoke tells the hub which kernels its nodes run.
//!
//! The value is the sorted, de-duplicated kernel versions joined by `\n`, as upstream writes it,
//! in the claim `kernel-versions.kmm.node.kubernetes.io`. A ClusterClaim value holds at most 1024
//! characters (about 30 kernel strings), so a longer list continues in claims named
//! `kernel-versions-2.kmm.node.kubernetes.io`, `-3`, ... and the first claim then ends with a line
//! `+N` giving how many continuation claims belong to it. A short list is exactly upstream's
//! format, so upstream hubs and spokes interoperate with ours; stale continuation claims left
//! from a longer list are ignored because the `+N` line says how many to read.

use thiserror::Error;

use crate::{
    kernel::{
        KernelVars,
        grammar::{MAX_KERNEL_LEN, check_kernel},
        trim_kernel,
    },
    ocm::{KERNEL_VERSIONS_CLAIM, MAX_CLAIM_VALUE_LEN},
};

/// Most claims one kernel list may span. OCM keeps only 20 custom claims per cluster (cut
/// alphabetically), so the list must not crowd out everyone else's.
pub const MAX_KERNEL_CLAIMS: usize = 8;

/// Most kernel versions the hub takes from one cluster. A cluster runs a handful (one per node
/// image, two during an upgrade); each kernel can cost the hub a registry lookup and a build,
/// so a cluster reporting more gets the first ones (sorted) and a problem naming the rest.
pub const MAX_KERNELS_PER_CLUSTER: usize = 64;

/// The kernels read from a cluster's claims: the usable ones, and why the others were refused.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DecodedKernels {
    /// Sorted, de-duplicated, trimmed, at most [`MAX_KERNELS_PER_CLUSTER`].
    pub kernels: Vec<String>,
    /// One entry per refused line, plus [`ClaimError::TooManyKernels`] when the list was cut.
    pub refused: Vec<ClaimError>,
}

/// Why a kernel list cannot be written or read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClaimError {
    /// The cluster reports no kernel-versions claim at all.
    #[error("the cluster reports no {KERNEL_VERSIONS_CLAIM} claim (is kmm-spoke running there?)")]
    Missing,
    /// The first claim announces continuation claims that are not there (yet).
    #[error("the kernel list continues in claim {name}, which the cluster does not report (yet)")]
    MissingContinuation { name: String },
    /// A line of a claim is not a kernel version.
    #[error("claim {claim} holds {line:?}, which is not a kernel version: {reason}")]
    Malformed {
        claim: String,
        line: String,
        reason: String,
    },
    /// No kernel to report: the cluster has no node with a kernel version.
    #[error("no node reports a kernel version")]
    NoKernels,
    /// The list needs more claims than [`MAX_KERNEL_CLAIMS`].
    #[error(
        "{count} distinct kernel versions: more than {MAX_KERNEL_CLAIMS} claims of {MAX_CLAIM_VALUE_LEN} characters hold, or more than the hub takes from one cluster ({MAX_KERNELS_PER_CLUSTER})"
    )]
    TooManyKernels { count: usize },
    /// A cluster claims more next kernels than [`MAX_NEXT_KERNELS_PER_CLUSTER`].
    #[error(
        "{count} distinct next kernels: the hub takes at most {MAX_NEXT_KERNELS_PER_CLUSTER} from one cluster"
    )]
    TooManyNextKernels { count: usize },
}

/// Name of continuation claim `index` (2, 3, ...).
pub fn continuation_claim_name(index: usize) -> String {
    KERNEL_VERSIONS_CLAIM.replacen("kernel-versions", &format!("kernel-versions-{index}"), 1)
}

/// `(claim name, value)` pairs to write for the given node kernels (raw, as nodes report them).
pub fn encode_kernel_claims<'a>(
    kernels: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<(String, String)>, ClaimError> {
    let mut kernels: Vec<&str> = kernels
        .into_iter()
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .collect();
    kernels.sort_unstable();
    kernels.dedup();
    if kernels.is_empty() {
        return Err(ClaimError::NoKernels);
    }
    let too_many = || ClaimError::TooManyKernels { count: kernels.len() };
    // Room left in the first claim for the "\n+N" line when the list continues.
    let marker_room = 1 + 1 + MAX_KERNEL_CLAIMS.to_string().len();
    let mut parts: Vec<String> = vec![String::new()];
    for kernel in &kernels {
        let limit = if parts.len() == 1 {
            MAX_CLAIM_VALUE_LEN - marker_room
        } else {
            MAX_CLAIM_VALUE_LEN
        };
        let current = parts.last_mut().ok_or_else(too_many)?;
        let needed = if current.is_empty() {
            kernel.len()
        } else {
            current.len() + 1 + kernel.len()
        };
        if needed <= limit {
            if !current.is_empty() {
                current.push('\n');
            }
            current.push_str(kernel);
        } else if kernel.len() <= MAX_CLAIM_VALUE_LEN - marker_room {
            parts.push((*kernel).to_owned());
        } else {
            return Err(ClaimError::Malformed {
                claim: KERNEL_VERSIONS_CLAIM.into(),
                line: (*kernel).to_owned(),
                reason: "longer than a claim can hold".into(),
            });
        }
    }
    if parts.len() > MAX_KERNEL_CLAIMS {
        return Err(too_many());
    }
    let continuations = parts.len() - 1;
    if continuations > 0 {
        parts[0].push_str(&format!("\n+{continuations}"));
    }
    Ok(parts
        .into_iter()
        .enumerate()
        .map(|(i, value)| {
            let name = if i == 0 {
                KERNEL_VERSIONS_CLAIM.to_owned()
            } else {
                continuation_claim_name(i + 1)
            };
            (name, value)
        })
        .collect())
}

/// The kernel versions a cluster reports, from its claims (`claim(name)` looks one up), sorted
/// and de-duplicated, each with one trailing `+` trimmed as kernel mapping expects. Any line
/// that is not a kernel version fails the whole list (the spoke's own check of what it wrote);
/// the hub reads with [`decode_kernels`], which keeps the good lines.
pub fn decode_kernel_claims<'a>(claim: impl Fn(&str) -> Option<&'a str>) -> Result<Vec<String>, ClaimError> {
    let decoded = decode_kernels(claim)?;
    match decoded.refused.into_iter().next() {
        Some(first) => Err(first),
        None => Ok(decoded.kernels),
    }
}

/// Like [`decode_kernel_claims`], but a line that breaks the [kernel grammar](crate::kernel::grammar)
/// only refuses that line, and at most [`MAX_KERNELS_PER_CLUSTER`] kernels are kept: one bad
/// kernel must not take the cluster's good ones down with it. Fails when the claims themselves
/// are unreadable or no kernel at all is usable.
pub fn decode_kernels<'a>(claim: impl Fn(&str) -> Option<&'a str>) -> Result<DecodedKernels, ClaimError> {
    let first = claim(KERNEL_VERSIONS_CLAIM).ok_or(ClaimError::Missing)?;
    let mut lines: Vec<(&str, String)> = lines_of(first)
        .map(|l| (l, KERNEL_VERSIONS_CLAIM.to_owned()))
        .collect();
    let continuations = match lines.last().and_then(|(l, _)| l.strip_prefix('+')) {
        Some(n) => {
            let count = n.parse::<usize>().map_err(|_| ClaimError::Malformed {
                claim: KERNEL_VERSIONS_CLAIM.into(),
                line: format!("+{n}"),
                reason: "a continuation line is + followed by a number".into(),
            })?;
            lines.pop();
            count
        }
        None => 0,
    };
    if continuations >= MAX_KERNEL_CLAIMS {
        return Err(ClaimError::Malformed {
            claim: KERNEL_VERSIONS_CLAIM.into(),
            line: format!("+{continuations}"),
            reason: format!("at most {} continuation claims are read", MAX_KERNEL_CLAIMS - 1),
        });
    }
    for index in 2..=continuations + 1 {
        let name = continuation_claim_name(index);
        let value = claim(&name).ok_or_else(|| ClaimError::MissingContinuation { name: name.clone() })?;
        lines.extend(lines_of(value).map(|l| (l, name.clone())));
    }
    let mut out = DecodedKernels::default();
    for (line, claim) in lines {
        match check_line(line) {
            Ok(kernel) => out.kernels.push(kernel.to_owned()),
            Err(reason) => out.refused.push(ClaimError::Malformed {
                claim,
                line: line.to_owned(),
                reason,
            }),
        }
    }
    out.kernels.sort_unstable();
    out.kernels.dedup();
    if out.kernels.len() > MAX_KERNELS_PER_CLUSTER {
        out.refused.push(ClaimError::TooManyKernels {
            count: out.kernels.len(),
        });
        out.kernels.truncate(MAX_KERNELS_PER_CLUSTER);
    }
    if out.kernels.is_empty() {
        return Err(out.refused.into_iter().next().unwrap_or(ClaimError::NoKernels));
    }
    Ok(out)
}

/// The trimmed kernel of one claim line, or why it is not one.
fn check_line(line: &str) -> Result<&str, String> {
    check_kernel(line).map_err(|e| e.to_string())?;
    let kernel = trim_kernel(line);
    KernelVars::new(kernel).map_err(|e| e.to_string())?;
    Ok(kernel)
}

fn lines_of(value: &str) -> impl Iterator<Item = &str> {
    value.split('\n').map(str::trim).filter(|l| !l.is_empty())
}

// === next kernels ===

/// The ClusterClaim listing the kernels a cluster's nodes boot at their next reboot (from
/// [`NEXT_KERNEL_ANNOTATION`]), so the hub can build and sign ahead. A claim of its own: a hub or
/// spoke that does not know it reads the kernel list exactly as before, and a cluster without
/// the annotation has no such claim. It sorts after the kernel-versions claims, so OCM's
/// alphabetical cut of custom claims drops it first, and it shares their suffix, so one
/// `reservedClusterClaimSuffixes` entry on the Klusterlet protects both.
pub const NEXT_KERNEL_VERSIONS_CLAIM: &str = "next-kernel-versions.kmm.node.kubernetes.io";

/// Node annotation an OS updater sets, before the reboot, to the kernel the node boots next (as
/// `uname -r` will print it). kmm-fleet's own key (upstream KMM has no such source).
pub const NEXT_KERNEL_ANNOTATION: &str = "fleet.kmm.sigs.x-k8s.io/next-kernel-version";

/// Most next kernels one cluster publishes, and the hub takes from one cluster: an upgrade brings
/// one or two, and each costs the hub a build per ManagedClusterModule. Eight kernels of at most
/// 64 bytes always fit one claim, so this claim never continues.
pub const MAX_NEXT_KERNELS_PER_CLUSTER: usize = 8;

const _: () = assert!(MAX_NEXT_KERNELS_PER_CLUSTER * (MAX_KERNEL_LEN + 1) <= MAX_CLAIM_VALUE_LEN);

/// The value of the next-kernel claim for `kernels` (raw, as the annotations hold them): the
/// lines of the kernel-versions claim (sorted, de-duplicated, `\n`-separated). `None` when there
/// is no kernel: no claim at all.
pub fn encode_next_kernel_claim<'a>(
    kernels: impl IntoIterator<Item = &'a str>,
) -> Result<Option<String>, ClaimError> {
    let mut kernels: Vec<&str> = kernels
        .into_iter()
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .collect();
    kernels.sort_unstable();
    kernels.dedup();
    if kernels.len() > MAX_NEXT_KERNELS_PER_CLUSTER {
        return Err(ClaimError::TooManyNextKernels { count: kernels.len() });
    }
    if let Some(bad) = kernels.iter().find_map(|k| {
        check_kernel(k).err().map(|e| ClaimError::Malformed {
            claim: NEXT_KERNEL_VERSIONS_CLAIM.into(),
            line: (*k).to_owned(),
            reason: e.to_string(),
        })
    }) {
        return Err(bad);
    }
    Ok((!kernels.is_empty()).then(|| kernels.join("\n")))
}

/// The next kernels a cluster claims (`value` of its next-kernel claim, if any), as the hub reads
/// them: trimmed like the kernel list, each line checked against the kernel grammar and refused
/// alone, at most [`MAX_NEXT_KERNELS_PER_CLUSTER`] kept (the first, sorted) and the cut reported
/// as [`ClaimError::TooManyNextKernels`]. No claim is no kernel and no problem.
pub fn decode_next_kernels(value: Option<&str>) -> DecodedKernels {
    let mut out = DecodedKernels::default();
    for line in value.into_iter().flat_map(lines_of) {
        match check_line(line) {
            Ok(kernel) => out.kernels.push(kernel.to_owned()),
            Err(reason) => out.refused.push(ClaimError::Malformed {
                claim: NEXT_KERNEL_VERSIONS_CLAIM.into(),
                line: line.to_owned(),
                reason,
            }),
        }
    }
    out.kernels.sort_unstable();
    out.kernels.dedup();
    if out.kernels.len() > MAX_NEXT_KERNELS_PER_CLUSTER {
        out.refused.push(ClaimError::TooManyNextKernels {
            count: out.kernels.len(),
        });
        out.kernels.truncate(MAX_NEXT_KERNELS_PER_CLUSTER);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use rstest::rstest;

    use super::*;

    fn decode(claims: &[(String, String)]) -> Result<Vec<String>, ClaimError> {
        let map: BTreeMap<&str, &str> = claims.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        decode_kernel_claims(|name| map.get(name).copied())
    }

    fn kernels(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("5.14.0-{i}.el9_{i}.x86_64")).collect()
    }

    #[test]
    fn a_short_list_is_upstreams_single_claim() {
        let claims = encode_kernel_claims([
            "6.1.0-18-cloud-amd64",
            "5.14.0-70.el9.x86_64",
            "6.1.0-18-cloud-amd64",
        ])
        .unwrap();
        assert_eq!(
            claims,
            [(
                KERNEL_VERSIONS_CLAIM.to_owned(),
                "5.14.0-70.el9.x86_64\n6.1.0-18-cloud-amd64".to_owned()
            )]
        );
    }

    #[test]
    fn a_long_list_continues_and_reads_back() {
        let all = kernels(60);
        let claims = encode_kernel_claims(all.iter().map(String::as_str)).unwrap();
        assert!(claims.len() > 1, "60 kernels need several claims");
        assert!(claims.iter().all(|(_, v)| v.len() <= MAX_CLAIM_VALUE_LEN));
        assert_eq!(claims[1].0, "kernel-versions-2.kmm.node.kubernetes.io");
        assert!(claims[0].1.ends_with(&format!("\n+{}", claims.len() - 1)));
        let mut want = all.clone();
        want.sort();
        assert_eq!(decode(&claims).unwrap(), want);
    }

    #[test]
    fn stale_continuations_are_ignored_and_missing_ones_reported() {
        let mut claims = encode_kernel_claims(kernels(3).iter().map(String::as_str)).unwrap();
        claims.push((continuation_claim_name(2), "9.9.9-stale".into()));
        assert_eq!(decode(&claims).unwrap().len(), 3);

        let long = encode_kernel_claims(kernels(120).iter().map(String::as_str)).unwrap();
        let err = decode(&long[..1]).unwrap_err();
        assert_eq!(
            err,
            ClaimError::MissingContinuation {
                name: continuation_claim_name(2)
            }
        );
    }

    #[rstest]
    #[case(
        "5.14.0-1\nnot a kernel",
        "claim kernel-versions.kmm.node.kubernetes.io holds \"not a kernel\", which is not a kernel version: contains ' '"
    )]
    #[case(
        "5.14",
        "holds \"5.14\", which is not a kernel version: kernel version \"5.14\" must have at least three components"
    )]
    #[case(
        "5.14.0-1\n+x",
        "holds \"+x\", which is not a kernel version: a continuation line is + followed by a number"
    )]
    #[case("5.14.0-1\n+9", "at most 7 continuation claims are read")]
    fn malformed_claims_are_reported(#[case] value: &str, #[case] message: &str) {
        let err = decode(&[(KERNEL_VERSIONS_CLAIM.into(), value.into())]).unwrap_err();
        assert!(err.to_string().contains(message), "{err}");
    }

    #[test]
    fn missing_and_empty_claims_are_errors() {
        assert_eq!(decode(&[]).unwrap_err(), ClaimError::Missing);
        assert_eq!(
            decode(&[(KERNEL_VERSIONS_CLAIM.into(), "\n".into())]).unwrap_err(),
            ClaimError::NoKernels
        );
        assert_eq!(
            encode_kernel_claims(["", " "]).unwrap_err(),
            ClaimError::NoKernels
        );
    }

    #[test]
    fn trailing_plus_is_trimmed_on_read() {
        let claims = [(KERNEL_VERSIONS_CLAIM.to_owned(), "6.1.58+\n6.1.58".to_owned())];
        assert_eq!(decode(&claims).unwrap(), ["6.1.58"]);
    }

    #[test]
    fn a_bad_line_is_refused_alone_and_the_rest_still_count() {
        let map = [(
            KERNEL_VERSIONS_CLAIM.to_owned(),
            "5.14.0-70.el9.x86_64\n5.14.0-70.el9.x86/64\n5.14.0-$(id)\n6.1.0-18-cloud-amd64".to_owned(),
        )];
        let map: BTreeMap<&str, &str> = map.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let got = decode_kernels(|name| map.get(name).copied()).unwrap();
        assert_eq!(got.kernels, ["5.14.0-70.el9.x86_64", "6.1.0-18-cloud-amd64"]);
        assert_eq!(got.refused.len(), 2, "{got:?}");
        assert!(got.refused[0].to_string().contains("'/'"), "{}", got.refused[0]);
        assert!(
            decode_kernel_claims(|name| map.get(name).copied()).is_err(),
            "the strict read fails"
        );
    }

    #[test]
    fn a_cluster_gets_at_most_the_kernel_cap() {
        let all = kernels(MAX_KERNELS_PER_CLUSTER + 10);
        let claims = encode_kernel_claims(all.iter().map(String::as_str)).unwrap();
        let map: BTreeMap<&str, &str> = claims.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let got = decode_kernels(|name| map.get(name).copied()).unwrap();
        assert_eq!(got.kernels.len(), MAX_KERNELS_PER_CLUSTER);
        assert_eq!(
            got.refused,
            [ClaimError::TooManyKernels {
                count: MAX_KERNELS_PER_CLUSTER + 10
            }]
        );
    }

    #[test]
    fn too_many_kernels_is_an_error() {
        let err = encode_kernel_claims(kernels(400).iter().map(String::as_str)).unwrap_err();
        assert_eq!(err, ClaimError::TooManyKernels { count: 400 });
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(list in proptest::collection::vec("[0-9]{1,2}\\.[0-9]{1,2}\\.[0-9]{1,3}-[a-z0-9._]{0,40}", 1..60)) {
            if let Ok(claims) = encode_kernel_claims(list.iter().map(String::as_str)) {
                prop_assert!(claims.iter().all(|(_, v)| v.len() <= MAX_CLAIM_VALUE_LEN && !v.is_empty()));
                let mut want: Vec<String> = list.iter().map(|k| trim_kernel(k).to_owned()).collect();
                want.sort();
                want.dedup();
                prop_assert_eq!(decode(&claims).unwrap(), want);
            }
        }

        #[test]
        fn decoding_never_panics(value in ".{0,300}", extra in ".{0,50}") {
            let claims = [(KERNEL_VERSIONS_CLAIM.to_owned(), value), (continuation_claim_name(2), extra)];
            let _ = decode(&claims);
        }
    }

    #[test]
    fn next_kernels_share_the_kernel_lines_and_read_back() {
        let value = encode_next_kernel_claim([
            "6.1.0-29-cloud-amd64",
            " 5.14.0-70.el9.x86_64 ",
            "6.1.0-29-cloud-amd64",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(value, "5.14.0-70.el9.x86_64\n6.1.0-29-cloud-amd64");
        let read = decode_next_kernels(Some(&value));
        assert_eq!(read.kernels, ["5.14.0-70.el9.x86_64", "6.1.0-29-cloud-amd64"]);
        assert!(read.refused.is_empty());
        assert_eq!(
            NEXT_KERNEL_VERSIONS_CLAIM.split_once('.').unwrap().1,
            KERNEL_VERSIONS_CLAIM.split_once('.').unwrap().1,
            "one reserved suffix covers both"
        );
        assert!(
            NEXT_KERNEL_VERSIONS_CLAIM > continuation_claim_name(MAX_KERNEL_CLAIMS + 1).as_str(),
            "cut first"
        );
    }

    #[test]
    fn no_next_kernel_is_no_claim_and_no_problem() {
        assert_eq!(encode_next_kernel_claim(["", " "]).unwrap(), None);
        assert_eq!(decode_next_kernels(None), DecodedKernels::default());
        assert_eq!(decode_next_kernels(Some("\n")), DecodedKernels::default());
    }

    #[test]
    fn the_longest_next_kernel_list_fits_one_claim() {
        let longest: Vec<String> = (0..MAX_NEXT_KERNELS_PER_CLUSTER)
            .map(|i| format!("{i}{}", "a".repeat(MAX_KERNEL_LEN - 1)))
            .collect();
        let value = encode_next_kernel_claim(longest.iter().map(String::as_str))
            .unwrap()
            .unwrap();
        assert!(value.len() <= MAX_CLAIM_VALUE_LEN);
        let more = kernels(MAX_NEXT_KERNELS_PER_CLUSTER + 1);
        assert_eq!(
            encode_next_kernel_claim(more.iter().map(String::as_str)).unwrap_err(),
            ClaimError::TooManyNextKernels {
                count: MAX_NEXT_KERNELS_PER_CLUSTER + 1
            }
        );
        assert!(matches!(
            encode_next_kernel_claim(["6.1.0;id"]).unwrap_err(),
            ClaimError::Malformed { .. }
        ));
    }

    /// A spoke is trusted less than the hub: a thousand claimed kernels give the hub eight, bad
    /// lines are refused one by one, and the cut is reported.
    #[test]
    fn the_hub_takes_a_bounded_checked_next_kernel_list() {
        let mut lines = kernels(1000);
        lines.push("6.1.0-$(id)".into());
        lines.push("+3".into());
        let got = decode_next_kernels(Some(&lines.join("\n")));
        assert_eq!(got.kernels.len(), MAX_NEXT_KERNELS_PER_CLUSTER);
        let mut want = kernels(1000);
        want.sort();
        assert_eq!(got.kernels, want[..MAX_NEXT_KERNELS_PER_CLUSTER]);
        assert_eq!(got.refused.len(), 3, "{:?}", got.refused);
        assert!(
            got.refused[0].to_string().contains(NEXT_KERNEL_VERSIONS_CLAIM),
            "{}",
            got.refused[0]
        );
        assert_eq!(got.refused[2], ClaimError::TooManyNextKernels { count: 1000 });
    }
}
