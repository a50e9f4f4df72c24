package main

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// runEtcd starts a single-member embedded etcd and serves until SIGTERM/SIGINT.
func runEtcd(args []string) int {
	fs := flag.NewFlagSet("etcd", flag.ContinueOnError)
	name := fs.String("name", "default", "member name")
	dataDir := fs.String("data-dir", "", "data directory (required)")
	clientURLs := fs.String("listen-client-urls", "http://127.0.0.1:2379", "comma separated client URLs to listen on (also advertised)")
	peerURLs := fs.String("listen-peer-urls", "http://127.0.0.1:2380", "comma separated peer URLs to listen on (also advertised)")
	metricsURLs := fs.String("listen-metrics-urls", "", "comma separated URLs for /metrics and /health (optional)")
	logLevel := fs.String("log-level", "warn", "log level: debug, info, warn, error")
	noFsync := fs.Bool("unsafe-no-fsync", false, "disable fsync (tests only: data may be lost on crash)")
	quota := fs.Int64("quota-backend-bytes", 0, "backend size quota in bytes (0 = etcd default)")
	slowRequest := fs.Duration("warning-unary-request-duration", embed.DefaultWarningUnaryRequestDuration, "log requests slower than this")
	startTimeout := fs.Duration("start-timeout", 60*time.Second, "how long to wait for the server to become ready")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dataDir == "" {
		fmt.Fprintln(os.Stderr, "etcd: --data-dir is required")
		return 2
	}

	cfg := embed.NewConfig()
	cfg.Name = *name
	cfg.Dir = *dataDir
	cfg.LogLevel = *logLevel
	cfg.LogOutputs = []string{"stderr"}
	cfg.UnsafeNoFsync = *noFsync
	// embed.NewConfig leaves this at 0, which logs every request as slow.
	cfg.WarningUnaryRequestDuration = *slowRequest
	if *quota > 0 {
		cfg.QuotaBackendBytes = *quota
	}
	var err error
	if cfg.ListenClientUrls, err = parseURLs(*clientURLs); err != nil {
		fmt.Fprintf(os.Stderr, "etcd: --listen-client-urls: %v\n", err)
		return 2
	}
	cfg.AdvertiseClientUrls = cfg.ListenClientUrls
	if cfg.ListenPeerUrls, err = parseURLs(*peerURLs); err != nil {
		fmt.Fprintf(os.Stderr, "etcd: --listen-peer-urls: %v\n", err)
		return 2
	}
	cfg.AdvertisePeerUrls = cfg.ListenPeerUrls
	if *metricsURLs != "" {
		if cfg.ListenMetricsUrls, err = parseURLs(*metricsURLs); err != nil {
			fmt.Fprintf(os.Stderr, "etcd: --listen-metrics-urls: %v\n", err)
			return 2
		}
	}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd: start: %v\n", err)
		return 1
	}
	defer e.Close()

	select {
	case <-e.Server.ReadyNotify():
		fmt.Fprintf(os.Stderr, "etcd: ready, serving clients on %s\n", *clientURLs)
	case <-time.After(*startTimeout):
		e.Server.Stop()
		fmt.Fprintln(os.Stderr, "etcd: server took too long to start")
		return 1
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	select {
	case s := <-sigs:
		fmt.Fprintf(os.Stderr, "etcd: received %s, shutting down\n", s)
		return 0
	case err := <-e.Err():
		fmt.Fprintf(os.Stderr, "etcd: server error: %v\n", err)
		return 1
	}
}

func parseURLs(s string) ([]url.URL, error) {
	items := splitURLs(s)
	if len(items) == 0 {
		return nil, fmt.Errorf("no URL given")
	}
	out := make([]url.URL, 0, len(items))
	for _, item := range items {
		u, err := url.Parse(item)
		if err != nil {
			return nil, err
		}
		out = append(out, *u)
	}
	return out, nil
}
