#!/usr/bin/env bash
# Keepalive economy (issue 6, P2): what 100% reachability costs the client behind the NAT, in the
# lab's seed scenario (RouterOS 7: udp-timeout 10 s, udp-stream-timeout 180 s; RTT 20 ms; no user
# traffic), over 24 h of virtual time. All setups are run by this one invocation, side by side:
#
#   - a static PersistentKeepalive without wgkeep: the script scans 1..15 s and takes the largest
#     value strictly below the unreplied timeout that reaches 100% (at exactly the timeout the
#     keepalive races the entry's expiry: see BENCHMARKS.md);
#   - a Tailscale-like 25 s keepalive without wgkeep;
#   - the seed's 150 s keepalive without wgkeep (the failure, for reference);
#   - wgkeep on the client, follow-up mode (the user's 150 s kept) and follow-up + adapt
#     (PersistentKeepalive floor(0.8 x 180 s) = 144 s), and wgkeep with the 25 s keepalive.
#
# Definitions (from `wgkeep lab --json`, per hour = over the whole run / 24):
#   wake-ups/h  datagrams the client sends (client_packets): each one wakes a phone's radio;
#   bytes/h     their size on the wire: UDP payload (client_bytes) + 28 B IPv4 and UDP header each;
#   received/h  datagrams that reach the client through the NAT (client_received);
#   handshakes/h, NAT entries: the client's completed handshakes, entries the NAT created.
#
# Usage: scripts/bench-economy.sh [DURATION]   (default 24h; prints Markdown on stdout)
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-24h}
profile=routeros
unreplied=10
cargo build --release --quiet -p wgkeep-agent
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# A private copy: others may rebuild target/ while this runs.
cp target/release/wgkeep "$tmp/wgkeep"
lab() { "$tmp/wgkeep" lab --profile "$profile" --duration "$duration" --json "$@"; }

# 1. The static keepalive: the largest value below the unreplied timeout that reaches 100%.
echo "### Static PersistentKeepalive without wgkeep ($profile, $duration)"
echo
echo "| PersistentKeepalive | reachability | NAT entries |"
echo "| ---: | ---: | ---: |"
static=""
for pk in $(seq 15 -1 1); do
  lab --keeper off --keepalive "$pk" > "$tmp/scan-$pk.json"
  read -r reach entries < <(jq -r '.runs[0] | "\(.reachability) \(.nat_entries_created)"' "$tmp/scan-$pk.json")
  printf '| %s s | %s%% | %s |\n' "$pk" "$(jq -n "$reach * 1000 | round / 10")" "$entries"
  if [ -z "$static" ] && [ "$pk" -lt "$unreplied" ] && [ "$reach" = 1 ]; then static=$pk; fi
done
echo
[ -n "$static" ] || { echo "no static keepalive reached 100%" >&2; exit 1; }

# 2. Side by side.
row() { # LABEL FILE
  jq -r --arg name "$1" --argjson h "$hours" --argjson base "$base" '.runs[0] |
    ((.client_bytes + 28 * .client_packets) / $h) as $wire |
    "| \($name) | \(.client_keepalive // "off") s | \(.reachability * 1000 | round / 10)% | \(.client_packets_per_hour * 10 | round / 10) | \($wire | round) | \(.handshakes / $h * 10 | round / 10) | \(.client_received / $h * 10 | round / 10) | \(.nat_entries_created) | \(.keeper_stats.follow_ups / $h * 10 | round / 10) | \(.client_packets_per_hour / $base * 100 | round / 100)x |"' "$2"
}
lab --keeper off --keepalive "$static" > "$tmp/static.json"
lab --keeper off --keepalive 25 > "$tmp/ts25.json"
lab --keeper off --keepalive 150 > "$tmp/seed.json"
lab --keeper on --side client --keepalive 150 > "$tmp/follow-up.json"
lab --keeper on --side client --keepalive 144 > "$tmp/adapt.json"
lab --keeper on --side client --keepalive 25 > "$tmp/ts25-keeper.json"
hours=$(jq '.duration_s / 3600' "$tmp/adapt.json")
base=$(jq '.runs[0].client_packets_per_hour' "$tmp/adapt.json")
echo "### Side by side ($profile: udp-timeout 10 s, udp-stream-timeout 180 s; RTT 20 ms; $duration of virtual time)"
echo
echo "| setup | client PK | reachability | wake-ups/h | bytes/h (wire) | handshakes/h | received/h | NAT entries | follow-ups/h | wake-ups vs wgkeep adapt |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
row "static keepalive, largest below the ${unreplied} s unreplied timeout, no wgkeep" "$tmp/static.json"
row "Tailscale-like 25 s keepalive, no wgkeep" "$tmp/ts25.json"
row "seed: 150 s keepalive, no wgkeep" "$tmp/seed.json"
row "**wgkeep** follow-up (user's 150 s kept)" "$tmp/follow-up.json"
row "**wgkeep** follow-up + adapt (floor(0.8 x 180 s) = 144 s)" "$tmp/adapt.json"
row "25 s keepalive with wgkeep" "$tmp/ts25-keeper.json"
echo
echo "Command: \`scripts/bench-economy.sh $duration\`"
