#!/usr/bin/env bash
# Builds the p2p/postgres image without pulling anything: debootstrap a
# minimal Debian bookworm root with Debian's postgresql-15, add the entry
# point, and `docker import` it.
#
#   docker/postgres/build-image.sh          # tag p2p/postgres:15
#
# The debootstrapped root is kept as a tarball in
# ${P2P_POSTGRES_ROOT_CACHE:-$HOME/.cache/p2p/postgres-root-bookworm.tar.gz}
# (about 2 minutes to make, about 60 MB), so later builds only import it.
# Needs root (debootstrap) and the `debootstrap` package.
set -euo pipefail
cd "$(dirname "$0")"
TAG=${P2P_POSTGRES_IMAGE:-p2p/postgres:15}
CACHE=${P2P_POSTGRES_ROOT_CACHE:-$HOME/.cache/p2p/postgres-root-bookworm.tar.gz}
MIRROR=${P2P_DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [[ ! -s "$CACHE" ]]; then
  command -v debootstrap >/dev/null || { echo "error: install debootstrap (apt-get install debootstrap)" >&2; exit 1; }
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  echo "debootstrapping Debian bookworm with postgresql-15 into $root"
  debootstrap --variant=minbase --include=postgresql-15 bookworm "$root" "$MIRROR" >"$root.log" 2>&1 \
    || { tail -n 20 "$root.log" >&2; exit 1; }
  rm -f "$root.log"
  # What a database server never needs at run time.
  rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*
  # Debian's package made a default cluster; the entry point makes its own.
  rm -rf "$root"/var/lib/postgresql/15 "$root"/etc/postgresql/15
  mkdir -p "$(dirname "$CACHE")"
  tar -C "$root" -czf "$CACHE.tmp" .
  mv "$CACHE.tmp" "$CACHE"
  rm -rf "$root"
  trap - EXIT
fi

# The root as a local base image, then the entry point on top (FROM a
# local image: nothing is pulled).
docker import "$CACHE" p2p/postgres-base:15 >/dev/null
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
install -m 0755 entrypoint.sh "$ctx/p2p-postgres-entrypoint"
cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM p2p/postgres-base:15
COPY p2p-postgres-entrypoint /usr/local/bin/p2p-postgres-entrypoint
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/p2p-postgres-entrypoint"]
DOCKERFILE
docker build -q -t "$TAG" "$ctx" >/dev/null
echo "built $TAG ($(docker image ls --format '{{.Size}}' "$TAG"))"
