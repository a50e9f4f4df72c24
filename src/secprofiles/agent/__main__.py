"""``python -m secprofiles.agent``: run the node agent."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from secprofiles.agent import daemon, endpoints
from secprofiles.agent.agent import Agent, Config
from secprofiles.agent.apparmor_loader import KernelLoader, Loader, RecordingLoader
from secprofiles.kube.client import Credentials, KubeApi

log = logging.getLogger("secprofiles.agent")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; every option has an environment-friendly default for a DaemonSet."""
    parser = argparse.ArgumentParser(prog="python -m secprofiles.agent", description=__doc__)
    parser.add_argument("--node-name", default=os.environ.get("NODE_NAME"),
                        help="this node's Node name (default: $NODE_NAME)")
    parser.add_argument("--host-root", type=Path, default=Path("/"),
                        help="where the host's / is mounted (tests: a directory per simulated node)")
    parser.add_argument("--kubelet-root", default="/var/lib/kubelet", help="kubelet's root directory on the host")
    parser.add_argument("--state-dir", type=Path, default=Path("/var/lib/secprofiles-agent"),
                        help="the agent's own state (AppArmor texts it loaded); keep it on the host")
    parser.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG, else the in-cluster account")
    parser.add_argument("--health-port", type=int, default=8081, help="/healthz and /readyz (0: any free port)")
    parser.add_argument("--metrics-port", type=int, default=0, help="/metrics (0: disabled)")
    parser.add_argument("--apparmor-loader", choices=("kernel", "recording"), default="kernel",
                        help="'recording' simulates the kernel in a test host root (compile only)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if not args.node_name:
        parser.error("--node-name or $NODE_NAME is required")
    return args


async def main_async(args: argparse.Namespace) -> None:
    """Serve the endpoints and run the agent until SIGTERM/SIGINT."""
    config = Config(node_name=args.node_name, host_root=args.host_root, kubelet_root=args.kubelet_root,
                    state_dir=args.state_dir)
    loader: Loader = RecordingLoader(args.host_root) if args.apparmor_loader == "recording" \
        else KernelLoader(args.host_root)
    async with KubeApi(Credentials.auto(args.kubeconfig), user_agent=f"secprofiles-agent/{args.node_name}") as api:
        agent = Agent(api, config, loader)
        servers = []
        server, port = await endpoints.serve(args.health_port, endpoints.health_routes(lambda: agent.ready))
        servers.append(server)
        log.info("listening", extra={"endpoint": "health", "port": port})
        if args.metrics_port:
            server, port = await endpoints.serve(args.metrics_port, endpoints.metrics_routes())
            servers.append(server)
            log.info("listening", extra={"endpoint": "metrics", "port": port})
        log.info("agent starting", extra={"node": args.node_name, "hostRoot": str(args.host_root),
                                          "appArmorEnabled": agent.apparmor_enabled, "loader": args.apparmor_loader})
        try:
            await daemon.run_until_signalled(agent.run(), log, "agent")
        finally:
            for server in servers:
                server.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit 1 when the agent fails (the DaemonSet restarts it)."""
    args = parse_args(argv)
    return daemon.main(lambda: main_async(args), args.log_level, log, "agent")


if __name__ == "__main__":
    sys.exit(main())
