"""The node recorder: ``python -m secprofiles.agent.recorder --node-name NODE`` (the DaemonSet of
manifests/overlays/recording, a separate identity from the agent so the agent keeps its privileges).

It records the containers of the pods its node's RecordingReports name and writes their syscall sets into those
reports' status. It watches only RecordingReports whose ``spec.nodeName`` is its node (a field selector) and reads
nothing else of the cluster: pods are found by their cgroup (the kubelet's layout names the pod UID,
``pod<uid>``, and the container id; ``recording.container_identity``), and container names are the operator's
business (it maps ids to names from the pods' status, which the kubelet fills from the CRI).

Invariants:
- A report's status is written when its sets changed (at most every ``--report-interval`` seconds) and once more,
  ``final: true``, after ``spec.stop``: only after a barrier through the kernel's audit queue, so every syscall
  made before the stop was seen is in it. Then the report's pods are released and their sets forgotten: memory
  is bounded by the containers being recorded on this node.
- A recorder that cannot record (no CAP_AUDIT_READ, no audit support, outside the host's network namespace, no
  proc connector) keeps running, says so in ``status.error`` of every report (and is not ready), and never
  reports an empty set as if nothing happened. Dropped records (socket overruns) and a restart of the recorder
  during a recording (its sets were in memory) are reported in ``status.incomplete``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from dataclasses import dataclass, field
from urllib.parse import quote

from secprofiles.agent import daemon, endpoints
from secprofiles.kube.client import ApiError, Credentials, KubeApi, list_and_watch
from secprofiles.model import schema
from secprofiles.model.syscalls import node_architectures
from secprofiles.objects import Object
from secprofiles.recording.audit_barrier import AuditSilent
from secprofiles.recording.audit_socket import AuditUnavailable
from secprofiles.recording.container_recorder import ContainerRecorder
from secprofiles.recording.proc_connector import ProcConnectorUnavailable
from secprofiles.recording.report import ContainerSyscalls, NodeReport, spec_pods
from secprofiles.resources import resource_path

log = logging.getLogger("secprofiles.recorder")


@dataclass
class Assignment:
    """One RecordingReport of this node: the pods to record, and what was last sent."""

    namespace: str
    name: str
    pods: set[str]
    stop: bool = False
    final_sent: bool = False
    sent: NodeReport | None = None
    overruns_at_start: int = 0
    unattributed_at_start: int = 0
    restarted: bool = False  # an earlier recorder reported sets this one never saw: what ran in between is lost
    finishing: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def status_path(self) -> str:
        return resource_path(schema.RECORDING_REPORT, self.namespace, self.name, "status")


class NodeRecorder:
    """The recorder of one node; ``recorder`` is None when this node cannot record (``error`` says why)."""

    def __init__(self, api: KubeApi, node: str, recorder: ContainerRecorder | None, error: str = "",
                 interval: float = 5.0) -> None:
        self.api, self.node, self.recorder, self.error, self.interval = api, node, recorder, error, interval
        self.assignments: dict[str, Assignment] = {}
        self._wake = asyncio.Event()

    @property
    def ready(self) -> bool:
        """Able to record."""
        return self.recorder is not None and not self.error

    async def run(self) -> None:
        """Record, watch this node's reports and write their status, until cancelled."""
        tasks = []
        if self.recorder is not None:
            tasks.append(asyncio.create_task(self.recorder.run(), name="record"))
            try:
                await self.recorder.sync()  # proves records arrive at all, before any report says "nothing seen"
            except AuditSilent as error:
                self.error = str(error)
            else:
                log.info("recording possible: audit records arrive", extra={"node": self.node})
        if self.error:
            log.error("this node cannot record", extra={"error": self.error})
        path = f"{resource_path(schema.RECORDING_REPORT)}?fieldSelector={quote(f'spec.nodeName={self.node}')}"
        tasks += [asyncio.create_task(list_and_watch(self.api, path, self._on_event), name="watch"),
                  asyncio.create_task(self._report_forever(), name="report")]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _on_event(self, event: str, obj: Object) -> None:
        meta, spec = obj["metadata"], obj.get("spec") or {}
        key = f"{meta['namespace']}/{meta['name']}"
        if event == "DELETED" or spec.get("nodeName") != self.node:
            if (gone := self.assignments.pop(key, None)) is not None:
                self._release(gone.pods)
            return
        pods = set(spec_pods(obj))
        assignment = self.assignments.get(key)
        if assignment is None:
            assignment = self.assignments[key] = Assignment(
                meta["namespace"], meta["name"], set(),
                overruns_at_start=self.recorder.audit.overruns if self.recorder else 0,
                unattributed_at_start=self.recorder.attributor.unattributed.records if self.recorder else 0)
            earlier = NodeReport.from_status(obj.get("status"))
            assignment.final_sent = earlier.final  # a restarted recorder does not undo a final report
            assignment.restarted = bool(earlier.containers)
        if not assignment.final_sent and self.recorder is not None and pods - assignment.pods:
            for uid in pods - assignment.pods:
                self.recorder.attributor.select_pod(uid)
            log.info("recording pods", extra={"report": key, "pods": sorted(pods - assignment.pods)})
        assignment.pods = pods
        assignment.stop = bool(spec.get("stop"))
        if assignment.stop and not assignment.final_sent and assignment.finishing is None:
            assignment.finishing = asyncio.create_task(self._finish(key, assignment))
        self._wake.set()

    async def _finish(self, key: str, assignment: Assignment) -> None:
        """The final report: after a barrier (every record made before the stop arrived), then forget the pods."""
        try:
            if self.recorder is not None and not self.error:
                await self.recorder.sync()
            await self._send(assignment, final=True)
        except (ApiError, OSError, AuditSilent) as error:
            log.warning("final report not sent; retrying", extra={"report": key, "error": str(error)})
            assignment.finishing = None
            asyncio.get_running_loop().call_later(1.0, self._retry_finish, key)
            return
        assignment.final_sent = True
        self._release(assignment.pods)
        log.info("final report sent", extra={"report": key, "pods": len(assignment.pods)})

    def _retry_finish(self, key: str) -> None:
        assignment = self.assignments.get(key)
        if assignment is not None and not assignment.final_sent and assignment.finishing is None:
            assignment.finishing = asyncio.create_task(self._finish(key, assignment))

    def _release(self, pods: set[str]) -> None:
        if self.recorder is not None:
            for uid in pods:
                self.recorder.attributor.release_pod(uid)

    async def _report_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            for key, assignment in list(self.assignments.items()):
                if assignment.final_sent or assignment.finishing is not None:
                    continue
                try:
                    await self._send(assignment, final=False)
                except (ApiError, OSError) as error:
                    log.warning("report not sent; retrying", extra={"report": key, "error": str(error)})
            await asyncio.sleep(self.interval)
            self._wake.set()  # sets change without events: look again after the interval

    def report(self, assignment: Assignment, final: bool) -> NodeReport:
        """What this node has recorded for ``assignment`` so far."""
        if self.recorder is None or self.error:
            return NodeReport(final=final, error=self.error, architectures=node_architectures())
        attributor = self.recorder.attributor
        containers = tuple(ContainerSyscalls(identity.pod_uid, identity.container_id, syscalls.report(),
                                             syscalls.runtime)
                           for identity, syscalls in attributor.recorded.items() if identity.pod_uid in assignment.pods)
        overruns = self.recorder.audit.overruns - assignment.overruns_at_start
        incomplete = (f"the kernel dropped audit records for this recorder {overruns} time(s) (its receive buffer "
                      "was full)") if overruns else ""
        if assignment.restarted:
            incomplete = "the node's recorder restarted during the recording: what ran meanwhile was not seen"
        return NodeReport(final=final, incomplete=incomplete,
                          unattributed_records=attributor.unattributed.records - assignment.unattributed_at_start,
                          architectures=node_architectures(), containers=containers)

    async def _send(self, assignment: Assignment, final: bool) -> None:
        report = self.report(assignment, final)
        if report == assignment.sent:
            return
        try:
            await self.api.patch(assignment.status_path, {"status": report.as_status()})
        except ApiError as error:
            if error.status != 404:  # the recording (and its reports) was deleted: nothing to tell
                raise
        assignment.sent = report
        outcomes = {k.value: v for k, v in self.recorder.outcomes.items()} if self.recorder else {}
        log.debug("report sent", extra={"report": assignment.name, "containers": len(report.containers),
                                        "final": final, "records": outcomes})


