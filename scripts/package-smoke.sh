#!/usr/bin/env bash
# Installs the Debian packages for real and moves a file with them: the
# README's "Set up a LAN" steps, in containers that boot systemd as PID 1
# on a private docker network, so the packages' own unit files are what
# runs.
#
#   1. builds p2p-server and p2p-agent (revision 1, then 2) from the static
#      release binaries scripts/build-images.sh built (never building them);
#   2. boots a server and two workstations from p2p/debian-systemd:bookworm
#      (docker/systemd/build-image.sh; made here when missing);
#   3. server: apt-get install ./p2p-server_*.deb, which starts p2p-auth and
#      p2p-index; reads the admin password and the CA fingerprint;
#   4. workstations: apt-get install ./p2p-agent_*.deb, systemctl enable
#      --now p2p-agent@USER; ws-a joins with the admin's password and makes
#      bob's account and an invite with a join token, ws-b joins with that
#      invite; ws-a shares a file, ws-b gets it;
#   5. upgrades every machine to revision 2 and checks the services were
#      restarted and the state survived (same CA, same accounts, ws-b
#      logged in again by its certificate, ws-a after `p2p login`, the file
#      still listed and fetched again);
#   6. removes the server package (state kept), then purges it (state gone).
#
# Every wait is bounded; containers, the network and temp dirs go on exit.
#
#   scripts/build-images.sh && scripts/package-smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${P2P_SYSTEMD_IMAGE:-p2p/debian-systemd:bookworm}
TARGET_DIR=${P2P_IMAGES_TARGET_DIR:-target/images}
run=p2p-pkg-$$
work=$(mktemp -d)
containers=()
started=$SECONDS

say() { echo "--- [$((SECONDS - started))s] $*"; }

