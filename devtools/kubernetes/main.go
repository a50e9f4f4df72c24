// Command controlplane is a multi-call binary holding the pieces of a local
// Kubernetes cluster used by the secprofiles tests, the sandbox and the real node:
//
//	controlplane etcd [flags]                     embedded etcd (go.etcd.io/etcd/server/v3/embed)
//	controlplane kube-apiserver [flags]           k8s.io/kubernetes/cmd/kube-apiserver
//	controlplane kube-controller-manager [flags]  k8s.io/kubernetes/cmd/kube-controller-manager
//	controlplane kube-scheduler [flags]           k8s.io/kubernetes/cmd/kube-scheduler
//	controlplane kubelet [flags]                  k8s.io/kubernetes/cmd/kubelet
//	controlplane kube-proxy [flags]               k8s.io/kubernetes/cmd/kube-proxy
//	controlplane kubectl [args]                   k8s.io/kubectl (the client of the same release)
//	controlplane cri-clean --endpoint E           stop and remove every pod sandbox of a CRI runtime
//	controlplane version                          prints the stamped Kubernetes version
//
// The subcommand is taken from argv[0]'s basename when the binary is invoked
// through a symlink of that name, otherwise from argv[1]. Building one binary
// instead of seven saves most of the compile and link time.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	_ "time/tzdata" // for timeZone support in CronJob

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go prometheus plugins
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric registration
	"k8s.io/component-base/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	kcmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxyapp "k8s.io/kubernetes/cmd/kube-proxy/app"
	schedulerapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubeletapp "k8s.io/kubernetes/cmd/kubelet/app"
)

const usage = `usage: controlplane <etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy|kubectl|cri-clean|version> [flags]
`

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if !isSubcommand(name) {
		if len(args) == 0 {
			fmt.Fprint(os.Stderr, usage)
			os.Exit(2)
		}
		name, args = args[0], args[1:]
	}
	os.Exit(run(name, args))
}

func isSubcommand(name string) bool {
	switch name {
	case "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl":
		return true
	}
	return false
}

func run(name string, args []string) int {
	switch name {
	case "etcd":
		return runEtcd(args)
	case "kube-apiserver":
		cmd := apiserverapp.NewAPIServerCommand()
		cmd.SetArgs(args)
		return cli.Run(cmd)
	case "kube-controller-manager":
		cmd := kcmapp.NewControllerManagerCommand()
		cmd.SetArgs(args)
		return cli.Run(cmd)
	case "kube-scheduler":
		cmd := schedulerapp.NewSchedulerCommand()
		cmd.SetArgs(args)
		return cli.Run(cmd)
	case "kubelet":
		cmd := kubeletapp.NewKubeletCommand(context.Background())
		cmd.SetArgs(args)
		return cli.Run(cmd)
	case "kube-proxy":
		cmd := proxyapp.NewProxyCommand()
		cmd.SetArgs(args)
		return cli.Run(cmd)
	case "kubectl":
		cmd := kubectlcmd.NewDefaultKubectlCommand()
		cmd.SetArgs(args)
		if err := cli.RunNoErrOutput(cmd); err != nil {
			kubectlutil.CheckErr(err) // prints the error as kubectl does and exits with its code
		}
		return 0
	case "cri-clean":
		return runCRIClean(args)
	case "version", "--version", "-version":
		fmt.Println(version.Get().GitVersion)
		return 0
	case "help", "--help", "-h":
		fmt.Print(usage)
		return 0
	default:
		fmt.Fprintf(os.Stderr, "controlplane: unknown subcommand %q\n%s", name, usage)
		return 2
	}
}

// splitURLs turns a comma separated list into its non-empty, trimmed items.
func splitURLs(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
