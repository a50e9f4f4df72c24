"""``python -m bench [--quick] [--output PATH] [--only NAME ...]``: run the suite, print the table, write JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from bench import machine, node, processes, propagation, scale, webhook
from bench.cluster import Cluster
from bench.report import Figure, document, format_table
from bench.sizes import FULL, QUICK, Sizes
from devtools.commands import REPO

Benchmark = Callable[[Cluster, Sizes, Path], Awaitable[list[Figure]]]
BENCHMARKS: dict[str, Benchmark] = {
    "propagation": propagation.run,
    "webhook": webhook.run,
    "node": node.run,
    "scale": scale.run,  # last: it leaves its profiles behind
}
DEFAULT_OUTPUT = REPO / "bench" / "results.json"


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


async def run(sizes: Sizes, names: list[str], work: Path) -> tuple[list[Figure], dict[str, object], list[str]]:
    """Start the control plane once, run the chosen benchmarks in order, stop it."""
    cluster = Cluster(work)
    _say(f"starting the control plane (run dir {work})")
    await cluster.start()
    figures: list[Figure] = []
    notes: list[str] = []
    try:
        for name in names:
            _say(f"running {name} ({sizes.mode})")
            started = time.monotonic()
            found = await BENCHMARKS[name](cluster, sizes, work / name)
            _say(f"{name} done in {time.monotonic() - started:.0f}s: {len(found)} figures")
            notes.append(f"{name}: {time.monotonic() - started:.0f}s")
            figures += found
    finally:
        await cluster.stop()
    return figures, {"kubernetes": cluster.dev.version}, notes


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (CI: keeps every benchmark path working; the figures mean little)")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"results JSON (default: {DEFAULT_OUTPUT.relative_to(REPO)} for a full run; "
                             "a --quick run must name one, so it never overwrites the committed results)")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=None, help="run only these")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs, host roots)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="run the operator and agents under cProfile, .prof files into DIR (slows them: "
                             "for finding a bottleneck, not for figures)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.output is None and args.quick:
        parser.error("--quick needs --output (the committed bench/results.json holds full-run figures)")
    output: Path = args.output or DEFAULT_OUTPUT
    processes.PROFILE_DIR = args.profile.resolve() if args.profile else None
    names = [name for name in BENCHMARKS if args.only is None or name in args.only]  # always in suite order
    work = Path(tempfile.mkdtemp(prefix="secprofiles-bench-"))
    started, load_start, clock = _stamp(), machine.load_average(), time.monotonic()
    facts = machine.facts(work)
    try:
        figures, extra, notes = asyncio.run(run(sizes, names, work))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    duration = time.monotonic() - clock
    load_note = {"loadavg_1m_5m_15m_start": load_start, "loadavg_1m_5m_15m_end": machine.load_average(),
                 "note": "the machine is shared; a load average near or above the core count contaminates figures"}
    if args.profile:
        notes.append(f"PROFILED RUN (cProfile in every operator/agent process): figures are slowed; "
                     f"profiles in {args.profile}")
    result = document(figures, mode=sizes.mode, machine={**facts, **extra}, started=started, finished=_stamp(),
                      duration=duration, load_note=load_note, notes=[f"benchmarks run: {', '.join(names)}", *notes])
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(figures))
    _say(f"{len(figures)} figures in {duration:.0f}s ({sizes.mode} mode); results in {output}"
         + (f"; run dir kept at {work}" if args.keep else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
