use serde_json::Value;

use super::*;
use crate::{
    fixtures::{BUILD, FINAL, K, SIGN, UNSIGNED, mk_build_mcm, pins},
    mcm_controller::desired::plan::Pin,
};

/// A JSON array of strings.
fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect()
}

fn settings() -> JobSettings {
    JobSettings::new("kmm-hub", "buildah:v1", "kmm-hub:v1")
}

#[test]
fn the_build_job_carries_args_mounts_selector_and_no_retries() {
    let mcm = mk_build_mcm("m", BUILD);
    let step = step_for(&mcm, &resolve(&mcm, K).unwrap(), &pins(&[(FINAL, Pin::Missing)])).unwrap();
    let job = job(&mcm, &step, None, &settings());
    let v: Value = serde_json::to_value(&job).unwrap();
    assert_eq!(v["metadata"]["namespace"], "kmm-hub");
    assert_eq!(v["metadata"]["labels"][MCM_NAME_LABEL], "m");
    assert_eq!(v["metadata"]["annotations"][JOB_IMAGE_ANNOTATION], FINAL);
    assert_eq!(v["spec"]["backoffLimit"], 0);
    let pod = &v["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["nodeSelector"]["builder"], "yes");
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "buildah:v1");
    let args = strings(&c["args"]);
    assert_eq!(args[..3], ["-c", BUILD_SCRIPT, "kmm-build"]);
    for want in [
        format!("--build-arg=KERNEL_FULL_VERSION={K}"),
        format!("--build-arg=KERNEL_VERSION={K}"),
        "--build-arg=MOD_NAME=m".into(),
        "--build-arg=MOD_NAMESPACE=drivers".into(),
        "--build-arg=EXTRA=1".into(),
    ] {
        assert!(args.contains(&want.as_str()), "{want} missing from {args:?}");
    }
    let mounts: Vec<(&str, &str)> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["mountPath"].as_str().unwrap()))
        .collect();
    assert!(mounts.contains(&("dockerfile", "/workspace")));
    assert!(mounts.contains(&("build-secret-0", "/run/secrets/token")));
    assert!(mounts.contains(&("registry-auth", "/run/kmm/auth")));
    let env: BTreeMap<&str, &str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
        .collect();
    assert_eq!(env["KMM_IMAGE"], FINAL);
    assert_eq!(env["KMM_BASE_TLS_VERIFY"], "false");
    assert_eq!(env["KMM_PUSH_TLS_VERIFY"], "true");
}

