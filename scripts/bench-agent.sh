#!/usr/bin/env bash
# Agent footprint: wireguard-go holding N peers (default 10 000, generated keys, `wg setconf`),
# `wgkeep agent` polling every second for D seconds (default 60). Prints CPU share of one core
# and peak RSS of the agent process. Needs root (a network namespace), wireguard-go and wg.
# Usage: scripts/bench-agent.sh [PEERS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
peers=${1:-10000}
secs=${2:-60}
cargo build --release --quiet -p wgkeep-agent
bin=$PWD/target/release/wgkeep
ns=wgkbench$$
iface=wgkb$$
tmp=$(mktemp -d)
cleanup() {
  [ -n "${agent:-}" ] && kill "$agent" 2>/dev/null || true
  ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
  sleep 0.3
  ip netns del "$ns" 2>/dev/null || true
  rm -f "/var/run/wireguard/$iface.sock"
  rm -rf "$tmp"
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
ip netns exec "$ns" env WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 wireguard-go "$iface" 2>/dev/null
python3 - "$peers" > "$tmp/wg.conf" <<'PY'
import base64, os, sys
n = int(sys.argv[1])
print("[Interface]\nListenPort = 51999\nPrivateKey = " + base64.b64encode(os.urandom(32)).decode())
for i in range(n):
    key = base64.b64encode(os.urandom(32)).decode()
    a, b = divmod(i + 2, 256)
    ka = "PersistentKeepalive = 25\n" if i % 2 == 0 else ""
    print(f"[Peer]\nPublicKey = {key}\nAllowedIPs = 10.{100 + a // 256}.{a % 256}.{b}/32\n{ka}")
PY
ip netns exec "$ns" wg setconf "$iface" "$tmp/wg.conf"
echo "wireguard-go $iface holds $(ip netns exec "$ns" wg show "$iface" peers | wc -l) peers"
ip netns exec "$ns" "$bin" agent --interface "$iface" --poll-interval 1s --metrics-listen 127.0.0.1:9599 \
  --state-dir "$tmp/state" 2>"$tmp/agent.log" &
agent=$!
sleep 3 # attach and first polls
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$agent/stat"; }
t0=$(ticks); s0=$(date +%s%N)
sleep "$secs"
t1=$(ticks); s1=$(date +%s%N)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$agent/status")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$agent/status")
kill -TERM "$agent"; wait "$agent" || true; agent=
python3 - "$t0" "$t1" "$s0" "$s1" "$hz" "$rss" "$hwm" "$peers" "$secs" <<'PY'
import sys
t0, t1, s0, s1, hz, rss, hwm, peers, secs = map(int, sys.argv[1:])
cpu = (t1 - t0) / hz / ((s1 - s0) / 1e9) * 100
print(f"agent, {peers} peers, poll 1s, {secs}s: CPU {cpu:.2f}% of one core, RSS {rss/1024:.1f} MiB (peak {hwm/1024:.1f} MiB)")
PY
grep -c "" "$tmp/agent.log" | xargs echo "agent log lines:"
