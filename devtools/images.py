"""The container images, built here with podman: ``make images`` (``python -m devtools.images``).

* ``localhost/secprofiles-operator:dev`` and ``localhost/secprofiles-agent:dev`` from the repository's
  ``Containerfile`` (the one users build), targets ``operator`` and ``agent``.
* Their base: the Containerfile's default ``PYTHON_IMAGE`` when podman has it or can pull it; otherwise (no
  container registry reachable, as on this project's machines) a Python base made from Debian bookworm packages
  with ``mmdebstrap`` and passed as the build argument. It is cached by its inputs: the tag's key is a sha256 of the
  recipe, the package list, the mirrors and the suites' ``InRelease`` files, so a Debian point release or security
  update builds a new base and nothing else does.
* The real node's own images: the pod sandbox's ``pause`` (``devtools/pause``, this project's Go program, static,
  ``FROM scratch``) and ``busybox`` (Debian's busybox-static) for the walkthrough's pods.

Invariants: nothing fetched from outside the package registries goes into an image; podman's layer cache makes an
unchanged rebuild cheap; every build's full output is kept in a log under the cache directory and named on failure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Final

from devtools.build import cache_root

REPO: Final = Path(__file__).resolve().parents[1]
OPERATOR_IMAGE: Final = "localhost/secprofiles-operator:dev"
AGENT_IMAGE: Final = "localhost/secprofiles-agent:dev"
PRODUCT_IMAGES: Final = {"operator": OPERATOR_IMAGE, "agent": AGENT_IMAGE}
PAUSE_IMAGE: Final = "localhost/secprofiles-pause:dev"
BUSYBOX_IMAGE: Final = "localhost/secprofiles-busybox:dev"
#: The Containerfile's default base (``ARG PYTHON_IMAGE``), used when podman has or can pull it.
PUBLIC_BASE: Final = "docker.io/library/python:3.11-slim-bookworm"
LOCAL_BASE_REPOSITORY: Final = "localhost/secprofiles-python-base"

DEBIAN_MIRROR: Final = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEBIAN_SECURITY_MIRROR: Final = os.environ.get("DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
SUITE: Final = "bookworm"
#: What the Containerfile uses of python:3.11-slim-bookworm: ``python`` on PATH, ``python -m venv`` with ensurepip,
#: apt with sources, ``useradd`` (passwd is not Essential).
BASE_PACKAGES: Final = ("python3", "python3-venv", "python-is-python3", "passwd")
#: Part of the base's key: change it when the recipe below changes.
BASE_RECIPE: Final = ("secprofiles-python-base-v5 variant=minbase no-recommends hook=merged-usr apt-docker-clean "
                      "dpkg-excludes=doc,man,info,locale")
#: Debian's container apt configuration (python:slim inherits it; a plain mmdebstrap root lacks it): without it the
#: Containerfile's apt layer keeps ~78 MB of /var/cache/apt/*.bin.
_APT_CLEAN_COMMAND: Final = ('"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb '
                              '/var/cache/apt/*.bin || true";')
APT_DOCKER_CLEAN: Final = (f"DPkg::Post-Invoke {{ {_APT_CLEAN_COMMAND} }};\n"
                           f"APT::Update::Post-Invoke {{ {_APT_CLEAN_COMMAND} }};\n"
                           'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\nAcquire::Languages "none";\n')
#: podman's default rlimits fail on this machine kind ("error setting rlimit type 7").
PODMAN_ULIMITS: Final = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
#: The machine's CA bundle: pip in a build container trusts it (a TLS-intercepting proxy may sit in front of PyPI;
#: pip's own certifi bundle would not know its CA). Mounted for RUN steps only, never part of a layer.
CA_BUNDLE: Final = Path("/etc/ssl/certs/ca-certificates.crt")
NICE: Final = ("nice", "-n", "10")


class ImageBuildError(RuntimeError):
    """A tool is missing or a build failed (the message names the log)."""


def say(message: str) -> None:
    """Progress on stderr."""
    print(f"images: {message}", file=sys.stderr, flush=True)


def _require(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise ImageBuildError(f"missing {', '.join(missing)} (scripts/install.sh installs them)")


def logs_dir() -> Path:
    """Where the build logs go."""
    path = cache_root() / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_logged(argv: Sequence[str], log: Path, *, what: str, env: dict[str, str] | None = None,
               cwd: Path | None = None, stdin: int | None = subprocess.DEVNULL) -> None:
    """Run ``argv``, its output to ``log``; lines of podman's ``STEP`` progress are echoed. Raise with the log's
    tail on failure."""
    with log.open("w") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=stdin, text=True,
                                   env=env, cwd=cwd)
        assert process.stdout is not None
        started = time.monotonic()
        for line in process.stdout:
            out.write(line)
            # progress only for builds that take a while (a cached build prints every step in a second)
            if re.match(r"(\[\d+/\d+\] )?STEP ", line) and time.monotonic() - started > 3:
                say(f"{what}: {line.strip()[:140]}")
        code = process.wait()
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise ImageBuildError(f"{what} failed (exit {code}); log {log}:\n{tail}")


def podman_has(image: str) -> bool:
    """Whether podman's store holds ``image``."""
    return subprocess.run(["podman", "image", "exists", image], check=False).returncode == 0


