"""A busybox image for podman, built here from Debian's busybox-static (no registry is reachable), and the shell
workloads the recording tests and benchmarks run in it (and on the host: the same script, the same output).

Every applet is a symlink to /bin/busybox, so workloads can use any of them; /tmp is world-writable. The tag
names what is in it (all applets), so worktrees building other variants do not swap it under a running test.
"""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

IMAGE = "localhost/secprofiles-busybox:all-applets"
BUSYBOX = Path("/bin/busybox")
PODMAN_RUN = ["podman", "run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024",
              "--ulimit", "nproc=1024:1024", "--runtime", "runc"]


def build_image(workdir: Path, image: str = IMAGE) -> str:
    """Import the image (idempotent: same tag, same content) and return its name."""
    applets = subprocess.run([str(BUSYBOX), "--list"], check=True, capture_output=True, text=True).stdout.split()
    archive = workdir / "busybox.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in applets:
            if applet == "busybox":
                continue
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        for directory, mode in (("tmp", 0o1777), ("etc", 0o755), ("proc", 0o755), ("dev", 0o755), ("sys", 0o755)):
            entry = tarfile.TarInfo(directory)
            entry.type, entry.mode = tarfile.DIRTYPE, mode
            tar.addfile(entry)
    subprocess.run(["podman", "import", "--quiet", str(archive), image], check=True, capture_output=True)
    return image

# File and process syscalls: files created, copied, moved, linked, chmod'ed, listed, removed; a subshell in the
# background, waited for. Prints a line that must be the same on the host and in a container.
FILES_AND_PROCESSES = r"""
set -e
d=$(mktemp -d /tmp/rec.XXXXXX)
cd "$d"
echo hello > a.txt
cp a.txt b.txt
mv b.txt c.txt
mkdir sub
ln -s c.txt link
cat link > sub/d.txt
chmod 600 sub/d.txt
ls -l sub > /dev/null
(echo child; sleep 0) > e.txt &
wait
sum=$(cat a.txt c.txt sub/d.txt e.txt | wc -c)
rm -r sub
rm a.txt c.txt link e.txt
cd /
rmdir "$d"
echo "done $sum"
"""
EXPECTED_OUTPUT = "done 24"

# Syscalls FILES_AND_PROCESSES never makes, one workload each: (script, the syscall it needs).
NEW_SYSCALL_WORKLOADS = {
    "mkfifo": ("d=$(mktemp -d /tmp/rec.XXXXXX) && mkfifo \"$d/p\" && echo made; rm -rf \"$d\"", {"mknod", "mknodat"}),
    "chroot": ("chroot / /bin/busybox true && echo made", {"chroot"}),
}

# 200 short-lived processes, each with its own mix of syscalls: process n runs the applets of the bits of n.
# Each logs its pid to $1/pids first ($1: an empty directory).
SHORT_PROCESSES = r"""
dir=$1
i=1
while [ $i -le 200 ]; do
  sh -c '
    echo $$ >> "$0/pids"
    n=$1
    [ $((n & 1)) -ne 0 ] && stat / > /dev/null
    [ $((n & 2)) -ne 0 ] && { mkdir "$0/d$n"; rmdir "$0/d$n"; }
    [ $((n & 4)) -ne 0 ] && { ln -s x "$0/l$n"; readlink "$0/l$n" > /dev/null; rm "$0/l$n"; }
    [ $((n & 8)) -ne 0 ] && { touch "$0/f$n"; chmod 600 "$0/f$n"; rm "$0/f$n"; }
    [ $((n & 16)) -ne 0 ] && { truncate -s 10 "$0/t$n"; rm "$0/t$n"; }
    [ $((n & 32)) -ne 0 ] && sync
    [ $((n & 64)) -ne 0 ] && uname -a > /dev/null
    [ $((n & 128)) -ne 0 ] && nproc > /dev/null
    true
  ' "$dir" $i
  i=$((i + 1))
done
"""
