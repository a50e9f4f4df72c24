"""AppArmor loaders. This kernel has no AppArmor: kernel loading is SIMULATED by RecordingLoader
(real ``apparmor_parser -Q -K`` compile, recorded in the host root's simulated securityfs file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from secprofiles.agent.apparmor_loader import (
    SECURITYFS,
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
