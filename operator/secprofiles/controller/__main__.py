"""``python -m secprofiles.controller``: run the operator."""

from __future__ import annotations

import argparse
import asyncio
import os
import random

import kopf
from prometheus_client import start_http_server

from secprofiles import logs
from secprofiles.controller.handlers import build_registry


def main() -> None:
    """Parse arguments and run the operator until it is stopped."""
    parser = argparse.ArgumentParser(prog="secprofiles-operator", description="The secprofiles operator.")
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), help="default: in-cluster")
    parser.add_argument("--standalone", action="store_true", help="no peering (a single replica)")
    parser.add_argument("--priority", type=int, default=None,
                        help="peering priority; replicas need distinct ones (default: random)")
    parser.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint URL")
    parser.add_argument("--metrics-port", type=int, default=9090, help="Prometheus metrics port; 0 disables")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()
    logs.setup(args.log_level)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    if args.metrics_port:
        start_http_server(args.metrics_port)
    registry = build_registry(args.kubeconfig)
    priority = args.priority if args.priority is not None else random.randint(1, 10_000)
    asyncio.run(kopf.operator(registry=registry, clusterwide=True, standalone=args.standalone, priority=priority,
                              liveness_endpoint=args.liveness or None))


if __name__ == "__main__":
    main()
