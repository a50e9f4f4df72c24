"""One entry point to validate and render any profile object, used by the CLI, operator and agent (other kinds of
this project are validated only: schema, and a ProfileRecording's own checks)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from secprofiles.model import apparmor, apparmor_parser, bundled, libseccomp_filter, recording, schema, seccomp
from secprofiles.model.findings import Finding, InvalidProfileError
from secprofiles.objects import Object

Rendered = seccomp.Rendered | apparmor.Rendered


@dataclass(frozen=True)
class Outcome:
    """What validating and rendering one object gave: a rendering, or the findings that prevented it."""

    rendered: Rendered | None
    findings: tuple[Finding, ...]


def _never_found(namespace: str, name: str) -> seccomp.Spec | None:
    return None


async def evaluate(obj: Object, lookup: seccomp.ProfileLookup = _never_found,
                   native_checks: bool = True, validated_hash: str | None = None) -> Outcome:
    """Validate ``obj`` fully (schema, semantics, base chain) and render it if valid.

    With ``native_checks`` the rendering is also given to what a node uses: a seccomp filter is built with
    libseccomp as runc builds it, AppArmor policy is compiled by ``apparmor_parser`` (when installed). A rendering
    whose hash is ``validated_hash`` (the operator's published ``status.contentHash``: it publishes one only for a
    rendering that passed these checks) skips them, so a node agent does not repeat them for every profile.
    Nothing invalid is ever rendered: ``rendered`` is None whenever ``findings`` is not empty.
    """
    kind = obj.get("kind")
    try:
        if kind == schema.SECCOMP_PROFILE:
            findings = seccomp.validate(obj)
            if findings:
                return Outcome(None, tuple(findings))
            meta = obj["metadata"]
            rendered: Rendered = seccomp.render(meta.get("namespace", "default"), meta["name"], obj["spec"],
                                                bundled.with_bundled(lookup))
            if native_checks and rendered.content_hash != validated_hash:
                refusal = await libseccomp_filter.check_async(rendered.content)
                if refusal is not None:
                    return Outcome(None, (seccomp.refusal_finding(obj["spec"], refusal),))
            return Outcome(rendered, ())
        if kind == schema.APPARMOR_PROFILE:
            findings = apparmor.validate(obj)
            if findings:
                return Outcome(None, tuple(findings))
            rendered = apparmor.render(obj)
            if native_checks and rendered.content_hash != validated_hash and apparmor_parser.available():
                findings = await apparmor_parser.check(rendered.content, rendered.profile_name)
                if findings:
                    return Outcome(None, tuple(findings))
            return Outcome(rendered, ())
    except InvalidProfileError as error:
        return Outcome(None, tuple(error.findings))
    if kind == schema.PROFILE_RECORDING:
        return Outcome(None, tuple(recording.validate(obj)))
    return Outcome(None, tuple(schema.validate(obj)))


def evaluate_sync(obj: Object, lookup: seccomp.ProfileLookup = _never_found,
                  native_checks: bool = True) -> Outcome:
    """``evaluate`` for synchronous callers (the CLI)."""
    return asyncio.run(evaluate(obj, lookup, native_checks))
