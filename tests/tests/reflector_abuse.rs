//! Abuse of `wgkeep reflect` from the network: the real binary, on a real UDP socket, attacked
//! from other network namespaces through a real (non-NAT) router.
//!
//! The reflector is meant to run on the public internet, where anyone can send it anything and
//! forge any source address (no BCP 38). Its rules (docs/probe-protocol.md, "The reflector's
//! rules") say that it must not become a tool against third parties and must not be exhaustible.
//! The sans-IO unit tests in `probe/src/reflector.rs` check those rules in virtual time; these
//! tests check that they survive the driver, the kernel and real packets:
//!
//! 1. [`spoofed_source_cannot_get_a_check_scheduled`]: an attacker with a raw socket forges UDP
//!    packets with the victim's source address: CookieRequests, Inits carrying the attacker's own
//!    (legitimately obtained) cookie or a guessed one, Schedules, Follows. The victim never gets a
//!    Check, gets no more bytes than were forged toward the reflector, and the reflector keeps no
//!    state for the victim. A positive control (the attacker's own question, scheduled from its
//!    own address, does get its Check) shows the setup could have delivered one.
//! 2. [`flood_from_thousands_of_ports_stays_bounded`]: ~4000 UDP sockets of one host send a mix
//!    of junk, bad MACs, CookieRequests, Inits with a valid cookie, Follows and Schedules (absurd,
//!    short and maximal delays) for 10 s. The reflector sends fewer bytes than it receives
//!    (by its metrics, and per source IP by nftables counters on the attacker), no reply is larger
//!    than its request, questions stay under the per-IP cap, the flood is one source record, and
//!    the reflector's memory (VmRSS, VmHWM) grows by less than 32 MiB. It keeps answering.
//! 3. [`wrong_psk_gets_nothing`]: a reflector with `--psk-file` answers nothing (not a byte within
//!    2 s) to well-formed packets keyed with another PSK or with the public key, and counts them
//!    as `bad_mac`; the right PSK gets an answer (positive control).
//!
//! ```text
//!  attacker ns             router ns (ip_forward, rp_filter 0:             server ns
//!  eth0 192.0.2.2/24  ── att0 192.0.2.1     forwards forged sources) ── srv0 203.0.113.1
//!                          vic0 198.51.100.1                              eth0 203.0.113.2/24
//!  victim ns                  │                                           wgkeep reflect :51900
//!  eth0 198.51.100.2/24  ─────┘                                           metrics 127.0.0.1:9589
//! ```
//!
//! Each test builds its own namespaces (`wka<pid>x<n><r|a|v|s>`) and deletes them on drop, also
//! when an assertion fails (then the reflector's log is printed); namespaces left by a killed run
//! are removed by the next one. Needs root (skipped loudly otherwise, a failure under `CI=true`).
//! The three tests take about 15 s in parallel (20 s with `--test-threads=1`), most of it the
//! flood's 10 s; the reflector binary is built once (`wgkeep_tests::wgkeep_bin`).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::{Rng, RngCore};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use wgkeep_probe::wire::{self, AckStatus, Key, Message, MessageType, COOKIE_LEN};
use wgkeep_tests::{
    exec_in, exec_in_with_stdin, http_get_in, parse_prometheus_text, require_root, run_in_netns,
    send_signal, spawn_in, udp_socket_in, wgkeep_bin, Sample,
};

const ATTACKER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const VICTIM_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const REFLECTOR_PORT: u16 = 51900;
const METRICS_PORT: u16 = 9589;
/// Where the victim listens, and the source port the attacker forges.
const VICTIM_PORT: u16 = 40000;
/// IPv4 (no options) + UDP headers: nftables counts them, the reflector's metrics do not.
const UDP_OVERHEAD: u64 = 28;
/// The reflector's default `max_questions_per_ip`.
const MAX_QUESTIONS_PER_IP: u64 = 1024;
/// The largest reply the reflector ever sends (a Response).
const MAX_REPLY_LEN: usize = 92;

fn reflector_addr() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(SERVER_IP, REFLECTOR_PORT))
}

fn any_port() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)
}

// ---------------------------------------------------------------------------------------------
// The network: attacker, victim and server around a plain router.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Host {
    Attacker,
    Victim,
    Server,
}

const NS_PREFIX: &str = "wka";
static NET_COUNTER: AtomicU32 = AtomicU32::new(0);
/// `ip netns add` mounts /run/netns on first use; concurrent first uses can race.
static SETUP_LOCK: Mutex<()> = Mutex::new(());

/// Four fresh namespaces: a router forwarding between attacker, victim and server, with reverse
/// path filtering off (the internet without BCP 38). Deleted on drop, with whatever still runs
/// in them.
#[derive(Debug)]
struct Internet {
    router: String,
    attacker: String,
    victim: String,
    server: String,
    created: Vec<String>,
}

impl Internet {
    fn new(name: &str) -> Internet {
        let _guard = SETUP_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        remove_stale_namespaces();
        let n = NET_COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("{NS_PREFIX}{}x{n}", std::process::id());
        let mut net = Internet {
            router: format!("{base}r"),
            attacker: format!("{base}a"),
            victim: format!("{base}v"),
            server: format!("{base}s"),
            created: Vec::new(),
        };
        if let Err(e) = net.setup() {
            // `net` is dropped while unwinding: what was created is deleted.
            panic!("[{name}] building the namespaces: {e:#}");
        }
        net
    }

