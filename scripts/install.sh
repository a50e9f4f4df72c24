#!/usr/bin/env bash
# Installs everything the tests and the sandbox need on a fresh Debian bookworm machine (as root or with sudo):
# the container runtime that enforces rendered profiles, the AppArmor parser, strace (the recording tests' oracle),
# the real node's runtime (containerd, runc, the CNI plugins, iptables; nfacct to remove kube-proxy's counters after
# a stop), mmdebstrap for the images' Debian-built base when no container registry is reachable, and the Python
# package.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(podman runc busybox-static apparmor golang-github-containers-common strace
              containerd containernetworking-plugins iptables nfacct mmdebstrap)
missing=()
for package in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "install: Debian packages ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Kustomize renders manifests/: kubectl carries it; without kubectl, build kustomize from the Go module proxy.
if ! command -v kubectl >/dev/null && ! command -v kustomize >/dev/null; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "install: kustomize v5.5.0 (go install) into /usr/local/bin"
  $sudo env "PATH=$PATH" GOBIN=/usr/local/bin go install sigs.k8s.io/kustomize/kustomize/v5@v5.5.0
fi

echo "install: Python package secprofiles with test tools"
python3 -m pip install --quiet --root-user-action=ignore --disable-pip-version-check -e '.[test]'
