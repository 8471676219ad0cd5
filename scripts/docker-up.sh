#!/usr/bin/env bash
# Make a Docker engine available for `make images` and the image tests.
#
# Uses a running engine when there is one. Otherwise installs Debian's docker.io (when it is
# missing and we are root) and starts `dockerd` by hand in the background — the lab hosts and
# CI machines we target have no systemd. The engine is started without iptables rules and
# without the docker0 bridge: it must not touch the host's firewall or forwarding, which the
# netns runtime and other tests rely on. Builds then use `--network host` and test containers
# `--network none`/host networking.
#
# Exit codes: 0 engine ready; 3 no engine and it cannot be installed/started (callers may skip).
set -euo pipefail

LOG=${QKDTWIN_DOCKERD_LOG:-/var/log/qkdtwin-dockerd.log}
WAIT=${QKDTWIN_DOCKERD_WAIT:-60}

engine_ok() { docker info >/dev/null 2>&1; }

if command -v docker >/dev/null 2>&1 && engine_ok; then
  echo "docker: engine running"
  exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "docker: no dockerd and not root; install docker.io (or start Docker) first" >&2
    exit 3
  fi
  echo "docker: installing Debian's docker.io"
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get install -y -qq --no-install-recommends docker.io >/dev/null 2>&1 \
         || { apt-get update -qq && apt-get install -y -qq --no-install-recommends docker.io \
              >/dev/null; }; }; then
    echo "docker: cannot install docker.io (no apt mirror reachable?)" >&2
    exit 3
  fi
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "docker: dockerd is installed but not running, and starting it needs root" >&2
  exit 3
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
  echo "docker: starting dockerd (log: $LOG)"
  mkdir -p "$(dirname "$LOG")"
  # setsid: the engine outlives this script and the make/pytest process that ran it.
  setsid dockerd --iptables=false --ip6tables=false --bridge=none \
    >>"$LOG" 2>&1 </dev/null &
fi

for _ in $(seq "$WAIT"); do
  if engine_ok; then
    echo "docker: engine ready"
    exit 0
  fi
  sleep 1
done
echo "docker: dockerd did not answer within ${WAIT}s; see $LOG:" >&2
tail -n 20 "$LOG" >&2 || true
exit 3
