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

    A rendering whose hash is ``validated_hash`` skips validation altogether (``_trusted_rendering``): a node
    bootstrapping thousands of profiles, or an operator restarting, renders each (well under a millisecond) instead
    of validating it again (about a millisecond of schema checks and as much of native ones).
    """
    if validated_hash and (trusted := _trusted_rendering(obj, lookup, validated_hash)) is not None:
        return Outcome(trusted, ())
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
                findings = await apparmor_parser.check(rendered.content, rendered.profile_name,
                                                      apparmor.RENDER_HEADER_LINES)
                if findings:
                    return Outcome(None, tuple(findings))
            return Outcome(rendered, ())
    except InvalidProfileError as error:
        return Outcome(None, tuple(error.findings))
    if kind == schema.PROFILE_RECORDING:
        return Outcome(None, tuple(recording.validate(obj)))
    return Outcome(None, tuple(schema.validate(obj)))


def _trusted_rendering(obj: Object, lookup: seccomp.ProfileLookup, validated_hash: str) -> Rendered | None:
    """The rendering of ``obj`` if its hash is ``validated_hash``, else None.

    The operator publishes a ``contentHash`` only for bytes it validated in full (schema, semantics, base chain,
    native checks), so those exact bytes may be installed without repeating any of it; the object itself comes
    from the API server, which enforced the schema. Anything else (an edit since, an object that does not even
    render) goes the full way.
    """
    try:
        if obj.get("kind") == schema.SECCOMP_PROFILE:
            meta = obj["metadata"]
            rendered: Rendered = seccomp.render(meta.get("namespace", "default"), meta["name"], obj["spec"],
                                                bundled.with_bundled(lookup))
        elif obj.get("kind") == schema.APPARMOR_PROFILE:
            rendered = apparmor.render(obj)
        else:
            return None
    except (InvalidProfileError, KeyError, TypeError, ValueError, AttributeError):
        return None
    return rendered if rendered.content_hash == validated_hash else None


def evaluate_sync(obj: Object, lookup: seccomp.ProfileLookup = _never_found,
                  native_checks: bool = True) -> Outcome:
    """``evaluate`` for synchronous callers (the CLI)."""
    return asyncio.run(evaluate(obj, lookup, native_checks))
