//! Kernel-mapping resolution: which image (and build, sign, TLS and in-tree removals) serves a
//! given kernel, with the same rules as upstream KMM.
//!
//! Rules, in the order they apply:
//! 1. One trailing `+` is stripped from the kernel version before anything else ([`trim_kernel`]).
//! 2. Mappings are tried in list order and the first hit wins; `literal` must equal the kernel,
//!    `regexp` is an unanchored RE2 search. Regexps are compiled for the whole list up front, so an
//!    invalid one is reported even when an earlier mapping matches (upstream only notices it when
//!    it gets that far).
//! 3. Build, sign, registry TLS and in-tree removals merge container-level defaults with the
//!    mapping ([`merge`]); the image and sign fields are then expanded with the variables of
//!    [`KernelVars`] (see [`template`]).

pub mod grammar;
pub mod merge;
pub mod template;

use regex::Regex;
use thiserror::Error;

use crate::module::{Build, KernelMapping, ModuleLoaderContainerSpec, ModuleSpec, Sign, TlsOptions};
pub use template::TemplateError;

/// Why no loader data could be resolved for a kernel.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MappingError {
    /// No kernel mapping matches: the kernel is simply not targeted.
    #[error("no kernel mapping matches kernel {kernel}")]
    NoMapping { kernel: String },
    /// A mapping's regexp does not compile.
    #[error("kernelMappings[{index}].regexp {regexp:?} is not a valid regular expression: {reason}")]
    InvalidRegexp {
        index: usize,
        regexp: String,
        reason: String,
    },
    /// The regexps together exceed what one Module may make the hub compile.
    #[error(
        "kernelMappings hold {count} regexps of {bytes} bytes in all; at most {MAX_REGEXPS} regexps of {MAX_REGEXP_BYTES} bytes in all are compiled per Module"
    )]
    RegexpBudget { count: usize, bytes: usize },
    /// The kernel version does not split into at least three components.
    #[error("kernel version {kernel:?} must have at least three components separated by '.', ',' or '-'")]
    KernelFormat { kernel: String },
    /// Neither the mapping nor the container sets an image.
    #[error("kernelMappings[{index}] has no containerImage and the container sets none")]
    NoImage { index: usize },
    /// A templated field does not expand.
    #[error("kernelMappings[{index}]: {field}: {source}")]
    Template {
        index: usize,
        field: &'static str,
        #[source]
        source: TemplateError,
    },
    /// The spec has no `moduleLoader`, so nothing is loaded.
    #[error("the Module has no moduleLoader")]
    NoModuleLoader,
    /// build+sign needs an intermediate image name, and this image cannot carry one.
    #[error("kernelMappings[{index}]: {reason}")]
    UnsignedImageName { index: usize, reason: String },
}

impl MappingError {
    /// "Not targeted" rather than a problem with the spec.
    pub fn is_no_mapping(&self) -> bool {
        matches!(self, Self::NoMapping { .. })
    }
}

/// Most regexps the kernel mappings of one Module may hold. Every regexp is compiled on every
/// render of every MCM, so one author must not be able to make the hub spend seconds and
/// gigabytes on theirs (500 large regexps took 37 s and 1.97 GB before these limits).
pub const MAX_REGEXPS: usize = 100;
/// Most bytes all regexps of one Module may hold together.
pub const MAX_REGEXP_BYTES: usize = 16 * 1024;
/// Compiled size allowed per regexp (the `regex` crate's default is 10 MiB).
pub const REGEXP_SIZE_LIMIT: usize = 1 << 20;

/// Checks the regexps of `mappings` against [`MAX_REGEXPS`] and [`MAX_REGEXP_BYTES`].
pub fn check_regexp_budget(mappings: &[KernelMapping]) -> Result<(), MappingError> {
    let regexps = mappings
        .iter()
        .filter_map(|m| m.regexp.as_deref().filter(|r| !r.is_empty()));
    let (count, bytes) = regexps.fold((0, 0), |(n, b), r| (n + 1, b + r.len()));
    if count > MAX_REGEXPS || bytes > MAX_REGEXP_BYTES {
        return Err(MappingError::RegexpBudget { count, bytes });
    }
    Ok(())
}

