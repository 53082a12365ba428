package main

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// printVersions prints the module versions this binary was built from, one per line.
func printVersions() {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		fmt.Println("unknown")
		return
	}
	fmt.Println("go", info.GoVersion)
	for _, d := range info.Deps {
		if d.Path == "k8s.io/kubernetes" || strings.HasPrefix(d.Path, "open-cluster-management.io/") ||
			d.Path == "go.etcd.io/etcd/server/v3" {
			fmt.Println(d.Path, d.Version)
		}
	}
}
