"""deploy.loopback_webhooks: the shipped webhook configuration pointed at a local operator process."""

from __future__ import annotations

import copy

import yaml

from devtools import install as deploy
from tests.conftest import REPO


def test_service_replaced_by_loopback_url_and_nothing_else_changed() -> None:
    shipped = yaml.safe_load((REPO / "manifests/base/webhook.yaml").read_text())
    before = copy.deepcopy(shipped)
    config = deploy.loopback_webhooks(shipped, 8443)
    assert shipped == before, "the input is not modified"
    assert [w["clientConfig"] for w in config["webhooks"]] == [{"url": "https://127.0.0.1:8443/bind-pods"}]
    for webhook, original in zip(config["webhooks"], shipped["webhooks"], strict=True):
        assert {k: v for k, v in webhook.items() if k != "clientConfig"} == {
            k: v for k, v in original.items() if k != "clientConfig"}
    assert {k: v for k, v in config.items() if k != "webhooks"} == {k: v for k, v in shipped.items() if k != "webhooks"}


def test_path_prefix_and_ca_bundle() -> None:
    shipped = yaml.safe_load((REPO / "manifests/base/webhook.yaml").read_text())
    config = deploy.loopback_webhooks(shipped, 9443, path_prefix="/t1", ca_bundle="Q0E=")
    assert config["webhooks"][0]["clientConfig"] == {"url": "https://127.0.0.1:9443/t1/bind-pods", "caBundle": "Q0E="}
