//! The command line: clap derive, one subcommand per capability that works.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use wgkeep_probe::middlebox::{Overrides, Profile, ProfileName};

use wgkeep_agent::driver::{AgentConfig, Method, Mode, SideChoice};
use wgkeep_agent::keeper::Side;
use wgkeep_agent::lab::{KeeperRuns, LabConfig};
use wgkeep_agent::probe_json;
use wgkeep_probe::planner::PlannerConfig;

/// Keeps the NAT entries WireGuard depends on alive, from the endpoint.
#[derive(Debug, Parser)]
#[command(
    name = "wgkeep",
    version,
    about = "Keeps WireGuard's NAT entries in their long-lived state, from the endpoint",
    long_about = "Linux conntrack (and RouterOS, OpenWrt, most home routers) keeps a UDP entry on its short \
                  timeout unless a packet passes more than 2 s after the entry's first packet. A WireGuard \
                  handshake ends within one round trip, so the NAT entry dies long before the next \
                  PersistentKeepalive. wgkeep makes WireGuard send one more packet at the right time.",
    after_help = "Start with `wgkeep lab`: it shows the failure and the fix in virtual time, with nothing installed."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Simulate two WireGuard peers (boringtun) through a NAT, without and with wgkeep.
    #[command(after_help = LAB_EXAMPLES)]
    Lab(LabArgs),
    /// Run beside wg-quick: follow up every handshake so the NAT entry reaches stream state.
    #[command(after_help = AGENT_EXAMPLES)]
    Agent(AgentArgs),
    /// Measure the NAT's UDP timeouts (to ±1 s, in about one stream timeout) against `wgkeep reflect`.
    #[command(after_help = PROBE_EXAMPLES)]
    Probe(ProbeArgs),
    /// Answer probes: run on the far side of the NAT (e.g. the WireGuard server).
    #[command(after_help = REFLECT_EXAMPLES)]
    Reflect(ReflectArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    #[command(after_help = wgkeep_agent::docs_cmd::COMPLETIONS_EXAMPLES)]
    Completions(wgkeep_agent::docs_cmd::CompletionsArgs),
    /// Print the man page, or write one page per subcommand with --dir.
    #[command(after_help = wgkeep_agent::docs_cmd::MAN_EXAMPLES)]
    Man(wgkeep_agent::docs_cmd::ManArgs),
}

const PROBE_EXAMPLES: &str = "\
Examples:
  wgkeep probe vpn.example.net:51900                  # everything, about 1.25 x the stream timeout
  wgkeep probe vpn.example.net:51900 --json > nat.json && wgkeep agent -i wg0 --timeouts-from nat.json
  wgkeep probe 203.0.113.7:51900 --measure handshake,stream --max 300s --plot nat.svg
  wgkeep probe 203.0.113.7:51900 --psk-file /etc/wgkeep/probe.psk

Each NAT entry (one UDP socket) does one WireGuard-shaped exchange once and then stays quiet; the
reflector sends one check packet at the idle time the probe asks for over a separate socket. A
check that arrives means the entry was alive. Needs no privileges; uses up to --max-sockets
ports for a few minutes.";

const REFLECT_EXAMPLES: &str = "\
Examples:
  wgkeep reflect --listen 0.0.0.0:51900
  wgkeep reflect --listen [::]:51900 --psk-file /etc/wgkeep/probe.psk --metrics-listen 127.0.0.1:9589

Safe on a public address: a delayed check goes only to a source address that proved it receives
there (a stateless cookie), it never sends more bytes to an address than it received from it, and
its state is bounded. With --psk-file it ignores every packet not authenticated with that key.";

