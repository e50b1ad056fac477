#!/usr/bin/env bash
# Install the Debian 12 system packages the test suite and the benchmarks need.
# Run as root on a fresh machine (CI); idempotent and fast when rerun. Starts no service:
# the pytest fixtures in tests/services/ start their own daemons.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

PACKAGES=(
  # single-node Slurm cluster with accounting (tests/services/slurm.py)
  slurmctld slurmd slurm-client slurmdbd munge mariadb-server
  # headless browser for MLflow UI screenshots
  chromium
  # allocator for CPU training speed (LD_PRELOAD)
  libjemalloc2
  # misc tools the fixtures use (iproute2 + util-linux's nsenter/unshare: the two-node Slurm cluster's namespaces,
  # tests/services/slurm_multi.py)
  procps hostname util-linux iproute2 ca-certificates
)

if [[ $(id -u) -ne 0 ]]; then
  echo "install_system: must run as root" >&2
  exit 1
fi

echo "install_system: checking ${#PACKAGES[@]} packages"
missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install_system: all packages already installed, skipping apt"
else
  echo "install_system: missing: ${missing[*]}"
  # Never start services from package scripts (harmless where there is no init system).
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created_policy=1
  fi
  trap '[[ $created_policy -eq 1 ]] && rm -f "$policy"' EXIT
  echo "install_system: apt-get update"
  for attempt in 1 2 3; do
    apt-get update -qq && break
    [[ $attempt -eq 3 ]] && exit 1
    echo "install_system: apt-get update failed, retrying" >&2
    sleep 5
  done
  echo "install_system: apt-get install"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "install_system: installed ${#missing[@]} packages"
fi

# munge's package creates the key; make sure one exists anyway (e.g. a stripped image).
if [[ ! -s /etc/munge/munge.key ]]; then
  echo "install_system: creating /etc/munge/munge.key"
  mkdir -p /etc/munge
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key 2>/dev/null || true
chmod 0400 /etc/munge/munge.key
mkdir -p /etc/slurm
echo "install_system: done ($(slurmctld -V 2>/dev/null), $(munged -V 2>/dev/null | head -n1), $(mariadbd --version 2>/dev/null | awk '{print $3}'))"
