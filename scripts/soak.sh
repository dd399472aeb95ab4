#!/usr/bin/env bash
# Soak (issue 6): `wgkeep lab --random-traffic SEED` (seeded random data both ways, idle gaps of
# 0.1 s to 15 min) for DURATION of virtual time (default 24h) per NAT profile and seed, wgkeep on
# the client with the seed's 150 s keepalive (`--keeper both`: the same traffic without wgkeep is
# reported for comparison). pf is included with its own expectation: it has no stream state, so
# the keeper never follows up (0 follow-ups) and the keepalive it lowers to 48 s does the work.
#
# Checks, for every run with wgkeep: reachability 100%; the NAT drops no inbound packet; every
# data packet is delivered (inbound within 5 s) or rejected by WireGuard itself (boringtun expires
# a session only on its 250 ms timer tick and encrypts with it until then, so a packet sent in
# that window can reach a peer that already dropped the session); one NAT entry for the whole run; the simulation's state
# (`peak` in the JSON: event queue, NAT table, inbound packets awaiting delivery) no larger than
# in the same seed's 1 h run plus the bounds the suite asserts; and the process's peak RSS
# (/usr/bin/time %M, both runs of `--keeper both`) within 512 KiB of the 1 h run's.
#
# Usage: scripts/soak.sh [DURATION]   (default 24h; SEEDS="1 2 3", PROFILES="linux routeros openwrt pf")
# Output: a Markdown table on stdout; exit status 1 if any check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-24h}
seeds=${SEEDS:-1 2 3}
profiles=${PROFILES:-linux routeros openwrt pf}
cargo build --release --quiet -p wgkeep-agent
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# A private copy: others may rebuild target/ while this runs.
cp target/release/wgkeep "$tmp/wgkeep"

run() { # PROFILE SEED DURATION OUT -> JSON in OUT.json, peak RSS (KiB) in OUT.rss, wall ms in OUT.ms
  local start end
  start=$(date +%s%N)
  /usr/bin/time -f %M -o "$4.rss" "$tmp/wgkeep" lab --profile "$1" --random-traffic "$2" \
    --duration "$3" --keeper both --side client --keepalive 150s --json > "$4.json"
  end=$(date +%s%N)
  echo $(( (end - start) / 1000000 )) > "$4.ms"
}

fail=0
echo "| profile | seed | reachability without / with wgkeep | inbound delivered (with) | rejected by WireGuard | outbound delivered (with) | follow-ups | NAT entries | client PK | peak state 1 h → $duration (queue, NAT, in flight) | peak RSS 1 h → $duration | wall ($duration, both runs) |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for profile in $profiles; do
  for seed in $seeds; do
    short=$tmp/$profile-$seed-short
    long=$tmp/$profile-$seed-long
    run "$profile" "$seed" 1h "$short"
    run "$profile" "$seed" "$duration" "$long"
    peak() { jq -r '.runs[1].peak | "\(.event_queue)/\(.nat_entries)/\(.inbound_in_flight)"' "$1.json"; }
    rss_short=$(cat "$short.rss")
    rss_long=$(cat "$long.rss")
    jq -r --arg p "$profile" --arg s "$seed" --arg ps "$(peak "$short")" --arg pl "$(peak "$long")" \
      --arg rs "$rss_short" --arg rl "$rss_long" --arg ms "$(cat "$long.ms")" '
      .runs[0] as $off | .runs[1] as $on |
      "| \($p) | \($s) | \($off.reachability * 1000 | floor / 10)% / \($on.reachability * 1000 | floor / 10)% | \($on.inbound_delivered)/\($on.inbound_sent) | \($on.inbound_rejected + $on.outbound_rejected) | \($on.outbound_delivered)/\($on.outbound_sent) | \($on.keeper_stats.follow_ups) | \($on.nat_entries_created) | \($on.client_keepalive) s | \($ps) → \($pl) | \($rs | tonumber / 1024 * 10 | round / 10) → \($rl | tonumber / 1024 * 10 | round / 10) MiB | \($ms) ms |"' \
      "$long.json"
    problems=$(jq -r --arg p "$profile" --slurpfile short "$short.json" '
      .runs[1] as $on | $short[0].runs[1].peak as $sp |
      [ (if $on.reachability != 1 then "reachability \($on.reachability)" else empty end),
        (if $on.nat_dropped_inbound != 0 then "the NAT dropped \($on.nat_dropped_inbound) inbound" else empty end),
        (if $on.inbound_delivered + $on.inbound_rejected != $on.inbound_sent then "inbound \($on.inbound_delivered)+\($on.inbound_rejected)/\($on.inbound_sent)" else empty end),
        (if $on.outbound_delivered + $on.outbound_rejected != $on.outbound_sent then "outbound \($on.outbound_delivered)+\($on.outbound_rejected)/\($on.outbound_sent)" else empty end),
        (if $on.nat_entries_created != 1 then "\($on.nat_entries_created) NAT entries" else empty end),
        (if $p == "pf" and $on.keeper_stats.follow_ups != 0 then "follow-ups on pf" else empty end),
        (if $on.peak.event_queue > ([$sp.event_queue, 32] | max) then "event queue grew to \($on.peak.event_queue)" else empty end),
        (if $on.peak.nat_entries > 1 then "NAT table grew to \($on.peak.nat_entries)" else empty end),
        (if $on.peak.inbound_in_flight > ([$sp.inbound_in_flight, 16] | max) then "in flight grew to \($on.peak.inbound_in_flight)" else empty end)
      ] | join("; ")' "$long.json")
    if [ $(( rss_long - rss_short )) -gt 512 ]; then
      problems="${problems:+$problems; }peak RSS grew from $rss_short to $rss_long KiB"
    fi
    if [ -n "$problems" ]; then
      echo "FAIL $profile seed $seed: $problems" >&2
      fail=1
    fi
  done
done
echo
echo "Command: \`scripts/soak.sh $duration\` (seeds $seeds)"
exit $fail
