#!/usr/bin/env bash
# Builds statically linked release binaries and the three FROM-scratch
# images (p2p/auth-svc, p2p/index-svc, p2p/peer-agent; the peer-agent image
# also carries the `p2p` client and the `p2p-certs` tool), then prints the
# image sizes.
#
#   scripts/build-images.sh            # tag :latest
#   P2P_IMAGE_TAG=dev scripts/build-images.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${P2P_IMAGE_TAG:-latest}
TARGET=x86_64-unknown-linux-gnu
# A target dir of their own, so this build never waits for (or blocks) the
# debug builds of the tests: CI runs it beside the test suite.
TARGET_DIR=${P2P_IMAGES_TARGET_DIR:-target/images}

echo "building static release binaries (target $TARGET, in $TARGET_DIR)"
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=$TARGET_DIR \
  cargo build --release --locked --target "$TARGET" \
  -p auth-svc -p index-svc -p peer-agent -p p2p-services --bins
OUT=$TARGET_DIR/$TARGET/release

for bin in auth-svc index-svc peer-agent p2p p2p-certs; do
  if ! ldd "$OUT/$bin" 2>&1 | grep -qE 'statically linked|not a dynamic executable'; then
    echo "error: $OUT/$bin is dynamically linked; the scratch images need static binaries" >&2
    exit 1
  fi
done

build_image() {
  local image=$1; shift
  local ctx
  ctx=$(mktemp -d)
  mkdir -p "$ctx/bin"
  cp -r docker/rootfs "$ctx/rootfs"
  for bin in "$@"; do cp "$OUT/$bin" "$ctx/bin/$bin"; done
  # The entrypoint is the first binary; the others ride along (p2p).
  printf 'ENTRYPOINT ["/%s"]\n' "$1" | cat docker/Dockerfile - > "$ctx/Dockerfile"
  docker build -q -t "p2p/$image:$TAG" "$ctx" >/dev/null
  rm -rf "$ctx"
}

build_image auth-svc auth-svc
build_image index-svc index-svc
build_image peer-agent peer-agent p2p p2p-certs

echo "images:"
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '^p2p/' | sort | sed 's/^/  /'
