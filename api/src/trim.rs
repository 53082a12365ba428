//! The Module a spoke receives: the ManagedClusterModule's spec resolved for that cluster's
//! kernels, with nothing left for the spoke to build, sign or look up.
//!
//! Differences from upstream's ManifestWork rendering, each deliberate:
//! - the MCM is never modified; every cluster is rendered from the same input;
//! - `${MOD_NAMESPACE}` is the spoke namespace, for what is built and what is shipped alike
//!   (callers resolve build targets with the same [`KernelMapper`] arguments);
//! - every image the spoke pulls is pinned to a digest by the caller's `pin` lookup, and an image
//!   without a digest is an error, never a silent tag;
//! - a cluster none of whose kernels has a mapping is an error (upstream ships a Module with zero
//!   kernel mappings, which the spoke's CRD refuses);
//! - in-tree removals are resolved per mapping and the container-level fields (including the
//!   deprecated singular one) are cleared, so the result never mixes the two forms.

use thiserror::Error;

use crate::{
    kernel::{KernelMapper, MappingError},
    module::{DevicePluginContainerSpec, KernelMapping, ModuleSpec, TlsOptions},
};

/// Why a cluster's Module cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TrimError {
    /// The spec's kernel mappings are invalid (bad regexp, unknown variable, ...).
    #[error("{0}")]
    Mapping(#[from] MappingError),
    /// None of the cluster's kernels has a kernel mapping.
    #[error("no kernel mapping matches any of the cluster's kernels ({})", kernels.join(", "))]
    NoKernelMatches { kernels: Vec<String> },
    /// An image has no known digest yet (not built, or not looked up).
    #[error("image {image} has no digest yet")]
    NotPinned { image: String },
}

/// The Module spec for a cluster running `kernels`, for the Module `spoke_namespace/name`.
/// `pin` maps an image reference to its digest-pinned form (`repo@sha256:...`).
pub fn spoke_module_spec(
    spec: &ModuleSpec,
    name: &str,
    spoke_namespace: &str,
    kernels: &[String],
    pin: impl Fn(&str) -> Option<String>,
) -> Result<ModuleSpec, TrimError> {
    let pin_image = |image: &str| {
        pin(image).ok_or_else(|| TrimError::NotPinned {
            image: image.to_owned(),
        })
    };
    let mut out = spec.clone();
    if let Some(plugin) = out.device_plugin.as_mut() {
        pin_container(&mut plugin.container, &pin_image)?;
        if let Some(init) = plugin.init_container.as_mut() {
            pin_container(init, &pin_image)?;
        }
    }
    if let Some(dra) = out.dra.as_mut() {
        pin_container(&mut dra.container, &pin_image)?;
        if let Some(init) = dra.init_container.as_mut() {
            pin_container(init, &pin_image)?;
        }
    }
    let Some(loader) = out.module_loader.as_mut() else {
        return Ok(out);
    };

    let mapper = KernelMapper::new(spec, name, spoke_namespace)?;
    let mut mappings = Vec::with_capacity(kernels.len());
    for kernel in kernels {
        let resolved = match mapper.resolve_trimmed(kernel) {
            Ok(resolved) => resolved,
            Err(e) if e.is_no_mapping() => continue,
            Err(e) => return Err(e.into()),
        };
        if mappings
            .iter()
            .any(|m: &KernelMapping| m.literal.as_deref() == Some(resolved.kernel.as_str()))
        {
            continue; // `5.14.0` and `5.14.0+` are the same kernel once trimmed
        }
        mappings.push(KernelMapping {
            literal: Some(resolved.kernel.clone()),
            container_image: Some(pin_image(&resolved.container_image)?),
            registry_tls: (resolved.registry_tls != TlsOptions::default()).then_some(resolved.registry_tls),
            in_tree_modules_to_remove: (!resolved.in_tree_modules_to_remove.is_empty())
                .then_some(resolved.in_tree_modules_to_remove),
            ..Default::default()
        });
    }
    if mappings.is_empty() {
        return Err(TrimError::NoKernelMatches {
            kernels: kernels.to_vec(),
        });
    }
    let container = &mut loader.container;
    container.kernel_mappings = mappings;
    container.build = None;
    container.sign = None;
    container.container_image = None;
    container.in_tree_modules_to_remove = None;
    container.in_tree_module_to_remove = None;
    Ok(out)
}

