//! The command line: clap derive, one subcommand per capability that works.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use wgkeep_probe::middlebox::{Overrides, Profile, ProfileName};

use crate_keeper::Side;

// The binary re-exports the library's modules under these names.
use wgkeep_agent::keeper as crate_keeper;
use wgkeep_agent::lab::{KeeperRuns, LabConfig};

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
}

const LAB_EXAMPLES: &str = "\
Examples:
  wgkeep lab                                  # the RouterOS story: PersistentKeepalive 150 s, 1 h
  wgkeep lab --profile linux --keepalive 25s  # Linux defaults, a common keepalive
  wgkeep lab --side server                    # wgkeep on the server only
  wgkeep lab --udp-timeout 5s --udp-stream-timeout 60s --duration 10m --timeline
  wgkeep lab --inbound-every 30s --json       # also send real server -> client data

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
        let Command::Lab(args) = cli.command;
        assert!(args.config().unwrap_err().contains("pf"));
    }
}