    fn setup(&mut self) -> anyhow::Result<()> {
        for ns in [
            self.router.clone(),
            self.attacker.clone(),
            self.victim.clone(),
            self.server.clone(),
        ] {
            run_host(&["ip", "netns", "add", &ns])?;
            self.created.push(ns.clone());
            run_host(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        let router = self.router.clone();
        // Before the veths exist, so that they inherit `default`; the effective rp_filter is
        // the maximum of `all` and the interface's.
        for kv in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ] {
            sysctl(&router, kv)?;
        }
        for (host, router_if, ip) in [
            (Host::Attacker, "att0", ATTACKER_IP),
            (Host::Victim, "vic0", VICTIM_IP),
            (Host::Server, "srv0", SERVER_IP),
        ] {
            let ns = self.ns(host).to_owned();
            let [a, b, c, _] = ip.octets();
            let gw = Ipv4Addr::new(a, b, c, 1).to_string();
            run_host(&[
                "ip", "-n", &router, "link", "add", router_if, "type", "veth", "peer", "name",
                "eth0", "netns", &ns,
            ])?;
            run_host(&[
                "ip",
                "-n",
                &router,
                "addr",
                "add",
                &format!("{gw}/24"),
                "dev",
                router_if,
            ])?;
            run_host(&["ip", "-n", &router, "link", "set", router_if, "up"])?;
            sysctl(&router, &format!("net.ipv4.conf.{router_if}.rp_filter=0"))?;
            run_host(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ])?;
            run_host(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run_host(&["ip", "-n", &ns, "route", "add", "default", "via", &gw])?;
        }
        Ok(())
    }

    fn ns(&self, host: Host) -> &str {
        match host {
            Host::Attacker => &self.attacker,
            Host::Victim => &self.victim,
            Host::Server => &self.server,
        }
    }

    /// Loads an nftables ruleset into `host`.
    fn nft(&self, host: Host, ruleset: &str) {
        let out = exec_in_with_stdin(self.ns(host), &["nft", "-f", "-"], Some(ruleset.as_bytes()))
            .unwrap_or_else(|e| panic!("nft in {host:?}: {e}"));
        assert!(
            out.status.success(),
            "nft -f - in {host:?}: {}\n{ruleset}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The named nftables counters of `host`.
    fn counters(&self, host: Host) -> BTreeMap<String, Counter> {
        let out = exec_in(self.ns(host), &["nft", "list", "counters"])
            .unwrap_or_else(|e| panic!("nft list counters in {host:?}: {e}"));
        assert!(out.status.success(), "nft list counters in {host:?}");
        parse_nft_counters(&String::from_utf8_lossy(&out.stdout))
    }

    fn counter(&self, host: Host, name: &str) -> Counter {
        let all = self.counters(host);
        *all.get(name)
            .unwrap_or_else(|| panic!("no nft counter {name} in {host:?}: {all:?}"))
    }

    /// A UDP socket bound in `host`.
    fn udp(&self, host: Host, bind: SocketAddrV4) -> UdpSocket {
        udp_socket_in(self.ns(host), bind)
            .unwrap_or_else(|e| panic!("bind {bind} in {host:?}: {e}"))
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        // Whatever still runs in our namespaces was started by this test.
        kill_all_in(&self.created);
        for ns in self.created.drain(..).rev() {
            if let Err(e) = run_host(&["ip", "netns", "del", &ns]) {
                eprintln!("warning: could not delete network namespace {ns}: {e:#}");
            }
        }
    }
}

fn pids_in(ns: &str) -> Vec<u32> {
    run_host(&["ip", "netns", "pids", ns])
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGTERM, then SIGKILL, to every process in `namespaces`.
fn kill_all_in(namespaces: &[String]) {
    for round in 0..30 {
        let pids: Vec<u32> = namespaces.iter().flat_map(|ns| pids_in(ns)).collect();
        if pids.is_empty() {
            return;
        }
        let sig = if round < 10 {
            libc::SIGTERM
        } else {
            libc::SIGKILL
        };
        for pid in pids {
            let _ = send_signal(pid, sig);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Deletes namespaces named like ours (`wka<pid>x<n><r|a|v|s>`) whose test process is gone, and
/// the reflectors left running in them.
fn remove_stale_namespaces() {
    let Ok(dir) = fs::read_dir("/var/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = stale_owner(&name) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            kill_all_in(std::slice::from_ref(&name));
            let _ = run_host(&["ip", "netns", "del", &name]);
        }
    }
}

fn stale_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NS_PREFIX)?;
    let (pid, tail) = rest.split_once('x')?;
    let (n, role) = tail.split_at(tail.len().checked_sub(1)?);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(n) || !matches!(role, "r" | "a" | "v" | "s") {
        return None;
    }
    pid.parse().ok()
}

fn run_host(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {args:?}: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sysctl(ns: &str, kv: &str) -> anyhow::Result<()> {
    let out = exec_in(ns, &["sysctl", "-qw", kv])?;
    if !out.status.success() {
        anyhow::bail!(
            "sysctl -w {kv} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// An nftables counter: packets and bytes at layer 3 (IP headers included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counter {
    packets: u64,
    bytes: u64,
}

impl Counter {
    /// The UDP payload bytes, for a counter that only matches UDP without IP options.
    fn payload(&self) -> u64 {
        self.bytes - UDP_OVERHEAD * self.packets
    }
}

/// `nft list counters`: `counter NAME {` followed by `packets N bytes M`.
fn parse_nft_counters(text: &str) -> BTreeMap<String, Counter> {
    let mut out = BTreeMap::new();
    let mut name: Option<String> = None;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["counter", n, "{"] => name = Some(n.trim_matches('"').to_owned()),
            ["packets", p, "bytes", b, ..] => {
                if let (Some(n), Ok(packets), Ok(bytes)) = (name.take(), p.parse(), b.parse()) {
                    out.insert(n, Counter { packets, bytes });
                }
            }
            _ => {}
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The reflector under test.

/// A running `wgkeep reflect` in the server namespace; SIGTERM (then SIGKILL) on drop, and its
/// log printed if the test is failing.
#[derive(Debug)]
struct Reflector {
    child: Option<Child>,
    server_ns: String,
    log_path: PathBuf,
    name: &'static str,
}

impl Reflector {
    fn start(net: &Internet, name: &'static str, psk_file: Option<&Path>) -> Reflector {
        let log_path =
            std::env::temp_dir().join(format!("wgkeep-abuse-{}-{name}.log", std::process::id()));
        let log = File::create(&log_path).unwrap();
        let mut cmd = Command::new(wgkeep_bin());
        cmd.args(["reflect", "--listen", &reflector_addr().to_string()])
            .args(["--metrics-listen", &format!("127.0.0.1:{METRICS_PORT}")]);
        if let Some(psk) = psk_file {
            cmd.arg("--psk-file").arg(psk);
        }
        cmd.env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = spawn_in(net.ns(Host::Server), &mut cmd)
            .unwrap_or_else(|e| panic!("[{name}] cannot start wgkeep reflect: {e}"));
        let mut r = Reflector {
            child: Some(child),
            server_ns: net.ns(Host::Server).to_owned(),
            log_path,
            name,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !(r.udp_bound() && r.try_scrape().is_ok()) {
            r.assert_running();
            assert!(
                Instant::now() < deadline,
                "[{name}] the reflector is not ready after 15 s\n{}",
                r.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "[{name}] wgkeep reflect (pid {}) on {}",
            r.pid(),
            reflector_addr()
        );
        r
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn log(&self) -> String {
        format!(
            "---- reflector log ({}) ----\n{}",
            self.name,
            fs::read_to_string(&self.log_path).unwrap_or_default()
        )
    }

    fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("running");
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "[{}] the reflector exited: {status}\n{}",
                self.name,
                self.log()
            );
        }
    }

    /// Whether the reflector's UDP socket is bound (its namespace's /proc/PID/net/udp).
    fn udp_bound(&self) -> bool {
        let port = format!(":{REFLECTOR_PORT:04X}");
        fs::read_to_string(format!("/proc/{}/net/udp", self.pid()))
            .map(|t| {
                t.lines()
                    .filter_map(|l| l.split_whitespace().nth(1))
                    .any(|local| local.ends_with(&port))
            })
            .unwrap_or(false)
    }

    fn try_scrape(&self) -> anyhow::Result<Metrics> {
        let addr = SocketAddr::from(([127, 0, 0, 1], METRICS_PORT));
        let (status, body) =
            http_get_in(&self.server_ns, addr, "/metrics", Duration::from_secs(5))?;
        anyhow::ensure!(status == 200, "GET /metrics: {status} {body}");
        Ok(Metrics {
            samples: parse_prometheus_text(&body),
        })
    }

    fn scrape(&self) -> Metrics {
        self.try_scrape()
            .unwrap_or_else(|e| panic!("[{}] GET /metrics: {e:#}\n{}", self.name, self.log()))
    }

    /// Scrapes until `received_packets_total` stops moving (the socket's queue is drained).
    fn scrape_settled(&self) -> Metrics {
        let mut last = self.scrape();
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(200));
            let now = self.scrape();
            if now.get("received_packets_total") == last.get("received_packets_total") {
                return now;
            }
            last = now;
        }
        last
    }

    /// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
    fn status_kib(&self, field: &str) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.pid()))
    }
}

impl Drop for Reflector {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log());
        }
        if let Some(mut child) = self.child.take() {
            let _ = send_signal(child.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_file(&self.log_path);
    }
}

/// The reflector's `/metrics`.
#[derive(Debug)]
struct Metrics {
    samples: Vec<Sample>,
}

impl Metrics {
    /// `wgkeep_reflector_<name>` (without labels).
    fn get(&self, name: &str) -> u64 {
        let full = format!("wgkeep_reflector_{name}");
        self.samples
            .iter()
            .find(|s| s.name == full && s.labels.is_empty())
            .map(|s| s.value as u64)
            .unwrap_or_else(|| panic!("no {full} in /metrics"))
    }

    /// `wgkeep_reflector_dropped_total{reason}`.
    fn dropped(&self, reason: &str) -> u64 {
        self.samples
            .iter()
            .find(|s| {
                s.name == "wgkeep_reflector_dropped_total" && s.has_labels(&[("reason", reason)])
            })
            .map(|s| s.value as u64)
            .unwrap_or_else(|| panic!("no dropped_total{{reason={reason:?}}} in /metrics"))
    }

    fn summary(&self) -> String {
        let mut s = String::new();
        for sample in &self.samples {
            if let Some(name) = sample.name.strip_prefix("wgkeep_reflector_") {
                match sample.labels.get("reason") {
                    Some(_) if sample.value == 0.0 => {}
                    Some(reason) => s += &format!(" dropped[{reason}]={}", sample.value),
                    None => s += &format!(" {name}={}", sample.value),
                }
            }
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Packets.

/// A raw IPv4 socket (IPPROTO_RAW: we write the IP header, source address included) in `ns`.
fn raw_socket_in(ns: &str) -> Socket {
    run_in_netns(ns, || {
        Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )
    })
    .and_then(|r| r)
    .unwrap_or_else(|e| panic!("raw socket in {ns}: {e}"))
}

fn checksum_add(mut sum: u64, data: &[u8]) -> u64 {
    for pair in data.chunks(2) {
        sum += u64::from(u16::from_be_bytes([
            pair[0],
            pair.get(1).copied().unwrap_or(0),
        ]));
    }
    sum
}

fn checksum_fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 + UDP datagram from `src` to `dst`, checksums included, whatever `src` is.
fn ipv4_udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&rand::thread_rng().gen::<u16>().to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.ip().octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let ip_sum = checksum_fold(checksum_add(0, &p[..20]));
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p[20..22].copy_from_slice(&src.port().to_be_bytes());
    p[22..24].copy_from_slice(&dst.port().to_be_bytes());
    p[24..26].copy_from_slice(&(udp_len as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src.ip().octets());
    pseudo[4..8].copy_from_slice(&dst.ip().octets());
    pseudo[9] = 17;
    pseudo[10..12].copy_from_slice(&(udp_len as u16).to_be_bytes());
    let udp_sum = match checksum_fold(checksum_add(checksum_add(0, &pseudo), &p[20..])) {
        0 => 0xffff,
        s => s,
    };
    p[26..28].copy_from_slice(&udp_sum.to_be_bytes());
    p
}

/// Bytes and packets sent, by some party, as UDP payload.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    packets: u64,
    bytes: u64,
}

impl Tally {
    fn add(&mut self, len: usize) {
        self.packets += 1;
        self.bytes += len as u64;
    }
}

/// Sends `payload` from the forged `src` to the reflector; returns the payload length.
fn send_forged(raw: &Socket, src: SocketAddrV4, payload: &[u8]) -> usize {
    let dst = SocketAddrV4::new(SERVER_IP, REFLECTOR_PORT);
    let packet = ipv4_udp(src, dst, payload);
    let sent = raw
        .send_to(&packet, &SockAddr::from(SocketAddrV4::new(SERVER_IP, 0)))
        .unwrap_or_else(|e| panic!("raw send_to: {e}"));
    assert_eq!(sent, packet.len());
    payload.len()
}

/// Sends `msg` and waits (retransmitting up to 4 times, 500 ms apart) for an answer `want`
/// accepts. Other datagrams are skipped.
fn exchange(
    sock: &UdpSocket,
    key: &Key,
    msg: Message,
    want: impl Fn(&Message) -> bool,
) -> Option<Message> {
    sock.set_nonblocking(false).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 2048];
    for _ in 0..4 {
        sock.send_to(&msg.to_vec(key), reflector_addr()).unwrap();
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            match sock.recv_from(&mut buf) {
                Ok((n, _)) => {
                    if let Ok(m) = wire::decode(&buf[..n], key) {
                        if want(&m) {
                            return Some(m);
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => panic!("recv_from: {e}"),
            }
        }
    }
    None
}

/// A cookie for the socket's IP address, asked for with a CookieRequest.
fn cookie_for(sock: &UdpSocket, key: &Key) -> [u8; COOKIE_LEN] {
    let nonce: u64 = rand::thread_rng().gen();
    match exchange(
        sock,
        key,
        Message::CookieRequest { nonce },
        |m| matches!(m, Message::CookieReply { nonce: n, .. } if *n == nonce),
    ) {
        Some(Message::CookieReply { cookie, .. }) => cookie,
        other => panic!("no CookieReply from the reflector: {other:?}"),
    }
}

/// Every datagram waiting on a non-blocking socket.
fn drain(sock: &UdpSocket, out: &mut Vec<Vec<u8>>) {
    let mut buf = [0u8; 2048];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => out.push(buf[..n].to_vec()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            // An ICMP error from an earlier send; nothing was received.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => panic!("recv_from: {e}"),
        }
    }
}

fn describe(datagrams: &[Vec<u8>], key: &Key) -> Vec<String> {
    datagrams
        .iter()
        .map(|d| match wire::decode(d, key) {
            Ok(m) => format!("{} B {m:?}", d.len()),
            Err(e) => format!("{} B undecodable ({e})", d.len()),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Spoofing.

/// From the attacker, forged with the victim's address: CookieRequests (whose replies go to the
/// victim), Inits carrying the attacker's own valid cookie or a guessed one, Schedules for them
/// and for the attacker's real question, Follows for that question. None of it may make the
/// reflector send the victim a Check, more bytes than were forged, or keep state for it.
#[test]
fn spoofed_source_cannot_get_a_check_scheduled() {
    const NAME: &str = "spoof";
    if !require_root("reflector_abuse::spoofed_source_cannot_get_a_check_scheduled") {
        return;
    }
    /// Rounds of six forged packets.
    const ROUNDS: u32 = 20;
    const FORGED_CHECK_MS: u32 = 300;
    let net = Internet::new(NAME);
    let mut refl = Reflector::start(&net, NAME, None);
    let key = Key::public();
    net.nft(
        Host::Victim,
        &format!(
            "table inet wka {{\n\
             \tcounter from_reflector {{ }}\n\
             \tcounter anything {{ }}\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\tip saddr {SERVER_IP} counter name \"from_reflector\"\n\
             \t\tiifname \"eth0\" counter name \"anything\"\n\
             \t}}\n\
             }}\n"
        ),
    );
    net.nft(
        Host::Attacker,
        &format!(
            "table inet wka {{\n\
             \tcounter forged {{ }}\n\
             \tchain output {{\n\
             \t\ttype filter hook output priority filter; policy accept;\n\
             \t\tip saddr {VICTIM_IP} ip daddr {SERVER_IP} udp dport {REFLECTOR_PORT} counter name \"forged\"\n\
             \t}}\n\
             }}\n"
        ),
    );
    let victim = net.udp(
        Host::Victim,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, VICTIM_PORT),
    );
    victim.set_nonblocking(true).unwrap();

    // The attacker's legitimate business from its own address: a cookie, and a question of its
    // own (not scheduled yet).
    let control = net.udp(Host::Attacker, any_port());
    let question = net.udp(Host::Attacker, any_port());
    let cookie = cookie_for(&control, &key);
    let mut rng = rand::thread_rng();
    let own_qid: u64 = rng.gen();
    exchange(
        &question,
        &key,
        Message::Init {
            qid: own_qid,
            cookie,
            reply: true,
        },
        |m| matches!(m, Message::Response { qid } if *qid == own_qid),
    )
    .expect("no Response to the attacker's own Init");

    // The forgery.
    let raw = raw_socket_in(net.ns(Host::Attacker));
    let from_victim = SocketAddrV4::new(VICTIM_IP, VICTIM_PORT);
    let mut guessed = [0u8; COOKIE_LEN];
    rng.fill_bytes(&mut guessed);
    let mut forged = Tally::default();
    for round in 0..ROUNDS {
        let qid: u64 = rng.gen();
        for msg in [
            Message::CookieRequest { nonce: rng.gen() },
            Message::Init {
                qid,
                cookie,
                reply: true,
            },
            Message::Schedule {
                qid,
                cookie,
                check_ms: FORGED_CHECK_MS,
                refresh_ms: FORGED_CHECK_MS / 2,
            },
            Message::Init {
                qid: rng.gen(),
                cookie: guessed,
                reply: true,
            },
            Message::Schedule {
                qid: own_qid,
                cookie,
                check_ms: FORGED_CHECK_MS,
                refresh_ms: 0,
            },
            Message::Follow {
                qid: own_qid,
                seq: round + 1,
            },
        ] {
            forged.add(send_forged(&raw, from_victim, &msg.to_vec(&key)));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Anything wrongly scheduled would have fired by now (and is caught below anyway: the
    // positive control ends with checks_sent == 1).
    std::thread::sleep(Duration::from_millis(1500));

    let mut got = Vec::new();
    drain(&victim, &mut got);
    let got_bytes: u64 = got.iter().map(|d| d.len() as u64).sum();
    let victim_ct = net.counter(Host::Victim, "from_reflector");
    let victim_any = net.counter(Host::Victim, "anything");
    let forged_ct = net.counter(Host::Attacker, "forged");
    let m = refl.scrape_settled();
    eprintln!(
        "[{NAME}] forged {} packets / {} B toward the reflector (nft: {forged_ct:?}); the victim's \
         socket got {} datagrams / {got_bytes} B (nft from the reflector: {victim_ct:?}, \
         anything: {victim_any:?})\n[{NAME}] metrics:{}",
        forged.packets,
        forged.bytes,
        got.len(),
        m.summary()
    );
    let seen = describe(&got, &key);
    assert_eq!(
        forged_ct.packets, forged.packets,
        "nftables saw another number of forged packets"
    );
    for d in &got {
        let msg = wire::decode(d, &key);
        assert!(
            matches!(
                msg,
                Ok(Message::CookieReply { .. })
                    | Ok(Message::Ack {
                        status: AckStatus::BadCookie,
                        ..
                    })
            ),
            "the victim got something else than cookie replies and BadCookie acks: {seen:#?}"
        );
    }
    assert!(
        !got.iter()
            .any(|d| d.get(3) == Some(&(MessageType::Check as u8))
                || d.get(3) == Some(&(MessageType::Refresh as u8))),
        "the victim got a Check or Refresh: {seen:#?}"
    );
    assert_eq!(
        victim_ct.packets,
        got.len() as u64,
        "the victim's socket and nftables disagree"
    );
    assert_eq!(
        victim_any, victim_ct,
        "the victim got packets from elsewhere than the reflector's UDP socket"
    );
    assert!(
        got_bytes <= forged.bytes,
        "amplification: the victim got {got_bytes} B for {} B forged",
        forged.bytes
    );
    assert!(
        victim_ct.bytes <= forged_ct.bytes && victim_ct.packets <= forged_ct.packets,
        "amplification at layer 3: victim {victim_ct:?}, forged {forged_ct:?}"
    );
    assert_eq!(m.get("checks_sent_total"), 0, "a Check was sent");
    // Two Inits and two Schedules per round carry a cookie that is not the victim's.
    assert_eq!(m.dropped("bad_cookie"), u64::from(4 * ROUNDS));
    assert_eq!(
        m.dropped("wrong_source"),
        u64::from(ROUNDS),
        "forged Follows"
    );
    assert_eq!(
        m.get("questions_pending"),
        1,
        "only the attacker's own question exists"
    );
    assert_eq!(
        m.get("sources_tracked"),
        1,
        "only the attacker's own address has a record: none for the victim"
    );
    assert!(
        m.get("received_packets_total") > forged.packets,
        "the reflector did not receive the forged packets"
    );
    assert!(m.get("sent_bytes_total") <= m.get("received_bytes_total"));

    // Positive control: the attacker's own question, scheduled from its own address with its own
    // cookie, gets its Check, at the attacker, not at the victim.
    question
        .send_to(
            &Message::Follow {
                qid: own_qid,
                seq: 100,
            }
            .to_vec(&key),
            reflector_addr(),
        )
        .unwrap();
    let ack = exchange(
        &control,
        &key,
        Message::Schedule {
            qid: own_qid,
            cookie,
            check_ms: 1500,
            refresh_ms: 0,
        },
        |m| matches!(m, Message::Ack { qid, .. } if *qid == own_qid),
    );
    assert!(
        matches!(
            ack,
            Some(Message::Ack {
                status: AckStatus::Scheduled,
                ..
            })
        ),
        "the attacker could not schedule its own question: {ack:?}"
    );
    // The Check (skipping anything else, e.g. a second Response had the Init been retransmitted).
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut seen_by_attacker = Vec::new();
    let mut buf = [0u8; 2048];
    let got_check = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break false;
        }
        question.set_read_timeout(Some(left)).unwrap();
        match question.recv_from(&mut buf) {
            Ok((n, _)) => match wire::decode(&buf[..n], &key) {
                Ok(Message::Check { qid, .. }) if qid == own_qid => break true,
                other => seen_by_attacker.push(format!("{other:?}")),
            },
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break false
            }
            Err(e) => panic!("recv_from: {e}"),
        }
    };
    assert!(
        got_check,
        "positive control: no Check for the attacker's own question within 6 s (got \
         {seen_by_attacker:?})"
    );
    let mut late = Vec::new();
    drain(&victim, &mut late);
    let m = refl.scrape();
    assert!(
        late.iter()
            .all(|d| wire::decode(d, &key).is_ok_and(|m| m.msg_type() != MessageType::Check)),
        "the victim got a Check late: {:#?}",
        describe(&late, &key)
    );
    assert_eq!(m.get("checks_sent_total"), 1, "{}", m.summary());
    refl.assert_running();
}

// ---------------------------------------------------------------------------------------------
// 2. Flood.

/// The soft limit on open files.
fn nofile_limit() -> u64 {
    fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(1024)
}

/// What the flooding host sent, by kind, and received, by type.
#[derive(Debug, Default)]
struct FloodLog {
    sent: Tally,
    send_errors: u64,
    junk: u64,
    bad_mac: u64,
    cookie_requests: u64,
    inits: u64,
    follows: u64,
    absurd_schedules: u64,
    short_schedules: u64,
    max_schedules: u64,
    received: Tally,
    received_by_type: BTreeMap<String, u64>,
    largest_reply: usize,
    undecodable: u64,
}

impl FloodLog {
    fn schedules(&self) -> u64 {
        self.absurd_schedules + self.short_schedules + self.max_schedules
    }

    fn received(&self, ty: MessageType) -> u64 {
        self.received_by_type.get(ty.as_str()).copied().unwrap_or(0)
    }

    fn take_in(&mut self, datagrams: &mut Vec<Vec<u8>>, key: &Key) {
        for d in datagrams.drain(..) {
            self.received.add(d.len());
            self.largest_reply = self.largest_reply.max(d.len());
            match wire::decode(&d, key) {
                Ok(m) => {
                    *self
                        .received_by_type
                        .entry(m.msg_type().as_str().to_owned())
                        .or_default() += 1
                }
                Err(_) => self.undecodable += 1,
            }
        }
    }
}

/// From ~4000 sockets of one host, for 10 s: junk, bad MACs, CookieRequests, Inits with a valid
/// cookie, Follows, Schedules with absurd, short and maximal delays. Bytes out ≤ bytes in (by
/// the reflector's metrics, and per source IP by nftables on the attacker), no reply larger than
/// its request, questions under the per-IP cap, one source record, bounded memory, still alive.
#[test]
fn flood_from_thousands_of_ports_stays_bounded() {
    const NAME: &str = "flood";
    if !require_root("reflector_abuse::flood_from_thousands_of_ports_stays_bounded") {
        return;
    }
    const WANT_SOCKETS: u64 = 4000;
    const FLOOD: Duration = Duration::from_secs(10);
    /// Paced so that a 2-core machine shared with other tests stays usable; far above the
    /// reflector's per-source limit of 2000 packets/s.
    const TARGET_PPS: f64 = 40_000.0;
    const MAX_GROWTH_KIB: u64 = 32 * 1024;
    let net = Internet::new(NAME);
    let mut refl = Reflector::start(&net, NAME, None);
    let key = Key::public();
    net.nft(
        Host::Attacker,
        &format!(
            "table inet wka {{\n\
             \tcounter to_reflector {{ }}\n\
             \tcounter from_reflector {{ }}\n\
             \tcounter from_server_other {{ }}\n\
             \tchain output {{\n\
             \t\ttype filter hook output priority filter; policy accept;\n\
             \t\tip daddr {SERVER_IP} udp dport {REFLECTOR_PORT} counter name \"to_reflector\"\n\
             \t}}\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\tip saddr {SERVER_IP} udp sport {REFLECTOR_PORT} counter name \"from_reflector\" accept\n\
             \t\tip saddr {SERVER_IP} counter name \"from_server_other\"\n\
             \t}}\n\
             }}\n"
        ),
    );
    let n_sockets = WANT_SOCKETS.min(nofile_limit().saturating_sub(256)) as usize;
    if (n_sockets as u64) < WANT_SOCKETS {
        eprintln!(
            "[{NAME}] note: the open-files limit allows only {n_sockets} sockets (raise `ulimit -n` \
             for {WANT_SOCKETS})"
        );
    }
    assert!(n_sockets >= 500, "too few file descriptors for a flood");
    let sockets: Vec<UdpSocket> = run_in_netns(net.ns(Host::Attacker), || {
        (0..n_sockets)
            .map(|_| {
                let s = UdpSocket::bind(any_port())?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .collect::<io::Result<Vec<_>>>()
    })
    .and_then(|r| r)
    .unwrap_or_else(|e| panic!("opening {n_sockets} sockets: {e}"));
    let control = net.udp(Host::Attacker, any_port());
    let cookie = cookie_for(&control, &key);

    std::thread::sleep(Duration::from_millis(200));
    let rss_before = refl.status_kib("VmRSS");
    let hwm_before = refl.status_kib("VmHWM");
    let mut log = FloodLog::default();
    let mut rng = rand::thread_rng();
    // Recent questions: (qid, socket index), for Follows and Schedules.
    const RECENT: usize = 4096;
    let mut recent: Vec<(u64, usize)> = Vec::with_capacity(RECENT);
    let mut inbox = Vec::new();
    let dst = reflector_addr();
    let start = Instant::now();
    let mut last_drain = start;
    let mut i: u64 = 0;
    while start.elapsed() < FLOOD {
        // Pace: at most TARGET_PPS on average.
        if i as f64 > start.elapsed().as_secs_f64() * TARGET_PPS {
            std::thread::sleep(Duration::from_micros(500));
        } else {
            for _ in 0..64 {
                let s = (i as usize) % sockets.len();
                let payload = match i % 10 {
                    0 => {
                        log.junk += 1;
                        // Empty, short, and now and then larger than the reflector's 2048-byte buffer.
                        let len = if rng.gen_ratio(1, 50) {
                            rng.gen_range(2049..=4000)
                        } else {
                            rng.gen_range(0..=200)
                        };
                        let mut junk = vec![0u8; len];
                        rng.fill_bytes(&mut junk);
                        if rng.gen_bool(0.5) && junk.len() >= 4 {
                            // Looks like ours up to the type.
                            junk[..4].copy_from_slice(&[b'w', b'k', 1, rng.gen_range(1..=9)]);
                        }
                        junk
                    }
                    1 => {
                        log.bad_mac += 1;
                        let mut p = Message::Init {
                            qid: rng.gen(),
                            cookie,
                            reply: true,
                        }
                        .to_vec(&key);
                        let last = p.len() - 1;
                        p[last] ^= 1;
                        p
                    }
                    2 | 3 => {
                        log.cookie_requests += 1;
                        Message::CookieRequest { nonce: rng.gen() }.to_vec(&key)
                    }
                    4 | 5 => {
                        log.inits += 1;
                        let qid = rng.gen();
                        if recent.len() == RECENT {
                            recent.swap_remove(rng.gen_range(0..recent.len()));
                        }
                        recent.push((qid, s));
                        Message::Init {
                            qid,
                            cookie,
                            reply: true,
                        }
                        .to_vec(&key)
                    }
                    6 => {
                        log.follows += 1;
                        let (qid, owner) = recent
                            .get(rng.gen_range(0..recent.len().max(1)))
                            .copied()
                            .unwrap_or((rng.gen(), s));
                        // Half from the question's own socket, half from another port.
                        let from = if rng.gen_bool(0.5) { owner } else { s };
                        let p = Message::Follow {
                            qid,
                            seq: rng.gen(),
                        }
                        .to_vec(&key);
                        match sockets[from].send_to(&p, dst) {
                            Ok(n) => log.sent.add(n),
                            Err(_) => log.send_errors += 1,
                        }
                        i += 1;
                        continue;
                    }
                    k => {
                        let qid = recent
                            .get(rng.gen_range(0..recent.len().max(1)))
                            .map_or_else(|| rng.gen(), |&(q, _)| q);
                        let (check_ms, refresh_ms) = match k {
                            7 => {
                                log.absurd_schedules += 1;
                                [
                                    (0, 0),
                                    (u32::MAX, 0),
                                    (3_600_001, 0),
                                    (86_400_000, 1),
                                    (1000, 1000),
                                    (1000, u32::MAX),
                                ][rng.gen_range(0..6)]
                            }
                            8 => {
                                log.short_schedules += 1;
                                (rng.gen_range(200..3000), 0)
                            }
                            _ => {
                                log.max_schedules += 1;
                                // A Refresh, if any, long after the test.
                                let refresh = [0, rng.gen_range(60_000..3_600_000)];
                                (3_600_000, refresh[rng.gen_range(0..2)])
                            }
                        };
                        Message::Schedule {
                            qid,
                            cookie,
                            check_ms,
                            refresh_ms,
                        }
                        .to_vec(&key)
                    }
                };
                match sockets[s].send_to(&payload, dst) {
                    Ok(n) => log.sent.add(n),
                    Err(_) => log.send_errors += 1,
                }
                i += 1;
            }
        }
        if last_drain.elapsed() >= Duration::from_millis(100) {
            for s in &sockets {
                drain(s, &mut inbox);
            }
            log.take_in(&mut inbox, &key);
            last_drain = Instant::now();
        }
    }
    let flood_secs = start.elapsed().as_secs_f64();
    // Short Schedules fire up to 3 s after their question's last packet.
    let until = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < until {
        for s in &sockets {
            drain(s, &mut inbox);
        }
        log.take_in(&mut inbox, &key);
        std::thread::sleep(Duration::from_millis(100));
    }
    refl.assert_running();
    let m = refl.scrape_settled();
    let rss_after = refl.status_kib("VmRSS");
    let hwm_after = refl.status_kib("VmHWM");
    let to = net.counter(Host::Attacker, "to_reflector");
    let from = net.counter(Host::Attacker, "from_reflector");
    let other = net.counter(Host::Attacker, "from_server_other");
    eprintln!(
        "[{NAME}] {n_sockets} sockets, {:.1} s: sent {} packets / {} B ({:.0} packets/s, {} send \
         errors; junk {}, bad MAC {}, CookieRequests {}, Inits {}, Follows {}, Schedules absurd {} \
         short {} max {}); got back {} / {} B, by type {:?}, largest {} B, undecodable {}\n\
         [{NAME}] nft at the attacker: to the reflector {to:?}, from it {from:?}, other from the \
         server {other:?}\n[{NAME}] reflector VmRSS {rss_before} → {rss_after} KiB, VmHWM \
         {hwm_before} → {hwm_after} KiB\n[{NAME}] metrics:{}",
        flood_secs,
        log.sent.packets,
        log.sent.bytes,
        log.sent.packets as f64 / flood_secs,
        log.send_errors,
        log.junk,
        log.bad_mac,
        log.cookie_requests,
        log.inits,
        log.follows,
        log.absurd_schedules,
        log.short_schedules,
        log.max_schedules,
        log.received.packets,
        log.received.bytes,
        log.received_by_type,
        log.largest_reply,
        log.undecodable,
        m.summary()
    );

    // No amplification, as the reflector counts it...
    let (rx, tx) = (m.get("received_bytes_total"), m.get("sent_bytes_total"));
    assert!(tx <= rx, "the reflector sent {tx} B for {rx} B received");
    assert!(
        m.get("sent_packets_total") <= m.get("received_packets_total"),
        "{}",
        m.summary()
    );
    // ... and as the flooding IP sees it (all sockets share it: per source IP, sent ≤ received).
    assert!(
        from.payload() <= to.payload() && from.packets <= to.packets,
        "the attacker's IP got {from:?} for {to:?} (nft, IP headers included)"
    );
    assert!(
        log.received.bytes <= log.sent.bytes,
        "the attacker's sockets got {} B for {} B",
        log.received.bytes,
        log.sent.bytes
    );
    assert_eq!(other, Counter::default(), "other packets from the server");
    // Every reply is one the protocol allows, at most as large as a request of its kind.
    assert_eq!(log.undecodable, 0, "undecodable replies");
    assert!(
        log.largest_reply <= MAX_REPLY_LEN,
        "a {} B reply",
        log.largest_reply
    );
    assert!(
        log.received(MessageType::Response) <= log.inits,
        "more Responses than Inits"
    );
    assert!(
        log.received(MessageType::Ack) <= log.schedules(),
        "more Acks than Schedules"
    );
    assert!(
        log.received(MessageType::CookieReply) <= log.cookie_requests + 1,
        "more CookieReplies than CookieRequests"
    );
    assert!(
        log.received(MessageType::Check) <= log.short_schedules + log.max_schedules,
        "more Checks than Schedules"
    );
    assert_eq!(
        log.received(MessageType::Refresh),
        0,
        "a Refresh, none of which was due within the test"
    );
    // The flood was rate-limited and refused, and held no more state than the caps allow.
    assert!(m.dropped("rate_limited") > 0, "{}", m.summary());
    assert!(m.dropped("malformed") > 0 && m.dropped("bad_mac") > 0);
    assert!(m.dropped("bad_delay") > 0, "{}", m.summary());
    assert!(
        m.get("questions_pending") <= MAX_QUESTIONS_PER_IP,
        "{} questions from one IP",
        m.get("questions_pending")
    );
    assert_eq!(
        m.get("sources_tracked"),
        1,
        "thousands of ports of one IP are one source"
    );
    let growth = rss_after.saturating_sub(rss_before);
    // VmHWM is the peak since the start; above VmRSS before the flood, it is the flood's peak.
    let peak = hwm_after.saturating_sub(rss_before);
    assert!(
        growth < MAX_GROWTH_KIB,
        "VmRSS grew by {growth} KiB ({rss_before} → {rss_after})"
    );
    assert!(
        peak < MAX_GROWTH_KIB,
        "VmHWM reached {hwm_after} KiB from {rss_before} KiB before the flood"
    );
    // Still serving.
    let _ = cookie_for(&control, &key);
    refl.assert_running();
}

// ---------------------------------------------------------------------------------------------
// 3. Wrong PSK.

/// A directory removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A reflector with `--psk-file A` answers nothing to packets keyed with PSK B or the public key.
#[test]
fn wrong_psk_gets_nothing() {
    const NAME: &str = "psk";
    if !require_root("reflector_abuse::wrong_psk_gets_nothing") {
        return;
    }
    const SILENCE: Duration = Duration::from_secs(2);
    let dir =
        TempDir(std::env::temp_dir().join(format!("wgkeep-abuse-{}-psk", std::process::id())));
    let _ = fs::remove_dir_all(&dir.0);
    fs::create_dir_all(&dir.0).unwrap();
    let psk_a = "reflector-psk-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let psk_b = "someone-else-BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB=";
    let psk_file = dir.0.join("a.psk");
    fs::write(&psk_file, format!("{psk_a}\n")).unwrap();
    let key_a = Key::from_psk(psk_a.as_bytes()).unwrap();
    let key_b = Key::from_psk(psk_b.as_bytes()).unwrap();

    let net = Internet::new(NAME);
    let mut refl = Reflector::start(&net, NAME, Some(&psk_file));
    net.nft(
        Host::Attacker,
        &format!(
            "table inet wka {{\n\
             \tcounter from_server {{ }}\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\tip saddr {SERVER_IP} counter name \"from_server\"\n\
             \t}}\n\
             }}\n"
        ),
    );
    let client = net.udp(Host::Attacker, any_port());
    let question = net.udp(Host::Attacker, any_port());
    client.set_nonblocking(true).unwrap();
    question.set_nonblocking(true).unwrap();
    let mut rng = rand::thread_rng();
    let mut sent = Tally::default();
    for (label, key) in [("PSK B", &key_b), ("public key", &Key::public())] {
        for round in 0..5u32 {
            let qid: u64 = rng.gen();
            let mut cookie = [0u8; COOKIE_LEN];
            rng.fill_bytes(&mut cookie);
            let from_question = [
                Message::Init {
                    qid,
                    cookie,
                    reply: true,
                },
                Message::Follow {
                    qid,
                    seq: round + 1,
                },
            ];
            let from_client = [
                Message::CookieRequest { nonce: rng.gen() },
                Message::Schedule {
                    qid,
                    cookie,
                    check_ms: 500,
                    refresh_ms: 0,
                },
            ];
            for (sock, msgs) in [(&question, from_question), (&client, from_client)] {
                for msg in msgs {
                    let n = sock
                        .send_to(&msg.to_vec(key), reflector_addr())
                        .unwrap_or_else(|e| panic!("{label}: send_to: {e}"));
                    sent.add(n);
                }
            }
        }
    }
    std::thread::sleep(SILENCE);
    let mut got = Vec::new();
    drain(&client, &mut got);
    drain(&question, &mut got);
    let from_server = net.counter(Host::Attacker, "from_server");
    let m = refl.scrape_settled();
    eprintln!(
        "[{NAME}] sent {} packets / {} B keyed with PSK B and the public key; got {} datagrams \
         back (nft: {from_server:?})\n[{NAME}] metrics:{}",
        sent.packets,
        sent.bytes,
        got.len(),
        m.summary()
    );
    assert!(
        got.is_empty(),
        "a wrong key got answers: {:#?}",
        describe(&got, &key_a)
    );
    assert_eq!(
        from_server,
        Counter::default(),
        "the server sent the client something"
    );
    assert_eq!(m.get("sent_packets_total"), 0);
    assert_eq!(m.get("sent_bytes_total"), 0);
    assert_eq!(m.get("received_packets_total"), sent.packets);
    assert_eq!(m.dropped("bad_mac"), sent.packets, "every packet: bad MAC");
    assert_eq!(m.dropped("malformed"), 0);
    assert_eq!(m.get("sources_tracked"), 0);
    assert_eq!(m.get("questions_pending"), 0);

    // Positive control: the right PSK gets a cookie.
    let cookie = cookie_for(&client, &key_a);
    assert_ne!(cookie, [0; COOKIE_LEN]);
    let m = refl.scrape();
    assert_eq!(m.get("sent_packets_total"), 1, "{}", m.summary());
    refl.assert_running();
}