def image_size(image: str) -> int:
    """The image's size in bytes as podman reports it (uncompressed, layers shared with others counted)."""
    result = subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", image], capture_output=True,
                            text=True, check=True)
    return int(result.stdout.strip())


# --------------------------------------------------------------------------- the base


def _inrelease(mirror: str, suite: str) -> bytes:
    with urllib.request.urlopen(f"{mirror}/dists/{suite}/InRelease", timeout=30) as response:
        data: bytes = response.read()
        return data


@dataclass(frozen=True)
class BaseInputs:
    """What the local base is made of; its key names it."""

    releases: tuple[bytes, bytes, bytes]  # InRelease of bookworm, bookworm-updates, bookworm-security

    @classmethod
    def fetch(cls) -> BaseInputs:
        """The mirrors' current state (three small files)."""
        return cls((_inrelease(DEBIAN_MIRROR, SUITE), _inrelease(DEBIAN_MIRROR, f"{SUITE}-updates"),
                    _inrelease(DEBIAN_SECURITY_MIRROR, f"{SUITE}-security")))

    @property
    def key(self) -> str:
        """sha256 (16 hex digits) of the recipe, packages, mirrors and the three release files."""
        digest = hashlib.sha256()
        for part in (BASE_RECIPE, SUITE, ",".join(BASE_PACKAGES), DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR,
                     APT_DOCKER_CLEAN):
            digest.update(part.encode() + b"\0")
        for release in self.releases:
            digest.update(hashlib.sha256(release).digest())
        return digest.hexdigest()[:16]

    @property
    def image(self) -> str:
        """The tag of the base these inputs make."""
        return f"{LOCAL_BASE_REPOSITORY}:{self.key}"

    @property
    def source_date_epoch(self) -> int:
        """The suite's release date: file times in the root filesystem (same inputs, same tarball)."""
        for line in self.releases[0].decode(errors="replace").splitlines():
            if line.startswith("Date: "):
                return int(parsedate_to_datetime(line[6:]).timestamp())
        raise ImageBuildError(f"no Date in {DEBIAN_MIRROR}/dists/{SUITE}/InRelease")


def mmdebstrap_command(inputs: BaseInputs, apt_conf: Path, output: Path) -> list[str]:
    """The mmdebstrap command line of the local base (a root filesystem tarball)."""
    return [
        "mmdebstrap", "--variant=minbase", "--mode=root", "--format=tar",
        # /usr merged by symlinks, as debootstrap does: the usrmerge package would drag in perl (~55 MB)
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        f"--include={','.join(BASE_PACKAGES)}",
        "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/info/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        '--aptopt=Acquire::Retries "3"', '--aptopt=APT::Install-Recommends "false"',
        f"--customize-hook=copy-in {apt_conf} /etc/apt/apt.conf.d",
        '--customize-hook=rm -f "$1"/var/cache/apt/*.bin',
        SUITE, str(output),
        f"deb {DEBIAN_MIRROR} {SUITE} main", f"deb {DEBIAN_MIRROR} {SUITE}-updates main",
        f"deb {DEBIAN_SECURITY_MIRROR} {SUITE}-security main",
    ]


