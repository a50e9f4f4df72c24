"""The injection table (tests/hostile.py) against the model and ``secprofiles lint``, and the node agent's own
double-checks of paths and AppArmor profile names, with the model bypassed."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

from secprofiles.agent.apparmor_loader import SECURITYFS, LoadError, RecordingLoader
from secprofiles.agent.files import SeccompTree, UnsafePathError
from secprofiles.cli import main as cli
from secprofiles.model import schema
from secprofiles.model.evaluate import evaluate_sync
from tests.conftest import needs_apparmor_parser
from tests.hostile import INJECTIONS, Injection, policy


@needs_apparmor_parser
@pytest.mark.parametrize("case", INJECTIONS, ids=[c.id for c in INJECTIONS])
def test_injection_is_refused_by_the_model_and_lint_naming_the_field(case: Injection, tmp_path: Path) -> None:
    outcome = evaluate_sync(case.obj)
    assert outcome.rendered is None
    named = [f for f in outcome.findings if f.field == case.field]
    assert named, outcome.findings
    if not case.api:  # the API server stores it: the model's reason is the one users see
        assert any(case.words in f.message for f in named), named

    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump(case.obj), encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(["lint", str(path)])
    assert code == 1 and "Traceback" not in err.getvalue()
    assert f": {case.field}: " in out.getvalue(), out.getvalue()


def test_the_injection_table_covers_both_kinds_and_both_refusers(report_figure: Callable[[str], None]) -> None:
    kinds = {(c.kind, c.api) for c in INJECTIONS}
    assert kinds == {(k, api) for k in (schema.SECCOMP_PROFILE, schema.APPARMOR_PROFILE) for api in (True, False)}
    report_figure(f"{len(INJECTIONS)} injection cases ({sum(c.api for c in INJECTIONS)} refused by the API server, "
                  f"{sum(not c.api for c in INJECTIONS)} by the model)")


# The agent, model bypassed: paths.

@pytest.fixture
def tree(tmp_path: Path) -> SeccompTree:
    return SeccompTree(tmp_path / "host", "/var/lib/kubelet")


SECCOMP_KEYS = sorted({(c.obj["metadata"]["namespace"], c.obj["metadata"]["name"]) for c in INJECTIONS
                       if c.kind == schema.SECCOMP_PROFILE and c.field.startswith("metadata.")}
                      | {("apps\n", "p"), ("apps", "/abs"), ("apps", "p\x00"), ("", "p"), ("apps", "a" * 250)})


@pytest.mark.parametrize(("namespace", "name"), SECCOMP_KEYS)
def test_the_agent_refuses_every_hostile_path_before_touching_the_disk(
        tree: SeccompTree, tmp_path: Path, namespace: str, name: str) -> None:
    for operation in (tree.final_path, tree.read, tree.remove):
        with pytest.raises(UnsafePathError):
            operation(namespace, name)
    with pytest.raises(UnsafePathError):
        tree.write(namespace, name, b"{}")
    assert [p for p in tmp_path.rglob("*") if not p.is_dir()] == []


def test_a_symlink_planted_as_the_subtree_root_is_replaced_never_followed(tree: SeccompTree, tmp_path: Path) -> None:
    victim = tmp_path / "etc"
    victim.mkdir()
    (victim / "passwd").write_text("root:x:0:0")
    tree.seccomp_dir.mkdir(parents=True)
    tree.root.symlink_to(victim)
    tree.write("apps", "p", b"{}")
    assert tree.root.is_dir() and not tree.root.is_symlink()
    assert (tree.root / "apps" / "p.json").read_bytes() == b"{}"
    assert sorted(os.listdir(victim)) == ["passwd"] and (victim / "passwd").read_text() == "root:x:0:0"


def test_a_symlinked_namespace_is_an_error_for_that_profile_only(tree: SeccompTree, tmp_path: Path) -> None:
    victim = tmp_path / "etc"
    victim.mkdir()
    tree.root.mkdir(parents=True)
    (tree.root / "apps").symlink_to(victim)
    with pytest.raises(UnsafePathError, match="refusing to follow"):
        tree.write("apps", "p", b"{}")
    tree.write("other", "p", b"{}")
    assert os.listdir(victim) == [] and (tree.root / "other" / "p.json").exists()


# The agent, model bypassed: AppArmor profile names.

@pytest.fixture
def loader(tmp_path: Path) -> RecordingLoader:
    (tmp_path / "host" / SECURITYFS).mkdir(parents=True)
    (tmp_path / "host" / SECURITYFS / "profiles").write_text("docker-default (enforce)\n")
    return RecordingLoader(tmp_path / "host")


HOSTILE_LOADS = {
    "defines a host profile": ("demo", policy("", header="profile docker-default")),
    "defines the expected and another profile": ("demo", policy("demo") + "profile other {\n  file,\n}\n"),
    "defines a child of another profile": ("demo", policy("demo") + "profile docker-default//x {\n  file,\n}\n"),
    "named like a host profile": ("docker-default", policy("docker-default")),
    "named like the runtime's": ("cri-containerd.apparmor.d", policy("cri-containerd.apparmor.d")),
    "named unconfined": ("unconfined", policy("unconfined")),
    "name with a slash": ("a/b", policy("a/b")),
}


@needs_apparmor_parser
@pytest.mark.parametrize("case", sorted(HOSTILE_LOADS))
async def test_the_agent_loads_only_a_policy_defining_exactly_its_own_name(
        loader: RecordingLoader, tmp_path: Path, case: str) -> None:
    name, text = HOSTILE_LOADS[case]
    path = tmp_path / "policy.apparmor"
    path.write_text(text)
    with pytest.raises(LoadError, match="refusing to load"):
        await loader.load(name, path, complain=False)
    with pytest.raises(LoadError, match="refusing to load"):
        await loader.remove(name, path)
    assert loader.loaded_names() == {"docker-default"}
    assert (loader.securityfs / "profiles").read_text() == "docker-default (enforce)\n"


@needs_apparmor_parser
async def test_the_agent_loads_a_policy_defining_its_own_name(loader: RecordingLoader, tmp_path: Path) -> None:
    path = tmp_path / "policy.apparmor"
    path.write_text(policy("demo"))
    await loader.load("demo", path, complain=True)
    assert loader.loaded_names() == {"docker-default", "demo"}


@needs_apparmor_parser
async def test_children_and_hats_are_loaded_replaced_and_removed_with_their_parent(
        loader: RecordingLoader, tmp_path: Path) -> None:
    path = tmp_path / "policy.apparmor"
    path.write_text(policy("demo", "/bin/sh Cx -> child,\n  ^hat {\n  }\n  profile child {\n    file,\n  }"))
    await loader.load("demo", path, complain=False)
    assert (loader.securityfs / "profiles").read_text() == (
        "demo (enforce)\ndemo//child (enforce)\ndemo//hat (enforce)\ndocker-default (enforce)\n")
    path.write_text(policy("demo", "^hat {\n  }"))  # a new version without the child: the kernel drops it
    await loader.load("demo", path, complain=True)
    assert loader.loaded_names() == {"demo", "demo//hat", "docker-default"}
    await loader.remove("demo", path)
    assert loader.loaded_names() == {"docker-default"}
