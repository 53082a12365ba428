package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/openshift/library-go/pkg/controller/controllercmd"
	"github.com/openshift/library-go/pkg/operator/events"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	ocmfeature "open-cluster-management.io/api/feature"
	commonoptions "open-cluster-management.io/ocm/pkg/common/options"
	"open-cluster-management.io/ocm/pkg/features"
	registrationhub "open-cluster-management.io/ocm/pkg/registration/hub"
	registrationspoke "open-cluster-management.io/ocm/pkg/registration/spoke"
	singletonspoke "open-cluster-management.io/ocm/pkg/singleton/spoke"
	workspoke "open-cluster-management.io/ocm/pkg/work/spoke"
)

// OCM's commands run through openshift's library-go controller command, which also serves
// HTTPS on a fixed port and asks for leader election in a pod namespace. The test control
// planes start the same controllers the way OCM's own integration tests do: their options
// structs and Run functions, with a kubeconfig and a logging event recorder.

// signalContext is cancelled on SIGTERM or SIGINT, or when the parent process goes away.
func signalContext() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	parent := os.Getppid()
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-sig:
				cancel()
				return
			case <-tick.C:
				if os.Getppid() != parent {
					cancel()
					return
				}
			}
		}
	}()
	return ctx
}

func initKlog(fs *flag.FlagSet) {
	klog.InitFlags(fs)
}

// runOCMHub runs OCM's hub registration controller (ManagedCluster acceptance, CSR approval,
// per-cluster RBAC, lease checks that turn a silent cluster Unknown).
func runOCMHub(args []string) int {
	fs := flag.NewFlagSet("ocm-hub", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "hub kubeconfig (required)")
	autoApprove := fs.String("cluster-auto-approval-users", "", "users whose clusters and CSRs are approved on sight (comma-separated)")
	initKlog(fs)
	_ = fs.Parse(args)
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ocm-hub: %v\n", err)
		return 1
	}
	if err := features.HubMutableFeatureGate.Add(ocmfeature.DefaultHubRegistrationFeatureGates); err != nil {
		fmt.Fprintf(os.Stderr, "ocm-hub: %v\n", err)
		return 1
	}
	if *autoApprove != "" {
		if err := features.HubMutableFeatureGate.Set("ManagedClusterAutoApproval=true"); err != nil {
			fmt.Fprintf(os.Stderr, "ocm-hub: %v\n", err)
			return 1
		}
	}
	opts := registrationhub.NewHubManagerOptions()
	if *autoApprove != "" {
		opts.ClusterAutoApprovalUsers = strings.Split(*autoApprove, ",")
	}
	opts.ImportOption.APIServerURL = cfg.Host
	ctx := signalContext()
	err = opts.RunControllerManager(ctx, &controllercmd.ControllerContext{
		KubeConfig:    cfg,
		EventRecorder: events.NewLoggingEventRecorder("registration-controller", clock.RealClock{}),
	})
	if err != nil && ctx.Err() == nil {
		fmt.Fprintf(os.Stderr, "ocm-hub: %v\n", err)
		return 1
	}
	<-ctx.Done()
	return 0
}

// runOCMAgent runs OCM's singleton klusterlet agent for one managed cluster: registration
// (bootstrap, CSR, ManagedCluster, ClusterClaims, lease) and then the work agent.
func runOCMAgent(args []string) int {
	fs := flag.NewFlagSet("ocm-agent", flag.ExitOnError)
	cluster := fs.String("cluster-name", "", "managed cluster name (required)")
	spoke := fs.String("kubeconfig", "", "the managed cluster's kubeconfig (required)")
	bootstrap := fs.String("bootstrap-kubeconfig", "", "hub kubeconfig used to register (required)")
	hubDir := fs.String("hub-kubeconfig-dir", "", "where the agent keeps the hub credentials it gets (required)")
	namespace := fs.String("namespace", "open-cluster-management-agent", "the agent's namespace on the managed cluster")
	agentID := fs.String("agent-id", "", "agent id (default: the cluster name)")
	statusSync := fs.Duration("status-sync-interval", 10*time.Second, "how often the work agent re-reads status feedback")
	health := fs.Duration("cluster-healthcheck-period", time.Minute, "how often the agent checks the managed cluster's apiserver")
	initKlog(fs)
	_ = fs.Parse(args)
	if *cluster == "" || *spoke == "" || *bootstrap == "" || *hubDir == "" {
		fmt.Fprintln(os.Stderr, "ocm-agent: --cluster-name, --kubeconfig, --bootstrap-kubeconfig and --hub-kubeconfig-dir are required")
		return 2
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *spoke)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ocm-agent: %v\n", err)
		return 1
	}
	if err := features.SpokeMutableFeatureGate.Add(ocmfeature.DefaultSpokeRegistrationFeatureGates); err != nil {
		fmt.Fprintf(os.Stderr, "ocm-agent: %v\n", err)
		return 1
	}
	if err := features.SpokeMutableFeatureGate.Add(ocmfeature.DefaultSpokeWorkFeatureGates); err != nil {
		fmt.Fprintf(os.Stderr, "ocm-agent: %v\n", err)
		return 1
	}
	common := commonoptions.NewAgentOptions()
	common.SpokeClusterName = *cluster
	common.SpokeKubeconfigFile = *spoke
	common.HubKubeconfigDir = *hubDir
	common.HubKubeconfigFile = filepath.Join(*hubDir, "kubeconfig")
	common.ComponentNamespace = *namespace
	common.AgentID = *agentID
	if common.AgentID == "" {
		common.AgentID = *cluster
	}
	registration := registrationspoke.NewSpokeAgentOptions()
	registration.BootstrapKubeconfig = *bootstrap
	registration.ClusterHealthCheckPeriod = *health
	work := workspoke.NewWorkloadAgentOptions()
	work.StatusSyncInterval = *statusSync
	// The work agent reads the hub credentials registration wrote (the kube driver).
	work.WorkloadSourceConfig = common.HubKubeconfigFile

	ctx := signalContext()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	agent := singletonspoke.NewAgentConfig(common, registration, work, cancel)
	err = agent.RunSpokeAgent(ctx, &controllercmd.ControllerContext{
		KubeConfig:    cfg,
		EventRecorder: events.NewLoggingEventRecorder("klusterlet-agent", clock.RealClock{}),
	})
	if err != nil && ctx.Err() == nil {
		fmt.Fprintf(os.Stderr, "ocm-agent: %v\n", err)
		return 1
	}
	<-ctx.Done()
	return 0
}
