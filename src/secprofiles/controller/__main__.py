"""``python -m secprofiles.controller``: run the operator."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

import kopf
from prometheus_client import start_http_server

from secprofiles.controller.admission.webhook import WebhookOptions
from secprofiles.controller.leadership import LeaseSettings, default_identity
from secprofiles.controller.operator import Operator
from secprofiles.kube import jsonlog


def main() -> None:
    """Parse arguments and run the operator until it is stopped."""
    parser = argparse.ArgumentParser(prog="secprofiles-operator", description="The secprofiles operator.")
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), help="default: in-cluster")
    parser.add_argument("--standalone", action="store_true",
                        help="no leader election: reconcile at once (run a single replica)")
    parser.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "secprofiles-system"),
                        help="the operator's namespace (leader-election Lease, certificate Secret, Service DNS names)")
    parser.add_argument("--lease-name", default="secprofiles-operator", help="the leader-election Lease")
    parser.add_argument("--lease-duration", type=float, default=15.0,
                        help="seconds a leader that stopped renewing keeps the Lease (default: 15)")
    parser.add_argument("--identity", default=None, help="this replica in the Lease (default: $POD_NAME)")
    parser.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint URL")
    parser.add_argument("--metrics-port", type=int, default=9090, help="Prometheus metrics port; 0 disables")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--recording", action="store_true",
                        help="handle ProfileRecordings (manifests/overlays/recording grants the rights it needs)")
    hook = parser.add_argument_group("pod-binding webhook (off unless --webhook-port is given)")
    hook.add_argument("--webhook-port", type=int, default=0, help="HTTPS port to serve the webhook on")
    hook.add_argument("--webhook-host", default="0.0.0.0", help="listen address (default: all interfaces)")
    hook.add_argument("--cert-source", choices=["self", "files"], default="self",
                      help="self: CA and certificate in a Secret, renewed by the operator; "
                           "files: tls.crt/tls.key/ca.crt mounted from a cert-manager Secret")
    hook.add_argument("--cert-dir", type=Path, default=Path("/tmp/secprofiles-webhook"),
                      help="where the serving certificate files are (written with --cert-source self)")
    hook.add_argument("--webhook-config-name", default="secprofiles",
                      help="MutatingWebhookConfiguration whose caBundle the operator keeps current")
    hook.add_argument("--webhook-service", default="secprofiles-webhook", help="Service name in the certificate")
    hook.add_argument("--assume-server-version", default=None,
                      help="skip the API server's /version (e.g. v1.29.0 to test the AppArmor annotation form)")
    args = parser.parse_args()
    jsonlog.setup(args.log_level)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    webhook = WebhookOptions(
        port=args.webhook_port, host=args.webhook_host, cert_source=args.cert_source, cert_dir=args.cert_dir,
        config_name=args.webhook_config_name, namespace=args.namespace, service=args.webhook_service,
        server_version=args.assume_server_version) if args.webhook_port else None
    lease = None if args.standalone else LeaseSettings.scaled(
        args.namespace, args.identity or default_identity(), args.lease_name, args.lease_duration)
    operator = Operator(args.kubeconfig, webhook, lease, recording=args.recording)
    if args.metrics_port:
        start_http_server(args.metrics_port, registry=operator.metrics.registry)
    # Kopf's own peering stays off: every replica watches, the Lease decides who writes (controller/leadership.py).
    asyncio.run(kopf.operator(registry=operator.registry(), clusterwide=True, standalone=True,
                              liveness_endpoint=args.liveness or None))


if __name__ == "__main__":
    main()
