# Sourced (not run) by the compose smoke tests: the compose command for
# the files in COMPOSE_FILES, a project and scratch dir of the caller's own
# (PROJECT_PREFIX + pid), an admin password, teardown on exit (logs first
# when failing), bounded waits, and the check that an agent joined.
#
#   COMPOSE_FILES=(docker-compose.yml) PROJECT_PREFIX=p2psmoke
#   source scripts/compose-lib.sh

if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
export COMPOSE_PROJECT_NAME=${PROJECT_PREFIX:?set PROJECT_PREFIX before sourcing}$$
WORK=$(mktemp -d)
export P2P_ADMIN_PASSWORD="smoke-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"

compose() {
  local file args=()
  for file in "${COMPOSE_FILES[@]:?set COMPOSE_FILES before sourcing}"; do args+=(-f "$file"); done
  "${COMPOSE[@]}" "${args[@]}" "$@"
}

cleanup() {
  local rc=$?
  if [[ $rc != 0 ]]; then
    echo "--- compose logs (failure) ---"
    compose logs --no-color --tail=80 || true
  fi
  compose down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds.
wait_for() {
  local limit=$1 what=$2; shift 2
  local deadline=$(( $(date +%s) + limit ))
  until "$@" >/dev/null 2>&1; do
    (( $(date +%s) < deadline )) || fail "timed out after ${limit}s waiting for $what"
    sleep 1
  done
}
cid() { compose ps -q "$1"; }
healthy() { [[ $(docker inspect --format '{{.State.Health.Status}}' "$(cid "$1")") == healthy ]]; }
p2p() { local svc=$1; shift; compose exec -T "$svc" /p2p "$@"; }
# joined SERVICE: its join-* service exited 0, the join logged the agent
# in as the admin, and the agent is advertised at its container's address,
# the one its certificate names (what a downloader checks).
joined() {
  local svc=$1 join=join-${1#peer-} status ip
  [[ $(docker inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$(cid "$join")") == "exited 0" ]] || return 1
  status=$(p2p "$svc" --json status) || return 1
  ip=$(docker inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$(cid "$svc")")
  python3 -c '
import json, sys
s = json.loads(sys.argv[1])
user = (s.get("user") or {}).get("username")
ip = sys.argv[3]
ok = (s["logged_in"] and user == sys.argv[2] and s["cert_address"] == ip
      and s["advertise_addr"] == ip + ":50053")
sys.exit(0 if ok else 1)' "$status" "${P2P_ADMIN_USER:-admin}" "$ip"
}
# wait_joined SERVICE...: waits for each to have joined (see `joined`).
wait_joined() {
  local svc
  for svc in "$@"; do
    wait_for 60 "$svc to join and be logged in by p2p join" joined "$svc"
  done
}