cleanup() {
  local rc=$?
  if ((rc != 0)); then
    echo "package smoke test failed; the units' logs:" >&2
    for c in "${containers[@]}"; do
      echo "=== $c" >&2
      docker exec "$c" sh -c 'systemctl --no-pager --failed; journalctl --no-pager -n 60 -u "p2p-*"' >&2 2>&1 || true
    done
  fi
  ((${#containers[@]} == 0)) || docker rm -f "${containers[@]}" >/dev/null 2>&1 || true
  docker network rm "$run" >/dev/null 2>&1 || true
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

# wait_for SECONDS WHAT COMMAND...: runs COMMAND every second until it
# succeeds, failing after SECONDS.
wait_for() {
  local limit=$1 what=$2 deadline=$((SECONDS + $1))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "error: gave up after ${limit}s waiting for $what" >&2
      return 1
    fi
    sleep 1
  done
}

# on MACHINE COMMAND...: as root on that machine.
on() { local m=$1; shift; docker exec "$run-$m" "$@"; }
# as MACHINE USER COMMAND...: as that person in their home, the way they
# would type it (p2p finds the agent with no flags).
as_user() { local m=$1 u=$2; shift 2; docker exec -u "$u" -w "/home/$u" "$run-$m" "$@"; }

boot() {
  local m=$1
  # systemd as PID 1: it needs CAP_SYS_ADMIN for its mounts and the units'
  # sandboxes, no seccomp filter of Docker's in the way, and the host's
  # cgroups. --privileged would do too, but this host's Docker cannot
  # grant every capability it asks for.
  docker run -d --name "$run-$m" --hostname "$m" --network "$run" \
    --cap-add SYS_ADMIN --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
    --cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw \
    --tmpfs /run --tmpfs /run/lock --tmpfs /tmp \
    "$IMAGE" >/dev/null
  containers+=("$run-$m")
}

booted() { on "$1" systemctl is-system-running --wait | grep -qE '^(running|degraded)$'; }

install_deb() {
  local m=$1 deb=$2
  docker cp "$deb" "$run-$m:/root/" >/dev/null
  # What a person runs: apt resolves the Depends from what is installed.
  on "$m" sh -c "cd /root && apt-get install -y -q ./$(basename "$deb")" >"$work/apt-$m.log" 2>&1 \
    || { cat "$work/apt-$m.log" >&2; return 1; }
}

active() { on "$1" systemctl is-active --quiet "$2"; }
main_pid() { on "$1" systemctl show -p MainPID --value "$2"; }

say "building the packages (revisions 1 and 2) from the binaries in $TARGET_DIR"
# One dir per revision: cargo-deb replaces older versions in its output dir.
P2P_DEB_REVISION=1 P2P_DEB_DIR=$work/v1 scripts/build-packages.sh
P2P_DEB_REVISION=2 P2P_DEB_DIR=$work/v2 scripts/build-packages.sh >/dev/null
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
server_v1=$work/v1/p2p-server_${version}-1_amd64.deb
server_v2=$work/v2/p2p-server_${version}-2_amd64.deb
agent_v1=$work/v1/p2p-agent_${version}-1_amd64.deb
agent_v2=$work/v2/p2p-agent_${version}-2_amd64.deb

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  say "building $IMAGE"
  docker/systemd/build-image.sh
fi

say "booting server, ws-a and ws-b (systemd as PID 1) on the private network $run"
docker network create "$run" >/dev/null
for m in server ws-a ws-b; do boot "$m"; done
for m in server ws-a ws-b; do wait_for 60 "systemd on $m" booted "$m"; done

say "server: apt-get install ./$(basename "$server_v1")"
install_deb server "$server_v1"
for unit in p2p-auth p2p-index; do wait_for 30 "$unit to be active" active server "$unit"; done
state=/var/lib/p2p-server
tls=(--tls-ca "$state/pki/ca.pem")
wait_for 60 "auth-svc to serve" on server auth-svc healthcheck "${tls[@]}"
wait_for 60 "index-svc to serve" on server index-svc healthcheck "${tls[@]}"
for unit in p2p-auth p2p-index; do
  [[ $(on server stat -c %U "/proc/$(main_pid server "$unit")") == p2p-server ]] \
    || { echo "error: $unit does not run as p2p-server" >&2; exit 1; }
done
[[ $(on server stat -c '%U %a' "$state/admin-password") == "p2p-server 600" ]] \
  || { echo "error: $state/admin-password is not p2p-server's alone" >&2; exit 1; }
[[ $(on server stat -c '%U %a' "$state/pki/ca-key.pem") == "p2p-server 600" ]] \
  || { echo "error: the CA key is not p2p-server's alone" >&2; exit 1; }
# The first admin's name, then its password.
admin_password=$(on server sed -n 2p "$state/admin-password")
fingerprint=$(on server journalctl -u p2p-auth -o cat | grep -o 'sha256:[0-9a-f]\{64\}' | head -n 1)
[[ -n $fingerprint && $(on server cat "$state/pki/ca.fingerprint") == "$fingerprint" ]] \
  || { echo "error: p2p-auth did not log the CA fingerprint of $state/pki/ca.fingerprint" >&2; exit 1; }
ca_sum=$(on server sha256sum "$state/pki/ca.pem")
say "server up: CA $fingerprint, admin password in $state/admin-password"
on server sh -c 'test -s /usr/share/man/man1/auth-svc.1.gz && test -s /usr/share/bash-completion/completions/index-svc && test -s /usr/share/zsh/vendor-completions/_p2p-certs && test -s /usr/share/fish/vendor_completions.d/auth-svc.fish && grep -q "^#AUTH_LISTEN=" /etc/p2p/auth-svc.env'

say "workstations: apt-get install ./$(basename "$agent_v1"), then the agent as its user"
for m in ws-a ws-b; do
  install_deb "$m" "$agent_v1"
  on "$m" useradd --create-home --shell /bin/bash alice
  on "$m" systemctl enable --now p2p-agent@alice
  wait_for 30 "p2p-agent@alice on $m" active "$m" p2p-agent@alice
  # Not joined yet: it runs and waits, saying so in the journal.
  wait_for 30 "the agent on $m to wait for p2p join" \
    sh -c "docker exec $run-$m journalctl -u p2p-agent@alice -o cat | grep -q 'not joined'"
  on "$m" test -s /usr/share/man/man1/p2p.1.gz
done

say "ws-a: p2p join server as admin (a password); adds the account bob and an invite for it"
as_user ws-a alice env P2P_PASSWORD="$admin_password" p2p join server --fingerprint "$fingerprint" --user admin
# p2p finds the agent with no flags: its socket in alice's data dir.
wait_for 30 "the agent on ws-a to serve p2p" as_user ws-a alice p2p status
as_user ws-a alice p2p status | sed 's/^/    /'
bob_password=$(head -c 18 /dev/urandom | base64)
echo "$bob_password" | docker exec -i -u alice -w /home/alice "$run-ws-a" p2p users add bob --password-stdin
invite=$(as_user ws-a alice p2p invite --token-for bob | grep -o "p2p-invite:[^']*")
say "ws-b: p2p join 'p2p-invite:…' (a join token for bob: no password)"
as_user ws-b alice p2p join "$invite"
wait_for 30 "the agent on ws-b to serve p2p" as_user ws-b alice p2p status

say "ws-a shares a 5 MiB file; ws-b gets it"
on ws-a runuser -u alice -- sh -c 'head -c 5242880 /dev/urandom > /home/alice/report.bin'
as_user ws-a alice p2p share /home/alice/report.bin
wait_for 30 "ws-b to list report.bin" sh -c "docker exec -u alice -w /home/alice $run-ws-b p2p ls | grep -q report.bin"
# With no -o it lands in the agent's downloads dir, in alice's home.
as_user ws-b alice timeout 120 p2p get report.bin
sum_a=$(on ws-a sha256sum /home/alice/report.bin | cut -d' ' -f1)
sum_b=$(on ws-b sha256sum /home/alice/.local/share/p2p/downloads/report.bin | cut -d' ' -f1)
[[ $sum_a == "$sum_b" ]] || { echo "error: ws-b's copy differs" >&2; exit 1; }
say "moved report.bin: $sum_a"

say "upgrading every machine to revision 2"
auth_pid=$(main_pid server p2p-auth)
index_pid=$(main_pid server p2p-index)
install_deb server "$server_v2"
for unit in p2p-auth p2p-index; do wait_for 30 "$unit to be active again" active server "$unit"; done
[[ $(main_pid server p2p-auth) != "$auth_pid" && $(main_pid server p2p-index) != "$index_pid" ]] \
  || { echo "error: the upgrade did not restart p2p-auth and p2p-index" >&2; exit 1; }
# shellcheck disable=SC2016 # dpkg-query's own fields
on server dpkg-query -W -f '    ${Package} ${Version}\n' p2p-server
wait_for 60 "auth-svc to serve after the upgrade" on server auth-svc healthcheck "${tls[@]}"
wait_for 60 "index-svc to serve after the upgrade" on server index-svc healthcheck "${tls[@]}"
[[ $(on server sha256sum "$state/pki/ca.pem") == "$ca_sum" ]] \
  || { echo "error: the upgrade changed the CA" >&2; exit 1; }
[[ $(on server sed -n 2p "$state/admin-password") == "$admin_password" ]] \
  || { echo "error: the upgrade changed the admin password file" >&2; exit 1; }
for m in ws-a ws-b; do
  agent_pid=$(main_pid "$m" p2p-agent@alice)
  install_deb "$m" "$agent_v2"
  wait_for 30 "p2p-agent@alice on $m after the upgrade" active "$m" p2p-agent@alice
  [[ $(main_pid "$m" p2p-agent@alice) != "$agent_pid" ]] \
    || { echo "error: the upgrade did not restart the agent on $m" >&2; exit 1; }
done
say "state after the upgrade: bob's account, report.bin listed and fetched again"
# ws-b joined with a join token: its agent logs in with its certificate.
# ws-a joined with a password, which nothing keeps: log in again.
wait_for 30 "ws-b's agent to log in by itself" \
  sh -c "docker exec -u alice -w /home/alice $run-ws-b p2p status | grep -q '^session: *logged in as bob'"
wait_for 30 "the agent on ws-a to serve p2p after the upgrade" as_user ws-a alice p2p status
as_user ws-a alice env P2P_PASSWORD="$admin_password" p2p login admin
wait_for 60 "ws-a to list bob" sh -c "docker exec -u alice -w /home/alice $run-ws-a p2p users ls | grep -qw bob"
wait_for 60 "ws-b to list report.bin" sh -c "docker exec -u alice -w /home/alice $run-ws-b p2p ls | grep -q report.bin"
as_user ws-b alice timeout 120 p2p get report.bin -o /home/alice/again.bin
[[ $(on ws-b sha256sum /home/alice/again.bin | cut -d' ' -f1) == "$sum_a" ]] \
  || { echo "error: the copy fetched after the upgrade differs" >&2; exit 1; }

say "removal keeps the state, purge deletes it"
on ws-b apt-get remove -y -q p2p-agent >/dev/null 2>&1
on ws-b test -d /home/alice/.local/share/p2p
on server apt-get remove -y -q p2p-server >/dev/null 2>&1
! active server p2p-auth || { echo "error: p2p-auth still runs after removal" >&2; exit 1; }
on server test -s "$state/pki/ca.pem"
on server apt-get purge -y -q p2p-server >/dev/null 2>&1
! on server test -e "$state" || { echo "error: purge left $state" >&2; exit 1; }

say "package smoke test passed"
