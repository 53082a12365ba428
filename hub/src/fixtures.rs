//! Builders for the hub's unit tests: MCMs from YAML, clusters with kernel claims, pins. One
//! place, so every test module builds its objects the same way.

use std::collections::BTreeMap;

use kmm_api::{
    ManagedClusterModule,
    ocm::{
        KERNEL_VERSIONS_CLAIM, ManagedCluster, ManagedClusterClaim, ManagedClusterSpec, ManagedClusterStatus,
    },
};

use crate::{mcm_controller::desired::plan::Pin, registry::RegistryError};

/// A kernel the build fixtures resolve.
pub const K: &str = "6.1.0-28-cloud-amd64";
/// The image [`mk_build_mcm`] maps [`K`] to.
pub const FINAL: &str = "reg.example/kmod:6.1.0-28-cloud-amd64";
/// The unsigned intermediate of [`mk_build_mcm`] with [`BUILD`] and [`SIGN`].
pub const UNSIGNED: &str = "reg.example/kmod:6.1.0-28-cloud-amd64-drivers_m_kmm_unsigned";

/// A `build` section for [`mk_build_mcm`]'s mapping.
pub const BUILD: &str = "            build:\n              dockerfileConfigMap: {name: df}\n\
                         \x20             buildArgs: [{name: EXTRA, value: '1'}]\n              secrets: [{name: token}]\n\
                         \x20             baseImageRegistryTLS: {insecure: true}\n              selector: {builder: 'yes'}\n";
/// A `sign` section for [`mk_build_mcm`]'s mapping.
pub const SIGN: &str = "            sign:\n              keySecret: {name: key}\n              certSecret: {name: cert}\n\
                        \x20             filesToSign: ['/opt/lib/modules/${KERNEL_FULL_VERSION}/my_kmod.ko']\n";

/// MCM `m` mapping every kernel to `image` (the rollout's revision tests vary only the image).
pub fn mcm_with_image(image: &str) -> ManagedClusterModule {
    mk_mcm(&format!(
        "apiVersion: hub.kmm.sigs.x-k8s.io/v1beta1\nkind: ManagedClusterModule\n\
         metadata: {{name: m}}\nspec: {{spokeNamespace: s, selector: {{}}, moduleSpec: {{selector: {{}},\n\
         moduleLoader: {{container: {{modprobe: {{moduleName: k}}, kernelMappings: [{{regexp: '^.+$', containerImage: '{image}'}}]}}}}}}}}\n"
    ))
}

/// An MCM parsed from YAML, with a uid (as the API server gives it).
pub fn mk_mcm(yaml: &str) -> ManagedClusterModule {
    let mut mcm: ManagedClusterModule = serde_saphyr::from_str(yaml).expect("MCM fixture parses");
    mcm.metadata.uid = Some("uid-1".into());
    mcm
}

/// An MCM named `name` selecting every cluster, with one regexp mapping for every kernel to
/// `reg.example/kmod:<kernel>` followed by `mapping` ([`BUILD`], [`SIGN`], both or nothing).
pub fn mk_build_mcm(name: &str, mapping: &str) -> ManagedClusterModule {
    mk_mcm(&format!(
        "apiVersion: hub.kmm.sigs.x-k8s.io/v1beta1\nkind: ManagedClusterModule\nmetadata: {{name: {name}}}\n\
         spec:\n  spokeNamespace: drivers\n  selector: {{}}\n  moduleSpec:\n    selector: {{}}\n\
         \x20   imageRepoSecret: {{name: push-creds}}\n    moduleLoader:\n      container:\n\
         \x20       modprobe: {{moduleName: my_kmod}}\n        kernelMappings:\n          - regexp: '^.+$'\n\
         \x20           containerImage: reg.example/kmod:${{KERNEL_FULL_VERSION}}\n{mapping}"
    ))
}

/// A ManagedCluster with `labels` and, when given, the kernel ClusterClaim `claim`.
pub fn mk_cluster(name: &str, labels: &[(&str, &str)], claim: Option<&str>) -> ManagedCluster {
    let mut mc = ManagedCluster::new(name, ManagedClusterSpec::default());
    mc.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    mc.status = Some(ManagedClusterStatus {
        cluster_claims: claim
            .map(|v| ManagedClusterClaim {
                name: KERNEL_VERSIONS_CLAIM.into(),
                value: v.into(),
            })
            .into_iter()
            .collect(),
        ..Default::default()
    });
    mc
}

/// Registry answers by image.
pub fn pins(entries: &[(&str, Pin)]) -> BTreeMap<String, Pin> {
    entries.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// A lookup the registry did not answer, for `reason`.
pub fn lookup_failed(reason: &str) -> Pin {
    Pin::Failed(
        RegistryError::Lookup {
            image: "reg.example/kmod".into(),
            reason: reason.into(),
        }
        .into(),
    )
}
