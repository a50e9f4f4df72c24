"""The AppArmor grammar as written in the wild, one small case per form, with ``apparmor_parser`` as the oracle.

For every header and include form: the names ``apparmor_syntax`` reads (the profile, its children and hats)
are exactly those ``apparmor_parser -N`` prints, the includes it reads are exactly those ``apparmor_parser -p``
follows, the checks accept what they should and ``secprofiles import`` gives a profile that lints clean.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from secprofiles.cli import importer
from secprofiles.model import apparmor, apparmor_parser, apparmor_syntax
from secprofiles.model.evaluate import evaluate_sync
from tests.conftest import needs_apparmor_parser

BODY = "  #include <abstractions/base>\n  /etc/hostname r,\n"

# header form -> (policy text, the kernel names it defines, the attachment import drops)
HEADERS = {
    "profile NAME": ("profile ping {\n" + BODY + "}\n", ["ping"], ""),
    "profile NAME ATTACHMENT": ("profile ping /usr/bin/ping {\n" + BODY + "}\n", ["ping"], "/usr/bin/ping"),
    "attachment glob with alternations": (
        "profile ping /{usr/,}bin/{,iputils-}ping flags=(complain) {\n" + BODY + "}\n", ["ping"],
        "/{usr/,}bin/{,iputils-}ping"),
    "bare /path": ("/usr/sbin/ntpd {\n" + BODY + "}\n", ["/usr/sbin/ntpd"], "/usr/sbin/ntpd"),
    "bare /path with flags": ("/usr/sbin/ntpd flags=(attach_disconnected,mediate_deleted) {\n" + BODY + "}\n",
                              ["/usr/sbin/ntpd"], "/usr/sbin/ntpd"),
    "several flags, spaced": ("profile web flags = ( attach_disconnected , mediate_deleted ) {\n" + BODY + "}\n",
                              ["web"], ""),
    "quoted name": ('profile "web app" {\n' + BODY + "}\n", ["web app"], ""),
    "quoted attachment": ('profile web "/opt/my app/bin/web" {\n' + BODY + "}\n", ["web"], "/opt/my app/bin/web"),
    "attachment variable": ("@{exec_path} = /usr/bin/web /usr/local/bin/web\n"
                            "profile web @{exec_path} {\n" + BODY + "}\n", ["web"], "@{exec_path}"),
    "xattrs condition": ("profile web /usr/bin/web xattrs=(user.x=y) {\n" + BODY + "}\n", ["web"],
                         "/usr/bin/web xattrs="),
    "children and hats": ("profile web {\n" + BODY + "  /bin/sh Cx -> sh,\n  ^hat {\n    /x r,\n  }\n"
                          "  hat other {\n  }\n  profile sh /bin/sh {\n    /bin/sh mr,\n    ^inner {\n    }\n  }\n}\n",
                          ["web", "web//hat", "web//other", "web//sh", "web//sh//inner"], ""),
    "abi, variables with += and a continuation, comments": (
        "abi <abi/3.0>,\n#include <tunables/global>\n@{DIRS} = /srv/a \\\n  /srv/b\n@{DIRS} += /srv/c # more\n"
        "# profile fake { in a comment\nprofile web { # brace in a comment {\n" + BODY +
        '  @{DIRS}/** r,\n  "/tmp/a#b" r, # quoted hash\n  /tmp/c#d r,\n}\n', ["web"], ""),
    "if block": ("$debug = false\nprofile web {\n" + BODY + "  if $debug {\n    /dbg r,\n  } else {\n"
                 "    /nodbg r,\n  }\n}\n", ["web"], ""),
}

# include form -> (policy text, the targets the parser follows)
INCLUDES = {
    "#include <…>": ("#include <tunables/global>\nprofile w {\n  #include <abstractions/base>\n}\n",
                     {"<tunables/global>", "<abstractions/base>"}),
    "include <…>": ("include <tunables/global>\nprofile w {\n  include <abstractions/base>\n}\n",
                    {"<tunables/global>", "<abstractions/base>"}),
    "include if exists": ("profile w {\n  include if exists <abstractions/base>\n}\n", {"<abstractions/base>"}),
    "#include if exists": ("profile w {\n  #include if exists <abstractions/base>\n}\n", {"<abstractions/base>"}),
    "#include unspaced": ("profile w {\n  #include<abstractions/base>\n}\n", {"<abstractions/base>"}),
    "include after a rule on its line": ("profile w {\n  /x r, #include <abstractions/base>\n}\n",
                                         {"<abstractions/base>"}),
    "include spanning a line break": ("profile w {\n  #include\n    <abstractions/base>\n}\n",
                                      {"<abstractions/base>"}),
    "quoted include": ('profile w {\n  include "/etc/apparmor.d/x"\n}\n', {'"/etc/apparmor.d/x"'}),
    "local override": ("profile w {\n  include if exists <local/w>\n}\n", {"<local/w>"}),
}


def with_tunables(text: str) -> str:
    """Abstractions use the variables of <tunables/global>; a real file includes it first."""
    return text if "<tunables/global>" in text else "#include <tunables/global>\n" + text


def kernel_names(text: str) -> list[str]:
    """What ``apparmor_syntax`` says the text defines, in ``-N``'s spelling (``parent//child``)."""
    names: list[str] = []

    def walk(items: list[apparmor_syntax.Statement | apparmor_syntax.Block], prefix: str) -> None:
        for item in items:
            if isinstance(item, apparmor_syntax.Block) and item.kind == apparmor_syntax.CONDITIONAL:
                walk(item.items, prefix)
            elif isinstance(item, apparmor_syntax.Block) and item.kind in (apparmor_syntax.PROFILE,
                                                                          apparmor_syntax.HAT):
                names.append(prefix + item.name)
                walk(item.items, prefix + item.name + "//")

    walk(apparmor_syntax.parse(text).items, "")
    return sorted(names)


