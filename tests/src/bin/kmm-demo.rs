//! `just demo`: a local kmm-fleet in one command. Starts a hub and three spokes, each a real
//! control plane (kube-apiserver, etcd, controller-manager, scheduler) with OCM's own agents,
//! the real registry, kmm-hub and kmm-spoke, applies an example ManagedClusterModule,
//! prints a per-cluster status table until the rollout converges, then keeps the fleet running
//! (kubeconfigs printed) until Ctrl-C.
//!
//! kmm-spoke is installed on the spokes by the generated Policies (`kubectl apply --server-side
//! -k policies` on the hub, OCM's policy framework); `--without-policy` runs it as a process per
//! spoke instead.
//!
//! `--exit-when-converged` stops once every cluster is loaded (CI uses it); `--timeout SECS`
//! bounds the wait (default 600). After the first convergence a node announces its next kernel
//! and the hub builds it ahead before the node reboots into it (`--skip-preflight` skips that),
//! then a canary rollout of a new image runs (`demo_canary`; `--skip-canary` leaves it out).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use kmm_fleet_tests::demo;

struct Args {
    exit_when_converged: bool,
    timeout: Duration,
    dir: PathBuf,
    via_policy: bool,
    preflight: bool,
    canary: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        exit_when_converged: false,
        timeout: Duration::from_secs(600),
        dir: kmm_fleet_tests::repo_root().join("target/demo"),
        via_policy: true,
        preflight: true,
        canary: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--exit-when-converged" => args.exit_when_converged = true,
            "--without-policy" => args.via_policy = false,
            "--skip-preflight" => args.preflight = false,
            "--skip-canary" => args.canary = false,
            "--timeout" => {
                let secs = it.next().ok_or("--timeout needs seconds")?;
                args.timeout = Duration::from_secs(
                    secs.parse()
                        .map_err(|_| format!("--timeout {secs}: not a number"))?,
                );
            }
            "--dir" => args.dir = PathBuf::from(it.next().ok_or("--dir needs a folder")?),
            "-h" | "--help" => {
                return Err("usage: kmm-demo [--exit-when-converged] [--timeout SECS] [--dir FOLDER] [--without-policy] [--skip-preflight] [--skip-canary]".into());
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kmm-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    println!(
        "Starting a local fleet in {} (registry, hub, spokes east/west/edge)...",
        args.dir.display()
    );
    let started = std::time::Instant::now();
    let fleet = demo::start_with(&args.dir, args.via_policy).await?;
    println!(
        "Applied ManagedClusterModule {} ({}).\n",
        demo::MCM,
        fleet.dir.join("mcm.yaml").display()
    );

    let mut last = String::new();
    let mut converged = false;
    let mut usage_printed = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let rows = demo::rows(&fleet).await?;
        let table = demo::render_table(&rows);
        if table != last {
            println!("[{:>5.1}s]\n{table}", started.elapsed().as_secs_f64());
            last = table;
        }
        let done = rows.iter().all(demo::ClusterRow::done);
        if done && !converged {
            converged = true;
            let first = !usage_printed;
            println!(
                "{} in {:.1}s: every selected cluster has the module loaded on its targeted nodes.\n",
                if first { "Converged" } else { "Converged again" },
                started.elapsed().as_secs_f64()
            );
            if first && args.preflight {
                tokio::select! {
                    r = kmm_fleet_tests::demo_preflight::run(&fleet, args.timeout) => { r?; }
                    _ = &mut ctrl_c => {
                        drop(fleet);
                        println!("Stopped.");
                        return Ok(ExitCode::SUCCESS);
                    }
                }
            }
            if first && args.canary {
                kmm_fleet_tests::demo_canary::run(&fleet, args.timeout).await?;
            }
            if first {
                print_usage(&fleet);
                usage_printed = true;
            }
            if args.exit_when_converged {
                return Ok(ExitCode::SUCCESS);
            }
        } else if !done && converged {
            converged = false;
        }
        if !usage_printed && started.elapsed() > args.timeout {
            eprintln!(
                "not converged after {:?}; logs:\n{}",
                args.timeout,
                fleet.log_tails(30)
            );
            return Ok(ExitCode::FAILURE);
        }
        tokio::select! {
            _ = &mut ctrl_c => {
                println!("\nStopping the fleet...");
                drop(fleet);
                println!("Stopped.");
                return Ok(ExitCode::SUCCESS);
            }
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

fn print_usage(fleet: &kmm_fleet_tests::fleet::Fleet) {
    println!("The fleet keeps running until Ctrl-C. In another terminal:");
    if let Ok(kubectl) = kmm_fleet_tests::controlplane::kubectl()
        && let Some(dir) = kubectl.parent()
    {
        println!(
            "  export PATH={}:$PATH   # the control planes' kubectl",
            dir.display()
        );
    }
    println!("  export KUBECONFIG={}", fleet.hub.kubeconfig_path().display());
    println!("  kubectl get managedclustermodules");
    println!(
        "  kubectl get managedclustermodule {} -o yaml   # status: clusters, nodes, kernels, problems",
        demo::MCM
    );
    println!("  kubectl get manifestworks -A");
    println!(
        "  kubectl apply -f {}   # after editing it",
        fleet.dir.join("mcm.yaml").display()
    );
    if let Some(east) = fleet.spokes.get("east") {
        println!(
            "  kubectl --kubeconfig {} patch node east-2 --subresource=status --type=merge \\\n      -p '{{\"status\":{{\"nodeInfo\":{{\"kernelVersion\":\"{}\",\"bootID\":\"boot-2\"}}}}}}'   # upgrade a kernel: its image is there if the preflight step built it, else the hub builds it now",
            east.cluster.kubeconfig_path().display(),
            demo::K_NEXT
        );
    }
    for (name, spoke) in &fleet.spokes {
        println!(
            "  kubectl --kubeconfig {} get nodes --show-labels    # spoke {name}",
            spoke.cluster.kubeconfig_path().display()
        );
    }
    println!(
        "Logs: {}/kmm-hub.log and {}/<spoke>/kmm-spoke.log\n",
        fleet.dir.display(),
        fleet.dir.display()
    );
}