/// Strips one trailing `+` (GKE COS kernels end in one; upstream trims it everywhere).
pub fn trim_kernel(kernel: &str) -> &str {
    kernel.strip_suffix('+').unwrap_or(kernel)
}

/// Replaces every character outside `[A-Za-z0-9._-]` with `_`: the one spelling of a kernel
/// the hub uses for image tags, build arguments and Job names alike. Within the
/// [`grammar`] only `+` changes, so `a+b` and `a_b` share a spelling (the hub refuses the second
/// cluster that reports such a pair, see `claims`).
pub fn normalize_kernel(kernel: &str) -> String {
    kernel
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The kernel substitution variables for one (trimmed) kernel version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelVars {
    /// `KERNEL_FULL_VERSION` and `KERNEL_VERSION`: the normalized kernel.
    pub full: String,
    /// `KERNEL_XYZ`: the first three components joined with `.`.
    pub xyz: String,
    /// `KERNEL_X`, `KERNEL_Y`, `KERNEL_Z`.
    pub x: String,
    pub y: String,
    pub z: String,
}

impl KernelVars {
    /// Splits the normalized kernel on `.`, `,` and `-`; fewer than three components is an error.
    pub fn new(kernel: &str) -> Result<Self, MappingError> {
        let full = normalize_kernel(kernel);
        let parts: Vec<&str> = full.split(['.', ',', '-']).collect();
        let [x, y, z, ..] = parts.as_slice() else {
            return Err(MappingError::KernelFormat {
                kernel: kernel.to_owned(),
            });
        };
        let (x, y, z) = (x.to_string(), y.to_string(), z.to_string());
        Ok(Self {
            xyz: format!("{x}.{y}.{z}"),
            x,
            y,
            z,
            full,
        })
    }

    /// Variables offered to sign fields (`unsignedImage`, `filesToSign`).
    pub fn kernel_vars(&self) -> [(&str, &str); 6] {
        [
            ("KERNEL_FULL_VERSION", self.full.as_str()),
            ("KERNEL_VERSION", self.full.as_str()),
            ("KERNEL_XYZ", self.xyz.as_str()),
            ("KERNEL_X", self.x.as_str()),
            ("KERNEL_Y", self.y.as_str()),
            ("KERNEL_Z", self.z.as_str()),
        ]
    }

    /// Variables offered to `containerImage`: the kernel ones plus `MOD_NAME` and `MOD_NAMESPACE`.
    pub fn image_vars<'a>(&'a self, name: &'a str, namespace: &'a str) -> [(&'a str, &'a str); 8] {
        let [a, b, c, d, e, f] = self.kernel_vars();
        [a, b, c, d, e, f, ("MOD_NAME", name), ("MOD_NAMESPACE", namespace)]
    }
}

/// Names offered to `containerImage` templates.
pub const IMAGE_VARIABLES: &[&str] = &[
    "KERNEL_FULL_VERSION",
    "KERNEL_VERSION",
    "KERNEL_XYZ",
    "KERNEL_X",
    "KERNEL_Y",
    "KERNEL_Z",
    "MOD_NAME",
    "MOD_NAMESPACE",
];
/// Names offered to sign templates: the kernel ones only, no `MOD_*` (as upstream).
pub const SIGN_VARIABLES: &[&str] = IMAGE_VARIABLES.split_at(6).0;

/// Everything needed to get the module onto a node running `kernel`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedMapping {
    /// Kernel version, trailing `+` trimmed.
    pub kernel: String,
    /// Index of the mapping that matched.
    pub mapping_index: usize,
    /// Image the node loads from, variables expanded.
    pub container_image: String,
    /// Build, merged from container and mapping.
    pub build: Option<Build>,
    /// Sign, merged from container and mapping, `unsignedImage` and `filesToSign` expanded.
    pub sign: Option<Sign>,
    /// Registry TLS of `container_image`.
    pub registry_tls: TlsOptions,
    /// In-tree modules to unload before loading.
    pub in_tree_modules_to_remove: Vec<String>,
}