#[test]
fn the_sign_job_runs_sign_image_with_the_key_and_cert_mounted() {
    let mcm = mk_build_mcm("m", &format!("{BUILD}{SIGN}"));
    let step = step_for(
        &mcm,
        &resolve(&mcm, K).unwrap(),
        &pins(&[
            (FINAL, Pin::Missing),
            (UNSIGNED, Pin::Pinned("u@sha256:2".into())),
        ]),
    )
    .unwrap();
    let v: Value = serde_json::to_value(job(&mcm, &step, None, &settings())).unwrap();
    let c = &v["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "kmm-hub:v1");
    let args = strings(&c["args"]);
    assert_eq!(args[0], "sign-image");
    assert!(args.contains(&format!("--unsigned-image={UNSIGNED}").as_str()));
    assert!(args.contains(&format!("--image={FINAL}").as_str()));
    assert!(
        args.contains(&format!("--file-to-sign=/opt/lib/modules/{K}/my_kmod.ko").as_str()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--key=/run/kmm/signing-key/key")
            && args.contains(&"--cert=/run/kmm/signing-cert/cert")
    );
    let vols: Vec<&str> = v["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["secret"]["secretName"].as_str().unwrap_or_default())
        .collect();
    assert!(vols.contains(&"key") && vols.contains(&"cert") && vols.contains(&"push-creds"));
}

#[test]
fn jobs_are_hardened_keys_0400_no_token_bounded_in_time_and_resources() {
    let mcm = mk_build_mcm("m", &format!("{BUILD}{SIGN}"));
    let sign = step_for(
        &mcm,
        &resolve(&mcm, K).unwrap(),
        &pins(&[
            (FINAL, Pin::Missing),
            (UNSIGNED, Pin::Pinned("u@sha256:2".into())),
        ]),
    )
    .unwrap();
    let build = step_for(
        &mcm,
        &resolve(&mcm, K).unwrap(),
        &pins(&[(FINAL, Pin::Missing), (UNSIGNED, Pin::Missing)]),
    )
    .unwrap();
    for step in [sign, build] {
        let v: Value = serde_json::to_value(job(&mcm, &step, None, &settings())).unwrap();
        let pod = &v["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false, "{step:?}");
        assert_eq!(v["spec"]["activeDeadlineSeconds"], 3600);
        let c = &pod["containers"][0];
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["resources"]["limits"]["memory"], "4Gi");
        assert_eq!(c["resources"]["requests"]["cpu"], "250m");
        for vol in pod["volumes"].as_array().unwrap() {
            if vol["secret"].is_object() {
                assert_eq!(vol["secret"]["defaultMode"], 0o400, "{vol}");
                let name = vol["secret"]["secretName"].as_str().unwrap_or_default();
                if matches!(name, "key" | "cert") {
                    let items = vol["secret"]["items"].as_array().unwrap();
                    assert_eq!(items.len(), 1, "only the key the signer reads: {vol}");
                    assert_eq!(items[0]["mode"], 0o400);
                }
            }
        }
    }
}

/// The image runs sign-image as a non-root user; the root-owned 0400 key files are only
/// readable to it through the pod's fsGroup. The UID is the one manifests/hub declares.
#[test]
fn the_sign_pod_runs_as_the_hub_images_user_with_the_keys_group_readable() {
    let manifest = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/hub/deployment.yaml"
    ))
    .unwrap();
    assert!(
        manifest.contains(&format!("runAsUser: {HUB_IMAGE_UID}")),
        "{manifest}"
    );
    let mcm = mk_build_mcm("m", &format!("{BUILD}{SIGN}"));
    let resolved = resolve(&mcm, K).unwrap();
    let sign = step_for(
        &mcm,
        &resolved,
        &pins(&[
            (FINAL, Pin::Missing),
            (UNSIGNED, Pin::Pinned("u@sha256:2".into())),
        ]),
    )
    .unwrap();
    let v: Value = serde_json::to_value(job(&mcm, &sign, None, &settings())).unwrap();
    let ctx = &v["spec"]["template"]["spec"]["securityContext"];
    for field in ["runAsUser", "runAsGroup", "fsGroup"] {
        assert_eq!(ctx[field], HUB_IMAGE_UID, "{field}: {ctx}");
    }
    assert_eq!(ctx["runAsNonRoot"], true);
    let build = step_for(
        &mcm,
        &resolved,
        &pins(&[(FINAL, Pin::Missing), (UNSIGNED, Pin::Missing)]),
    )
    .unwrap();
    let v: Value = serde_json::to_value(job(&mcm, &build, None, &settings())).unwrap();
    assert!(
        v["spec"]["template"]["spec"]["securityContext"].is_null(),
        "buildah runs as the image's root"
    );
}

#[test]
fn job_states_come_from_conditions_with_the_pod_message_on_failure() {
    let job_with = |conds: Value| -> Job {
        serde_json::from_value(
            serde_json::json!({"metadata": {"name": "j"}, "status": {"conditions": conds}}),
        )
        .unwrap()
    };
    let c = |t: &str, m: &str| serde_json::json!([{"type": t, "status": "True", "message": m}]);
    assert_eq!(
        job_state(&job_with(serde_json::json!([])), None),
        JobState::Running
    );
    assert_eq!(job_state(&job_with(c("Complete", "")), None), JobState::Succeeded);
    assert_eq!(
        job_state(&job_with(c("Failed", "BackoffLimitExceeded")), None),
        JobState::Failed("BackoffLimitExceeded".into())
    );
    assert_eq!(
        job_state(&job_with(c("Failed", "x")), Some("make: *** no rule\n")),
        JobState::Failed("make: *** no rule".into())
    );
}
