"""AppArmor loaders. This kernel has no AppArmor: kernel loading is SIMULATED by RecordingLoader
(real ``apparmor_parser -Q -K`` compile, recorded in the host root's simulated securityfs file).

KernelLoader's kernel step is FAKED: a fake ``apparmor_parser``, alone on PATH, records each command line (with
its stdin and the policy file it was given) and answers ``-N`` as the real parser does, so these tests prove
the exact commands KernelLoader runs, not that a kernel accepts them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from secprofiles.agent.apparmor_loader import (
    SECURITYFS,
    KernelLoader,
    LoadError,
    RecordingLoader,
    SourceStore,
    apparmor_enabled,
    read_profiles_file,
)
from tests.conftest import needs_apparmor_parser

GOOD = b"#include <tunables/global>\nprofile demo flags=(attach_disconnected) {\n  #include <abstractions/base>\n}\n"
BAD = b"profile demo {\n  this is not a rule\n}\n"


@pytest.fixture
def host(tmp_path: Path) -> Path:
    (tmp_path / "host" / SECURITYFS).mkdir(parents=True)
    return tmp_path / "host"


def test_apparmor_enabled_follows_the_securityfs_directory(tmp_path: Path, host: Path) -> None:
    assert apparmor_enabled(host)
    assert not apparmor_enabled(tmp_path)


def test_profiles_file_parsing() -> None:
    text = "docker-default (enforce)\n/usr/sbin/ntpd (complain)\nname with space (enforce)\n"
    path = Path("/nonexistent")
    assert read_profiles_file(path) == {}
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as handle:
        handle.write(text)
        handle.flush()
        assert read_profiles_file(Path(handle.name)) == {
            "docker-default": "enforce", "/usr/sbin/ntpd": "complain", "name with space": "enforce"}


@needs_apparmor_parser
async def test_simulated_kernel_load_records_name_and_mode_and_keeps_foreign_profiles(
        host: Path, tmp_path: Path) -> None:
    (host / SECURITYFS / "profiles").write_text("docker-default (enforce)\n")
    policy = tmp_path / "demo.apparmor"
    policy.write_bytes(GOOD)
    loader = RecordingLoader(host)
    await loader.load("demo", policy, complain=True)
    assert read_profiles_file(host / SECURITYFS / "profiles") == {"docker-default": "enforce", "demo": "complain"}
    await loader.load("demo", policy, complain=False)
    assert loader.loaded_names() == {"docker-default", "demo"}
    assert (host / SECURITYFS / "profiles").read_text() == "demo (enforce)\ndocker-default (enforce)\n"
    await loader.remove("demo", policy)
    assert loader.loaded_names() == {"docker-default"}


@needs_apparmor_parser
async def test_simulated_kernel_load_rejects_what_the_parser_rejects(host: Path, tmp_path: Path) -> None:
    policy = tmp_path / "demo.apparmor"
    policy.write_bytes(BAD)
    loader = RecordingLoader(host)
    with pytest.raises(LoadError, match="apparmor_parser"):
        await loader.load("demo", policy, complain=False)
    assert loader.loaded_names() == set()


def test_the_recording_loader_never_targets_the_real_root() -> None:
    with pytest.raises(ValueError, match="never writes"):
        RecordingLoader(Path("/"))


def test_source_store_keeps_texts_and_forgets_them(tmp_path: Path) -> None:
    store = SourceStore(tmp_path / "state")
    assert store.names() == set()
    path = store.write("demo", GOOD)
    assert path == tmp_path / "state" / "apparmor" / "demo.apparmor"
    assert store.read("demo") == GOOD
    (store.directory / ".tmp-demo.apparmor.1234").write_bytes(b"partial")
    assert store.names() == {"demo"}
    assert not (store.directory / ".tmp-demo.apparmor.1234").exists()  # crash leftovers are removed
    store.delete("demo")
    assert store.names() == set() and store.read("demo") is None
    with pytest.raises(ValueError, match="DNS-1123"):
        store.path("../escape")


# Records one JSON line per run; ``-N`` prints the names the policy defines (as the real parser does); exits
# with FAKE_PARSER_FAIL_CODE, writing FAKE_PARSER_STDERR, when the command's first option is FAKE_PARSER_FAIL.
FAKE_PARSER = """#!{python}
import json, os, re, sys
args = sys.argv[1:]
policy = open(args[-1], encoding="utf-8").read()
with open(os.environ["FAKE_PARSER_LOG"], "a", encoding="utf-8") as log:
    log.write(json.dumps({{"argv": args, "stdin": sys.stdin.read(), "policy": policy}}) + "\\n")
if args[0] == "-N":
    print("\\n".join(re.findall(r"^profile (\\S+)", policy, re.M)))
