"""Installing ``manifests/`` into a dev cluster (tests and the sandbox), with the product's own API client.

* :func:`render` - ``kubectl kustomize DIR`` (or ``kustomize build DIR``) into a list of objects (nothing here
  re-implements it); :func:`render_resources` - without either tool, a kustomization's resources untransformed;
* :func:`apply` - server-side apply of rendered objects, CRDs first and waited for until Established, so objects
  of those CRDs apply in the same call;
* :func:`loopback_webhooks` - the shipped webhook configuration pointed at an operator process on 127.0.0.1
  instead of its Service (for clusters without a kubelet to run the operator's pod).
"""

from __future__ import annotations

import asyncio
import copy
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Final

import yaml

from devtools.objects import crd_established
from devtools.waiting import wait_for
from secprofiles.kube.client import KubeApi
from secprofiles.objects import Object
from secprofiles.resources import object_path

FIELD_MANAGER: Final = "secprofiles-devtools"
#: Apply order: what others depend on first.
_ORDER: Final = ("CustomResourceDefinition", "Namespace", "ServiceAccount", "ClusterRole", "Role",
                 "ClusterRoleBinding", "RoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")


class KustomizeUnavailableError(RuntimeError):
    """Neither ``kubectl`` (which carries kustomize) nor ``kustomize`` is installed."""


def kustomize_command() -> list[str] | None:
    """``kubectl kustomize`` or, without kubectl, ``kustomize build`` (scripts/install.sh provides it); or None."""
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    return None


def render(directory: Path) -> list[Object]:
    """The kustomize build of ``directory`` as a list of objects (empty documents dropped)."""
    command = kustomize_command()
    if command is None:
        raise KustomizeUnavailableError("neither kubectl nor kustomize is installed (run scripts/install.sh)")
    result = subprocess.run([*command, str(directory)], capture_output=True, text=True, check=False, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} {directory} failed: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_resources(directory: Path) -> list[Object]:
    """NOT kustomize: the objects of a kustomization's ``resources`` (files and nested directories), untransformed.

    Enough for the sandbox when ``kubectl`` is missing: the base's CRDs, namespace, service accounts, RBAC and
    admission policies need none of kustomize's transformations (images, labels, patches are ignored here).
    """
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (directory / name).is_file():
            spec = yaml.safe_load((directory / name).read_text())
            break
    else:
        raise FileNotFoundError(f"no kustomization in {directory}")
    objects: list[Object] = []
    for entry in spec.get("resources") or []:
        path = (directory / entry).resolve()
        if path.is_dir():
            objects.extend(render_resources(path))
        else:
            objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return objects


def select(objects: Iterable[Mapping[str, Any]], kinds: Iterable[str]) -> list[Object]:
    """The objects of the given kinds, in their order."""
    wanted = set(kinds)
    return [dict(obj) for obj in objects if obj["kind"] in wanted]


def _order(obj: Mapping[str, Any]) -> int:
    return _ORDER.index(obj["kind"]) if obj["kind"] in _ORDER else len(_ORDER)


async def apply(api: KubeApi, objects: Iterable[Mapping[str, Any]], *, field_manager: str = FIELD_MANAGER,
                dry_run: bool = False, on_applied: Callable[[Mapping[str, Any]], None] | None = None) -> list[Object]:
    """Server-side apply every object (``force``: this manager owns what it applies); return the results.

    CRDs go first and are waited for until Established (unless ``dry_run``).
    """
    ordered = sorted(objects, key=_order)
    params = {"fieldManager": field_manager, "force": "true", **({"dryRun": "All"} if dry_run else {})}
    results: list[Object] = []
    crds_done = False
    for obj in ordered:
        if not crds_done and obj["kind"] != "CustomResourceDefinition":
            crds_done = True
            if not dry_run:
                names = [crd["metadata"]["name"] for crd in ordered if crd["kind"] == "CustomResourceDefinition"]
                await asyncio.gather(*(wait_for(partial(crd_established, api, name), 60,
                                                f"CRD {name} Established") for name in names))
        results.append(await api.patch(object_path(obj), dict(obj), "apply", params=params))
        if on_applied is not None:
            on_applied(obj)
    return results


def loopback_webhooks(config: Mapping[str, Any], port: int, *, path_prefix: str = "",
                      ca_bundle: str | None = None) -> Object:
    """A copy of the webhook configuration ``config`` whose webhooks call ``https://127.0.0.1:<port><path>``.

    Each webhook's ``clientConfig.service`` is replaced by that URL, its path kept (``path_prefix`` goes before
    it); nothing else of the policy changes. ``ca_bundle`` (base64 PEM) is set when given; without it the
    operator injects its own CA, as it does into the Service-based configuration.
    """
    result: Object = copy.deepcopy(dict(config))
    for webhook in result["webhooks"]:
        client: Object = {"url": f"https://127.0.0.1:{port}{path_prefix}{webhook['clientConfig']['service']['path']}"}
        if ca_bundle:
            client["caBundle"] = ca_bundle
        webhook["clientConfig"] = client
    return result
