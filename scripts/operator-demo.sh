#!/bin/bash
# The operator workflow on a throw-away lab (client — gateway — server in
# network namespaces, removed on exit, also on failure or Ctrl-C): every
# `forwarder` command an operator uses, with what it prints.
#
#   sudo scripts/operator-demo.sh [path/to/forwarder]
#
# Nothing outside the lab's namespaces is touched.
set -euo pipefail
BIN=${1:-target/release/forwarder}
BIN=$(readlink -f "$BIN")
ID=fwdemo$$
C=$ID-c G=$ID-g S=$ID-s
DIR=$(mktemp -d /tmp/$ID.XXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.5
    ip netns exec "$G" "$BIN" teardown --pin-dir "$DIR/pins" >/dev/null 2>&1 || true
    umount -l "$DIR/pins" 2>/dev/null || true
    for n in "$C" "$G" "$S"; do ip netns del "$n" 2>/dev/null || true; done
    rm -rf "$DIR"
}
trap cleanup EXIT INT TERM
say() { printf '\n$ %s\n' "$*"; }
gw() { say "forwarder $*"; ip netns exec "$G" "$BIN" "$@" --control "$DIR/control.sock" 2>&1 || true; }

for n in "$C" "$G" "$S"; do ip netns add "$n"; ip -n "$n" link set lo up; done
ip -n "$G" link add pub0 type veth peer name eth0 netns "$C"
ip -n "$G" link add int0 type veth peer name eth0 netns "$S"
ip -n "$C" addr add 203.0.113.10/24 dev eth0; ip -n "$C" link set eth0 up
ip -n "$S" addr add 192.168.1.50/24 dev eth0; ip -n "$S" link set eth0 up
ip -n "$G" addr add 203.0.113.1/24 dev pub0; ip -n "$G" link set pub0 up
ip -n "$G" addr add 192.168.1.1/24 dev int0; ip -n "$G" link set int0 up
ip -n "$C" route add default via 203.0.113.1
for n in "$C" "$S"; do ip netns exec "$n" ethtool -K eth0 gro on >/dev/null; done
# bpffs for the pins, mounted here (the host's mount namespace): one the
# daemon mounted inside `ip netns exec` would vanish with it.
mkdir -p "$DIR/pins"; mount -t bpf bpf "$DIR/pins"
mkdir -p "$DIR/www"; echo "hello from 192.168.1.50" > "$DIR/www/index.html"
ip netns exec "$S" python3 -m http.server 80 --directory "$DIR/www" >/dev/null 2>&1 & PIDS+=($!)

cat > "$DIR/forwarder.toml" <<EOF
public = ["pub0"]
internal = ["int0"]

[[rule]]
proto = "tcp"
port = 8080
to = "192.168.1.50:80"
EOF

say "forwarder check --public pub0 --internal int0"
ip netns exec "$G" "$BIN" check --public pub0 --internal int0 2>&1 || true

say "forwarder run --config forwarder.toml --pin-dir PINS --metrics 127.0.0.1:9108 &"
ip netns exec "$G" "$BIN" run --config "$DIR/forwarder.toml" --pin-dir "$DIR/pins" --control "$DIR/control.sock" --metrics 127.0.0.1:9108 >"$DIR/daemon.log" 2>&1 & PIDS+=($!)
for _ in $(seq 50); do grep -q "running" "$DIR/daemon.log" && break; sleep 0.2; done
sed 's/^/  | /' "$DIR/daemon.log"

say "curl http://203.0.113.1:8080/   (from the client, three times)"
for _ in 1 2 3; do ip netns exec "$C" curl -sS -m 5 http://203.0.113.1:8080/; done
sleep 1.2
gw stats
gw conntrack list
gw rule list
gw rule add tcp:2222=192.168.1.50:22
gw rule list --json
gw rule del 2
gw save "$DIR/saved.toml"
say "cat saved.toml"; cat "$DIR/saved.toml"
gw conntrack flush --port 8080
say "curl -s http://127.0.0.1:9108/metrics | grep -E 'rule_connections|conntrack|snat|audit'"
ip netns exec "$G" curl -s http://127.0.0.1:9108/metrics | grep -E 'rule_connections_total\{|conntrack_connections(_max)? |snat_ports|event="audit' || true
say "the daemon's audit log"
grep " audit]" "$DIR/daemon.log" || true

say "printf '*nat\\n-A PREROUTING -i pub0 -p udp --dport 5353 -j DNAT --to-destination 192.168.1.50:53\\n-A PREROUTING -p tcp -m multiport --dports 1,2 -j DNAT --to-destination 10.0.0.1\\n-A POSTROUTING -o int0 -j MASQUERADE\\nCOMMIT\\n' | forwarder import-iptables -"
printf '*nat\n-A PREROUTING -i pub0 -p udp --dport 5353 -j DNAT --to-destination 192.168.1.50:53\n-A PREROUTING -p tcp -m multiport --dports 1,2 -j DNAT --to-destination 10.0.0.1\n-A POSTROUTING -o int0 -j MASQUERADE\nCOMMIT\n' | "$BIN" import-iptables - 2>&1 || true

say "kill -9 <daemon>; a new connection; forwarder run --persist … (the same --pin-dir): adopted"
kill -9 "${PIDS[-1]}"; sleep 0.5
ip netns exec "$C" curl -sS -m 5 http://203.0.113.1:8080/ | sed 's/^/  (a new connection while no daemon runs) /' || true
ip netns exec "$G" "$BIN" run --config "$DIR/forwarder.toml" --pin-dir "$DIR/pins" --persist --control "$DIR/control.sock" >"$DIR/daemon2.log" 2>&1 & PIDS+=($!)
for _ in $(seq 50); do grep -q "running" "$DIR/daemon2.log" && break; sleep 0.2; done
grep -E "adopted|attached" "$DIR/daemon2.log" | sed 's/^/  | /'
gw stats
kill -TERM "${PIDS[-1]}"; sleep 1; grep -E "left attached" "$DIR/daemon2.log" | sed "s/^/  | /"
say "forwarder teardown --pin-dir PINS"
ip netns exec "$G" "$BIN" teardown --pin-dir "$DIR/pins" 2>&1 || true
say "forwarder stats   (no daemon any more)"
ip netns exec "$G" "$BIN" stats --control "$DIR/control.sock" 2>&1 || true