def parser_names(text: str) -> list[str]:
    with tempfile.NamedTemporaryFile("w", suffix=".aa") as handle:
        handle.write(text)
        handle.flush()
        result = subprocess.run(["apparmor_parser", "-N", "-K", handle.name], capture_output=True, text=True,
                                check=False)
    assert result.returncode == 0, result.stderr
    return sorted(result.stdout.splitlines())


def included_by_parser(text: str) -> set[str]:
    """The targets ``apparmor_parser -p`` follows, each given an empty stand-in (so nothing is read)."""
    targets = {s.target for s in apparmor_syntax.tokenize(text) if s.kind == apparmor_syntax.INCLUDE}
    with tempfile.TemporaryDirectory() as tmp:
        for target in targets:
            if target.startswith("<"):
                (Path(tmp) / target[1:-1]).parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / target[1:-1]).touch()
        policy = Path(tmp) / "policy"
        policy.write_text(text)
        out = subprocess.run(["apparmor_parser", "-p", "-K", "-I", tmp, str(policy)], capture_output=True,
                             text=True, check=False).stdout
    return set(re.findall(r'^##(?:included|failed include) (<[^>]*>|"[^"]*")', out, re.M))


@needs_apparmor_parser
@pytest.mark.parametrize("form", sorted(HEADERS))
def test_header_form_names_agree_with_the_parser(form: str) -> None:
    text, names, _ = HEADERS[form]
    assert kernel_names(text) == sorted(names) == parser_names(with_tunables(text))


@pytest.mark.parametrize("form", sorted(HEADERS))
def test_header_form_is_read_and_judged(form: str) -> None:
    text, names, attachment = HEADERS[form]
    (main,) = apparmor_syntax.parse(text).blocks()
    assert main.name == names[0]
    read = " ".join(t.text for t in main.attachment + main.conditions)
    object_name = names[0].rsplit("/", 1)[-1]
    findings = apparmor.check_policy(object_name, text, "complain" if "complain" in main.flags else "enforce")
    if main.name.startswith("/"):  # named by its attachment: a host program's profile name, refused as a name
        assert read == "" and findings and all("must be named exactly" in f.message for f in findings)
    elif attachment:  # pods select a profile by name: an attachment is refused, naming line 1 (or 2) and why
        assert read.startswith(attachment)
        assert findings and all("attachment" in f.message for f in findings), findings
    else:
        assert findings == []


