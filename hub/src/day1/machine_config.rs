//! The OpenShift MachineConfig carrying the unit and the script as Ignition 3.2 config.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde_json::{Value, json};

use super::{Day1, SCRIPT, SCRIPT_PATH, unit};

/// The label the Machine Config Operator matches a pool's `machineConfigSelector` against.
pub const ROLE_LABEL: &str = "machineconfiguration.openshift.io/role";
/// The Ignition spec version the MCO accepts in `spec.config`.
pub const IGNITION_VERSION: &str = "3.2.0";

/// The MachineConfig object (a value, so tests and callers can inspect it).
pub fn machine_config(spec: &Day1, name: &str) -> Value {
    json!({
        "apiVersion": "machineconfiguration.openshift.io/v1",
        "kind": "MachineConfig",
        "metadata": {
            "name": name,
            "labels": { ROLE_LABEL: spec.pool },
        },
        "spec": {
            "config": {
                "ignition": { "version": IGNITION_VERSION },
                "storage": {
                    "files": [{
                        "path": SCRIPT_PATH,
                        "mode": 0o755,
                        "overwrite": true,
                        "user": { "name": "root" },
                        "contents": { "source": data_url(SCRIPT) },
                    }],
                },
                "systemd": {
                    "units": [{
                        "name": spec.unit_name(),
                        "enabled": true,
                        "contents": unit::unit(spec),
                    }],
                },
            },
        },
    })
}

/// The MachineConfig as YAML, ready for `oc apply -f -`.
pub fn yaml(spec: &Day1, name: &str) -> anyhow::Result<String> {
    Ok(serde_saphyr::to_string(&machine_config(spec, name))?)
}

/// Ignition takes file contents as a URL; a base64 data URL keeps the script byte-exact.
fn data_url(text: &str) -> String {
    format!("data:text/plain;charset=utf-8;base64,{}", STANDARD.encode(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::day1::example;

    fn parsed() -> Value {
        serde_saphyr::from_str(&yaml(&example(), "99-sfc-ice").unwrap()).unwrap()
    }

    #[test]
    fn yaml_parses_back_to_a_machine_config_for_the_pool() {
        let mc = parsed();
        assert_eq!(mc["apiVersion"], "machineconfiguration.openshift.io/v1");
        assert_eq!(mc["kind"], "MachineConfig");
        assert_eq!(mc["metadata"]["name"], "99-sfc-ice");
        assert_eq!(mc["metadata"]["labels"][ROLE_LABEL], "sfc");
        assert_eq!(mc["spec"]["config"]["ignition"]["version"], "3.2.0");
    }

    #[test]
    fn embedded_script_is_the_plain_script_and_executable() {
        let mc = parsed();
        let files = mc["spec"]["config"]["storage"]["files"].as_array().unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0]["path"], SCRIPT_PATH);
        assert_eq!(files[0]["mode"], 493, "0755 in decimal, as Ignition wants it");
        let source = files[0]["contents"]["source"].as_str().unwrap();
        let b64 = source
            .strip_prefix("data:text/plain;charset=utf-8;base64,")
            .unwrap();
        assert_eq!(String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap(), SCRIPT);
    }

    #[test]
    fn unit_is_enabled_and_equals_the_plain_unit() {
        let mc = parsed();
        let units = mc["spec"]["config"]["systemd"]["units"].as_array().unwrap();
        assert_eq!(units.len(), 1);
        assert_eq!(units[0]["name"], "kmm-day1-ice-oot.service");
        assert_eq!(units[0]["enabled"], true);
        let contents = units[0]["contents"].as_str().unwrap();
        assert_eq!(contents, unit::unit(&example()));
        assert!(contents.contains("Before=network-pre.target NetworkManager.service\n"));
    }
}