fn pin_container(
    container: &mut DevicePluginContainerSpec,
    pin: &impl Fn(&str) -> Result<String, TrimError>,
) -> Result<(), TrimError> {
    container.image = pin(&container.image)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::LocalObjectReference;

    use super::*;
    use crate::module::{
        Build, DevicePluginSpec, ModprobeSpec, ModuleLoaderContainerSpec, ModuleLoaderSpec, Sign,
    };

    fn pin(image: &str) -> Option<String> {
        let repo = image.rsplit_once(':').map_or(image, |(r, _)| r);
        Some(format!("{repo}@sha256:{:064x}", image.len()))
    }

    fn mk_spec() -> ModuleSpec {
        ModuleSpec {
            module_loader: Some(ModuleLoaderSpec {
                container: ModuleLoaderContainerSpec {
                    modprobe: ModprobeSpec {
                        module_name: Some("my_kmod".into()),
                        ..Default::default()
                    },
                    container_image: Some("reg/${MOD_NAMESPACE}/kmod:${KERNEL_FULL_VERSION}".into()),
                    in_tree_module_to_remove: Some("old_kmod".into()),
                    build: Some(Build {
                        dockerfile_config_map: LocalObjectReference { name: "df".into() },
                        ..Default::default()
                    }),
                    sign: Some(Sign {
                        key_secret: LocalObjectReference { name: "k".into() },
                        cert_secret: LocalObjectReference { name: "c".into() },
                        files_to_sign: Some(vec!["/opt/x.ko".into()]),
                        ..Default::default()
                    }),
                    kernel_mappings: vec![
                        KernelMapping {
                            regexp: Some(r"\.el9".into()),
                            ..Default::default()
                        },
                        KernelMapping {
                            literal: Some("6.1.0-18-cloud-amd64".into()),
                            container_image: Some("other/kmod:debian".into()),
                            in_tree_modules_to_remove: Some(vec!["a".into(), "b".into()]),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                },
                service_account_name: None,
            }),
            device_plugin: Some(DevicePluginSpec {
                container: DevicePluginContainerSpec {
                    image: "reg/plugin:v1".into(),
                    ..Default::default()
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn container(spec: &ModuleSpec) -> &ModuleLoaderContainerSpec {
        &spec.module_loader.as_ref().expect("loader").container
    }

    #[test]
    fn renders_one_pinned_literal_mapping_per_kernel_without_build_or_sign() {
        let kernels = vec![
            "5.14.0-70.el9.x86_64".to_owned(),
            "6.1.0-18-cloud-amd64".to_owned(),
            "4.0.0-unmapped".to_owned(),
        ];
        let spec = mk_spec();
        let out = spoke_module_spec(&spec, "my-kmod", "spoke-ns", &kernels, pin).unwrap();
        let c = container(&out);
        assert!(c.build.is_none() && c.sign.is_none() && c.container_image.is_none());
        assert!(c.in_tree_module_to_remove.is_none() && c.in_tree_modules_to_remove.is_none());
        let literals: Vec<_> = c
            .kernel_mappings
            .iter()
            .map(|m| m.literal.as_deref().unwrap_or(""))
            .collect();
        assert_eq!(literals, ["5.14.0-70.el9.x86_64", "6.1.0-18-cloud-amd64"]);
        assert_eq!(
            c.kernel_mappings[0].container_image,
            pin("reg/spoke-ns/kmod:5.14.0-70.el9.x86_64"),
            "MOD_NAMESPACE is the spoke namespace"
        );
        assert!(
            c.kernel_mappings
                .iter()
                .all(|m| m.regexp.is_none() && m.build.is_none() && m.sign.is_none())
        );
        assert_eq!(
            c.kernel_mappings[0].in_tree_modules_to_remove,
            Some(vec!["old_kmod".to_owned()])
        );
        assert_eq!(
            c.kernel_mappings[1].in_tree_modules_to_remove,
            Some(vec!["old_kmod".to_owned()])
        );
        assert_eq!(
            out.device_plugin.expect("plugin").container.image,
            pin("reg/plugin:v1").unwrap()
        );
        assert_eq!(spec, mk_spec(), "the input is never modified");
    }

    #[test]
    fn rendering_one_cluster_does_not_leak_into_the_next() {
        let spec = mk_spec();
        let first = spoke_module_spec(&spec, "m", "ns", &["5.14.0-1.el9".to_owned()], pin).unwrap();
        let second = spoke_module_spec(&spec, "m", "ns", &["6.1.0-18-cloud-amd64".to_owned()], pin).unwrap();
        assert_eq!(container(&first).kernel_mappings.len(), 1);
        assert_eq!(
            container(&second).kernel_mappings[0].literal.as_deref(),
            Some("6.1.0-18-cloud-amd64")
        );
    }

    #[test]
    fn no_matching_kernel_and_unpinned_images_are_errors() {
        let spec = mk_spec();
        let err = spoke_module_spec(&spec, "m", "ns", &["4.0.0-x".to_owned()], pin).unwrap_err();
        assert_eq!(
            err,
            TrimError::NoKernelMatches {
                kernels: vec!["4.0.0-x".into()]
            }
        );
        let err = spoke_module_spec(&spec, "m", "ns", &["5.14.0-1.el9".to_owned()], |_| None).unwrap_err();
        assert_eq!(
            err,
            TrimError::NotPinned {
                image: "reg/plugin:v1".into()
            }
        );
    }

    #[test]
    fn a_node_kernel_ending_in_plus_signs_finds_the_literal_the_hub_ships() {
        // What the spoke claims, what the hub decodes and ships, what the node then looks up.
        for reported in [
            "5.14.0-1.el9",
            "5.14.0-1.el9+",
            "5.14.0-1.el9++",
            "5.14.0-1.el9+++",
        ] {
            let claims = crate::claims::encode_kernel_claims([reported, "5.14.0-1.el9"]).unwrap();
            let kernels = crate::claims::decode_kernel_claims(|name| {
                claims.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
            })
            .unwrap();
            let out = spoke_module_spec(&mk_spec(), "m", "ns", &kernels, pin).unwrap();
            let mapper = KernelMapper::new(&out, "m", "ns").unwrap();
            let found = mapper.resolve(reported).unwrap();
            assert_eq!(
                found.kernel,
                reported.strip_suffix('+').unwrap_or(reported),
                "{reported}"
            );
            assert_eq!(
                container(&out).kernel_mappings.len(),
                kernels.len(),
                "one mapping per distinct trimmed kernel for {reported}"
            );
        }
    }
}