@needs_apparmor_parser
@pytest.mark.parametrize("form", sorted(HEADERS))
def test_header_form_imports_and_lints_clean(form: str) -> None:
    text, names, attachment = HEADERS[form]
    result = importer.import_apparmor(with_tunables(text), "imported")
    outcome = evaluate_sync(result.obj)
    assert outcome.findings == (), (outcome.findings, result.obj["spec"]["policy"])
    policy = result.obj["spec"]["policy"]
    assert parser_names(policy) == sorted(n.replace(names[0], "imported", 1) for n in names)
    if attachment:
        assert any("dropped the attachment" in note for note in result.notes)
        assert attachment.split()[0] not in policy.split("{", 1)[0].splitlines()[-1]
    assert "/etc/hostname r," in policy  # the rest is kept


@needs_apparmor_parser
@pytest.mark.parametrize("form", sorted(INCLUDES))
def test_include_form_agrees_with_the_parser(form: str) -> None:
    text, followed = INCLUDES[form]
    read = {s.target for s in apparmor_syntax.tokenize(text) if s.kind == apparmor_syntax.INCLUDE}
    assert read == followed == included_by_parser(text)
    findings = apparmor.check_policy("w", text)
    allowed = all(apparmor.include_allowed(t) for t in followed)
    assert (findings == []) == allowed, findings
    if not allowed:
        assert all(re.match(r"line \d+: (#?include)", f.message) for f in findings), findings


@needs_apparmor_parser
def test_the_include_oracle_catches_an_include_the_checks_did_not_see(tmp_path: Path) -> None:
    # Feed the oracle directly: text whose include the checks never judged (as if the lexer had missed it).
    path = tmp_path / "policy"
    text = "profile w {\n  #include <abstractions/base>\n}\n"
    path.write_text(text.replace("#include <abstractions/base>", "#include </etc/shadow>"))
    findings = asyncio.run(apparmor_parser.check_includes(path, text))
    assert findings and "/etc/shadow" in " ".join(f.message for f in findings)


def test_local_overrides_and_optional_host_includes_are_dropped_on_import() -> None:
    text = ("#include <tunables/global>\nprofile w {\n  #include <abstractions/base>\n"
            "  include if exists <local/w>\n  #include <local/w-extra>\n  include if exists <w.d>\n}\n")
    result = importer.import_apparmor(text, "w")
    policy = result.obj["spec"]["policy"]
    assert apparmor.check_policy("w", policy) == []
    assert len(policy.splitlines()) == len(text.splitlines())  # commented out in place: lines stay where they were
    dropped = [n for n in result.notes if "dropped the include" in n]
    assert [n.split(":")[0] for n in dropped] == ["line 4", "line 5", "line 6"]


TRANSITIONS = """\
profile sshd /usr/sbin/sshd {
  #include <abstractions/base>
  /bin/bash Uxr,
  /usr/lib/openssh/sftp-server PUx,
  /usr/bin/passwd Px,
  /usr/bin/helper rPx -> helper,
  /usr/bin/self px -> sshd,
  /usr/bin/child Cx -> child,
  /usr/bin/child2 CUx -> child,
  change_profile -> unconfined,
  change_profile -> sshd//child,
  deny /bin/su x,
  profile child {
    /bin/true ix,
  }
}
profile helper {
  /x r,
}
"""


def test_import_narrows_transitions_out_of_the_profile_and_keeps_the_rest() -> None:
    result = importer.import_apparmor(TRANSITIONS, None)
    obj, policy = result.obj, result.obj["spec"]["policy"]
    assert obj["metadata"]["name"] == "sshd"
    assert apparmor.check_policy("sshd", policy) == []
    lines = policy.splitlines()
    assert lines[0] == "profile sshd {"
    assert "/bin/bash ixr," in lines[2] and "sftp-server ix," in lines[3] and "passwd ix," in lines[4]
    assert lines[5].strip() == "/usr/bin/helper rix,"  # helper is another top-level profile: dropped
    assert lines[6].strip() == "/usr/bin/self px -> sshd," and lines[7].strip() == "/usr/bin/child Cx -> child,"
    assert lines[8].strip() == "/usr/bin/child2 cix -> child,"
    assert lines[9].strip().startswith("# secprofiles import: removed") and "change_profile -> sshd//child," in lines[10]
    assert "deny /bin/su x," in lines[11] and "profile helper {" not in policy and "/x r," not in policy
    assert any("line 17: dropped the second top-level profile 'helper'" in n for n in result.notes)
    assert sum("line " in n for n in result.notes) >= 8


