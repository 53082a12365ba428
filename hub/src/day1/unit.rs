//! The systemd unit that runs the loading script before the network comes up.

use super::{Day1, SCRIPT_PATH};

/// Units the load must precede: NetworkManager itself, and `network-pre.target`, which every
/// network manager (NetworkManager, systemd-networkd, ifupdown) is ordered after.
pub const BEFORE: [&str; 2] = ["network-pre.target", "NetworkManager.service"];

/// The unit text. Default dependencies stay on (the unit runs after local file systems, so
/// `/var` and the container storage are mounted); `Wants=network-pre.target` pulls the target
/// in so the ordering holds even where nothing else wants it. A failed load does not stop the
/// boot: the node comes up with its in-tree driver, and `systemctl status` shows the reason.
pub fn unit(spec: &Day1) -> String {
    let mut env = vec![
        ("KMM_DAY1_IMAGE", spec.image.clone()),
        ("KMM_DAY1_MODULE", spec.module.clone()),
        ("KMM_DAY1_IN_TREE", spec.in_tree_remove.join(" ")),
    ];
    if let Some(path) = &spec.firmware_path {
        env.push(("KMM_DAY1_FIRMWARE_PATH", path.clone()));
    }
    let env: String = env
        .into_iter()
        .map(|(k, v)| format!("Environment=\"{k}={v}\"\n"))
        .collect();
    format!(
        "[Unit]\n\
         Description=Load kernel module {module} from {image} before the network (kmm-fleet day1)\n\
         Wants=network-pre.target\n\
         Before={before}\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         {env}\
         EnvironmentFile=-/etc/kmm-day1/{module}.env\n\
         ExecStart={SCRIPT_PATH}\n\
         TimeoutStartSec=600\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        module = spec.module,
        image = spec.image,
        before = BEFORE.join(" "),
    )
}

/// The `Environment=` settings of a unit as (name, value), in order: what systemd hands the
/// script (used by the tests to run the script as the unit would).
pub fn environment(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .map(|v| v.trim_matches('"'))
        .filter_map(|v| v.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::day1::example;

    fn directive<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .flat_map(str::split_whitespace)
            .collect()
    }

    #[test]
    fn unit_is_ordered_before_the_network_and_runs_the_script() {
        let unit = unit(&example());
        assert_eq!(
            directive(&unit, "Before"),
            ["network-pre.target", "NetworkManager.service"]
        );
        assert_eq!(directive(&unit, "Wants"), ["network-pre.target"]);
        assert!(
            directive(&unit, "After").is_empty(),
            "nothing orders it after the network"
        );
        assert_eq!(directive(&unit, "ExecStart"), [SCRIPT_PATH]);
        assert_eq!(directive(&unit, "Type"), ["oneshot"]);
        assert_eq!(directive(&unit, "WantedBy"), ["multi-user.target"]);
    }

    #[test]
    fn environment_carries_the_choices() {
        let env = environment(&unit(&example()));
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(
            get("KMM_DAY1_IMAGE"),
            Some("registry.example:5000/drivers/ice-kmod")
        );
        assert_eq!(get("KMM_DAY1_MODULE"), Some("ice_oot"));
        assert_eq!(get("KMM_DAY1_IN_TREE"), Some("ice irdma"));
        assert_eq!(get("KMM_DAY1_FIRMWARE_PATH"), Some("/firmware"));

        let mut bare = example();
        bare.firmware_path = None;
        bare.in_tree_remove.clear();
        let env = environment(&unit(&bare));
        assert!(env.iter().all(|(k, _)| k != "KMM_DAY1_FIRMWARE_PATH"));
        assert!(env.contains(&("KMM_DAY1_IN_TREE".to_owned(), String::new())));
    }
}
