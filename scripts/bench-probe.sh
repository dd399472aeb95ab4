#!/usr/bin/env bash
# Probe speed: `wgkeep probe --strategy parallel` against serial bisection (`--strategy serial`,
# RFC 5780 §4.6: one NAT entry at a time, doubling the idle time, then bisecting), both measuring
# the handshake and stream timeouts (`--measure handshake,stream`, default --max 600s), run at the
# same time through the same kernel NAT against the same `wgkeep reflect`. Target (issue 4):
# parallel ≤ 1.25 × T_stream + 10 s, brackets (low_s, high_s] containing the true timeouts.
#
# Topology, per NAT setting (all settings run at the same time, each in its own namespaces
# wkbp-<pid>-<n>-{c,r,s}): client 172.16.n.2 -- router (nft masquerade to 198.51.100.10n, drops
# `ct state new` on its WAN input/forward chains; conntrack udp_timeout / udp_timeout_stream set by
# sysctl in its namespace) -- server 198.51.100.(10n+1) running `wgkeep reflect`. The router's
# conntrack events are recorded next to the JSONs for post-mortems.
#
# Needs root, ip, nft, conntrack, python3. Takes as long as the slowest serial search (RouterOS
# 10 s / 180 s: about 30 min).
# Usage: scripts/bench-probe.sh [NAME:UNREPLIED:STREAM ...]
#        default: linux:30:120 routeros:10:180 odd:17:73
# Output: a Markdown table on stdout; raw JSONs, logs and conntrack records in $OUT
#         (default target/bench-probe); progress on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then settings=("$@"); else settings=(linux:30:120 routeros:10:180 odd:17:73); fi
out=${OUT:-target/bench-probe}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cargo build --release --quiet
tmp=$(mktemp -d)
# A private copy, so that every process of the run uses the same build even if target/ is rebuilt
# (and so that nobody's `pkill wgkeep` elsewhere on a shared machine ends this run's processes).
cp target/release/wgkeep "$tmp/bench-probe-bin"
bin=$tmp/bench-probe-bin
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || rev="$rev (uncommitted changes)"
tag=wkbp-$$
workers=()