/// What `--measure` can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MeasureArg {
    /// 148 B out, 92 B back, 32 B out, then silence (a WireGuard handshake).
    Handshake,
    /// The same plus one 32 B packet after the grace period.
    Stream,
    /// One 148 B packet, no answer.
    Unreplied,
    /// The smallest follow-up delay that promotes the entry (0.5–5 s, to 0.25 s).
    Grace,
    /// Whether packets from the far side alone keep an entry alive.
    Refresh,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StrategyArg {
    /// Many NAT entries at once: about one stream timeout.
    Parallel,
    /// One entry at a time, doubling then bisecting (RFC 5780 §4.6): for comparison, slow.
    Serial,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The reflector (`wgkeep reflect`), HOST:PORT.
    #[arg(value_name = "REFLECTOR:PORT")]
    pub reflector: String,
    /// Longest idle time to test; a timeout above it is reported as `> MAX`.
    #[arg(long, value_name = "DURATION", default_value = "600s", value_parser = parse_duration)]
    pub max: Duration,
    /// Bracket width to reach for each timeout (grace: always 0.25 s).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub resolution: Duration,
    /// NAT entries (UDP sockets) to use at most.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_sockets: u32,
    /// What to measure (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "handshake,stream,unreplied,grace,refresh"
    )]
    pub measure: Vec<MeasureArg>,
    /// Pre-shared key file (the same on the reflector); `wg genpsk` makes one.
    #[arg(long, value_name = "FILE")]
    pub psk_file: Option<std::path::PathBuf>,
    /// Print the report as JSON (for `wgkeep agent --timeouts-from`).
    #[arg(long)]
    pub json: bool,
    /// Also draw survival versus idle time per pattern to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<std::path::PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// How to search.
    #[arg(long, value_enum, default_value = "parallel")]
    pub strategy: StrategyArg,
    /// When the stream pattern's follow-up goes out (must exceed the NAT's grace period).
    #[arg(long, value_name = "DURATION", default_value = "2.5s", value_parser = parse_duration)]
    pub stream_follow_up: Duration,
}

impl ProbeArgs {
    /// The planner's settings (the reflector's name is filled in once resolved).
    pub fn config(&self) -> Result<PlannerConfig, String> {
        use wgkeep_probe::planner::{Measure, Strategy, MIN_SOCKETS};
        let has = |m| self.measure.contains(&m);
        let measure = Measure {
            handshake: has(MeasureArg::Handshake),
            stream: has(MeasureArg::Stream),
            unreplied: has(MeasureArg::Unreplied),
            grace: has(MeasureArg::Grace),
            refresh: has(MeasureArg::Refresh),
        };
        if self.max < Duration::from_secs(5) || self.max > Duration::from_secs(3600) {
            return Err(format!(
                "--max {} is out of range: give 5s to 1h (the reflector waits at most an hour)",
                humantime::format_duration(self.max)
            ));
        }
        if self.resolution < Duration::from_millis(100) || self.resolution * 4 > self.max {
            return Err(format!(
                "--resolution {} is out of range: give 100ms to a quarter of --max",
                humantime::format_duration(self.resolution)
            ));
        }
        let min = if measure.grace { MIN_SOCKETS } else { 16 };
        if self.max_sockets < min || self.max_sockets > 4096 {
            return Err(format!(
                "--max-sockets {} is out of range: give {min} to 4096{}",
                self.max_sockets,
                if measure.grace {
                    " (the grace search alone uses 20; leave grace out of --measure to go lower)"
                } else {
                    ""
                }
            ));
        }
        if self.stream_follow_up < Duration::from_millis(500)
            || self.stream_follow_up > Duration::from_secs(30)
        {
            return Err("--stream-follow-up must be between 500ms and 30s".to_string());
        }
        let key = crate::probe_cmd::read_key(self.psk_file.as_deref())?;
        if let Some(plot) = &self.plot {
            if plot.as_os_str().is_empty() {
                return Err("--plot needs a file name".to_string());
            }
        }
        Ok(PlannerConfig {
            measure,
            resolution: self.resolution,
            max: self.max,
            max_sockets: self.max_sockets,
            key,
            strategy: match self.strategy {
                StrategyArg::Parallel => Strategy::Parallel,
                StrategyArg::Serial => Strategy::Serial,
            },
            stream_follow_up: self.stream_follow_up,
            ..PlannerConfig::new(self.reflector.clone())
        })
    }
}

