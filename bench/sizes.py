"""How big each benchmark is: the issue's sizes (full) and a quick mode that keeps every path working in CI."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    """Every size knob of the suite."""

    mode: str
    propagation_nodes: tuple[int, ...]
    repetitions: int
    max_agent_processes: int  # above this many nodes, agents share one process (bench.fleet)
    webhook_creates: int  # per variant
    webhook_rate: float  # pod creates per second, all variants together
    footprint_profiles: tuple[int, ...]
    bootstrap_seccomp: int
    bootstrap_apparmor: int
    bootstrap_repetitions: int
    scale_profiles: int
    scale_namespaces: int
    scale_nodes: int
    scale_changes: int


FULL = Sizes(mode="full", propagation_nodes=(1, 10, 100), repetitions=20, max_agent_processes=10,
             webhook_creates=500, webhook_rate=20.0, footprint_profiles=(100, 1000), bootstrap_seccomp=1000,
             bootstrap_apparmor=100, bootstrap_repetitions=3, scale_profiles=5000, scale_namespaces=50,
             scale_nodes=20, scale_changes=5)

QUICK = Sizes(mode="quick", propagation_nodes=(1, 3), repetitions=3, max_agent_processes=1,
              webhook_creates=50, webhook_rate=20.0, footprint_profiles=(20, 100), bootstrap_seccomp=100,
              bootstrap_apparmor=10, bootstrap_repetitions=1, scale_profiles=200, scale_namespaces=5,
              scale_nodes=3, scale_changes=2)
