#!/usr/bin/env bash
# Kick latency: the time from a handshake's first packet to the packet that promotes the NAT
# entry, for N peers, read from the router's conntrack events (`conntrack -E -o timestamp`:
# [NEW] at the handshake initiation, [UPDATE] ... [ASSURED] at the follow-up). Target: 2.5 s
# (the default --follow-up-delay) ± 0.1 s.
#
# Topology: N client interfaces (wireguard-go, one namespace) behind a router namespace (nft
# masquerade, RouterOS timeouts 10 s / 180 s) and one server interface (wireguard-go) with N peers.
# `wgkeep agent` runs on the server side (--side server) or on the client side (one agent with
# N --interface flags). Needs root, wireguard-go, wg, nft, conntrack.
# Usage: scripts/bench-kick-latency.sh [N] [server|client]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20}
side=${2:-server}
cargo build --release --quiet -p wgkeep-agent
bin=$PWD/target/release/wgkeep
tag=kl$$
c=${tag}c r=${tag}r s=${tag}s
tmp=$(mktemp -d)
export WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1
cleanup() {
  for ns in $c $r $s; do ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true; done
  sleep 0.5
  for ns in $c $r $s; do ip netns del "$ns" 2>/dev/null || true; done
  rm -f /var/run/wireguard/${tag}*.sock
  rm -rf "$tmp"
}
trap cleanup EXIT
for ns in $c $r $s; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link add ${tag}a type veth peer name ${tag}b; ip link set ${tag}a netns $c; ip link set ${tag}b netns $r
ip link add ${tag}d type veth peer name ${tag}e; ip link set ${tag}d netns $r; ip link set ${tag}e netns $s
ip -n $c addr add 172.16.0.2/24 dev ${tag}a; ip -n $c link set ${tag}a up
ip -n $r addr add 172.16.0.1/24 dev ${tag}b; ip -n $r link set ${tag}b up
ip -n $r addr add 198.51.100.1/24 dev ${tag}d; ip -n $r link set ${tag}d up
ip -n $s addr add 198.51.100.2/24 dev ${tag}e; ip -n $s link set ${tag}e up
ip -n $c route add default via 172.16.0.1
ip netns exec $r sysctl -qw net.ipv4.ip_forward=1
ip netns exec $r sysctl -qw net.netfilter.nf_conntrack_udp_timeout=10 net.netfilter.nf_conntrack_udp_timeout_stream=180
ip netns exec $r nft -f - <<NFT
table ip nat {
  chain post { type nat hook postrouting priority 100; oifname "${tag}d" masquerade; }
}
table inet filter {
  chain input { type filter hook input priority 0; iifname "${tag}d" ct state new drop; }
  chain forward { type filter hook forward priority 0; iifname "${tag}d" ct state new drop; }
}
NFT
sk=$(wg genkey); sp=$(echo "$sk" | wg pubkey)
ip netns exec $s wireguard-go ${tag}s0 2>/dev/null
ip netns exec $s wg set ${tag}s0 private-key <(echo "$sk") listen-port 51820
ip -n $s addr add 10.77.0.1/16 dev ${tag}s0; ip -n $s link set ${tag}s0 up
ifaces=()
for i in $(seq 1 "$n"); do
  k=$(wg genkey); p=$(echo "$k" | wg pubkey)
  ip netns exec $s wg set ${tag}s0 peer "$p" allowed-ips 10.77.$i.2/32
  ip netns exec $c wireguard-go ${tag}c$i 2>/dev/null
  ip netns exec $c wg set ${tag}c$i private-key <(echo "$k") listen-port $((40000 + i)) \
    peer "$sp" allowed-ips 10.77.0.1/32 endpoint 198.51.100.2:51820
  ip -n $c addr add 10.77.$i.2/32 dev ${tag}c$i; ip -n $c link set ${tag}c$i up
  ifaces+=(--interface ${tag}c$i)
done
ip netns exec $r conntrack -E -p udp -o timestamp > "$tmp/events" 2>/dev/null &
if [ "$side" = server ]; then
  ip netns exec $s "$bin" agent --interface ${tag}s0 --side server --nat-profile routeros \
    --metrics-listen none --state-dir "$tmp/state" 2>"$tmp/agent.log" &
else
  ip netns exec $c "$bin" agent "${ifaces[@]}" --side client --nat-profile routeros \
    --metrics-listen none --state-dir "$tmp/state" 2>"$tmp/agent.log" &
fi
sleep 2
# One handshake per client, 0.3 s apart: turning PersistentKeepalive on sends a packet at once.
for i in $(seq 1 "$n"); do
  ip netns exec $c wg set ${tag}c$i peer "$sp" persistent-keepalive 150
  sleep 0.3
done
sleep 5
python3 - "$tmp/events" "$n" "$side" <<'PY'
import re, statistics, sys
path, n, side = sys.argv[1], int(sys.argv[2]), sys.argv[3]
new, assured = {}, {}
for line in open(path):
    m = re.match(r"\[(\d+\.\d+)\]\s+\[(NEW|UPDATE)\].*?sport=(\d+)", line)
    if not m:
        continue
    t, kind, sport = float(m.group(1)), m.group(2), int(m.group(3))
    if kind == "NEW":
        new.setdefault(sport, t)
    elif "[ASSURED]" in line:
        assured.setdefault(sport, t)
lat = sorted(assured[p] - new[p] for p in new if p in assured)
missing = n - len(lat)
if not lat:
    sys.exit(f"no promoted entries ({len(new)} created)")
q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))]
print(f"kick latency, agent on the {side} side, {len(lat)}/{n} entries promoted: "
      f"min {lat[0]:.3f} s, median {statistics.median(lat):.3f} s, p90 {q(0.9):.3f} s, max {lat[-1]:.3f} s"
      + (f", {missing} NOT promoted" if missing else ""))
PY