def open_recorder() -> tuple[ContainerRecorder | None, str]:
    """The node's recorder, or None and why this process cannot record here."""
    try:
        return ContainerRecorder.on_this_node(), ""
    except (AuditUnavailable, ProcConnectorUnavailable) as error:
        return None, str(error)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m secprofiles.agent.recorder", description=__doc__)
    parser.add_argument("--node-name", default=os.environ.get("NODE_NAME"),
                        help="this node's Node name (default: $NODE_NAME)")
    parser.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG, else the in-cluster account")
    parser.add_argument("--report-interval", type=float, default=5.0,
                        help="seconds between status writes of a report whose sets changed (default: 5)")
    parser.add_argument("--health-port", type=int, default=8082, help="/healthz and /readyz (0: any free port)")
    parser.add_argument("--health-host", default="127.0.0.1",
                        help="address of the health endpoints (default loopback: the pod shares the node's network)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if not args.node_name:
        parser.error("--node-name or $NODE_NAME is required")
    return args


async def main_async(args: argparse.Namespace) -> None:
    """Serve the health endpoints and record until SIGTERM/SIGINT."""
    recorder, error = open_recorder()
    async with KubeApi(Credentials.auto(args.kubeconfig),
                       user_agent=f"secprofiles-recorder/{args.node_name}") as api:
        node = NodeRecorder(api, args.node_name, recorder, error, args.report_interval)
        server, port = await endpoints.serve(args.health_port, endpoints.health_routes(lambda: node.ready),
                                             args.health_host)
        log.info("listening", extra={"endpoint": "health", "port": port})
        try:
            await daemon.run_until_signalled(node.run(), log, "recorder")
        finally:
            server.close()
            if recorder is not None:
                recorder.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit 1 when the recorder fails (the DaemonSet restarts it)."""
    args = parse_args(argv)
    return daemon.main(lambda: main_async(args), args.log_level, log, "recorder")


if __name__ == "__main__":
    sys.exit(main())
