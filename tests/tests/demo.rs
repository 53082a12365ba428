//! `just demo` runs `kmm-demo`: it must converge with every cluster loaded, build a node's
//! announced next kernel ahead and boot it with no new Job, roll a new image out canary first,
//! print how to use the fleet, and stop cleanly on Ctrl-C.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is a failed test

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

#[test]
fn the_demo_converges_prints_every_cluster_loaded_and_stops_on_ctrl_c() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("demo-test");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kmm-demo"))
        .args(["--timeout", "300", "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut output = Vec::new();
    let converged = loop {
        match rx.recv_timeout(Duration::from_secs(300)) {
            Ok(line) => {
                let done = line.starts_with("Converged in");
                output.push(line);
                if done {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    assert!(converged, "no convergence:\n{}", output.join("\n"));
    // The last table printed before convergence: every cluster applied and fully loaded.
    let header = output.iter().rposition(|l| l.starts_with("CLUSTER")).unwrap();
    let rows: Vec<&String> = output[header + 1..]
        .iter()
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(rows.len(), 3, "{output:#?}");
    for (row, loaded) in rows.iter().zip(["2/2", "1/1", "1/1"]) {
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[1], "yes", "{row}");
        assert_eq!(cols[3], "applied", "{row}");
        assert_eq!(cols[4], loaded, "{row}");
        assert_eq!(cols[5], "-", "{row}");
    }
    // The preflight step: edge-1's announced kernel is built ahead, then booted with no new Job;
    // its last line reports the MCM's kernelReadiness.
    let from = output.len();
    while !output.last().is_some_and(|l| l.starts_with("kernelReadiness of")) {
        match rx.recv_timeout(Duration::from_secs(300)) {
            Ok(line) => output.push(line),
            Err(_) => panic!(
                "the preflight step did not finish:\n{}",
                output[from..].join("\n")
            ),
        }
    }
    let step = output[from..].join("\n");
    assert!(
        step.contains("fleet-next-kernels: demo-kmod 6.1.0-27-cloud-amd64 Success/Done"),
        "{step}"
    );
    assert!(step.contains("maps 6.1.0-27-cloud-amd64 to "), "{step}");
    assert!(step.contains("no build wait, no new Job"), "{step}");
    assert!(step.contains("readyBeforeFirstNode=true"), "{step}");
    // Then the canary rollout of a new image: east (the canary) moves first, alone.
    let canary = loop {
        match rx.recv_timeout(Duration::from_secs(300)) {
            Ok(line) => {
                output.push(line.clone());
                if line.starts_with("Canary rollout done") {
                    break Some(line);
                }
            }
            Err(_) => break None,
        }
    };
    let canary = canary.unwrap_or_else(|| panic!("no canary rollout:\n{}", output.join("\n")));
    assert!(
        canary.ends_with("moved in this order: east, edge, west."),
        "{canary}\n{}",
        output.join("\n")
    );
    // The usage lines name real kubeconfig files.
    std::thread::sleep(Duration::from_millis(500));
    while let Ok(line) = rx.try_recv() {
        output.push(line);
    }
    let kubeconfig = output
        .iter()
        .find_map(|l| l.trim().strip_prefix("export KUBECONFIG="))
        .map(std::path::PathBuf::from)
        .unwrap();
    assert!(kubeconfig.exists());

    let server = std::fs::read_to_string(&kubeconfig)
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://").map(str::to_owned))
        .expect("the kubeconfig names its server");

    // Ctrl-C: a clean exit, and the hub's control plane is stopped with it.
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "kmm-demo ignored Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        output.push(line);
    }
    assert!(output.iter().any(|l| l == "Stopped."), "{output:#?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&server).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the hub's apiserver at {server} still answers after the demo stopped"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
