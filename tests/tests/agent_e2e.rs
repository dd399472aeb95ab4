//! End to end: the `wgkeep agent` binary beside real wireguard-go (`wg-quick up` in the lab's
//! namespaces) through a real kernel NAT with RouterOS timeouts (10 s unreplied, 180 s stream).
//!
//! ```text
//!  client ns: wg-quick (wireguard-go)     router ns: masquerade,     server ns: wg-quick
//!  10.201.N.2/24, PersistentKeepalive 150  udp 10 s / stream 180 s    10.201.N.1/24, port 51820
//! ```
//!
//! Every test has its own lab and its own interface names (`/var/run/wireguard/*.sock` is shared
//! by all namespaces), so they run in parallel; they mostly sleep, so more threads than cores is
//! fine: `cargo test -p wgkeep-tests --test agent_e2e -- --test-threads=8` takes about as long
//! as the slowest test (~30 s; ~70 s with the default of one thread per core on two cores).
//! The agent binary is built once per run (`wgkeep_tests::wgkeep_bin`). Everything (agents, wireguard-go, namespaces, files) is removed
//! at the end, also when an assertion fails; then the agent's log, `wg show` and the router's
//! conntrack table are printed.
//!
//! The handshake: with PersistentKeepalive set, `wg-quick up` on the client starts it at once;
//! one client → server ping follows. Both end within [`GRACE_BUDGET`], well inside the NAT's 2 s
//! grace, so nothing but wgkeep can promote the entry afterwards (a later ping would do it by
//! itself). Agents are started, and given time to attach, before that.
//!
//! About the idle wait: after a handshake triggered by a ping, the client has received a data
//! packet (the echo reply) and sent nothing since, so wireguard-go sends a passive keepalive 10 s
//! later (KEEPALIVE_TIMEOUT). Without wgkeep that keepalive arrives just after the 10 s entry
//! expired and creates a fresh `[UNREPLIED]` entry, which lets server → client packets through for
//! another 10 s. The server → client ping therefore runs [`IDLE`] = 22 s after the handshake,
//! when the control (no agent) is certain to fail.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wgkeep_tests::{
    http_get_in, parse_prometheus_text, send_signal, wgkeep_bin, CtEntry, LabConfig, NetLab, Ns,
    Sample,
};

/// RouterOS 7: `udp-timeout` 10 s, `udp-stream-timeout` 3 min.
const UDP_TIMEOUT: u32 = 10;
const UDP_STREAM_TIMEOUT: u32 = 180;
const SERVER_PORT: u16 = 51820;
const CLIENT_KEEPALIVE: u32 = 150;
/// floor(0.8 × 180).
const ADAPTED_KEEPALIVE: u32 = 144;
/// `wg-quick up` of the client and its first ping must end this soon (the grace is 2 s).
const GRACE_BUDGET: Duration = Duration::from_millis(1700);
/// From the handshake to the server → client ping (see the module documentation).
const IDLE: Duration = Duration::from_secs(22);
/// The follow-up must have promoted the entry this soon after the handshake (2.5 s delay, 1 s
/// poll interval, some slack).
const FOLLOW_UP_WITHIN: Duration = Duration::from_secs(5);

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Polls `f` every 100 ms until it returns `Some`, or `timeout` passed.
fn wait_for<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    wgkeep_tests::wait_for_every(timeout, Duration::from_millis(100), f)
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `N` of `N% packet loss` in ping's summary.
fn packet_loss(out: &Output) -> Option<u32> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let before = stdout.split("% packet loss").next()?;
    before
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn host_ok(args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[derive(Clone, Debug)]
struct Keys {
    private: String,
    public: String,
}

fn keypair() -> Keys {
    let private = host_ok(&["wg", "genkey"], None);
    let public = host_ok(&["wg", "pubkey"], Some(&private));
    Keys { private, public }
}

/// Which WireGuard implementation `wg-quick` starts on the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Userspace {
    WireguardGo,
    Boringtun,
}

/// One end of the tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

impl Side {
    fn ns(self) -> Ns {
        match self {
            Side::Client => Ns::Client,
            Side::Server => Ns::Server,
        }
    }
}

/// A lab with a WireGuard tunnel configured (not yet up) on the client and the server. Drop takes
/// everything down; the lab itself (its namespaces) goes last.
struct Rig {
    name: &'static str,
    dir: PathBuf,
    client_if: String,
    server_if: String,
    client_keys: Keys,
    server_keys: Keys,
    subnet: u8,
    client_impl: Userspace,
    /// Declared last: dropped after the cleanup in `Drop for Rig`.
    lab: NetLab,
}

