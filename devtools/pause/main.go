// Command pause is the infrastructure ("pause") container of a pod sandbox: PID 1 of the pod, it holds the
// namespaces, reaps orphaned children (when the pod shares its PID namespace) and exits 0 on SIGINT/SIGTERM.
// Built statically (CGO_ENABLED=0) into a FROM-scratch image, because no registry with registry.k8s.io/pause is
// reachable here.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if os.Getpid() != 1 {
		os.Stderr.WriteString("pause: warning: not PID 1\n")
	}
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range signals {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for { // reap every exited child; several SIGCHLDs may have coalesced into one
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