cleanup() {
  for w in "${workers[@]}"; do kill "$w" 2>/dev/null || true; done
  local nss
  nss=$(ip netns list | awk -v p="^$tag-" '$1 ~ p {print $1}')
  for ns in $nss; do ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true; done
  [ -z "$nss" ] || sleep 0.5
  for ns in $nss; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[$(date +%T)] $*" >&2; }

# run_setting N NAME UNREPLIED STREAM: one NAT, one reflector, two probes at once.
run_setting() {
  local n=$1 name=$2 tu=$3 ts=$4
  local c=$tag-$n-c r=$tag-$n-r s=$tag-$n-s
  local v=bp$$$n # veth prefix, ≤ 15 characters with its suffix
  local wan=198.51.100.$((10 * n)) srv=198.51.100.$((10 * n + 1))
  local pfx=$out/$name
  for ns in $c $r $s; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
  ip link add ${v}a type veth peer name ${v}b; ip link set ${v}a netns $c; ip link set ${v}b netns $r
  ip link add ${v}d type veth peer name ${v}e; ip link set ${v}d netns $r; ip link set ${v}e netns $s
  ip -n $c addr add 172.16.$n.2/24 dev ${v}a; ip -n $c link set ${v}a up
  ip -n $r addr add 172.16.$n.1/24 dev ${v}b; ip -n $r link set ${v}b up
  ip -n $r addr add $wan/24 dev ${v}d; ip -n $r link set ${v}d up
  ip -n $s addr add $srv/24 dev ${v}e; ip -n $s link set ${v}e up
  ip -n $c route add default via 172.16.$n.1
  ip netns exec $r sysctl -qw net.ipv4.ip_forward=1
  ip netns exec $r nft -f - <<NFT
table ip nat {
  chain post { type nat hook postrouting priority 100; oifname "${v}d" masquerade; }
}
table inet filter {
  chain input { type filter hook input priority 0; iifname "${v}d" ct state new drop; }
  chain forward { type filter hook forward priority 0; iifname "${v}d" ct state new drop; }
}
NFT
  # After the nft tables: conntrack (and its per-namespace sysctls) is loaded for the namespace.
  ip netns exec $r sysctl -qw net.netfilter.nf_conntrack_udp_timeout="$tu" \
    net.netfilter.nf_conntrack_udp_timeout_stream="$ts"
  ip netns exec $r sysctl net.netfilter.nf_conntrack_udp_timeout \
    net.netfilter.nf_conntrack_udp_timeout_stream > "$pfx-sysctl.txt"
  ip netns exec $r conntrack -E -p udp -o timestamp > "$pfx-conntrack-events.txt" 2>/dev/null &
  local events=$!
  ip netns exec $s "$bin" reflect --listen $srv:51900 -v > "$pfx-reflect.log" 2>&1 &
  local reflector=$!
  sleep 0.5 # conntrack -E subscribed
  local i
  for i in $(seq 50); do
    ip netns exec $s ss -Hlun "sport = :51900" | grep -q . && break
    sleep 0.1
  done
  log "$name ($tu s / $ts s): reflector on $srv:51900, starting parallel and serial probes"
  local strategy pids=()
  for strategy in parallel serial; do
    (
      t0=$(date +%s.%N)
      rc=0
      ip netns exec $c "$bin" probe $srv:51900 --json --quiet --strategy $strategy \
        --measure handshake,stream > "$pfx-$strategy.json" 2> "$pfx-$strategy.log" || rc=$?
      t1=$(date +%s.%N)
      echo "$rc $t0 $t1" > "$pfx-$strategy.wall"
      ip netns exec $r conntrack -L -p udp > "$pfx-$strategy-conntrack-at-end.txt" 2>/dev/null || true
      log "$name: $strategy finished (exit $rc) after $(awk "BEGIN {printf \"%.0f\", $t1 - $t0}") s"
    ) &
    pids+=($!)
  done
  wait "${pids[@]}" || true
  if kill -0 $reflector 2>/dev/null; then echo alive > "$pfx-reflector.status"
  else echo "gone before the probes ended" > "$pfx-reflector.status"; log "$name: the reflector had died"; fi
  kill $reflector $events 2>/dev/null || true
}

n=0
for setting in "${settings[@]}"; do
  n=$((n + 1))
  IFS=: read -r name tu ts <<< "$setting"
  run_setting $n "$name" "$tu" "$ts" &
  workers+=($!)
done
for w in "${workers[@]}"; do wait "$w" || true; done
workers=()

python3 - "$out" "$rev" "${settings[@]}" <<'PY'
import json, sys
out, rev, settings = sys.argv[1], sys.argv[2], sys.argv[3:]

def load(name, strategy):
    try:
        rc, t0, t1 = open(f"{out}/{name}-{strategy}.wall").read().split()
        wall = float(t1) - float(t0)
    except (OSError, ValueError):
        rc, wall = "?", None
    try:
        return json.load(open(f"{out}/{name}-{strategy}.json")), rc, wall
    except (OSError, ValueError):
        return None, rc, wall

def check(report, key, truth):
    b = report.get(key) if report else None
    if not b:
        return f"{key}: missing", False
    lo, hi = b.get("low_s"), b.get("high_s")
    ok = lo is not None and hi is not None and lo < truth <= hi
    g = lambda x: "null" if x is None else f"{x:g}"
    return f"({g(lo)}, {g(hi)}]", ok

def fmt(x, d=0):
    return "—" if x is None else f"{x:.{d}f}"

rows, odd = [], []
for setting in settings:
    name, tu, ts = setting.split(":")
    tu, ts = float(tu), float(ts)
    bound = 1.25 * ts + 10
    p, prc, pwall = load(name, "parallel")
    s, src, swall = load(name, "serial")
    pd = p.get("duration_s") if p else None
    sd = s.get("duration_s") if s else None
    cells = []
    all_ok = True
    for label, rep, rc in (("parallel", p, prc), ("serial", s, src)):
        if rep is None:
            odd.append(f"{name}: {label} probe produced no JSON (exit {rc}); see {out}/{name}-{label}.log")
            all_ok = False
        for key, truth in (("handshake", tu), ("stream", ts)):
            text, ok = check(rep, key, truth)
            cells.append(text + ("" if ok else " ✗"))
            if not ok:
                all_ok = False
                odd.append(f"{name}: {label} {key} bracket {text} does not contain {truth:g} s")
    try:
        status = open(f"{out}/{name}-reflector.status").read().strip()
    except OSError:
        status = "unknown"
    if status != "alive":
        odd.append(f"{name}: reflector {status}; see {out}/{name}-reflect.log")
    ratio = sd / pd if pd and sd else None
    rows.append([
        f"{name} {tu:g} s / {ts:g} s",
        f"{fmt(pd, 1)} s", str(p.get("sockets_used", "—") if p else "—"), cells[0], cells[1],
        f"{fmt(sd, 1)} s", str(s.get("sockets_used", "—") if s else "—"), cells[2], cells[3],
        f"{fmt(ratio, 1)}×", fmt(pd / ts if pd else None, 2),
        f"{bound:g} s" + ("" if pd is None or pd <= bound else " ✗"),
        "yes" if all_ok else "NO",
    ])
    if pd is not None and pd > bound:
        odd.append(f"{name}: parallel took {pd:g} s, over the bound {bound:g} s")
    for label, d, wall in (("parallel", pd, pwall), ("serial", sd, swall)):
        if d is not None and wall is not None and abs(wall - d) > 5:
            odd.append(f"{name}: {label} duration_s {d:g} but the process ran {wall:.0f} s")

head = ["NAT (unreplied / stream)", "parallel", "sockets", "handshake", "stream",
        "serial", "sockets", "handshake", "stream", "serial ÷ parallel",
        "parallel ÷ T_stream", "bound 1.25 T_s + 10 s", "brackets hold truth"]
align = ["---"] + ["---:"] * 12
print("| " + " | ".join(head) + " |")
print("| " + " | ".join(align) + " |")
for r in rows:
    print("| " + " | ".join(r) + " |")
print()
print(f"build {rev}; raw output in {out}")
for o in odd:
    print(f"- {o}")
PY