def test_import_renames_the_main_profile_and_transitions_to_its_children_not_a_child() -> None:
    text = ("profile child-first {\n  /bin/x Px -> child-first//inner,\n  profile inner {\n  }\n"
            "  change_profile -> child-first//inner,\n}\n")
    policy = importer.import_apparmor(text, "renamed").obj["spec"]["policy"]
    assert policy.startswith("profile renamed {")
    assert "Px -> renamed//inner" in policy and "profile inner {" in policy
    assert "change_profile -> renamed//inner," in policy
    assert apparmor.check_policy("renamed", policy) == []


@pytest.mark.parametrize(("profile_name", "expected", "how"), [
    ("/usr/sbin/ntpd", "ntpd", "last path element"),
    ("Web_App", "web-app", "lower case"),
    ("docker-default", "imported-docker-default", "reserved"),
    ("lxc-container-default", "imported-lxc-container-default", "reserved"),
])
def test_import_makes_the_name_valid_and_says_how(profile_name: str, expected: str, how: str) -> None:
    text = f"profile {profile_name} {{\n  /x r,\n}}\n" if not profile_name.startswith("/") else \
        f"{profile_name} {{\n  /x r,\n}}\n"
    result = importer.import_apparmor(text, None)
    assert result.obj["metadata"]["name"] == expected
    assert any(how in note for note in result.notes), result.notes
    assert apparmor.validate(result.obj) == []


def test_import_chooses_a_profile_of_a_multi_profile_file() -> None:
    text = "profile a {\n  /a r,\n}\nprofile b /usr/bin/b {\n  /b r,\n}\n"
    result = importer.import_apparmor(text, None, profile="b")
    assert result.obj["metadata"]["name"] == "b" and "/b r," in result.obj["spec"]["policy"]
    assert "/a r," not in result.obj["spec"]["policy"]
    with pytest.raises(importer.UnsupportedInputError, match="defines 'a', 'b'"):
        importer.import_apparmor(text, None, profile="c")


def test_a_complain_child_of_an_enforcing_profile_is_enforced_with_it() -> None:
    text = "profile w {\n  profile c flags=(complain,attach_disconnected) {\n  }\n}\n"
    result = importer.import_apparmor(text, None)
    assert "profile c flags=(attach_disconnected) {" in result.obj["spec"]["policy"]
    assert apparmor.check_policy("w", text) != [] and apparmor.validate(result.obj) == []


@pytest.mark.parametrize(("text", "format_", "words"), [
    ('{"defaultAction": "SCMP_ACT_ALLOW"}', importer.SECCOMP_JSON, ""),
    ("# docker run --security-opt seccomp=this.json\n\n{\"defaultAction\": \"SCMP_ACT_ALLOW\"}",
     importer.SECCOMP_JSON, "ignored 1 '#' comment line"),
    ("apiVersion: v1\nkind: ConfigMap\n", importer.KUBERNETES_YAML, ""),
    ("# comment\nprofile x {\n}\n", importer.APPARMOR_TEXT, ""),
])
def test_formats_are_recognised_before_they_are_judged(text: str, format_: str, words: str) -> None:
    recognised = importer.recognise(text)
    assert recognised.format == format_
    assert words in " ".join(recognised.notes)
    assert len(recognised.text.splitlines()) == len(text.splitlines())  # line numbers stay the file's


@pytest.mark.parametrize(("text", "words"), [
    ('{"defaultAction": "SCMP_ACT_ALLOW",', "not valid JSON"),
    ("# comment\n{broken", "not valid JSON"),
    ('{"default_action": 2, "syscalls": []}', "pre-release Docker seccomp"),
    ("just words", "not recognised"),
])
def test_broken_input_is_reported_as_what_it_is(text: str, words: str) -> None:
    def read() -> None:
        importer.import_seccomp(importer.recognise(text).text, "x", None, "SCMP_ARCH_X86_64")

    with pytest.raises(importer.UnsupportedInputError, match=words):
        read()