def local_base(inputs: BaseInputs | None = None) -> str:
    """The Debian-built base image (built when podman does not have it yet); its reference."""
    inputs = inputs or BaseInputs.fetch()
    if podman_has(inputs.image):
        say(f"base {inputs.image} (cached: same recipe, packages and Debian release files)")
        return inputs.image
    _require("mmdebstrap")
    if os.geteuid() != 0:
        raise ImageBuildError("building the local base (mmdebstrap --mode=root) needs root")
    say(f"building base {inputs.image} from Debian {SUITE} packages ({', '.join(BASE_PACKAGES)}) with mmdebstrap "
        "(about 1-2 minutes)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="secprofiles-base-", dir="/var/tmp") as work:
        apt_conf = Path(work) / "docker-clean"
        apt_conf.write_text(APT_DOCKER_CLEAN)
        rootfs = Path(work) / "rootfs.tar"
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(inputs.source_date_epoch)}
        run_logged([*NICE, *mmdebstrap_command(inputs, apt_conf, rootfs)], logs_dir() / "base-mmdebstrap.log",
                   what="mmdebstrap", env=env)
        run_logged(["podman", "import", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                    "/sbin:/bin", "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]',
                    "--message", f"mmdebstrap {SUITE} minbase + {','.join(BASE_PACKAGES)}", str(rootfs),
                    inputs.image], logs_dir() / "base-import.log", what="podman import")
    say(f"base {inputs.image} built in {time.monotonic() - started:.0f}s")
    return inputs.image


def base_image() -> str:
    """The Containerfile's own base if podman has it or can pull it; otherwise the local Debian-built one."""
    if podman_has(PUBLIC_BASE):
        return PUBLIC_BASE
    pulled = subprocess.run(["podman", "pull", "--quiet", PUBLIC_BASE], capture_output=True, text=True,
                            timeout=300, check=False)
    if pulled.returncode == 0:
        return PUBLIC_BASE
    reason = (pulled.stderr.strip().splitlines() or ["no output"])[-1]
    say(f"cannot pull {PUBLIC_BASE} ({reason[:160]}); using a base made from Debian packages")
    return local_base()


# --------------------------------------------------------------------------- the images


def podman_build(tag: str, context: Path, *, containerfile: Path | None = None, target: str | None = None,
                 build_args: dict[str, str] | None = None, network: str = "host",
                 mounts: Sequence[str] = ()) -> float:
    """``podman build`` (niced, the rlimits this machine needs); returns the seconds it took."""
    argv = [*NICE, "podman", "build", "--network", network, *PODMAN_ULIMITS, "-t", tag]
    for mount in mounts:
        argv += ["-v", mount]
    if containerfile is not None:
        argv += ["-f", str(containerfile)]
    if target is not None:
        argv += ["--target", target]
    for key, value in (build_args or {}).items():
        argv += ["--build-arg", f"{key}={value}"]
    started = time.monotonic()
    run_logged([*argv, str(context)], logs_dir() / f"build-{tag.rsplit('/', 1)[-1].replace(':', '-')}.log",
               what=f"build {tag}")
    return time.monotonic() - started


def pip_trust_mounts(work: Path) -> list[str]:
    """Bind mounts for RUN steps: the machine's CA bundle and a pip.conf naming it (none without a bundle)."""
    if not CA_BUNDLE.is_file():
        return []
    conf = work / "pip.conf"
    conf.write_text("[global]\ncert = /etc/pip-ca.crt\n")
    return [f"{CA_BUNDLE}:/etc/pip-ca.crt:ro", f"{conf}:/etc/pip.conf:ro"]


