#!/usr/bin/env bash
# Builds p2p/debian-systemd:bookworm without pulling anything: a minimal
# Debian bookworm root with systemd as its init, debootstrapped and
# `docker import`ed. scripts/package-smoke.sh installs the .deb packages
# into containers of it and boots systemd as PID 1, so the packages' own
# unit files are what runs.
#
#   docker/systemd/build-image.sh          # tag p2p/debian-systemd:bookworm
#
# The debootstrapped root is kept as a tarball in
# ${P2P_SYSTEMD_ROOT_CACHE:-$HOME/.cache/p2p/systemd-root-bookworm.tar.gz}
# (about 2 minutes to make, about 90 MB), so later builds only import it.
# Needs root (debootstrap) and the `debootstrap` package.
set -euo pipefail
cd "$(dirname "$0")"
TAG=${P2P_SYSTEMD_IMAGE:-p2p/debian-systemd:bookworm}
CACHE=${P2P_SYSTEMD_ROOT_CACHE:-$HOME/.cache/p2p/systemd-root-bookworm.tar.gz}
MIRROR=${P2P_DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [[ ! -s "$CACHE" ]]; then
  command -v debootstrap >/dev/null || { echo "error: install debootstrap (apt-get install debootstrap)" >&2; exit 1; }
  root=$(mktemp -d)
  trap 'rm -rf "$root" "$root.log"' EXIT
  echo "debootstrapping Debian bookworm with systemd into $root"
  debootstrap --variant=minbase --include=systemd,systemd-sysv bookworm "$root" "$MIRROR" >"$root.log" 2>&1 \
    || { tail -n 20 "$root.log" >&2; exit 1; }
  # What a test machine never needs: caches, docs, and the units that
  # only make sense on real hardware or would wait for a login.
  rm -rf "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/info/* "$root"/var/log/*
  for unit in getty.target console-getty.service systemd-firstboot.service \
    systemd-udevd.service systemd-udev-trigger.service systemd-modules-load.service \
    systemd-remount-fs.service sys-kernel-config.mount sys-kernel-debug.mount \
    sys-kernel-tracing.mount systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
  done
  # Man pages stay: the packages ship theirs and dpkg must install them.
  echo 'path-exclude=/usr/share/doc/*' >"$root/etc/dpkg/dpkg.cfg.d/01-nodoc"
  : >"$root/etc/machine-id"
  mkdir -p "$(dirname "$CACHE")"
  tar -C "$root" -czf "$CACHE.tmp" .
  mv "$CACHE.tmp" "$CACHE"
  rm -rf "$root" "$root.log"
  trap - EXIT
fi

# The root as a local base image, then systemd's conventions on top (FROM a
# local image: nothing is pulled).
docker import "$CACHE" p2p/debian-systemd-base:bookworm >/dev/null
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM p2p/debian-systemd-base:bookworm
ENV container=docker LANG=C.UTF-8
STOPSIGNAL SIGRTMIN+3
CMD ["/sbin/init"]
DOCKERFILE
docker build -q -t "$TAG" "$ctx" >/dev/null
echo "built $TAG ($(docker image ls --format '{{.Size}}' "$TAG"))"
