#!/usr/bin/env bash
# Runs the whole system on this machine: auth-svc and index-svc on loopback
# with one state dir (their CA, certificate and SQLite databases), two
# agents joined to them with `p2p join` as the admin, shares a file on
# agent A and downloads it on agent B, then keeps everything running until
# Ctrl-C so you can try the `p2p` client. `--once` stops after the demo.
#
#   scripts/run-local.sh            # state in a new temp dir
#   P2P_LOCAL_DIR=./local scripts/run-local.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ONCE=false
[[ "${1:-}" == "--once" ]] && ONCE=true

echo "building (cargo build --bins)..."
cargo build -q --workspace --bins
BIN=$PWD/target/debug
DIR=${P2P_LOCAL_DIR:-$(mktemp -d /tmp/p2p-local.XXXXXX)}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

wait_for() {
  local limit=$1 what=$2; shift 2
  local deadline=$(( $(date +%s) + limit ))
  until "$@" >/dev/null 2>&1; do
    if (( $(date +%s) >= deadline )); then
      echo "timed out waiting for $what; logs are in $DIR" >&2
      exit 1
    fi
    sleep 0.2
  done
}

# The servers set themselves up in one state dir: the first start makes the
# deployment's CA and the servers' certificate in $SERVER/pki/ (kept after),
# and the databases are SQLite files beside it. Without P2P_ADMIN_PASSWORD,
# auth-svc makes the first admin's password and keeps it in
# $SERVER/admin-password (0600), which also makes a rerun on the same
# P2P_LOCAL_DIR work. No mDNS announcement: everything is on loopback.
SERVER=$DIR/server
export RUST_LOG=${RUST_LOG:-info} P2P_NO_ANNOUNCE=true
"$BIN/auth-svc" --state-dir "$SERVER" --listen 127.0.0.1:50051 \
  --metrics-listen 127.0.0.1:9101 2>"$DIR/auth.log" &
PIDS+=($!)
wait_for 30 auth-svc "$BIN/auth-svc" --state-dir "$SERVER" --listen 127.0.0.1:50051 healthcheck
"$BIN/index-svc" --state-dir "$SERVER" --listen 127.0.0.1:50052 \
  --auth-url 127.0.0.1:50051 --metrics-listen 127.0.0.1:9102 2>"$DIR/index.log" &
PIDS+=($!)
wait_for 30 index-svc "$BIN/index-svc" --state-dir "$SERVER" --listen 127.0.0.1:50052 healthcheck
if [[ -n ${P2P_ADMIN_PASSWORD:-} ]]; then
  ADMIN_PASSWORD=$P2P_ADMIN_PASSWORD
elif [[ -f $SERVER/admin-password ]]; then
  ADMIN_PASSWORD=$(sed -n 2p "$SERVER/admin-password")
else
  echo "no admin password: $SERVER/admin-password is gone; set P2P_ADMIN_PASSWORD" >&2
  exit 1
fi

# The agents start knowing nothing of the servers and wait for `p2p join`,
# which trusts auth-svc only if its CA has the fingerprint the server wrote
# (on another machine it comes from auth-svc's log or an invite), gives the
# agent a certificate for the address auth-svc sees (127.0.0.1 here, which
# the agent advertises as it listens there) and logs the waiting agent in.
# Each agent's control API is the Unix socket in its data dir; `p2p` finds
# it through --data-dir or P2P_DATA_DIR.
start_agent() {
  local name=$1 peer=$2 metrics=$3 web=$4
  "$BIN/peer-agent" --data-dir "$DIR/agent-$name" --listen "127.0.0.1:$peer" \
    --metrics-listen "127.0.0.1:$metrics" --web-listen "127.0.0.1:$web" 2>"$DIR/agent-$name.log" &
  PIDS+=($!)
}
p2p_on() { local name=$1; shift; "$BIN/p2p" --data-dir "$DIR/agent-$name" "$@"; }
logged_in() { p2p_on "$1" --json status | grep -q '"logged_in": *true'; }
start_agent a 50053 9103 50055
start_agent b 50063 9113 50065
for name in a b; do
  wait_for 30 "agent ${name^^} to wait for p2p join" test -e "$DIR/agent-$name/waiting-for-join" -o -S "$DIR/agent-$name/control.sock"
  P2P_PASSWORD=$ADMIN_PASSWORD p2p_on "$name" join 127.0.0.1:50051 \
    --fingerprint-file "$SERVER/pki/ca.fingerprint" --user admin
  wait_for 60 "agent ${name^^} to log in" logged_in "$name"
done

echo
echo "sharing a 32 MiB demo file on agent A and downloading it on agent B:"
# Kept for a rerun on the same P2P_LOCAL_DIR, which then shares the same
# file again rather than a second one by the same name.
[[ -s $DIR/demo.bin ]] || head -c $((32 * 1024 * 1024)) /dev/urandom > "$DIR/demo.bin"
p2p_on a share "$DIR/demo.bin"
p2p_on b ls
p2p_on b get demo.bin -o "$DIR/demo-copy.bin" --force
cmp "$DIR/demo.bin" "$DIR/demo-copy.bin"
echo "agent B's copy is byte-for-byte identical."

# The web apps open only through one-time links that the agents' own OS
# user asks for (`p2p web`); these two are good for a few minutes.
web_link() { p2p_on "$1" --json web --no-open | sed -n 's/.*"url": *"\([^"]*\)".*/\1/p'; }
LINK_A=$(web_link a)
LINK_B=$(web_link b)
[[ $LINK_A == http://* && $LINK_B == http://* ]] || { echo "p2p web printed no link" >&2; exit 1; }

cat <<EOF2

The network is running (state and logs in $DIR):
  auth-svc   127.0.0.1:50051   admin password: $ADMIN_PASSWORD
  index-svc  127.0.0.1:50052
  agent A    control $DIR/agent-a/control.sock   web app http://127.0.0.1:50055/
  agent B    control $DIR/agent-b/control.sock   web app http://127.0.0.1:50065/
Open a web app through its one-time link (each works once, for a few
minutes; \`p2p --data-dir $DIR/agent-a web\` makes another) and log in as
admin with the password above:
  agent A    $LINK_A
  agent B    $LINK_B
Try:
  export PATH=$BIN:\$PATH P2P_DATA_DIR=$DIR/agent-b
  p2p ls; p2p peers; p2p status; p2p share SOME_FILE; p2p get NAME
  grpcurl -cacert $SERVER/pki/ca.pem 127.0.0.1:50051 list
EOF2
if $ONCE; then exit 0; fi
echo "Ctrl-C stops everything."
wait