elif args[0] == os.environ.get("FAKE_PARSER_FAIL"):
    sys.stderr.write(os.environ.get("FAKE_PARSER_STDERR", ""))
    sys.exit(int(os.environ["FAKE_PARSER_FAIL_CODE"]))
"""


@pytest.fixture
def fake_parser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put the fake ``apparmor_parser`` first on PATH; returns its log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    parser = bin_dir / "apparmor_parser"
    parser.write_text(FAKE_PARSER.format(python=sys.executable))
    parser.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))  # only the fake: the real parser is never reached
    monkeypatch.setenv("FAKE_PARSER_LOG", str(tmp_path / "parser.log"))
    return tmp_path / "parser.log"


def runs(log: Path) -> list[dict[str, Any]]:
    """The fake parser's recorded runs, oldest first."""
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


async def test_kernel_loader_command_lines_with_the_kernel_step_faked(
        host: Path, tmp_path: Path, fake_parser: Path) -> None:
    policy = tmp_path / "demo.apparmor"
    policy.write_bytes(GOOD)
    securityfs = str(host / SECURITYFS)
    loader = KernelLoader(host)
    await loader.load("demo", policy, complain=False)
    await loader.load("demo", policy, complain=True)  # a reload (mode change) replaces with -r as well
    await loader.remove("demo", policy)
    check = ["-N", "-K", str(policy)]  # the agent's own name check runs before every kernel command
    assert [run["argv"] for run in runs(fake_parser)] == [
        check, ["-r", "-K", "-f", securityfs, str(policy)],
        check, ["-r", "-K", "-f", securityfs, "-C", str(policy)],
        check, ["-R", "-K", "-f", securityfs, str(policy)],
    ]
    # The policy goes by path, never on stdin (the parser's stdin is /dev/null).
    assert all(run["stdin"] == "" and run["policy"] == GOOD.decode() for run in runs(fake_parser))
    # Only the kernel keeps the list of loaded profiles: KernelLoader writes nothing under securityfs.
    assert list((host / SECURITYFS).iterdir()) == []


async def test_kernel_loader_reads_loaded_profiles_from_the_host_roots_securityfs(host: Path) -> None:
    (host / SECURITYFS / "profiles").write_text("docker-default (enforce)\ndemo (complain)\n")
    assert KernelLoader(host).loaded_names() == {"docker-default", "demo"}
    assert KernelLoader(host.parent / "no-such-host").loaded_names() == set()


@pytest.mark.parametrize(("option", "stderr", "code", "message"), [
    ("-r", "AppArmor parser error for /p in profile demo at line 3: syntax error\n\n  unexpected TOK_ID\n", 1,
     "apparmor_parser -r -K -f {sfs} failed: AppArmor parser error for /p in profile demo at line 3: syntax error "
     "unexpected TOK_ID"),
    ("-R", "", 254, "apparmor_parser -R -K -f {sfs} failed: exit 254"),
], ids=["load-fails-with-message", "remove-fails-silently"])
async def test_kernel_loader_turns_a_faked_kernel_step_failure_into_load_error(
        host: Path, tmp_path: Path, fake_parser: Path, monkeypatch: pytest.MonkeyPatch,
        option: str, stderr: str, code: int, message: str) -> None:
    monkeypatch.setenv("FAKE_PARSER_FAIL", option)
    monkeypatch.setenv("FAKE_PARSER_STDERR", stderr)
    monkeypatch.setenv("FAKE_PARSER_FAIL_CODE", str(code))
    policy = tmp_path / "demo.apparmor"
    policy.write_bytes(GOOD)
    loader = KernelLoader(host)
    step = loader.load("demo", policy, complain=False) if option == "-r" else loader.remove("demo", policy)
    with pytest.raises(LoadError) as raised:
        await step
    assert str(raised.value) == message.format(sfs=host / SECURITYFS)
    assert runs(fake_parser)[-1]["argv"][0] == option  # the kernel command ran, and failed


async def test_kernel_loader_refuses_a_policy_naming_another_profile_before_any_kernel_step(
        host: Path, tmp_path: Path, fake_parser: Path) -> None:
    policy = tmp_path / "demo.apparmor"
    policy.write_bytes(GOOD.replace(b"profile demo", b"profile other"))
    loader = KernelLoader(host)
    with pytest.raises(LoadError, match="refusing to load AppArmor profile 'demo': the policy defines 'other'"):
        await loader.load("demo", policy, complain=False)
    with pytest.raises(LoadError, match="refusing to load"):
        await loader.remove("demo", policy)
    assert [run["argv"][0] for run in runs(fake_parser)] == ["-N", "-N"]  # no -r, no -R