#[derive(Debug, Args)]
pub struct ReflectArgs {
    /// UDP address to answer on, e.g. 0.0.0.0:51900 or [::]:51900.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: std::net::SocketAddr,
    /// Pre-shared key file (the same on every probe): packets without it are ignored.
    #[arg(long, value_name = "FILE")]
    pub psk_file: Option<std::path::PathBuf>,
    /// Where to serve /metrics and /healthz (`none` to disable).
    #[arg(long, value_name = "ADDR:PORT|none", default_value = "none", value_parser = parse_listen)]
    pub metrics_listen: ListenArg,
    /// More logging.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

const AGENT_EXAMPLES: &str = "\
Examples:
  wgkeep agent --interface wg0                          # client or server, Linux NAT rules
  wgkeep agent --interface wg0 --nat-profile routeros   # the NAT is a MikroTik
  wgkeep agent --interface wg0 --mode adapt --nat-profile routeros
                                                        # also PersistentKeepalive 150 -> 144
  wgkeep agent --interface wg0 --mode observe -v        # metrics and logs only

Needs CAP_NET_ADMIN (plus CAP_NET_RAW for --follow-up-method tunnel-packet). The agent may start
before the interface exists and survives `wg-quick down`/`up`. On SIGTERM/SIGINT it restores
every PersistentKeepalive it changed; after a crash, the next start restores them.";

const LAB_EXAMPLES: &str = "\
Examples:
  wgkeep lab                                  # the RouterOS story: PersistentKeepalive 150 s, 1 h
  wgkeep lab --profile linux --keepalive 25s  # Linux defaults, a common keepalive
  wgkeep lab --side server                    # wgkeep on the server only
  wgkeep lab --udp-timeout 5s --udp-stream-timeout 60s --duration 10m --timeline
  wgkeep lab --inbound-every 30s --json       # also send real server -> client data
  wgkeep lab --random-traffic 1 --duration 24h --profile linux   # a soak with random data

Reachability is the share of virtual time, from the first handshake on, during which a packet
from the server would pass the NAT (read from the model; it adds no traffic).";

/// The NAT a command assumes or simulates.
#[derive(Debug, Args)]
pub struct NatArgs {
    /// NAT profile: linux (30 s / 120 s), routeros (10 s / 180 s), openwrt (60 s / 180 s),
    /// pf (first 60 s, single 30 s, multiple 60 s), or custom (give both timeouts).
    #[arg(long, value_name = "NAME", default_value = "routeros", value_parser = parse_profile_name)]
    pub profile: ProfileName,
    /// Override the unreplied timeout (nf_conntrack_udp_timeout, RouterOS udp-timeout).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub udp_timeout: Option<Duration>,
    /// Override the stream timeout (nf_conntrack_udp_timeout_stream, RouterOS udp-stream-timeout).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub udp_stream_timeout: Option<Duration>,
    /// Override the grace period after the entry's first packet (2 s in every Linux kernel).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub grace: Option<Duration>,
}

impl NatArgs {
    /// The profile with the overrides applied.
    pub fn profile(&self) -> Result<Profile, String> {
        Profile::build(
            self.profile,
            Overrides {
                unreplied: self.udp_timeout,
                stream: self.udp_stream_timeout,
                grace: self.grace,
            },
        )
        .map_err(|e| e.to_string())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeeperArg {
    /// Only without wgkeep.
    Off,
    /// Only with wgkeep.
    On,
    /// Without, then with.
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SideArg {
    /// On the client behind the NAT.
    Client,
    /// On the server outside it.
    Server,
}

#[derive(Debug, Args)]
pub struct LabArgs {
    #[command(flatten)]
    pub nat: NatArgs,
    /// The client's PersistentKeepalive (whole seconds, e.g. 150s or 2m30s; `off` for none).
    #[arg(long, value_name = "DURATION|off", default_value = "150s", value_parser = parse_keepalive)]
    pub keepalive: KeepaliveArg,
    /// Virtual time to simulate.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub duration: Duration,
    /// Runs to make: without wgkeep, with it, or both.
    #[arg(long, value_enum, default_value = "both")]
    pub keeper: KeeperArg,
    /// Where wgkeep runs.
    #[arg(long, value_enum, default_value = "client")]
    pub side: SideArg,
    /// Also let the server send a data packet to the client this often, and report delivery.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub inbound_every: Option<Duration>,
    /// Also exchange seeded random data: bursts of 1-8 packets (32-1400 B) server -> client,
    /// client -> server, or both, separated by idle gaps of 0.1 s to 15 min. The same SEED gives
    /// the same traffic; inbound delivery is reported.
    #[arg(long, value_name = "SEED")]
    pub random_traffic: Option<u64>,
    /// Round-trip time between the peers.
    #[arg(long, value_name = "DURATION", default_value = "20ms", value_parser = parse_duration)]
    pub rtt: Duration,
    /// Print every packet (size, direction) and the NAT entry's life, in virtual seconds.
    #[arg(long)]
    pub timeline: bool,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Metrics only; never writes.
    Observe,
    /// Follow-ups only; never changes a setting.
    FollowUp,
    /// Follow-ups, and PersistentKeepalive of every peer that has one set to floor(0.8 × stream timeout).
    Adapt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// keepalive-toggle on kernel and wireguard-go, tunnel-packet on boringtun.
    Auto,
    /// PersistentKeepalive 0 and back (or 1 and back) in one set transaction: WireGuard sends a keepalive.
    KeepaliveToggle,
    /// A small datagram into the tunnel, to an address in the peer's AllowedIPs (discard port).
    TunnelPacket,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AgentSideArg {
    /// Per peer: with a PersistentKeepalive we are behind the NAT, without we are the server.
    Auto,
    /// This host is behind the NAT.
    Client,
    /// This host is the far side; its peers are behind NATs.
    Server,
}

/// The NAT an agent assumes: a profile, timeouts, or a probe's measurement.
#[derive(Debug, Args)]
pub struct AgentNatArgs {
    /// NAT profile: linux (30 s / 120 s), routeros (10 s / 180 s), openwrt (60 s / 180 s). Default: Linux rules.
    #[arg(long, value_name = "NAME", value_parser = parse_profile_name, conflicts_with = "timeouts_from")]
    pub nat_profile: Option<ProfileName>,
    /// The NAT's unreplied timeout.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "timeouts_from")]
    pub udp_timeout: Option<Duration>,
    /// The NAT's stream timeout.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "timeouts_from")]
    pub udp_stream_timeout: Option<Duration>,
    /// The NAT's grace period (2 s in every Linux kernel).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "timeouts_from")]
    pub grace: Option<Duration>,
    /// Timeouts measured by `wgkeep probe --json`.
    #[arg(long, value_name = "FILE")]
    pub timeouts_from: Option<std::path::PathBuf>,
    /// Probe the NAT against this `wgkeep reflect` (HOST:PORT) at start and every 24 h, and use
    /// what it measures (the other NAT options are the assumption until then).
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "timeouts_from")]
    pub reflector: Option<String>,
    /// Pre-shared key file for --reflector.
    #[arg(long, value_name = "FILE", requires = "reflector")]
    pub psk_file: Option<std::path::PathBuf>,
}

impl AgentNatArgs {
    /// The profile.
    pub fn profile(&self) -> Result<Profile, String> {
        if let Some(path) = &self.timeouts_from {
            return probe_json::profile_from_file(path);
        }
        let overrides = Overrides {
            unreplied: self.udp_timeout,
            stream: self.udp_stream_timeout,
            grace: self.grace,
        };
        let name = self.nat_profile.unwrap_or(ProfileName::Linux);
        if name == ProfileName::Pf {
            return Err(
                "--nat-profile pf: pf has no stream state that a follow-up could reach; lower PersistentKeepalive \
                 below 30 s instead (see `wgkeep lab --profile pf`)"
                    .into(),
            );
        }
        if name == ProfileName::Custom && overrides.is_empty() {
            return Err("--nat-profile custom needs --udp-timeout and --udp-stream-timeout".into());
        }
        Profile::build(name, overrides).map_err(|e| e.to_string())
    }
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// WireGuard interface to keep (repeat for several). It need not exist yet.
    #[arg(long = "interface", short = 'i', value_name = "NAME", required = true, value_parser = parse_interface)]
    pub interfaces: Vec<String>,
    /// observe: metrics only; follow-up: kicks only; adapt: kicks and PersistentKeepalive = floor(0.8 × stream timeout).
    #[arg(long, value_enum, default_value = "follow-up")]
    pub mode: ModeArg,
    /// Delay of the follow-up after each handshake (must exceed the NAT's grace period).
    #[arg(long, value_name = "DURATION", default_value = "2.5s", value_parser = parse_duration)]
    pub follow_up_delay: Duration,
    /// How often to read the interfaces.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    #[command(flatten)]
    pub nat: AgentNatArgs,
    /// How to make WireGuard send the follow-up.
    #[arg(long, value_enum, default_value = "auto")]
    pub follow_up_method: MethodArg,
    /// Which side of the NAT this host is on.
    #[arg(long, value_enum, default_value = "auto")]
    pub side: AgentSideArg,
    /// Where to serve /metrics and /healthz (`none` to disable).
    #[arg(long, value_name = "ADDR:PORT|none", default_value = "127.0.0.1:9588", value_parser = parse_listen)]
    pub metrics_listen: ListenArg,
    /// Where to record the PersistentKeepalive values adapt mode changed.
    #[arg(long, value_name = "DIR", default_value = "/run/wgkeep")]
    pub state_dir: std::path::PathBuf,
    /// More logging (-v: one line per handshake and follow-up; -vv: everything).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// `--metrics-listen`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenArg(pub Option<std::net::SocketAddr>);

fn parse_listen(s: &str) -> Result<ListenArg, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(ListenArg(None));
    }
    s.parse()
        .map(|a| ListenArg(Some(a)))
        .map_err(|_| format!("`{s}` is not ADDR:PORT (e.g. 127.0.0.1:9588, [::1]:9588) or `none`"))
}

fn parse_interface(s: &str) -> Result<String, String> {
    // IFNAMSIZ is 16 with the terminating NUL; no slashes, spaces or dots-only names.
    if s.is_empty() || s.len() > 15 || s == "." || s == ".." || s.contains(['/', ' ', ':', '\0']) {
        return Err(format!(
            "`{s}` is not an interface name (1 to 15 characters, no '/', ':' or spaces)"
        ));
    }
    Ok(s.to_owned())
}

impl AgentArgs {
    /// Check the combination and build the agent's configuration.
    pub fn config(&self) -> Result<AgentConfig, String> {
        let profile = self.nat.profile()?;
        let grace = profile
            .rules
            .conntrack()
            .map_or(Duration::ZERO, |t| t.grace);
        if self.follow_up_delay <= grace {
            return Err(format!(
                "--follow-up-delay {} must be longer than the NAT's grace period {} (a packet at or before it does not promote)",
                humantime::format_duration(self.follow_up_delay),
                humantime::format_duration(grace)
            ));
        }
        if self.follow_up_delay >= profile.rules.initial_timeout() {
            return Err(format!(
                "--follow-up-delay {} must be shorter than the NAT's unreplied timeout {}",
                humantime::format_duration(self.follow_up_delay),
                humantime::format_duration(profile.rules.initial_timeout())
            ));
        }
        if self.poll_interval < Duration::from_millis(100)
            || self.poll_interval > Duration::from_secs(60)
        {
            return Err("--poll-interval must be between 100ms and 60s".into());
        }
        let mut seen = std::collections::HashSet::new();
        for i in &self.interfaces {
            if !seen.insert(i) {
                return Err(format!("--interface {i} is given twice"));
            }
        }
        Ok(AgentConfig {
            interfaces: self.interfaces.clone(),
            mode: match self.mode {
                ModeArg::Observe => Mode::Observe,
                ModeArg::FollowUp => Mode::FollowUp,
                ModeArg::Adapt => Mode::Adapt,
            },
            follow_up_delay: self.follow_up_delay,
            poll_interval: self.poll_interval,
            rules: profile.rules,
            method: match self.follow_up_method {
                MethodArg::Auto => Method::Auto,
                MethodArg::KeepaliveToggle => Method::KeepaliveToggle,
                MethodArg::TunnelPacket => Method::TunnelPacket,
            },
            side: match self.side {
                AgentSideArg::Auto => SideChoice::Auto,
                AgentSideArg::Client => SideChoice::Client,
                AgentSideArg::Server => SideChoice::Server,
            },
            metrics_listen: self.metrics_listen.0,
            state_dir: self.state_dir.clone(),
            device_timeout: Duration::from_secs(2),
            reflector: match &self.nat.reflector {
                Some(addr) => Some(wgkeep_agent::driver::ReflectorTarget {
                    addr: addr.clone(),
                    key: wgkeep_agent::probe_cmd::read_key(self.nat.psk_file.as_deref())?,
                }),
                None => None,
            },
        })
    }
}

/// A PersistentKeepalive value from the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepaliveArg(pub Option<u16>);

/// Longest lab run: 30 days of virtual time.
const MAX_LAB_DURATION: Duration = Duration::from_secs(30 * 86_400);

impl LabArgs {
    /// Check the combination and build the scenario.
    pub fn config(&self) -> Result<(LabConfig, KeeperRuns, Side), String> {
        let profile = self.nat.profile()?;
        if self.duration.is_zero() || self.duration > MAX_LAB_DURATION {
            return Err(format!(
                "--duration must be between 1s and 30days, got {}",
                humantime::format_duration(self.duration)
            ));
        }
        if self.rtt > Duration::from_secs(5) {
            return Err("--rtt must be at most 5s".into());
        }
        if let Some(every) = self.inbound_every {
            if every < Duration::from_secs(1) {
                return Err("--inbound-every must be at least 1s".into());
            }
        }
        let runs = match self.keeper {
            KeeperArg::Off => KeeperRuns::Off,
            KeeperArg::On => KeeperRuns::On,
            KeeperArg::Both => KeeperRuns::Both,
        };
        let side = match self.side {
            SideArg::Client => Side::Client,
            SideArg::Server => Side::Server,
        };
        Ok((
            LabConfig {
                profile,
                keepalive: self.keepalive.0,
                duration: self.duration,
                rtt: self.rtt,
                inbound_every: self.inbound_every,
                random_traffic: self.random_traffic,
                timeline: self.timeline,
            },
            runs,
            side,
        ))
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}); write e.g. 10s, 2m30s, 1h"))
}

fn parse_profile_name(s: &str) -> Result<ProfileName, String> {
    s.parse::<ProfileName>().map_err(|e| e.to_string())
}

fn parse_keepalive(s: &str) -> Result<KeepaliveArg, String> {
    if s.eq_ignore_ascii_case("off") || s == "0" {
        return Ok(KeepaliveArg(None));
    }
    // wg(8) takes plain seconds too.
    let d = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => parse_duration(s)?,
    };
    if d.subsec_nanos() != 0 {
        return Err(format!("`{s}`: PersistentKeepalive is whole seconds"));
    }
    match u16::try_from(d.as_secs()) {
        Ok(0) => Ok(KeepaliveArg(None)),
        Ok(v) => Ok(KeepaliveArg(Some(v))),
        Err(_) => Err(format!(
            "`{s}`: PersistentKeepalive is at most 65535 seconds"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn keepalive_values() {
        assert_eq!(parse_keepalive("150").unwrap(), KeepaliveArg(Some(150)));
        assert_eq!(parse_keepalive("2m30s").unwrap(), KeepaliveArg(Some(150)));
        assert_eq!(parse_keepalive("off").unwrap(), KeepaliveArg(None));
        assert!(parse_keepalive("1.5s").is_err());
        assert!(parse_keepalive("20h").is_err());
        assert!(parse_keepalive("soon").is_err());
    }

    #[test]
    fn pf_with_conntrack_overrides_is_refused() {
        let cli =
            Cli::try_parse_from(["wgkeep", "lab", "--profile", "pf", "--grace", "1s"]).unwrap();
        let Command::Lab(args) = cli.command else {
            panic!("lab")
        };
        assert!(args.config().unwrap_err().contains("pf"));
    }

    #[test]
    fn lab_random_traffic_takes_a_seed() {
        let lab = |extra: &[&str]| {
            let mut v = vec!["wgkeep", "lab"];
            v.extend_from_slice(extra);
            match Cli::try_parse_from(v).map(|c| c.command) {
                Ok(Command::Lab(args)) => Ok(args.config().unwrap().0.random_traffic),
                Ok(_) => panic!("lab"),
                Err(e) => Err(e.to_string()),
            }
        };
        assert_eq!(lab(&[]).unwrap(), None);
        assert_eq!(lab(&["--random-traffic", "42"]).unwrap(), Some(42));
        assert!(lab(&["--random-traffic", "x"]).is_err());
    }
}

#[cfg(test)]
mod agent_tests {
    use super::*;

    fn agent(args: &[&str]) -> Result<AgentConfig, String> {
        let mut v = vec!["wgkeep", "agent"];
        v.extend_from_slice(args);
        let cli = Cli::try_parse_from(v).map_err(|e| e.to_string())?;
        let Command::Agent(a) = cli.command else {
            panic!()
        };
        a.config()
    }

    #[test]
    fn defaults_are_linux_follow_up() {
        let c = agent(&["-i", "wg0"]).unwrap();
        assert_eq!(c.mode, Mode::FollowUp);
        assert_eq!(c.follow_up_delay, Duration::from_millis(2500));
        assert_eq!(c.rules, Profile::linux().rules);
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9588".parse().unwrap()));
    }

    #[test]
    fn bad_combinations() {
        assert!(agent(&[]).is_err());
        assert!(agent(&["-i", "wg0", "--follow-up-delay", "2s"])
            .unwrap_err()
            .contains("grace"));
        assert!(agent(&["-i", "wg0", "-i", "wg0"])
            .unwrap_err()
            .contains("twice"));
        assert!(agent(&["-i", "a/b"])
            .unwrap_err()
            .contains("interface name"));
        assert!(agent(&["-i", "wg0", "--nat-profile", "pf"])
            .unwrap_err()
            .contains("pf"));
        assert!(agent(&["-i", "wg0", "--metrics-listen", "localhost"])
            .unwrap_err()
            .contains("ADDR:PORT"));
        assert!(agent(&[
            "-i",
            "wg0",
            "--nat-profile",
            "routeros",
            "--timeouts-from",
            "x.json"
        ])
        .is_err());
        let c = agent(&[
            "-i",
            "wg0",
            "--nat-profile",
            "routeros",
            "--metrics-listen",
            "none",
        ])
        .unwrap();
        assert_eq!(c.metrics_listen, None);
        assert_eq!(c.rules, Profile::routeros().rules);
    }
}
