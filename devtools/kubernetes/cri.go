package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	criclient "k8s.io/cri-client/pkg"
)

// runCRIClean stops and removes every pod sandbox of a CRI runtime (containerd's CRI plugin): stopping a sandbox
// makes the runtime stop its containers and tear its network down (CNI DEL: veth, IPAM lease, network namespace),
// which killing tasks with `ctr` would not. Used when a node is stopped, after the kubelet.
func runCRIClean(args []string) int {
	fs := flag.NewFlagSet("cri-clean", flag.ContinueOnError)
	endpoint := fs.String("endpoint", "", "CRI endpoint, e.g. unix:///path/containerd.sock (required)")
	timeout := fs.Duration("timeout", 60*time.Second, "overall time limit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *endpoint == "" {
		fmt.Fprintln(os.Stderr, "cri-clean: --endpoint is required")
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	rs, err := criclient.NewRemoteRuntimeService(*endpoint, 10*time.Second, nil, nil)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cri-clean: connect %s: %v\n", *endpoint, err)
		return 1
	}
	sandboxes, err := rs.ListPodSandbox(ctx, &runtimeapi.PodSandboxFilter{})
	if err != nil {
		fmt.Fprintf(os.Stderr, "cri-clean: list sandboxes: %v\n", err)
		return 1
	}
	failed := 0
	for _, sb := range sandboxes {
		name := fmt.Sprintf("%s/%s (%s, %s)", sb.Metadata.Namespace, sb.Metadata.Name, sb.Id[:12], sb.State)
		if err := rs.StopPodSandbox(ctx, sb.Id); err != nil {
			fmt.Fprintf(os.Stderr, "cri-clean: stop %s: %v\n", name, err)
			failed++
			continue
		}
		if err := rs.RemovePodSandbox(ctx, sb.Id); err != nil {
			fmt.Fprintf(os.Stderr, "cri-clean: remove %s: %v\n", name, err)
			failed++
			continue
		}
		fmt.Fprintf(os.Stderr, "cri-clean: stopped and removed %s\n", name)
	}
	fmt.Fprintf(os.Stderr, "cri-clean: %d sandboxes, %d failed\n", len(sandboxes), failed)
	if failed > 0 {
		return 1
	}
	return 0
}