def product_images(base: str) -> dict[str, float]:
    """The operator and agent images from the Containerfile on ``base``; seconds per image."""
    seconds = {}
    with tempfile.TemporaryDirectory(prefix="secprofiles-images-") as work:
        mounts = pip_trust_mounts(Path(work))
        for target, tag in PRODUCT_IMAGES.items():
            say(f"building {tag} (Containerfile, target {target}, PYTHON_IMAGE={base})")
            seconds[tag] = podman_build(tag, REPO, containerfile=REPO / "Containerfile", target=target,
                                        build_args={"PYTHON_IMAGE": base}, mounts=mounts)
    return seconds


def pause_image() -> float:
    """The pod sandbox image: devtools/pause, built static with Go, ``FROM scratch``, run as 65535."""
    _require("go")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="secprofiles-pause-") as work:
        env = {**os.environ, "CGO_ENABLED": "0"}
        run_logged([*NICE, "go", "build", "-trimpath", "-buildvcs=false", "-ldflags", "-s -w", "-o",
                    str(Path(work) / "pause"), "."], logs_dir() / "pause-go-build.log", what="go build pause",
                   env=env, cwd=REPO / "devtools" / "pause")
        (Path(work) / "Containerfile").write_text(
            'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n')
        podman_build(PAUSE_IMAGE, Path(work), network="none")
    return time.monotonic() - started


BUSYBOX_BINARY: Final = Path("/bin/busybox")


def busybox_image() -> float:
    """A busybox image from Debian's busybox-static (the walkthrough's pods), ``FROM scratch``."""
    if not BUSYBOX_BINARY.is_file():
        raise ImageBuildError(f"missing {BUSYBOX_BINARY} (Debian package busybox-static)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="secprofiles-busybox-") as work:
        shutil.copy2(BUSYBOX_BINARY, Path(work) / "busybox")
        (Path(work) / "Containerfile").write_text(
            'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
            'CMD ["sh"]\n')
        podman_build(BUSYBOX_IMAGE, Path(work), network="none")
    return time.monotonic() - started


@dataclass(frozen=True)
class Built:
    """What ``build_all`` made: seconds per step, the base used."""

    base: str
    seconds: dict[str, float]


def build_all(*, product: bool = True, node: bool = True) -> Built:
    """The product images and/or the node's pause and busybox images."""
    _require("podman")
    seconds: dict[str, float] = {}
    base = ""
    if product:
        started = time.monotonic()
        base = base_image()
        seconds["base"] = time.monotonic() - started
        seconds.update(product_images(base))
    if node:
        seconds[PAUSE_IMAGE] = pause_image()
        seconds[BUSYBOX_IMAGE] = busybox_image()
    return Built(base, seconds)


def sizes(images: Sequence[str]) -> dict[str, int]:
    """Each image's size in bytes."""
    return {image: image_size(image) for image in images}


def main(argv: Sequence[str] | None = None) -> int:
    """``make images``: build, print sizes (and, with ``--json``, the timings)."""
    parser = argparse.ArgumentParser(prog="python -m devtools.images", description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("product", "node"), help="only the product's or only the node's images")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        built = build_all(product=args.only != "node", node=args.only != "product")
    except (ImageBuildError, OSError, subprocess.CalledProcessError) as error:
        say(f"error: {error}")
        return 1
    images = [tag for tag in (*PRODUCT_IMAGES.values(), PAUSE_IMAGE, BUSYBOX_IMAGE) if tag in built.seconds]
    measured = sizes(images)
    total = time.monotonic() - started
    if args.json:
        print(json.dumps({"base": built.base, "seconds": built.seconds, "total_seconds": total, "sizes": measured},
                         indent=2))
        return 0
    if built.base:
        print(f"base: {built.base}")
    for image in images:
        print(f"{image:44} {measured[image] / 1e6:7.1f} MB   built in {built.seconds[image]:.1f}s")
    print(f"all in {total:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
