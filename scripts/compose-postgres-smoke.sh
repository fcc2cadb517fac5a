#!/usr/bin/env bash
# The PostgreSQL deployment, tested for real: PostgreSQL from the locally
# built p2p/postgres image (docker/postgres/build-image.sh, nothing pulled),
# auth-svc and two index-svc replicas on it, agents joined with both
# replicas (what auth-svc tells joining agents).
# A file moves; during a larger download each index replica in turn is
# stopped (the download completes, whichever replica the agent preferred);
# restarting the replicas changes nothing (the file is still listed, with
# both complete copies, through either replica). Tears everything down
# (always, via trap). Every wait is bounded.
#
# Reuses the static p2p/* images when present (scripts/compose-smoke.sh
# builds them in CI just before); builds them otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

COMPOSE_FILES=(docker-compose.yml docker-compose.postgres.yml)
PROJECT_PREFIX=p2ppg
source scripts/compose-lib.sh
export P2P_POSTGRES_PASSWORD="pg-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# Slow enough that both replica stops land in the middle of the download.
export P2P_MAX_UPLOAD_RATE=${P2P_MAX_UPLOAD_RATE:-8MiB}
local_bytes() { p2p "$1" --json ls "$2" | python3 -c '
import json,sys
d=json.load(sys.stdin)
files=d["files"] if isinstance(d,dict) else d
print(max([f.get("local_bytes",f.get("localBytes",0)) for f in files] or [0]))'; }
holding_at_least() { (( $(local_bytes "$1" "$2") >= $3 )); }

docker/postgres/build-image.sh
for image in auth-svc index-svc peer-agent; do
  if ! docker image inspect "p2p/$image:${P2P_IMAGE_TAG:-latest}" >/dev/null 2>&1; then
    scripts/build-images.sh
    break
  fi
done

echo "--- starting PostgreSQL, auth-svc, two index replicas and the agents"
compose up -d
for svc in postgres auth index index-2 peer-a peer-b; do
  wait_for 180 "$svc to be healthy" healthy "$svc"
done
compose ps
wait_joined peer-a peer-b
for svc in peer-a peer-b; do
  index_url=$(p2p "$svc" --json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["index_url"])')
  [[ $index_url == "index:50052,index-2:50052" ]] || fail "$svc joined with the index list $index_url, not both replicas"
done

echo "--- a user, logged in on two agents"
docker cp "$(cid auth)":/state/pki/ca.pem "$WORK/ca.pem"
ADMIN_TOKEN=$(grpcurl -cacert "$WORK/ca.pem" -d "{\"username\":\"admin\",\"password\":\"$P2P_ADMIN_PASSWORD\"}" \
  127.0.0.1:50051 p2p.auth.v1.AuthService/Login | python3 -c 'import json,sys; print(json.load(sys.stdin)["accessToken"])')
grpcurl -cacert "$WORK/ca.pem" -H "authorization: Bearer $ADMIN_TOKEN" \
  -d '{"username":"alice","password":"alice-password-1","role":"ROLE_USER"}' \
  127.0.0.1:50051 p2p.auth.v1.AccountService/CreateUser >/dev/null
for svc in peer-a peer-b; do
  echo "alice-password-1" | p2p "$svc" login alice --password-stdin
done

echo "--- a file moves"
head -c $((4 * 1024 * 1024)) /dev/urandom > "$WORK/small.bin"
docker cp "$WORK/small.bin" "$(cid peer-a):/data/small.bin"
p2p peer-a share /data/small.bin
p2p peer-b get small.bin -o /data/small-b.bin
docker cp "$(cid peer-b):/data/small-b.bin" "$WORK/small-b.bin"
[[ $(sha256sum < "$WORK/small-b.bin") == $(sha256sum < "$WORK/small.bin") ]] || fail "peer-b's copy differs"

echo "--- each index replica stopped in turn during a download"
size=$((96 * 1024 * 1024))
head -c $size /dev/urandom > "$WORK/big.bin"
docker cp "$WORK/big.bin" "$(cid peer-a):/data/big.bin"
p2p peer-a share /data/big.bin
p2p peer-b get big.bin -o /data/big-b.bin &
getpid=$!
wait_for 60 "peer-b to make progress" holding_at_least peer-b big.bin 1
compose stop -t 2 index
wait_for 60 "peer-b to go on with index stopped" holding_at_least peer-b big.bin $((size / 3))
compose start index
wait_for 60 "index to be healthy again" healthy index
kill -0 $getpid 2>/dev/null || fail "the download finished before both replicas were stopped (lower P2P_MAX_UPLOAD_RATE)"
compose stop -t 2 index-2
wait $getpid || fail "peer-b's download did not complete while an index replica was stopped"
docker cp "$(cid peer-b):/data/big-b.bin" "$WORK/big-b.bin"
[[ $(sha256sum < "$WORK/big-b.bin") == $(sha256sum < "$WORK/big.bin") ]] || fail "peer-b's big copy differs"
echo "the download completed"

echo "--- restarting the stopped replica changes nothing"
compose start index-2
wait_for 60 "index-2 to be healthy again" healthy index-2
# ListFiles through one replica; how many complete copies it counts.
big_files() {
  grpcurl -cacert "$WORK/ca.pem" -H "authorization: Bearer $ADMIN_TOKEN" \
    -d '{"name_contains":"big.bin"}' 127.0.0.1:$1 p2p.index.v1.IndexService/ListFiles
}
complete_copies() {
  big_files "$1" | python3 -c 'import json,sys; f=json.load(sys.stdin)["files"]; print(f[0].get("completeCopies",0) if f else 0)'
}
two_copies() { [[ $(complete_copies "$1") == 2 ]]; }
for port in 50052 50057; do
  # peer-b reports its finished download when it finishes, and its
  # heartbeat reports it again if no replica took that report.
  if ! (wait_for 20 "two complete copies through port $port" two_copies $port); then
    fail "the replica on port $port shows $(complete_copies $port) complete copies of big.bin, not 2: $(big_files $port)"
  fi
done
p2p peer-b ls | grep -q small.bin || fail "small.bin is no longer listed"
echo "compose PostgreSQL smoke test passed in $(( $(date +%s) - started )) s"
