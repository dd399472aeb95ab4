#!/bin/sh
# The kernel WireGuard scenario, run by /init inside the VM (busybox sh). Everything it reports goes
# to the serial console; tests/tests/kernel_vm.rs parses the marker lines:
#   WGKEEP-CHECK <name> PASS|FAIL <detail>
#   WGKEEP-INFO <text>
#
# Three labs, each client ─ router (nft masquerade, RouterOS conntrack timeouts 10 s / 180 s,
# `ct state new` from the WAN dropped) ─ server in its own three network namespaces, with kernel
# WireGuard on client (wgc, PersistentKeepalive 150) and server (wgs, no keepalive):
#   e  the environment: the kick done by hand with `wg set` at +2.5 s promotes the entry;
#   k  wgkeep agent (follow-up mode) on the client: (a) assured within 5 s, (b) server → client
#      ping after 14 s idle, (c) PersistentKeepalive still 150, also after SIGTERM; then
#      `--mode adapt`: 150 → 144 over netlink, back to 150 on SIGTERM;
#   n  the control, nothing on the client: the entry stays short, the ping after 14 s idle fails.
#
# The handshake is triggered by bringing wgc up: the kernel sends a keepalive on open for a peer
# with PersistentKeepalive, which starts the handshake. No data crosses the tunnel before the
# idle period: the reply to a ping would arm the client's passive keepalive (KEEPALIVE_TIMEOUT,
# 10 s), which re-creates the NAT entry just after it expires and would hide the failure in the
# control run.

IP=/usr/sbin/ip
WG=/usr/bin/wg
NFT=/usr/sbin/nft
CT=/usr/sbin/conntrack
WGKEEP=/usr/bin/wgkeep
# The agent runs with CAP_NET_ADMIN only: netlink reads and writes must need nothing else.
AGENT="/usr/bin/setpriv --bounding-set -all,+net_admin --inh-caps -all -- $WGKEEP"
PORT_S=51820
PORT_C=40000
TUN_S=10.9.0.1
TUN_C=10.9.0.2
IDLE_PING_AT=1400 # centiseconds after the handshake

failures=0

check() { # name PASS|FAIL detail...
  name=$1 verdict=$2
  shift 2
  echo "WGKEEP-CHECK $name $verdict $*"
  [ "$verdict" = PASS ] || failures=$((failures + 1))
}
info() { echo "WGKEEP-INFO $*"; }