impl ResolvedMapping {
    /// Image a build pushes to: the final image, or the unsigned intermediate when it is also
    /// signed (see [`unsigned_image_name`]).
    pub fn build_target(&self, name: &str, namespace: &str) -> Result<Option<String>, MappingError> {
        match (&self.build, &self.sign) {
            (None, _) => Ok(None),
            (Some(_), None) => Ok(Some(self.container_image.clone())),
            (Some(_), Some(_)) => unsigned_image_name(&self.container_image, namespace, name)
                .map(Some)
                .map_err(|reason| MappingError::UnsignedImageName {
                    index: self.mapping_index,
                    reason,
                }),
        }
    }

    /// Image the signer reads: the build's intermediate image, or `sign.unsignedImage`.
    pub fn sign_source(&self, name: &str, namespace: &str) -> Result<Option<String>, MappingError> {
        match (&self.build, &self.sign) {
            (_, None) => Ok(None),
            (Some(_), Some(_)) => self.build_target(name, namespace),
            (None, Some(sign)) => Ok(sign.unsigned_image.clone().filter(|s| !s.is_empty())),
        }
    }
}

/// The kernel mappings of one Module, regexps compiled once, ready to resolve many kernels.
#[derive(Debug, Clone)]
pub struct KernelMapper<'a> {
    container: &'a ModuleLoaderContainerSpec,
    regexps: Vec<Option<Regex>>,
    name: &'a str,
    namespace: &'a str,
}

impl<'a> KernelMapper<'a> {
    /// Compiles every regexp of the Module named `namespace/name`.
    pub fn new(spec: &'a ModuleSpec, name: &'a str, namespace: &'a str) -> Result<Self, MappingError> {
        let container = &spec
            .module_loader
            .as_ref()
            .ok_or(MappingError::NoModuleLoader)?
            .container;
        check_regexp_budget(&container.kernel_mappings)?;
        let regexps = container
            .kernel_mappings
            .iter()
            .enumerate()
            .map(|(index, m)| compile_mapping_regexp(index, m))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            container,
            regexps,
            name,
            namespace,
        })
    }

    /// Index of the first mapping matching an already-trimmed kernel.
    pub fn find(&self, kernel: &str) -> Option<usize> {
        self.container
            .kernel_mappings
            .iter()
            .zip(&self.regexps)
            .position(
                |(m, re)| match (m.literal.as_deref().filter(|l| !l.is_empty()), re) {
                    (Some(literal), _) => literal == kernel,
                    (None, Some(re)) => re.is_match(kernel),
                    (None, None) => false,
                },
            )
    }

    /// Loader data for `kernel` as a node reports it (one trailing `+` is trimmed first).
    pub fn resolve(&self, kernel: &str) -> Result<ResolvedMapping, MappingError> {
        self.resolve_trimmed(trim_kernel(kernel))
    }

    /// Loader data for a kernel already trimmed (from the kernel claims, which are decoded
    /// trimmed): trimming again would turn `1.2.3++` into `1.2.3` where the node looks up `1.2.3+`.
    pub fn resolve_trimmed(&self, kernel: &str) -> Result<ResolvedMapping, MappingError> {
        let index = self.find(kernel).ok_or_else(|| MappingError::NoMapping {
            kernel: kernel.to_owned(),
        })?;
        let mapping = &self.container.kernel_mappings[index];
        let vars = KernelVars::new(kernel)?;
        let template_err = |field| move |source| MappingError::Template { index, field, source };

        let image = mapping
            .container_image
            .as_deref()
            .filter(|i| !i.is_empty())
            .or(self
                .container
                .container_image
                .as_deref()
                .filter(|i| !i.is_empty()))
            .ok_or(MappingError::NoImage { index })?;
        let container_image = template::expand(image, &vars.image_vars(self.name, self.namespace))
            .map_err(template_err("containerImage"))?;

        let sign = match merge::sign(self.container.sign.as_ref(), mapping.sign.as_ref()) {
            Some(mut sign) => {
                let kv = vars.kernel_vars();
                if let Some(unsigned) = &sign.unsigned_image {
                    sign.unsigned_image =
                        Some(template::expand(unsigned, &kv).map_err(template_err("sign.unsignedImage"))?);
                }
                if let Some(files) = &sign.files_to_sign {
                    sign.files_to_sign = Some(
                        files
                            .iter()
                            .map(|f| template::expand(f, &kv))
                            .collect::<Result<_, _>>()
                            .map_err(template_err("sign.filesToSign"))?,
                    );
                }
                Some(sign)
            }
            None => None,
        };

        Ok(ResolvedMapping {
            kernel: kernel.to_owned(),
            mapping_index: index,
            container_image,
            build: merge::build(self.container.build.as_ref(), mapping.build.as_ref()),
            sign,
            registry_tls: mapping
                .registry_tls
                .clone()
                .or_else(|| self.container.registry_tls.clone())
                .unwrap_or_default(),
            in_tree_modules_to_remove: merge::in_tree_modules_to_remove(self.container, mapping),
        })
    }
}