impl Rig {
    /// `tag`: two characters that make this test's interface names unique; `subnet`: the `N` of
    /// the tunnel's 10.201.N.0/24.
    fn new(name: &'static str, tag: &str, subnet: u8, client_impl: Userspace) -> Rig {
        assert_eq!(tag.len(), 2);
        let lab = NetLab::new(LabConfig::new(UDP_TIMEOUT, UDP_STREAM_TIMEOUT)).expect("lab");
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("wgkeep-e2e-{pid}-{name}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("state")).unwrap();
        let rig = Rig {
            name,
            client_if: format!("wk{tag}c{pid:x}"),
            server_if: format!("wk{tag}s{pid:x}"),
            client_keys: keypair(),
            server_keys: keypair(),
            dir,
            subnet,
            client_impl,
            lab,
        };
        assert!(rig.client_if.len() <= 15, "{}", rig.client_if);
        rig.write_configs();
        rig
    }

    fn write_configs(&self) {
        let n = self.subnet;
        let server = format!(
            "[Interface]\n\
             Address = 10.201.{n}.1/24\n\
             ListenPort = {SERVER_PORT}\n\
             PrivateKey = {}\n\
             \n\
             [Peer]\n\
             PublicKey = {}\n\
             AllowedIPs = 10.201.{n}.2/32\n",
            self.server_keys.private, self.client_keys.public
        );
        let client = format!(
            "[Interface]\n\
             Address = 10.201.{n}.2/24\n\
             PrivateKey = {}\n\
             \n\
             [Peer]\n\
             PublicKey = {}\n\
             AllowedIPs = 10.201.{n}.1/32\n\
             Endpoint = {}:{SERVER_PORT}\n\
             PersistentKeepalive = {CLIENT_KEEPALIVE}\n",
            self.client_keys.private,
            self.server_keys.public,
            self.lab.server_ip()
        );
        use std::os::unix::fs::OpenOptionsExt;
        for (side, body) in [(Side::Server, server), (Side::Client, client)] {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(self.conf(side))
                .unwrap();
            std::io::Write::write_all(&mut f, body.as_bytes()).unwrap();
        }
        if self.client_impl == Userspace::Boringtun {
            // wg-quick runs `$WG_QUICK_USERSPACE_IMPLEMENTATION NAME`: one word, so a wrapper.
            let wrapper = self.dir.join("boringtun-wrapper");
            let log = self.dir.join("boringtun.log");
            fs::write(
                &wrapper,
                format!(
                    "#!/bin/sh\nexec boringtun-cli --disable-drop-privileges --log {} \"$@\"\n",
                    log.display()
                ),
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    fn iface(&self, side: Side) -> &str {
        match side {
            Side::Client => &self.client_if,
            Side::Server => &self.server_if,
        }
    }

    fn conf(&self, side: Side) -> PathBuf {
        self.dir.join(format!("{}.conf", self.iface(side)))
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn tunnel_ip(&self, side: Side) -> String {
        match side {
            Side::Server => format!("10.201.{}.1", self.subnet),
            Side::Client => format!("10.201.{}.2", self.subnet),
        }
    }

    fn wg_quick(&self, side: Side, verb: &str) -> Output {
        let implementation = match (side, self.client_impl) {
            (Side::Client, Userspace::Boringtun) => {
                self.dir.join("boringtun-wrapper").display().to_string()
            }
            _ => "wireguard-go".to_owned(),
        };
        let conf = self.conf(side).display().to_string();
        let env_impl = format!("WG_QUICK_USERSPACE_IMPLEMENTATION={implementation}");
        // LOG_LEVEL would make wireguard-go's daemon keep our stdout/stderr pipes open.
        self.lab.exec(
            side.ns(),
            &[
                "env",
                "-u",
                "LOG_LEVEL",
                &env_impl,
                "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1",
                "wg-quick",
                verb,
                &conf,
            ],
        )
    }

    fn up(&self, side: Side) {
        let out = self.wg_quick(side, "up");
        assert!(
            out.status.success(),
            "{}: wg-quick up {} failed: {}",
            self.name,
            self.iface(side),
            text(&out)
        );
        let sock = socket_path(self.iface(side));
        assert!(
            wait_for(Duration::from_secs(3), || sock.exists().then_some(())).is_some(),
            "{} does not exist after wg-quick up",
            sock.display()
        );
    }

    fn down(&self, side: Side) {
        let out = self.wg_quick(side, "down");
        assert!(
            out.status.success(),
            "{}: wg-quick down {} failed: {}",
            self.name,
            self.iface(side),
            text(&out)
        );
    }

    /// `wg-quick up` on the client, which starts the handshake at once (PersistentKeepalive is
    /// set), then one ping from the client to the server's tunnel address. Returns the instant
    /// before `wg-quick up`: the handshake and the entry are younger.
    ///
    /// Both must end within the NAT's 2 s grace period: a later packet would promote the entry
    /// by itself and the tests could no longer tell whether wgkeep did.
    fn up_client_and_handshake(&self) -> Instant {
        let t0 = Instant::now();
        self.up(Side::Client);
        let ip = self.tunnel_ip(Side::Server);
        let out = self
            .lab
            .exec(Ns::Client, &["ping", "-c", "1", "-W", "1", &ip]);
        let took = t0.elapsed();
        assert!(
            out.status.success(),
            "{}: client → server ping through the tunnel failed: {}\n{}",
            self.name,
            text(&out),
            self.wg_show()
        );
        assert!(
            took < GRACE_BUDGET,
            "{}: wg-quick up and the first ping took {:.2} s: too close to the NAT's 2 s grace",
            self.name,
            secs(took)
        );
        eprintln!(
            "[{}] wg-quick up + handshake + ping: {:.2}s",
            self.name,
            secs(took)
        );
        t0
    }

    /// `ping -c 3 -W 1` from the server to the client's tunnel address.
    fn ping_client(&self) -> Output {
        let ip = self.tunnel_ip(Side::Client);
        self.lab
            .exec(Ns::Server, &["ping", "-c", "3", "-W", "1", &ip])
    }

    /// `wg show` of both interfaces.
    fn wg_show(&self) -> String {
        let mut s = String::new();
        for side in [Side::Client, Side::Server] {
            let out = self.lab.exec(side.ns(), &["wg", "show", self.iface(side)]);
            s += &text(&out);
        }
        s
    }

    /// The PersistentKeepalive of `side`'s only peer as `wg show IF persistent-keepalive` prints
    /// it: a number of seconds or `off`.
    fn keepalive(&self, side: Side) -> String {
        let out = self.lab.exec_ok(
            side.ns(),
            &["wg", "show", self.iface(side), "persistent-keepalive"],
        );
        let fields: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(fields.len(), 2, "one peer expected: {out:?}");
        fields[1].to_owned()
    }

    fn client_listen_port(&self) -> u16 {
        let out = self
            .lab
            .exec_ok(Ns::Client, &["wg", "show", &self.client_if, "listen-port"]);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("listen-port {out:?}"))
    }

    /// The router's entry for the tunnel: client listen port → server:51820.
    fn entry(&self, client_port: u16) -> Option<CtEntry> {
        let server = self.lab.server_ip();
        self.lab
            .conntrack_udp()
            .expect("conntrack")
            .into_iter()
            .find(|e| e.dst == server && e.dport == SERVER_PORT && e.sport == client_port)
    }

    fn conntrack_dump(&self) -> String {
        text(&self.lab.exec(Ns::Router, &["conntrack", "-L", "-p", "udp"]))
    }

    /// Waits until the entry is `[ASSURED]` with more than 170 s left, at most until
    /// `handshake + FOLLOW_UP_WITHIN`, and returns it; panics with the agents' logs otherwise.
    fn expect_promoted(&self, handshake: Instant, client_port: u16, agents: &[&Agent]) -> CtEntry {
        let deadline = handshake + FOLLOW_UP_WITHIN;
        let last = loop {
            let e = self.entry(client_port);
            if let Some(e) = &e {
                if e.assured && e.remaining_secs > 170 {
                    eprintln!(
                        "[{}] +{:.2}s after the handshake: {e}",
                        self.name,
                        secs(handshake.elapsed())
                    );
                    return e.clone();
                }
            }
            if Instant::now() >= deadline {
                break e;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let logs: String = agents.iter().map(|a| a.log()).collect();
        panic!(
            "{}: the entry was not [ASSURED] with > 170 s left {:.1} s after the handshake; last \
             seen: {last:?}\nconntrack:\n{}\nwg show:\n{}\nagent log:\n{logs}",
            self.name,
            secs(FOLLOW_UP_WITHIN),
            self.conntrack_dump(),
            self.wg_show()
        );
    }

    /// Starts `wgkeep agent --interface IF -v ARGS…` in `side`'s namespace.
    fn agent(&self, side: Side, label: &str, args: &[&str]) -> Agent {
        self.agent_with_caps(side, label, None, args)
    }

    /// The agent with only the capabilities `caps` (e.g. `"net_admin"`): root's uid, but the
    /// bounding set cut down by `setpriv`, so anything else it needed would fail.
    fn agent_with_caps(&self, side: Side, label: &str, caps: Option<&str>, args: &[&str]) -> Agent {
        let log_path = self.dir.join(format!("agent-{label}.log"));
        let log = File::create(&log_path).unwrap();
        let mut cmd = match caps {
            None => Command::new(wgkeep_bin()),
            Some(caps) => {
                let bounding: String = std::iter::once("-all".to_owned())
                    .chain(caps.split(',').map(|c| format!("+{c}")))
                    .collect::<Vec<_>>()
                    .join(",");
                let mut c = Command::new("setpriv");
                c.args(["--bounding-set", &bounding, "--inh-caps", "-all", "--"])
                    .arg(wgkeep_bin());
                c
            }
        };
        // Every agent here watches this rig's RouterOS-like NAT and keeps its state in the
        // rig's directory.
        cmd.args([
            "agent",
            "--interface",
            self.iface(side),
            "-v",
            "--nat-profile",
            "routeros",
        ])
        .arg("--state-dir")
        .arg(self.state_dir())
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
        let child = self
            .lab
            .spawn(side.ns(), &mut cmd)
            .unwrap_or_else(|e| panic!("cannot start the agent: {e}"));
        eprintln!(
            "[{}] agent {label} (pid {}) in the {side:?} namespace: {args:?}",
            self.name,
            child.id()
        );
        Agent {
            child: Some(child),
            log_path,
            label: format!("{}/{label}", self.name),
        }
    }
}

fn socket_path(iface: &str) -> PathBuf {
    Path::new("/var/run/wireguard").join(format!("{iface}.sock"))
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- [{}] at the failure ----\nwg show:\n{}\nrouter conntrack:\n{}",
                self.name,
                self.wg_show(),
                self.conntrack_dump()
            );
        }
        for side in [Side::Client, Side::Server] {
            if socket_path(self.iface(side)).exists() {
                let _ = self.wg_quick(side, "down");
            }
        }
        // Whatever still runs in our namespaces (a wireguard-go that did not exit, an agent
        // whose guard was leaked) was started by this test.
        self.lab.stop_all_processes();
        for side in [Side::Client, Side::Server] {
            let _ = fs::remove_file(socket_path(self.iface(side)));
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A running `wgkeep agent`; SIGTERM (then SIGKILL) on drop, and its log printed if the test
/// is failing.
struct Agent {
    child: Option<Child>,
    log_path: PathBuf,
    label: String,
}

impl Agent {
    fn log(&self) -> String {
        format!(
            "---- agent {} ----\n{}",
            self.label,
            fs::read_to_string(&self.log_path).unwrap_or_default()
        )
    }

    fn raw_log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    fn assert_running(&mut self) {
        if !self.running() {
            panic!("agent {} exited\n{}", self.label, self.log());
        }
    }

    /// SIGTERM, and waits for the exit (at most 10 s).
    fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent already stopped");
        send_signal(child.id(), libc::SIGTERM).unwrap();
        let status = wait_for(Duration::from_secs(10), || child.try_wait().unwrap());
        match status {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "agent {} did not exit within 10 s of SIGTERM\n{}",
                    self.label,
                    self.log()
                );
            }
        }
    }

    /// SIGKILL (no chance to restore anything), and waits for the exit.
    fn kill9(&mut self) {
        let mut child = self.child.take().expect("agent already stopped");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log());
        }
        if let Some(mut child) = self.child.take() {
            let _ = send_signal(child.id(), libc::SIGTERM);
            if wait_for(Duration::from_secs(5), || child.try_wait().ok().flatten()).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// `GET /metrics` from inside `ns`.
fn scrape(lab: &NetLab, side: Side, port: u16) -> (String, Vec<Sample>) {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let (status, body) = http_get_in(lab.ns(side.ns()), addr, "/metrics", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("GET /metrics: {e:#}"));
    assert_eq!(status, 200, "GET /metrics: {body}");
    let samples = parse_prometheus_text(&body);
    (body, samples)
}

fn values(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    samples
        .iter()
        .filter(|s| s.name == name && s.has_labels(labels))
        .map(|s| s.value)
        .collect()
}

/// Control: without wgkeep the entry stays on the 10 s timeout after the handshake and the server
/// cannot reach the client once it expired.
#[test]
fn without_agent_the_client_becomes_unreachable() {
    if !wgkeep_tests::require_root("agent_e2e::without_agent_the_client_becomes_unreachable") {
        return;
    }
    let rig = Rig::new("control", "n0", 10, Userspace::WireguardGo);
    rig.up(Side::Server);
    let t0 = rig.up_client_and_handshake();
    let port = rig.client_listen_port();

    sleep_until(t0 + Duration::from_secs(3));
    let e = rig
        .entry(port)
        .unwrap_or_else(|| panic!("no entry for port {port}:\n{}", rig.conntrack_dump()));
    eprintln!("[control] +{:.2}s: {e}", secs(t0.elapsed()));
    assert!(
        e.remaining_secs < 11 && !e.assured,
        "without wgkeep the entry should be on the short timeout: {e}"
    );

    sleep_until(t0 + IDLE);
    eprintln!(
        "[control] +{:.2}s: conntrack: {:?}",
        secs(t0.elapsed()),
        rig.entry(port).map(|e| e.line)
    );
    let out = rig.ping_client();
    eprintln!("[control] server → client ping:\n{}", text(&out));
    assert_eq!(
        packet_loss(&out),
        Some(100),
        "without wgkeep the client should be unreachable {} s after the handshake: {}",
        IDLE.as_secs(),
        text(&out)
    );
}

/// The agent on the client, started before the interface exists: the follow-up promotes the
/// entry, the server reaches the client after the idle time, the client's PersistentKeepalive is
/// untouched, and `/metrics` (scraped inside the client namespace) has every metric.
#[test]
fn agent_on_client_keeps_the_client_reachable_and_exports_metrics() {
    if !wgkeep_tests::require_root(
        "agent_e2e::agent_on_client_keeps_the_client_reachable_and_exports_metrics",
    ) {
        return;
    }
    let _ = wgkeep_bin(); // build first: a build failure must not leave half a setup
    const METRICS_PORT: u16 = 19521;
    let rig = Rig::new("client", "c2", 20, Userspace::WireguardGo);
    rig.up(Side::Server);
    let listen = format!("127.0.0.1:{METRICS_PORT}");
    // Only CAP_NET_ADMIN, as the README promises.
    let mut agent = rig.agent_with_caps(
        Side::Client,
        "client",
        Some("net_admin"),
        &["--metrics-listen", &listen],
    );
    std::thread::sleep(Duration::from_millis(1500));
    agent.assert_running();
    let t0 = rig.up_client_and_handshake();
    let port = rig.client_listen_port();
    let handshake_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();

    rig.expect_promoted(t0, port, &[&agent]);
    // The follow-up is done: every metric should be there now.
    std::thread::sleep(Duration::from_millis(500));
    let (early_body, _) = scrape(&rig.lab, Side::Client, METRICS_PORT);
    assert_eq!(rig.keepalive(Side::Client), CLIENT_KEEPALIVE.to_string());

    sleep_until(t0 + IDLE);
    let e = rig.entry(port);
    eprintln!(
        "[client] +{:.2}s: conntrack: {:?}",
        secs(t0.elapsed()),
        e.as_ref().map(|e| &e.line)
    );
    let out = rig.ping_client();
    eprintln!("[client] server → client ping:\n{}", text(&out));
    assert!(
        out.status.success() && packet_loss(&out) == Some(0),
        "with wgkeep on the client the server should reach it {} s after the handshake: {}\n{}",
        IDLE.as_secs(),
        text(&out),
        agent.log()
    );
    agent.assert_running();
    let (body, samples) = scrape(&rig.lab, Side::Client, METRICS_PORT);

    let status = agent.terminate();
    eprintln!("[client] agent exited after SIGTERM: {status}");
    assert_eq!(
        rig.keepalive(Side::Client),
        CLIENT_KEEPALIVE.to_string(),
        "follow-up mode must leave PersistentKeepalive alone"
    );
    assert!(
        status.success(),
        "agent exit status after SIGTERM: {status}"
    );

    check_metrics(&rig, &early_body, &body, &samples, handshake_epoch);
}

/// Test 7: the metrics of the client-side agent, scraped after the follow-up (`early`) and after
/// the idle wait (`body`, `samples`).
fn check_metrics(rig: &Rig, early: &str, body: &str, samples: &[Sample], handshake: Duration) {
    let iface = rig.client_if.as_str();
    let peer = rig.server_keys.public.as_str();
    let who = [("interface", iface), ("public_key", peer)];
    let mut problems = Vec::new();
    for name in [
        "wgkeep_handshakes_total",
        "wgkeep_follow_ups_total",
        "wgkeep_follow_ups_skipped_total",
        "wgkeep_follow_up_failures_total",
        "wgkeep_peer_persistent_keepalive_seconds",
        "wgkeep_peer_last_handshake_timestamp_seconds",
        "wgkeep_peer_endpoint_changes_total",
        "wgkeep_nat_timeout_seconds",
        "wgkeep_build_info",
        "wgkeep_interface_up",
    ] {
        if !samples.iter().any(|s| s.name == name) {
            problems.push(format!("no sample of {name}"));
        }
    }
    let mut expect = |what: &str, got: Vec<f64>, ok: &dyn Fn(f64) -> bool| {
        if got.is_empty() || !got.iter().all(|&v| ok(v)) {
            problems.push(format!("{what}: got {got:?}"));
        }
    };
    expect(
        "handshakes_total{interface,public_key=server} >= 1",
        values(samples, "wgkeep_handshakes_total", &who),
        &|v| v >= 1.0,
    );
    expect(
        "follow_ups_total{interface,public_key=server,method=keepalive-toggle} >= 1",
        values(
            samples,
            "wgkeep_follow_ups_total",
            &[
                ("interface", iface),
                ("public_key", peer),
                ("method", "keepalive-toggle"),
            ],
        ),
        &|v| v >= 1.0,
    );
    expect(
        "follow_up_failures_total{interface,public_key=server} == 0 (if present)",
        values(samples, "wgkeep_follow_up_failures_total", &who)
            .into_iter()
            .chain(std::iter::once(0.0))
            .collect(),
        &|v| v == 0.0,
    );
    expect(
        "peer_persistent_keepalive_seconds == 150",
        values(samples, "wgkeep_peer_persistent_keepalive_seconds", &who),
        &|v| v == f64::from(CLIENT_KEEPALIVE),
    );
    let hs = handshake.as_secs_f64();
    expect(
        "peer_last_handshake_timestamp_seconds within 10 s of the handshake",
        values(
            samples,
            "wgkeep_peer_last_handshake_timestamp_seconds",
            &who,
        ),
        &|v| (v - hs).abs() < 10.0,
    );
    expect(
        "peer_endpoint_changes_total <= 1",
        values(samples, "wgkeep_peer_endpoint_changes_total", &who),
        &|v| (0.0..=1.0).contains(&v),
    );
    expect(
        "nat_timeout_seconds{kind=stream} == 180",
        values(samples, "wgkeep_nat_timeout_seconds", &[("kind", "stream")]),
        &|v| v == f64::from(UDP_STREAM_TIMEOUT),
    );
    expect(
        "build_info{version} == 1",
        samples
            .iter()
            .filter(|s| s.name == "wgkeep_build_info" && s.labels.contains_key("version"))
            .map(|s| s.value)
            .collect(),
        &|v| v == 1.0,
    );
    expect(
        "interface_up{interface} == 1",
        values(samples, "wgkeep_interface_up", &[("interface", iface)]),
        &|v| v == 1.0,
    );
    // Skipped follow-ups, if any, name a reason.
    for s in samples
        .iter()
        .filter(|s| s.name == "wgkeep_follow_ups_skipped_total")
    {
        if !s.labels.contains_key("reason") || s.value < 0.0 {
            problems.push(format!("bad skipped sample {s:?}"));
        }
    }
    let early_samples = parse_prometheus_text(early);
    if values(
        &early_samples,
        "wgkeep_follow_ups_total",
        &[("public_key", peer), ("method", "keepalive-toggle")],
    )
    .iter()
    .all(|&v| v < 1.0)
    {
        problems.push("no follow-up counted right after the entry was promoted".into());
    }
    assert!(
        problems.is_empty(),
        "/metrics problems:\n  {}\n---- /metrics ----\n{body}",
        problems.join("\n  ")
    );
}

/// The agent on the server only (the peer has no PersistentKeepalive: server side): its
/// follow-up, sent inbound through the NAT, promotes the entry just the same.
#[test]
fn agent_on_server_keeps_the_client_reachable() {
    if !wgkeep_tests::require_root("agent_e2e::agent_on_server_keeps_the_client_reachable") {
        return;
    }
    let _ = wgkeep_bin(); // build first: a build failure must not leave half a setup
    let rig = Rig::new("server", "s3", 30, Userspace::WireguardGo);
    rig.up(Side::Server);
    let mut agent = rig.agent(
        Side::Server,
        "server",
        &["--metrics-listen", "127.0.0.1:19531"],
    );
    std::thread::sleep(Duration::from_millis(1500));
    agent.assert_running();
    let t0 = rig.up_client_and_handshake();
    let port = rig.client_listen_port();
    rig.expect_promoted(t0, port, &[&agent]);
    assert_eq!(rig.keepalive(Side::Server), "off");

    sleep_until(t0 + IDLE);
    let out = rig.ping_client();
    eprintln!("[server] server → client ping:\n{}", text(&out));
    assert!(
        out.status.success() && packet_loss(&out) == Some(0),
        "with wgkeep on the server it should reach the client {} s after the handshake: {}\n{}",
        IDLE.as_secs(),
        text(&out),
        agent.log()
    );
    agent.assert_running();
    assert_eq!(
        rig.keepalive(Side::Server),
        "off",
        "the server's PersistentKeepalive must stay off"
    );
    let status = agent.terminate();
    assert!(
        status.success(),
        "agent exit status after SIGTERM: {status}"
    );
    assert_eq!(rig.keepalive(Side::Server), "off");
    assert_eq!(rig.keepalive(Side::Client), CLIENT_KEEPALIVE.to_string());
}

/// adapt mode: PersistentKeepalive 150 → 144 while running, 150 after SIGTERM; after kill -9 it
/// stays 144 with the state file left behind, and the next start (follow-up mode) restores 150.
#[test]
fn adapt_mode_sets_and_restores_persistent_keepalive() {
    if !wgkeep_tests::require_root("agent_e2e::adapt_mode_sets_and_restores_persistent_keepalive") {
        return;
    }
    let _ = wgkeep_bin(); // build first: a build failure must not leave half a setup
    let rig = Rig::new("adapt", "a4", 40, Userspace::WireguardGo);
    rig.up(Side::Server);
    rig.up_client_and_handshake();
    let adapt = ["--mode", "adapt", "--metrics-listen", "none"];
    let pk_becomes = |agent: &Agent, want: u32, within: Duration| {
        let want = want.to_string();
        let t = Instant::now();
        let mut last = String::new();
        let got = wait_for(within, || {
            last = rig.keepalive(Side::Client);
            (last == want).then_some(())
        });
        assert!(
            got.is_some(),
            "PersistentKeepalive is {last}, not {want}, {:.1} s later\n{}",
            secs(t.elapsed()),
            agent.log()
        );
        eprintln!(
            "[adapt] agent {}: PersistentKeepalive {want} after {:.2}s",
            agent.label,
            secs(t.elapsed())
        );
    };

    // Run 1: adapt, then SIGTERM restores.
    let mut first = rig.agent(Side::Client, "adapt-1", &adapt);
    pk_becomes(&first, ADAPTED_KEEPALIVE, Duration::from_secs(5));
    let status = first.terminate();
    assert!(
        status.success(),
        "agent exit status after SIGTERM: {status}"
    );
    assert_eq!(
        rig.keepalive(Side::Client),
        CLIENT_KEEPALIVE.to_string(),
        "SIGTERM must restore PersistentKeepalive\n{}",
        first.log()
    );
    assert_eq!(rig.keepalive(Side::Server), "off");

    // Run 2: adapt, then kill -9: nothing restored, the state file records the original.
    let mut second = rig.agent(Side::Client, "adapt-2", &adapt);
    pk_becomes(&second, ADAPTED_KEEPALIVE, Duration::from_secs(5));
    second.kill9();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rig.keepalive(Side::Client), ADAPTED_KEEPALIVE.to_string());
    let state_file = rig.state_dir().join(format!("{}.json", rig.client_if));
    let recorded = fs::read_to_string(&state_file).unwrap_or_else(|e| {
        panic!(
            "state file {} after kill -9: {e}\n{}",
            state_file.display(),
            second.log()
        )
    });
    eprintln!("[adapt] state file after kill -9: {recorded}");
    assert!(
        recorded.contains(&rig.server_keys.public) && recorded.contains("150"),
        "the state file should record the peer's original PersistentKeepalive: {recorded}"
    );

    // Run 3: any mode restores what the crashed run changed.
    let mut third = rig.agent(
        Side::Client,
        "follow-up-3",
        &["--mode", "follow-up", "--metrics-listen", "none"],
    );
    pk_becomes(&third, CLIENT_KEEPALIVE, Duration::from_secs(5));
    third.assert_running();
    let status = third.terminate();
    assert!(
        status.success(),
        "agent exit status after SIGTERM: {status}"
    );
    assert_eq!(rig.keepalive(Side::Client), CLIENT_KEEPALIVE.to_string());
}

fn attach_lines(log: &str) -> usize {
    log.lines()
        .filter(|l| l.to_ascii_lowercase().contains("attach"))
        .count()
}

/// `wg-quick down` and `up` under a running agent: it notices, re-attaches and follows up the
/// next handshake of the new interface.
#[test]
fn agent_survives_wg_quick_down_and_up() {
    if !wgkeep_tests::require_root("agent_e2e::agent_survives_wg_quick_down_and_up") {
        return;
    }
    let _ = wgkeep_bin(); // build first: a build failure must not leave half a setup
    let rig = Rig::new("reup", "r5", 50, Userspace::WireguardGo);
    rig.up(Side::Server);
    let mut agent = rig.agent(Side::Client, "reup", &["--metrics-listen", "none"]);
    std::thread::sleep(Duration::from_millis(1500));
    agent.assert_running();
    let t0 = rig.up_client_and_handshake();
    let port = rig.client_listen_port();
    rig.expect_promoted(t0, port, &[&agent]);
    let attached_before = attach_lines(&agent.raw_log());

    rig.down(Side::Client);
    eprintln!("[reup] client down");
    std::thread::sleep(Duration::from_secs(3));
    agent.assert_running();
    // The old entry must not stand in for the new one should the new port be the same.
    rig.lab.exec_ok(Ns::Router, &["conntrack", "-F"]);
    let t1 = rig.up_client_and_handshake();
    let new_port = rig.client_listen_port();
    eprintln!("[reup] client up again, port {port} → {new_port}");
    rig.expect_promoted(t1, new_port, &[&agent]);
    agent.assert_running();
    let log = agent.raw_log();
    assert!(
        attach_lines(&log) > attached_before,
        "the agent's log does not mention re-attaching:\n{log}"
    );
    eprintln!("{}", agent.log());
    let status = agent.terminate();
    assert!(
        status.success(),
        "agent exit status after SIGTERM: {status}"
    );
    assert_eq!(rig.keepalive(Side::Client), CLIENT_KEEPALIVE.to_string());
}

/// `--follow-up-method tunnel-packet` on the client: a datagram into the tunnel instead of the
/// keepalive toggle; the same result.
fn tunnel_packet_scenario(name: &'static str, tag: &str, subnet: u8, client_impl: Userspace) {
    const METRICS_PORT: u16 = 19561;
    let rig = Rig::new(name, tag, subnet, client_impl);
    rig.up(Side::Server);
    let listen = format!("127.0.0.1:{METRICS_PORT}");
    // CAP_NET_ADMIN plus CAP_NET_RAW (SO_BINDTODEVICE), as the README promises.
    let mut agent = rig.agent_with_caps(
        Side::Client,
        name,
        Some("net_admin,net_raw"),
        &[
            "--follow-up-method",
            "tunnel-packet",
            "--metrics-listen",
            &listen,
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    agent.assert_running();
    let t0 = rig.up_client_and_handshake();
    let port = rig.client_listen_port();
    rig.expect_promoted(t0, port, &[&agent]);
    std::thread::sleep(Duration::from_millis(500));
    let (body, samples) = scrape(&rig.lab, Side::Client, METRICS_PORT);
    let tunnel_packets = values(
        &samples,
        "wgkeep_follow_ups_total",
        &[
            ("public_key", rig.server_keys.public.as_str()),
            ("method", "tunnel-packet"),
        ],
    );
    assert!(
        tunnel_packets.iter().any(|&v| v >= 1.0),
        "no follow-up with method=tunnel-packet counted:\n{body}"
    );

    sleep_until(t0 + IDLE);
    let out = rig.ping_client();
    eprintln!("[{name}] server → client ping:\n{}", text(&out));
    assert!(
        out.status.success() && packet_loss(&out) == Some(0),
        "with wgkeep (tunnel-packet) the server should reach the client {} s after the \
         handshake: {}\n{}",
        IDLE.as_secs(),
        text(&out),
        agent.log()
    );
    agent.assert_running();
    let status = agent.terminate();
    assert!(
        status.success(),
        "agent exit status after SIGTERM: {status}"
    );
    assert_eq!(rig.keepalive(Side::Client), CLIENT_KEEPALIVE.to_string());
}

#[test]
fn tunnel_packet_follow_up_with_wireguard_go() {
    if !wgkeep_tests::require_root("agent_e2e::tunnel_packet_follow_up_with_wireguard_go") {
        return;
    }
    let _ = wgkeep_bin(); // build first: a build failure must not leave half a setup
    tunnel_packet_scenario("tunnel-go", "t6", 60, Userspace::WireguardGo);
}

#[test]
fn tunnel_packet_follow_up_with_boringtun() {
    if !wgkeep_tests::require_root("agent_e2e::tunnel_packet_follow_up_with_boringtun") {
        return;
    }
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("boringtun-cli").is_file()))
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "boringtun-cli is not on PATH: .ci/run must install it (cargo install boringtun-cli --version 0.7.1 --locked)"
        );
        eprintln!(
            "\nSKIPPED: agent_e2e::tunnel_packet_follow_up_with_boringtun: boringtun-cli is not on \
             PATH (install it to run the tunnel-packet follow-up against boringtun)\n"
        );
        return;
    }
    tunnel_packet_scenario("tunnel-bt", "b6", 61, Userspace::Boringtun);
}

/// `--reflector`: the agent probes the NAT (5 s / 25 s here, to keep it short) against a
/// `wgkeep reflect` on the far side and publishes what it measured in place of its assumption.
/// No WireGuard is needed: the agent waits for its interface meanwhile.
#[test]
fn agent_probes_the_nat_with_reflector() {
    if !wgkeep_tests::require_root("agent_e2e::agent_probes_the_nat_with_reflector") {
        return;
    }
    let bin = wgkeep_bin();
    const METRICS_PORT: u16 = 19531;
    let lab = NetLab::new(LabConfig::new(5, 25)).expect("lab");
    let reflector = format!("{}:51901", lab.server_ip());
    let dir = std::env::temp_dir().join(format!("wgkeep-e2e-{}-reflector", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let mut refl = lab
        .spawn(
            Ns::Server,
            Command::new(&bin)
                .args(["reflect", "--listen", &reflector])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .expect("reflector");
    let log_path = dir.join("agent.log");
    let log = File::create(&log_path).unwrap();
    let listen = format!("127.0.0.1:{METRICS_PORT}");
    let iface = format!("wkrf{:x}", std::process::id());
    let mut agent = Agent {
        child: Some(
            lab.spawn(
                Ns::Client,
                Command::new(&bin)
                    .args(["agent", "--interface", &iface, "--nat-profile", "routeros"])
                    .args(["--reflector", &reflector, "--metrics-listen", &listen])
                    .arg("--state-dir")
                    .arg(&dir)
                    .env_remove("RUST_LOG")
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log),
            )
            .expect("agent"),
        ),
        log_path,
        label: "reflector/agent".into(),
    };
    let stream = |samples: &[Sample]| {
        values(samples, "wgkeep_nat_timeout_seconds", &[("kind", "stream")])
            .first()
            .copied()
    };
    std::thread::sleep(Duration::from_secs(1));
    let (_, samples) = scrape(&lab, Side::Client, METRICS_PORT);
    assert_eq!(
        stream(&samples),
        Some(180.0),
        "the assumption until measured"
    );
    // About 1.25 × 25 s + 10 s for the probe.
    let measured = wait_for(Duration::from_secs(60), || {
        let (_, samples) = scrape(&lab, Side::Client, METRICS_PORT);
        stream(&samples)
            .filter(|s| *s != 180.0)
            .map(|s| (s, samples))
    });
    let log = agent.log();
    let _ = refl.kill();
    let _ = refl.wait();
    let (stream_s, samples) =
        measured.unwrap_or_else(|| panic!("no measured timeouts within 60 s:\n{log}"));
    assert!(
        (24.0..=25.0).contains(&stream_s),
        "stream {stream_s}\n{log}"
    );
    let unreplied = values(
        &samples,
        "wgkeep_nat_timeout_seconds",
        &[("kind", "unreplied")],
    );
    assert!(
        unreplied.first().is_some_and(|u| (4.0..=5.0).contains(u)),
        "unreplied {unreplied:?}\n{log}"
    );
    assert!(log.contains("using these from now on"), "{log}");
    agent.assert_running();
    let _ = fs::remove_dir_all(&dir);
}
