"""``python -m bench.fleet``: many simulated nodes' agents in ONE process, on one event loop.

Used for the 100- and 20-node figures, where one process per node would not fit this machine. Each node gets
its own ``Agent`` (the product class, unchanged), its own API client (its own connection pool), host root and
state directory under ``--base/<node>``. Logging is at WARNING to keep log volume out of the figures. What the
fleet does NOT simulate: one CPU per node - every agent shares this process's single core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from devtools.commands import KUBELET_ROOT, prepare_host_root
from secprofiles.agent.agent import Agent, Config
from secprofiles.agent.apparmor_loader import RecordingLoader
from secprofiles.kube.client import Credentials, KubeApi


async def run(kubeconfig: Path, base: Path, nodes: list[str], apparmor: bool) -> None:
    """Run one agent per node until SIGTERM; any agent failing ends the fleet."""
    apis = [KubeApi(Credentials.from_kubeconfig(kubeconfig), user_agent=f"secprofiles-agent/{node}")
            for node in nodes]
    agents = []
    for node, api in zip(nodes, apis, strict=True):
        host = prepare_host_root(base / node / "host", apparmor)
        config = Config(node_name=node, host_root=host, kubelet_root=KUBELET_ROOT,
                        state_dir=base / node / "state")
        agents.append(Agent(api, config, RecordingLoader(host) if apparmor else None))
    tasks = [asyncio.create_task(a.run(), name=a.config.node_name) for a in agents]
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: [t.cancel() for t in tasks])
    print(f"fleet started: {len(agents)} agents", flush=True)
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled():
                task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for api in apis:
            await api.close()


def main() -> int:
    """Command line: ``--kubeconfig K --base DIR [--apparmor] NODE...``."""
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n")[0])
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--apparmor", action="store_true", help="simulated AppArmor (recording loader) on every node")
    parser.add_argument("nodes", nargs="+")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with contextlib.suppress(asyncio.CancelledError):  # SIGTERM cancels every agent: a normal end
        asyncio.run(run(args.kubeconfig, args.base, args.nodes, args.apparmor))
    return 0


if __name__ == "__main__":
    sys.exit(main())
