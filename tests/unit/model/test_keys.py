"""Profile keys: the one naming of profiles every component shares, and the localhost profile path of seccomp."""

from __future__ import annotations

import pytest

from secprofiles.model import keys


def test_keys_of_both_kinds_round_trip() -> None:
    seccomp = {"kind": "SeccompProfile", "metadata": {"name": "a.b", "namespace": "apps"}}
    apparmor = {"kind": "AppArmorProfile", "metadata": {"name": "demo"}}
    assert keys.key_of(seccomp) == "seccomp/apps/a.b" == keys.profile_key("SeccompProfile", "apps", "a.b")
    assert keys.key_of(apparmor) == "apparmor/demo" == keys.profile_key("AppArmorProfile", "any-namespace", "demo")
    assert keys.parse_key("seccomp/apps/a.b") == ("seccomp", "apps", "a.b")
    assert keys.parse_key("apparmor/demo") == ("apparmor", "", "demo")


def test_localhost_profile_maps_back_to_its_key() -> None:
    path = keys.localhost_profile("apps", "a.b")
    assert path == "secprofiles/apps/a.b.json"
    assert keys.key_of_localhost_profile(path) == "seccomp/apps/a.b"


@pytest.mark.parametrize("path", ["other/apps/a.json", "secprofiles/apps/a.yaml", "secprofiles/a.json",
                                  "secprofiles/apps/x/a.json", "secprofiles//a.json", "secprofiles/apps/.json", ""])
def test_files_secprofiles_does_not_write_have_no_key(path: str) -> None:
    assert keys.key_of_localhost_profile(path) is None
