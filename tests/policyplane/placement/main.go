// Command kmm-placement runs Open Cluster Management's Placement controller against a hub, for
// kmm-fleet's policy tests. OCM's own `placement` command goes through openshift library-go's
// controller command, which serves HTTPS on a fixed port and wants leader election in a pod
// namespace; here the controller manager is called directly with a kubeconfig and a logging
// event recorder, as OCM's integration tests do (and as tests/controlplane runs the other OCM
// controllers).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/openshift/library-go/pkg/controller/controllercmd"
	"github.com/openshift/library-go/pkg/operator/events"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	placement "open-cluster-management.io/ocm/pkg/placement/controllers"
)

// signalContext ends on SIGTERM or SIGINT, or when the parent process (the test) goes away, so
// a crashed test leaves no controller behind.
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

func main() {
	fs := flag.NewFlagSet("kmm-placement", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "the hub's kubeconfig (required)")
	klog.InitFlags(fs)
	_ = fs.Parse(os.Args[1:])
	if *kubeconfig == "" {
		fmt.Fprintln(os.Stderr, "kmm-placement: --kubeconfig is required")
		os.Exit(2)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kmm-placement: %v\n", err)
		os.Exit(1)
	}
	ctx := signalContext()
	err = placement.RunControllerManager(ctx, &controllercmd.ControllerContext{
		KubeConfig:    cfg,
		EventRecorder: events.NewLoggingEventRecorder("placement-controller", clock.RealClock{}),
	})
	if err != nil && ctx.Err() == nil {
		fmt.Fprintf(os.Stderr, "kmm-placement: %v\n", err)
		os.Exit(1)
	}
	<-ctx.Done()
}
