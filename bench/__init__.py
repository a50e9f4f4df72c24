"""The secprofiles benchmark suite (issue 8): ``python -m bench [--quick] [--output PATH]``.

Every benchmark runs against the real local control plane (``secprofiles.devcluster``), the operator as a real
``python -m secprofiles.controller`` process and node agents as real ``python -m secprofiles.agent`` processes,
except where a figure's conditions say that many agents share one process (``bench.fleet``). Each figure is
written to ``bench/results.json`` with its conditions, its target and, where the issue names one, a physical
reference measured in the same run. Benchmarks are not tests: a missed target does not fail the run.
"""
