//! Digest pinning against a real CNCF distribution registry (Debian `docker-registry`), with
//! skopeo as the independent oracle for what the digest must be.

mod support;

use std::{sync::Arc, time::Duration};

use kmm_api::module::TlsOptions;
use kmm_hub::registry::{DigestResolver, RegistryError};
use oci_client::secrets::RegistryAuth;
use support::start_registry;

const INSECURE: TlsOptions = TlsOptions {
    insecure: true,
    insecure_skip_tls_verify: false,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_tags_to_the_digest_skopeo_reports_and_caches_them() {
    let registry = start_registry("pin");
    let digest = registry.push_labelled("kmm/kmod:5.14.0").unwrap();
    let resolver = DigestResolver::new(Duration::from_secs(600));
    let image = format!("{}/kmm/kmod:5.14.0", registry.host);

    let pinned = resolver
        .pin(&image, &INSECURE, &RegistryAuth::Anonymous)
        .await
        .unwrap();
    assert_eq!(pinned, format!("{}/kmm/kmod@{digest}", registry.host));
    assert_eq!(resolver.lookups(), 1);

    let again = resolver
        .pin(&image, &INSECURE, &RegistryAuth::Anonymous)
        .await
        .unwrap();
    assert_eq!(again, pinned);
    assert_eq!(resolver.lookups(), 1, "the second ask is served from the cache");

    assert_eq!(
        resolver
            .pin(&pinned, &INSECURE, &RegistryAuth::Anonymous)
            .await
            .unwrap(),
        pinned
    );
    assert_eq!(resolver.lookups(), 1, "a digest reference needs no lookup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_callers_share_one_lookup() {
    let registry = start_registry("concurrent");
    let digest = registry.push_labelled("kmm/kmod:6.1.0").unwrap();
    let resolver = Arc::new(DigestResolver::new(Duration::from_secs(600)));
    let image = format!("{}/kmm/kmod:6.1.0", registry.host);
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (resolver, image) = (resolver.clone(), image.clone());
            tokio::spawn(async move { resolver.pin(&image, &INSECURE, &RegistryAuth::Anonymous).await })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap().unwrap().ends_with(&digest));
    }
    assert_eq!(
        resolver.lookups(),
        1,
        "200 clusters asking for one image cost one registry request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_entries_are_looked_up_again() {
    let registry = start_registry("ttl");
    registry.push_labelled("kmm/kmod:v1").unwrap();
    let resolver = DigestResolver::new(Duration::ZERO);
    let image = format!("{}/kmm/kmod:v1", registry.host);
    resolver
        .pin(&image, &INSECURE, &RegistryAuth::Anonymous)
        .await
        .unwrap();
    resolver
        .pin(&image, &INSECURE, &RegistryAuth::Anonymous)
        .await
        .unwrap();
    assert_eq!(resolver.lookups(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_images_and_unreachable_registries_are_told_apart() {
    let registry = start_registry("errors");
    registry.push_labelled("kmm/kmod:v1").unwrap();
    let resolver = DigestResolver::new(Duration::from_secs(600));

    let missing = format!("{}/kmm/kmod:not-built-yet", registry.host);
    let err = resolver
        .pin(&missing, &INSECURE, &RegistryAuth::Anonymous)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        RegistryError::NotFound {
            image: missing.clone()
        }
    );
    assert!(!err.is_transient());

    let closed = format!("127.0.0.1:{}/kmm/kmod:v1", kmm_test_kit::free_port().unwrap());
    let err = resolver
        .pin(&closed, &INSECURE, &RegistryAuth::Anonymous)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Lookup { .. }), "{err:?}");
    assert!(err.is_transient());

    let err = resolver
        .pin("Not A Reference", &INSECURE, &RegistryAuth::Anonymous)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::InvalidReference { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_named_insecure_is_reached_over_plain_http_without_tls_fields() {
    let registry = start_registry("insecure-host");
    let digest = registry.push_labelled("kmm/plugin:1").unwrap();
    let image = format!("{}/kmm/plugin:1", registry.host);
    let default_tls = TlsOptions::default();

    // Without the setting, an image with no TLS fields is looked up over HTTPS and fails.
    let strict = DigestResolver::new(Duration::from_secs(600));
    let err = strict
        .pin(&image, &default_tls, &RegistryAuth::Anonymous)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Lookup { .. }), "{err:?}");

    let lenient =
        DigestResolver::new(Duration::from_secs(600)).with_insecure_hosts(vec![registry.host.clone()]);
    let pinned = lenient
        .pin(&image, &default_tls, &RegistryAuth::Anonymous)
        .await
        .unwrap();
    assert_eq!(pinned, format!("{}/kmm/plugin@{digest}", registry.host));
}
