#!/usr/bin/env bash
# The compose deployment, tested for real: build the static images, start
# the stack, check each agent joined through `p2p join` (logged in as the
# admin, advertised at the address its certificate names), create a user
# with grpcurl, share a file on peer-a, download it
# on peer-b and peer-c through the `p2p` client inside the containers,
# compare checksums, check the published control port wants the agent's
# control token, stop peer-a in the middle of a larger download and check
# it completes from the remaining holder, scrape /metrics, run the Python and
# Rust stub examples, and tear everything down (always, via trap).
# Every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

COMPOSE_FILES=(docker-compose.yml)
PROJECT_PREFIX=p2psmoke
source scripts/compose-lib.sh
# Slow enough that stopping peer-a lands in the middle of a download.
export P2P_MAX_UPLOAD_RATE=${P2P_MAX_UPLOAD_RATE:-10MiB}

scripts/build-images.sh

echo "--- starting the stack"
compose up -d
for svc in auth index peer-a peer-b peer-c; do
  wait_for 120 "$svc to be healthy" healthy "$svc"
done
compose ps
echo "--- the agents joined with p2p join"
wait_joined peer-a peer-b peer-c

echo "--- grpcurl against the running stack (TLS, trusting the CA the servers made)"
docker cp "$(cid auth)":/state/pki/ca.pem "$WORK/ca.pem"
if grpcurl -plaintext -max-time 5 127.0.0.1:50051 list >/dev/null 2>&1; then fail "auth-svc answered plaintext"; fi
grpcurl -cacert "$WORK/ca.pem" 127.0.0.1:50051 list >"$WORK/auth-list" || fail "auth-svc reflection"
grep -q p2p.auth.v1.AuthService "$WORK/auth-list" || fail "auth-svc reflection lists no AuthService"
# Output is captured first: with pipefail, `grpcurl | grep -q` fails at
# random when grep exits before grpcurl has written everything.
index_list=$(grpcurl -cacert "$WORK/ca.pem" 127.0.0.1:50052 list) || fail "index-svc reflection"
grep -q p2p.index.v1.IndexService <<<"$index_list" || fail "index-svc reflection lists no IndexService"
agent_list=$(grpcurl -plaintext 127.0.0.1:50154 list) || fail "agent reflection"
grep -q p2p.agent.v1.AgentControl <<<"$agent_list" || fail "agent reflection lists no AgentControl"
if grpcurl -plaintext 127.0.0.1:50154 p2p.agent.v1.AgentControl/Status 2>"$WORK/err"; then
  fail "the agent's TCP control API answered without its control token"
fi
grep -q Unauthenticated "$WORK/err" || fail "a call without the control token did not give Unauthenticated"
for svc in peer-a peer-b peer-c; do
  docker cp "$(cid "$svc"):/data/control.token" "$WORK/$svc.token"
done
echo "--- the agents' web apps on the host's loopback, opened with p2p web"
for svc_port in peer-a:50255 peer-b:50256 peer-c:50257; do
  svc=${svc_port%:*} port=${svc_port#*:}
  code=$(curl -s -o "$WORK/web-enter" -w '%{http_code}' --max-time 5 "http://127.0.0.1:$port/login") ||
    fail "the web app on 127.0.0.1:$port did not answer"
  [[ $code == 403 ]] || fail "the web app on 127.0.0.1:$port answered $code to /login without a link from p2p web"
  grep -q 'p2p web' "$WORK/web-enter" || fail "the web app on 127.0.0.1:$port does not say how to get in"
  link=$(p2p "$svc" --json web --no-open | python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])') ||
    fail "p2p web in $svc failed"
  [[ $link == "http://127.0.0.1:$port/enter?ticket="* ]] || fail "p2p web in $svc printed $link, not the published port"
  rm -f "$WORK/web-cookies"
  code=$(curl -s -L -c "$WORK/web-cookies" -b "$WORK/web-cookies" -o "$WORK/web-login" -w '%{http_code}' \
    --max-time 5 "$link") || fail "the web app on 127.0.0.1:$port did not answer"
  [[ $code == 200 ]] || fail "the one-time link of $svc led to $code, not the login form"
  grep -q 'name="password"' "$WORK/web-login" || fail "no login form behind the link on 127.0.0.1:$port"
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$link") ||
    fail "the web app on 127.0.0.1:$port did not answer"
  [[ $code == 403 ]] || fail "the one-time link of $svc opened a second time ($code)"
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H 'Host: evil.example' "http://127.0.0.1:$port/assets/app.css") ||
    fail "the web app on 127.0.0.1:$port did not answer"
  [[ $code == 403 ]] || fail "the web app on 127.0.0.1:$port answered $code to a foreign Host"
done
grpcurl -plaintext -H "authorization: Bearer $(cat "$WORK/peer-a.token")" \
  127.0.0.1:50154 p2p.agent.v1.AgentControl/Status >/dev/null || fail "the control token was refused"
ADMIN_TOKEN=$(grpcurl -cacert "$WORK/ca.pem" -d "{\"username\":\"admin\",\"password\":\"$P2P_ADMIN_PASSWORD\"}" \
  127.0.0.1:50051 p2p.auth.v1.AuthService/Login | python3 -c 'import json,sys; print(json.load(sys.stdin)["accessToken"])')