# Uptime in centiseconds.
now_cs() {
  read -r up _ </proc/uptime
  echo $((${up%.*} * 100 + 1${up#*.} - 100))
}
secs() { # centiseconds -> "S.CC"
  printf '%d.%02d' $(($1 / 100)) $(($1 % 100))
}
sleep_until() { # uptime in centiseconds
  d=$(($1 - $(now_cs)))
  [ "$d" -gt 0 ] && sleep "$(secs "$d")"
  return 0
}

in_ns() { # namespace command...
  ns=$1
  shift
  $IP netns exec "$ns" "$@"
}

mklab() { # prefix
  c=${1}c r=${1}r s=${1}s
  for ns in "$c" "$r" "$s"; do
    $IP netns add "$ns" && $IP -n "$ns" link set lo up || return 1
  done
  $IP -n "$r" link add lan0 type veth peer name eth0 netns "$c" || return 1
  $IP -n "$r" link add wan0 type veth peer name eth0 netns "$s" || return 1
  $IP -n "$c" addr add 172.16.0.2/24 dev eth0 &&
    $IP -n "$r" addr add 172.16.0.1/24 dev lan0 &&
    $IP -n "$r" addr add 198.51.100.1/24 dev wan0 &&
    $IP -n "$s" addr add 198.51.100.2/24 dev eth0 || return 1
  $IP -n "$c" link set eth0 up && $IP -n "$r" link set lan0 up &&
    $IP -n "$r" link set wan0 up && $IP -n "$s" link set eth0 up || return 1
  $IP -n "$c" route add default via 172.16.0.1 || return 1
  in_ns "$r" $NFT -f - <<'EOF' || return 1
table ip nat {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan0" masquerade
	}
}
table ip filter {
	chain input {
		type filter hook input priority filter; policy accept;
		iifname "wan0" ct state new drop
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname "wan0" ct state new drop
	}
}
EOF
  in_ns "$r" sysctl -qw net.ipv4.ip_forward=1 &&
    in_ns "$r" sysctl -qw net.netfilter.nf_conntrack_udp_timeout=10 &&
    in_ns "$r" sysctl -qw net.netfilter.nf_conntrack_udp_timeout_stream=180 || return 1

  $IP -n "$s" link add wgs type wireguard &&
    in_ns "$s" $WG set wgs listen-port $PORT_S private-key /tmp/server.key \
      peer "$CLIENT_PUB" allowed-ips $TUN_C/32 &&
    $IP -n "$s" addr add $TUN_S/24 dev wgs &&
    $IP -n "$s" link set wgs up || return 1
  # wgc stays down until the handshake is wanted.
  $IP -n "$c" link add wgc type wireguard &&
    in_ns "$c" $WG set wgc listen-port $PORT_C private-key /tmp/client.key \
      peer "$SERVER_PUB" endpoint 198.51.100.2:$PORT_S allowed-ips $TUN_S/32 \
      persistent-keepalive 150 &&
    $IP -n "$c" addr add $TUN_C/24 dev wgc || return 1
}

# Brings wgc up (the handshake starts) and waits until the client reports it done; sets T0, the
# uptime in centiseconds when it was seen done (at most ~0.1 s after the client got the response,
# and after the NAT entry's first packet): every later time in a lab is relative to T0.
handshake() { # prefix
  up=$(now_cs)
  $IP -n "${1}c" link set wgc up || return 1
  while :; do
    hs=$(in_ns "${1}c" $WG show wgc latest-handshakes | awk '{print $2}')
    [ -n "$hs" ] && [ "$hs" != 0 ] && break
    if [ $(($(now_cs) - up)) -gt 1000 ]; then
      info "$1: no handshake within 10 s"
      return 1
    fi
    sleep 0.1
  done
  T0=$(now_cs)
  info "$1: handshake seen $(secs $((T0 - up))) s after wgc up; $(transfer "$1")"
}

# The router's entry for the WireGuard flow: "SECONDS_LEFT ASSURED|SHORT", or "none".
ct_entry() { # prefix
  in_ns "${1}r" $CT -L -p udp 2>/dev/null | awk -v p="dport=$PORT_S" '
    $0 ~ p { a = ($0 ~ /\[ASSURED\]/) ? "ASSURED" : "SHORT"; print $3, a; found = 1; exit }
    END { if (!found) print "none" }'
}

# Polls the entry from +3 s until +5 s after T0; PASS as soon as it is assured with > 170 s left.
check_assured() { # check-name prefix
  sleep_until $((T0 + 300))
  while :; do
    e=$(ct_entry "$2")
    el=$(secs $(($(now_cs) - T0)))
    set -- "$1" "$2" $e
    if [ "$4" = ASSURED ] && [ "$3" -gt 170 ]; then
      check "$1" PASS "entry assured, $3 s left, at +$el s"
      return 0
    fi
    if [ $(($(now_cs) - T0)) -ge 500 ]; then
      check "$1" FAIL "entry at +$el s: $3 s left, ${4:-?} (want ASSURED, > 170 s)"
      return 1
    fi
    sleep 0.25
  done
}

keepalive() { # prefix
  in_ns "${1}c" $WG show wgc persistent-keepalive | awk '{print $2}'
}

hs_age() { # prefix: seconds since the client's latest handshake
  echo $(($(date +%s) - $(in_ns "${1}c" $WG show wgc latest-handshakes | awk '{print $2}')))
}

transfer() { # prefix
  in_ns "${1}c" $WG show wgc transfer | awk '{print "rx=" $2, "tx=" $3}'
}

# Server → client ping through the tunnel at T0 + IDLE_PING_AT (nothing crossed the NAT since
# the follow-up at +2.5 s, if any). Prints "ok" or "lost".
idle_ping() { # prefix
  sleep_until $((T0 + IDLE_PING_AT))
  if in_ns "${1}s" ping -c 1 -W 3 $TUN_C >/dev/null 2>&1; then echo ok; else echo lost; fi
}

evidence() { # prefix [agent log]
  echo "---- evidence for lab $1 ----"
  for ns in "${1}c" "${1}s"; do
    echo "# wg show ($ns)"
    in_ns "$ns" $WG show all 2>&1 | grep -v 'private key'
  done
  echo "# conntrack -L (${1}r)"
  in_ns "${1}r" $CT -L 2>&1
  if [ -n "$2" ] && [ -f "$2" ]; then
    echo "# $2"
    cat "$2"
  fi
  echo "# dmesg (tail)"
  dmesg | tail -n 20
  echo "---- end of evidence ----"
}

# Waits (up to 20 s) for a line matching a pattern in a file; fails if process $3 died.
wait_log() { # file pattern pid
  n=0
  while ! grep -q "$2" "$1" 2>/dev/null; do
    running "$3" || return 1
    n=$((n + 1))
    [ $n -gt 200 ] && return 1
    sleep 0.1
  done
}

# Whether process $1 still runs (an exited child stays a zombie until `wait` reaps it).
running() { # pid
  [ -r "/proc/$1/stat" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

# Sends SIGTERM to $1 and waits up to 10 s for it; sets AGENT_RC to its exit status (or "hung").
# When it is still running after 5 s, its threads' states go to the console (evidence). Not to be
# called in $(…): only this shell can `wait` for its children.
stop_agent() { # pid
  kill -TERM "$1" 2>/dev/null
  n=0
  while running "$1"; do
    n=$((n + 1))
    if [ $n = 50 ]; then
      {
        echo "---- pid $1 still running 5 s after SIGTERM: its threads ----"
        for t in /proc/"$1"/task/*; do
          echo "# $t: $(cat "$t/comm") state $(awk '{print $3}' "$t/stat") wchan $(cat "$t/wchan" 2>/dev/null)"
          cat "$t/stack" 2>/dev/null
        done
        echo "---- end of threads ----"
      }
    fi
    if [ $n -gt 100 ]; then
      kill -KILL "$1" 2>/dev/null
      wait "$1" 2>/dev/null
      AGENT_RC=hung
      return
    fi
    sleep 0.1
  done
  wait "$1"
  AGENT_RC=$?
}

# ---------------------------------------------------------------------------------------------

umask 077
$WG genkey >/tmp/server.key && $WG genkey >/tmp/client.key || {
  check setup FAIL "wg genkey failed"
  exit 1
}
SERVER_PUB=$($WG pubkey </tmp/server.key)
CLIENT_PUB=$($WG pubkey </tmp/client.key)
info "$($WGKEEP --version 2>&1)"

# ---- e: the environment reproduces the facts with a kick done by hand ----
if mklab e && handshake e; then
  ka0=$(keepalive e)
  tr0=$(transfer e)
  before=$(ct_entry e)
  sleep_until $((T0 + 250))
  in_ns ec $WG set wgc peer "$SERVER_PUB" persistent-keepalive 0 peer "$SERVER_PUB" persistent-keepalive 150
  info "e: wg set kick at +$(secs $(($(now_cs) - T0))) s; entry before: $before; $tr0 -> $(transfer e)"
  if check_assured env-wg-kick-assured e; then :; else evidence e; fi
  ka=$(keepalive e)
  if [ "$ka0" = 150 ] && [ "$ka" = 150 ]; then
    check env-wg-kick-keepalive PASS "PersistentKeepalive $ka0 -> $ka"
  else
    check env-wg-kick-keepalive FAIL "PersistentKeepalive $ka0 -> $ka (want 150)"
  fi
else
  check env-setup FAIL "lab e could not be built or did not handshake"
  evidence e
fi

# ---- k: wgkeep agent on the client ----
if mklab k; then
  mkdir -p /run/wgkeep
  # Not through in_ns: a function in the background is a subshell, and $! would be its pid.
  $IP netns exec kc $AGENT agent --interface wgc --nat-profile routeros --metrics-listen none \
    --state-dir /run/wgkeep -v >/tmp/agent.log 2>&1 &
  apid=$!
  if wait_log /tmp/agent.log attached "$apid"; then
    check agent-attached PASS "$(grep -m1 attached /tmp/agent.log)"
  else
    check agent-attached FAIL "no 'attached' line within 20 s"
  fi
  if handshake k; then
    if check_assured agent-assured k; then :; else evidence k /tmp/agent.log; fi
    info "k: after the follow-up: $(transfer k) (a keepalive is 32 B, an initiation 148 B)"
    ka=$(keepalive k)
    ping=$(idle_ping k)
    if [ "$ping" = ok ]; then
      check agent-inbound-after-idle PASS "server -> client ping at +$(secs $IDLE_PING_AT) s passed"
    else
      check agent-inbound-after-idle FAIL "server -> client ping at +$(secs $IDLE_PING_AT) s lost; entry $(ct_entry k)"
      evidence k /tmp/agent.log
    fi
    ka2=$(keepalive k)
    if [ "$ka" = 150 ] && [ "$ka2" = 150 ]; then
      check agent-keepalive-unchanged PASS "PersistentKeepalive $ka at +5 s, $ka2 after the idle ping"
    else
      check agent-keepalive-unchanged FAIL "PersistentKeepalive $ka at +5 s, $ka2 after the idle ping (want 150)"
    fi
  else
    check agent-handshake FAIL "no handshake in lab k"
  fi
  stop_agent "$apid"
  rc=$AGENT_RC
  ka=$(keepalive k)
  if [ "$rc" = 0 ] && [ "$ka" = 150 ]; then
    check agent-sigterm PASS "exit status $rc, PersistentKeepalive $ka"
  else
    check agent-sigterm FAIL "exit status $rc, PersistentKeepalive $ka (want 0 and 150)"
  fi
  echo "---- agent log (follow-up mode) ----"
  cat /tmp/agent.log
  echo "---- end of agent log ----"

  # adapt mode: 150 -> floor(0.8 * 180) = 144 over netlink, back on SIGTERM.
  info "k: adapt agent starts $(hs_age k) s after the latest handshake; $(transfer k)"
  $IP netns exec kc $AGENT agent --interface wgc --nat-profile routeros --metrics-listen none \
    --state-dir /run/wgkeep --mode adapt -v >/tmp/adapt.log 2>&1 &
  apid=$!
  start=$(now_cs)
  while :; do
    ka=$(keepalive k)
    [ "$ka" = 144 ] && break
    if [ $(($(now_cs) - start)) -gt 1500 ] || ! running "$apid"; then break; fi
    sleep 0.2
  done
  if [ "$ka" = 144 ]; then
    check adapt-set PASS "PersistentKeepalive 150 -> 144 after $(secs $(($(now_cs) - start))) s"
  else
    check adapt-set FAIL "PersistentKeepalive is $ka $(secs $(($(now_cs) - start))) s after start (want 144)"
  fi
  stop_agent "$apid"
  rc=$AGENT_RC
  ka=$(keepalive k)
  if [ "$rc" = 0 ] && [ "$ka" = 150 ]; then
    check adapt-restored PASS "exit status $rc, PersistentKeepalive $ka"
  else
    check adapt-restored FAIL "exit status $rc, PersistentKeepalive $ka (want 0 and 150)"
  fi
  echo "---- agent log (adapt mode) ----"
  cat /tmp/adapt.log
  echo "---- end of agent log ----"
else
  check agent-setup FAIL "lab k could not be built"
  evidence k
fi

# ---- n: the control, without the agent ----
if mklab n && handshake n; then
  sleep_until $((T0 + 450))
  set -- $(ct_entry n)
  el=$(secs $(($(now_cs) - T0)))
  if [ "$2" = SHORT ] && [ "$1" -lt 11 ]; then
    check control-short PASS "entry at +$el s: $1 s left, not assured"
  else
    check control-short FAIL "entry at +$el s: $1 s left, ${2:-?} (want not assured, < 11 s)"
    evidence n
  fi
  ping=$(idle_ping n)
  if [ "$ping" = lost ]; then
    check control-inbound-after-idle PASS "server -> client ping at +$(secs $IDLE_PING_AT) s lost, as expected"
  else
    check control-inbound-after-idle FAIL "server -> client ping at +$(secs $IDLE_PING_AT) s passed without wgkeep"
    evidence n
  fi
else
  check control-setup FAIL "lab n could not be built or did not handshake"
  evidence n
fi

info "failures=$failures"
exit "$failures"
