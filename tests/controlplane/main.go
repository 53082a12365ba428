// Command kmm-controlplane is the test control plane of kmm-fleet: one binary that holds the
// real Kubernetes components and OCM's agents, chosen by the first argument (busybox style),
// plus `up`, which starts a whole cluster (etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler) with its certificates and kubeconfigs for the Rust test harness.
//
// Everything here is upstream code reached through its public constructors; this file only
// chooses which one runs.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	kcm "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"

	_ "time/tzdata"
)

const usage = `usage: kmm-controlplane COMMAND [flags]

  up                       a whole cluster: etcd, kube-apiserver, kube-controller-manager,
                           kube-scheduler, certificates and kubeconfigs (up --help)
  etcd                     an embedded etcd member (etcd --help)
  kube-apiserver           Kubernetes components, as their upstream commands
  kube-controller-manager
  kube-scheduler
  kubectl
  ocm-hub                  OCM's hub registration controller (ocm-hub --help)
  ocm-agent                OCM's singleton klusterlet agent: registration, then the work
                           agent, for one managed cluster (ocm-agent --help)
  version                  the pinned versions
`

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if name == "kmm-controlplane" || name == "main" {
		if len(args) == 0 {
			fmt.Fprint(os.Stderr, usage)
			os.Exit(2)
		}
		name, args = args[0], args[1:]
	}
	os.Args = append([]string{name}, args...)
	switch name {
	case "up":
		os.Exit(runUp(args))
	case "etcd":
		os.Exit(runEtcd(args))
	case "kube-apiserver":
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "kube-controller-manager":
		os.Exit(cli.Run(kcm.NewControllerManagerCommand()))
	case "kube-scheduler":
		os.Exit(cli.Run(scheduler.NewSchedulerCommand()))
	case "kubectl":
		logs.GlogSetter(kubectl.GetLogVerbosity(os.Args)) //nolint:errcheck
		if err := cli.RunNoErrOutput(kubectl.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
	case "ocm-hub":
		os.Exit(runOCMHub(args))
	case "ocm-agent":
		os.Exit(runOCMAgent(args))
	case "version":
		printVersions()
	default:
		fmt.Fprintf(os.Stderr, "kmm-controlplane: unknown command %q\n\n%s", name, usage)
		os.Exit(2)
	}
}