grpcurl -cacert "$WORK/ca.pem" -H "authorization: Bearer $ADMIN_TOKEN" \
  -d '{"username":"alice","password":"alice-password-1","role":"ROLE_USER"}' \
  127.0.0.1:50051 p2p.auth.v1.AccountService/CreateUser >/dev/null
grpcurl -cacert "$WORK/ca.pem" -H "authorization: Bearer $ADMIN_TOKEN" 127.0.0.1:50052 p2p.index.v1.IndexService/ListFiles >/dev/null
if grpcurl -cacert "$WORK/ca.pem" -d '{"username":"admin","password":"wrong"}' 127.0.0.1:50051 p2p.auth.v1.AuthService/Login 2>"$WORK/err"; then
  fail "a wrong password logged in"
fi
grep -q Unauthenticated "$WORK/err" || fail "wrong password did not give Unauthenticated"

echo "--- logging the agents in with the p2p client"
for svc in peer-a peer-b peer-c; do
  echo "alice-password-1" | p2p "$svc" login alice --password-stdin
done

echo "--- share on peer-a, download on peer-b and peer-c"
head -c $((24 * 1024 * 1024)) /dev/urandom > "$WORK/small.bin"
docker cp "$WORK/small.bin" "$(cid peer-a):/data/small.bin"
p2p peer-a share /data/small.bin
p2p peer-b ls
p2p peer-b get small.bin -o /data/small-b.bin &
p2p peer-c get small.bin -o /data/small-c.bin &
wait %1 || fail "download on peer-b"
wait %2 || fail "download on peer-c"
docker cp "$(cid peer-b):/data/small-b.bin" "$WORK/small-b.bin"
docker cp "$(cid peer-c):/data/small-c.bin" "$WORK/small-c.bin"
want=$(sha256sum < "$WORK/small.bin")
[[ $(sha256sum < "$WORK/small-b.bin") == "$want" ]] || fail "peer-b's copy differs"
[[ $(sha256sum < "$WORK/small-c.bin") == "$want" ]] || fail "peer-c's copy differs"
echo "checksums match"

echo "--- metrics moved"
curl -fsS 127.0.0.1:9103/metrics > "$WORK/metrics-a"
curl -fsS 127.0.0.1:9104/metrics > "$WORK/metrics-b"
curl -fsS 127.0.0.1:9102/metrics > "$WORK/metrics-index"
curl -fsS 127.0.0.1:9101/metrics > "$WORK/metrics-auth"
grep -E '^p2p_agent_uploaded_bytes_total [1-9]' "$WORK/metrics-a" || fail "peer-a uploaded no bytes by its metrics"
grep -E '^p2p_agent_downloaded_bytes_total [1-9]' "$WORK/metrics-b" || fail "peer-b downloaded no bytes by its metrics"
grep -E '^p2p_rpc_requests_total\{.*LocateSources.*\} [1-9]' "$WORK/metrics-index" || fail "index counted no LocateSources"
grep -E '^p2p_auth_logins_total\{.*\} [1-9]' "$WORK/metrics-auth" || fail "auth counted no logins"

echo "--- stop peer-a in the middle of a larger download"
head -c $((128 * 1024 * 1024)) /dev/urandom > "$WORK/big.bin"
docker cp "$WORK/big.bin" "$(cid peer-a):/data/big.bin"
p2p peer-a share /data/big.bin
p2p peer-b get big.bin -o /data/big-b.bin
p2p peer-c get big.bin -o /data/big-c.bin &
getpid=$!
progress() { p2p peer-c --json ls big.bin | python3 -c '
import json,sys
d=json.load(sys.stdin)
files=d["files"] if isinstance(d,dict) else d
sys.exit(0 if any(f.get("local_bytes",0)>0 or f.get("localBytes",0)>0 for f in files) else 1)'; }
wait_for 60 "peer-c to make progress" progress
compose stop -t 2 peer-a
kill -0 $getpid 2>/dev/null || fail "peer-c finished before peer-a stopped; the failover was not exercised (lower P2P_MAX_UPLOAD_RATE)"
wait $getpid || fail "peer-c's download did not complete after peer-a stopped"
docker cp "$(cid peer-c):/data/big-c.bin" "$WORK/big-c.bin"
[[ $(sha256sum < "$WORK/big-c.bin") == $(sha256sum < "$WORK/big.bin") ]] || fail "peer-c's big copy differs"
echo "large download completed from the remaining holder"
compose start peer-a
wait_for 60 "peer-a to be healthy again" healthy peer-a

if [[ -f examples/python/p2p_example.py ]]; then
  echo "--- Python stub example"
  python3 examples/python/p2p_example.py --agent 127.0.0.1:50156 --token-file "$WORK/peer-c.token" \
    --download small.bin --destination /data/small-py.bin
fi
if [[ -f proto/examples/agent_client.rs ]]; then
  echo "--- Rust stub example"
  cargo run -q -p p2p-proto --example agent_client -- --agent 127.0.0.1:50155 --token-file "$WORK/peer-b.token"
fi

echo "--- image sizes"
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '^p2p/'
echo "compose smoke test passed"
