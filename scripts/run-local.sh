#!/usr/bin/env bash
# Runs the whole system on this machine: auth-svc, index-svc and two agents
# on loopback with SQLite, logs both agents in as the admin, shares a file on
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
ADMIN_PASSWORD=${P2P_ADMIN_PASSWORD:-$(head -c 15 /dev/urandom | base64 | tr -d '/+=')}
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

# TLS on every link: a CA for this run and a certificate per process, made
# once and kept with the state (p2p-certs keeps what exists).
TLS=$DIR/tls
"$BIN/p2p-certs" server --dir "$TLS" --name auth --host localhost --host 127.0.0.1 >/dev/null
"$BIN/p2p-certs" server --dir "$TLS" --name index --host localhost --host 127.0.0.1 >/dev/null
"$BIN/p2p-certs" agent --dir "$TLS" --name agent-a --host 127.0.0.1 >/dev/null
"$BIN/p2p-certs" agent --dir "$TLS" --name agent-b --host 127.0.0.1 >/dev/null
export P2P_TLS_CA=$TLS/ca.pem
tls_of() { echo "--tls-cert $TLS/$1.pem --tls-key $TLS/$1-key.pem"; }

export RUST_LOG=${RUST_LOG:-info}
# shellcheck disable=SC2046
P2P_ADMIN_PASSWORD=$ADMIN_PASSWORD "$BIN/auth-svc" --listen 127.0.0.1:50051 $(tls_of auth) \
  --database-url "sqlite://$DIR/auth.db" --metrics-listen 127.0.0.1:9101 2>"$DIR/auth.log" &
PIDS+=($!)
wait_for 30 auth-svc "$BIN/auth-svc" --listen 127.0.0.1:50051 healthcheck
# shellcheck disable=SC2046
"$BIN/index-svc" --listen 127.0.0.1:50052 --database-url "sqlite://$DIR/index.db" $(tls_of index) \
  --auth-url 127.0.0.1:50051 --metrics-listen 127.0.0.1:9102 2>"$DIR/index.log" &
PIDS+=($!)
wait_for 30 index-svc "$BIN/index-svc" --listen 127.0.0.1:50052 healthcheck

# Each agent's control API is the Unix socket in its data dir; `p2p` finds
# it through --data-dir or P2P_DATA_DIR.
start_agent() {
  local name=$1 peer=$2 metrics=$3 web=$4
  # shellcheck disable=SC2046
  P2P_USER=admin P2P_PASSWORD=$ADMIN_PASSWORD "$BIN/peer-agent" --listen "127.0.0.1:$peer" \
    --data-dir "$DIR/agent-$name" --metrics-listen "127.0.0.1:$metrics" \
    --web-listen "127.0.0.1:$web" \
    $(tls_of "agent-$name") --index-url 127.0.0.1:50052 --auth-url 127.0.0.1:50051 2>"$DIR/agent-$name.log" &
  PIDS+=($!)
}
p2p_on() { local name=$1; shift; "$BIN/p2p" --data-dir "$DIR/agent-$name" "$@"; }
logged_in() { p2p_on "$1" --json status | grep -q '"logged_in": *true'; }
start_agent a 50053 9103 50055
start_agent b 50063 9113 50065
wait_for 60 "agent A to log in" logged_in a
wait_for 60 "agent B to log in" logged_in b

echo
echo "sharing a 32 MiB demo file on agent A and downloading it on agent B:"
head -c $((32 * 1024 * 1024)) /dev/urandom > "$DIR/demo.bin"
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
  grpcurl -cacert $TLS/ca.pem 127.0.0.1:50051 list
EOF2
if $ONCE; then exit 0; fi
echo "Ctrl-C stops everything."
wait
