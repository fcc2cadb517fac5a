#!/usr/bin/env bash
# Builds the two Debian packages from the static release binaries that
# scripts/build-images.sh built (it never builds them again):
#
#   p2p-server  auth-svc, index-svc, p2p-certs, the p2p-auth and p2p-index
#               systemd units, /etc/p2p/{auth-svc,index-svc}.env
#   p2p-agent   peer-agent, p2p, the p2p-agent@ systemd unit,
#               /etc/p2p/agent.env
#
# Each carries its binaries' man pages and bash, zsh and fish completions,
# generated here from the binaries themselves (`BIN man`, `BIN completions
# SHELL`), and env files generated from `BIN --help`, so none can drift from
# the flags. Needs cargo-deb (`cargo install --locked cargo-deb`).
#
#   scripts/build-images.sh && scripts/build-packages.sh   # target/images/debian/*.deb
#   P2P_DEB_REVISION=2 scripts/build-packages.sh           # the same, version 0.1.0-2
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=x86_64-unknown-linux-gnu
TARGET_DIR=${P2P_IMAGES_TARGET_DIR:-target/images}
OUT=$TARGET_DIR/$TARGET/release
DEBS=${P2P_DEB_DIR:-$TARGET_DIR/debian}
REVISION=${P2P_DEB_REVISION:-1}

command -v cargo-deb >/dev/null || { echo "error: cargo-deb missing: cargo install --locked cargo-deb" >&2; exit 1; }
for bin in auth-svc index-svc p2p-certs peer-agent p2p; do
  [[ -x $OUT/$bin ]] || { echo "error: $OUT/$bin missing: run scripts/build-images.sh first" >&2; exit 1; }
done

# cargo-deb names the target dir's release/ "target/release/": the assets
# in packaging/*/Cargo.toml read these from there.
gen=$OUT/package
rm -rf "$gen"
mkdir -p "$gen"/{man,bash,zsh,fish,env}
echo "generating man pages, completions and env files from the binaries in $OUT"
for bin in auth-svc index-svc p2p-certs peer-agent p2p; do
  "$OUT/$bin" man | gzip -9n >"$gen/man/$bin.1.gz"
  "$OUT/$bin" completions bash >"$gen/bash/$bin"
  "$OUT/$bin" completions zsh >"$gen/zsh/_$bin"
  "$OUT/$bin" completions fish >"$gen/fish/$bin.fish"
done

# env_file BIN UNIT FILE NOTE: /etc/p2p/FILE for BIN, read by UNIT: every
# flag of BIN that has a variable, documented and commented out at its
# default, after NOTE (what the unit itself sets).
env_file() {
  local bin=$1 unit=$2 file=$3 fixed=$4
  {
    echo "# /etc/p2p/$file: settings of $bin, read by $unit."
    echo "# Every flag of \`$bin --help\` that has an environment variable is"
    echo "# below, commented out at its default; uncomment a line to change it,"
    echo "# then: systemctl restart $unit. ${fixed}"
    echo "# Generated from $bin $("$OUT/$bin" --version | cut -d' ' -f2) when the package was built."
    env -i "$OUT/$bin" --help | awk -f packaging/env-file.awk
  } >"$gen/env/$file"
}
server_fixed="The unit sets
# P2P_STATE_DIR=/var/lib/p2p-server (the PKI, the databases); a value here
# overrides it."
env_file auth-svc p2p-auth "auth-svc.env" "$server_fixed"
env_file index-svc p2p-index "index-svc.env" "$server_fixed"
env_file peer-agent "every p2p-agent@USER" "agent.env" "These apply to the
# agent of every user of this machine; per-user settings go in a drop-in
# (systemctl edit p2p-agent@USER)."

# The packages' manifests are not workspace members (they build nothing):
# the version is the workspace's. --fast: xz at a lighter level makes the
# packages a fifth larger in a quarter of the time (9 s instead of 30 s
# each here).
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
mkdir -p "$DEBS"
for package in server agent; do
  echo "cargo deb: p2p-$package $version-$REVISION"
  CARGO_TARGET_DIR=$(realpath "$TARGET_DIR") cargo deb --locked --no-build --target "$TARGET" \
    --manifest-path "packaging/$package/Cargo.toml" --deb-version "$version-$REVISION" \
    --output "$DEBS/" --fast -q >/dev/null
done
echo "packages:"
stat -c '  %n (%s bytes)' "$DEBS"/*_"$version-$REVISION"_*.deb
