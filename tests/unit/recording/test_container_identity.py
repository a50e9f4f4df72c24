"""A process's container and pod from its cgroups, in every layout runtimes use."""

from __future__ import annotations

import pytest

from secprofiles.recording.container_identity import AmbiguousCgroup, ContainerIdentity, container_of

CID = "0123456789abcdef" * 4
OTHER = "fedcba9876543210" * 4
UID = "5f0e4c52-8a9b-4c1d-9e2f-0123456789ab"


@pytest.mark.parametrize(("text", "expected"), [
    # podman 4.3 + runc, cgroupfs, hybrid hierarchy (as on this machine)
    (f"9:name=systemd:/libpod_parent/libpod-{CID}\n4:memory:/libpod_parent/libpod-{CID}\n0::/\n",
     ContainerIdentity(CID)),
    # kubelet cgroupfs driver + containerd
    (f"4:memory:/kubepods/burstable/pod{UID}/{CID}\n0::/kubepods/burstable/pod{UID}/{CID}\n",
     ContainerIdentity(CID, UID)),
    # kubelet systemd driver + containerd / CRI-O
    (f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}.slice/"
     f"cri-containerd-{CID}.scope\n", ContainerIdentity(CID, UID)),
    (f"0::/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-{CID}.scope\n", ContainerIdentity(CID, UID)),
    (f"0::/system.slice/docker-{CID}.scope\n", ContainerIdentity(CID)),
    (f"4:memory:/docker/{CID}\n", ContainerIdentity(CID)),
    # podman with a nested cgroup under the container's (systemd mode)
    (f"0::/machine.slice/libpod-{CID}.scope/container\n", ContainerIdentity(CID)),
    # not in a container: the host, this machine's own sandbox, a zombie (reset to the root)
    ("4:memory:/process_api/43e9b4b00d7bab864eed871d3626696c\n0::/\n", None),
    ("9:name=systemd:/\n0::/\n", None),
    ("", None),
])
def test_container_of(text: str, expected: ContainerIdentity | None) -> None:
    assert container_of(text) == expected


def test_hierarchies_naming_two_containers_are_ambiguous() -> None:
    with pytest.raises(AmbiguousCgroup):
        container_of(f"4:memory:/docker/{CID}\n0::/docker/{OTHER}\n")