fn compile_mapping_regexp(index: usize, mapping: &KernelMapping) -> Result<Option<Regex>, MappingError> {
    match mapping.regexp.as_deref().filter(|r| !r.is_empty()) {
        None => Ok(None),
        Some(re) => regex::RegexBuilder::new(&expand_quoted(re))
            .size_limit(REGEXP_SIZE_LIMIT)
            .dfa_size_limit(REGEXP_SIZE_LIMIT)
            .build()
            .map(Some)
            .map_err(|e| MappingError::InvalidRegexp {
                index,
                regexp: re.to_owned(),
                reason: error_summary(&e.to_string()),
            }),
    }
}

/// RE2's `\Q...\E` (everything between is literal; a missing `\E` runs to the end), which
/// upstream's Go regexps accept and the `regex` crate does not, as escaped literal text.
pub fn expand_quoted(re: &str) -> std::borrow::Cow<'_, str> {
    if !re.contains("\\Q") {
        return std::borrow::Cow::Borrowed(re);
    }
    let mut out = String::with_capacity(re.len() + 8);
    let mut rest = re;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let escaped = &rest[i + 1..];
        match escaped.chars().next() {
            Some('Q') => {
                let quoted = &escaped[1..];
                let (literal, after) = quoted.split_once("\\E").unwrap_or((quoted, ""));
                out.push_str(&regex::escape(literal));
                rest = after;
            }
            Some(c) => {
                out.push('\\');
                out.push(c);
                rest = &escaped[c.len_utf8()..];
            }
            None => {
                out.push('\\');
                rest = "";
            }
        }
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

fn error_summary(s: &str) -> String {
    s.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
        .to_owned()
}

/// Resolves one kernel for the Module `namespace/name` (compiles the regexps each call; use
/// [`KernelMapper`] for many kernels).
pub fn resolve(
    spec: &ModuleSpec,
    name: &str,
    namespace: &str,
    kernel: &str,
) -> Result<ResolvedMapping, MappingError> {
    KernelMapper::new(spec, name, namespace)?.resolve(kernel)
}

/// Name of the unsigned intermediate image when one mapping both builds and signs:
/// `<image>:<tag>-<namespace>_<name>_kmm_unsigned`, or `<image>:<namespace>_<name>_kmm_unsigned`
/// when the image has no tag (the user documentation's rule).
pub fn unsigned_image_name(image: &str, namespace: &str, name: &str) -> Result<String, String> {
    let suffix = format!("{namespace}_{name}_kmm_unsigned");
    if image.contains('@') {
        return Err(format!(
            "image {image} is pinned by digest; a build target needs a tag to derive the unsigned image name"
        ));
    }
    let (repo, tag) = crate::image::split_tag(image);
    let tag = match tag {
        Some(tag) => format!("{tag}-{suffix}"),
        None => suffix,
    };
    if tag.len() > 128 {
        return Err(format!(
            "the unsigned image tag {tag:?} would be {} characters; OCI tags hold at most 128 \
             (shorten the image tag, the namespace or the name)",
            tag.len()
        ));
    }
    Ok(format!("{repo}:{tag}"))
}

#[cfg(test)]
mod tests;
