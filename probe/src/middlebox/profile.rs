//! Middlebox profiles: which rules a UDP NAT entry follows, and with which timeouts.
//!
//! Every constant cites where it comes from.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

/// Linux `nf_conntrack_udp_timeout` default: 30 s
/// (`net/netfilter/nf_conntrack_proto_udp.c`, `udp_timeouts[UDP_CT_UNREPLIED] = 30*HZ`).
pub const LINUX_UDP_TIMEOUT: Duration = Duration::from_secs(30);
/// Linux `nf_conntrack_udp_timeout_stream` default: 120 s
/// (`udp_timeouts[UDP_CT_REPLIED] = 120*HZ`; 180 s in kernels before 6.x).
pub const LINUX_UDP_TIMEOUT_STREAM: Duration = Duration::from_secs(120);
/// The stream grace period: `ct->proto.udp.stream_ts = 2 * HZ + jiffies` when the entry is created;
/// a packet promotes only when `time_after(jiffies, stream_ts)` (kernel commit d535c8a69c19, 2018).
/// It is not a sysctl: every Linux-based middlebox has it.
pub const LINUX_STREAM_GRACE: Duration = Duration::from_secs(2);
/// RouterOS 7 `/ip firewall connection tracking` defaults `udp-timeout=10s`
/// (the seed thread's printout, RouterOS 7.10).
pub const ROUTEROS_UDP_TIMEOUT: Duration = Duration::from_secs(10);
/// RouterOS 7 `udp-stream-timeout=3m`.
pub const ROUTEROS_UDP_STREAM_TIMEOUT: Duration = Duration::from_secs(180);
/// OpenWrt `/etc/sysctl.d/10-default.conf`: `net.netfilter.nf_conntrack_udp_timeout=60`.
pub const OPENWRT_UDP_TIMEOUT: Duration = Duration::from_secs(60);
/// OpenWrt `net.netfilter.nf_conntrack_udp_timeout_stream=180`.
pub const OPENWRT_UDP_TIMEOUT_STREAM: Duration = Duration::from_secs(180);
/// pf `udp.first` default 60 s (pf.conf(5), FreeBSD and OpenBSD).
pub const PF_UDP_FIRST: Duration = Duration::from_secs(60);
/// pf `udp.single` default 30 s: one side has sent more than one packet, the other none.
pub const PF_UDP_SINGLE: Duration = Duration::from_secs(30);
/// pf `udp.multiple` default 60 s: both sides have sent packets.
pub const PF_UDP_MULTIPLE: Duration = Duration::from_secs(60);

/// When conntrack sets `[ASSURED]` on a UDP entry. It only decides early-drop under table
/// pressure, never a timeout, but it is what `conntrack -L` and RouterOS show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AssuredRule {
    /// Current kernels (verified on 6.18): only a stream refresh sets it
    /// (`stream = (status & IPS_ASSURED) == 0` inside the `time_after` branch).
    OnStream,
    /// Older kernels (RouterOS 7 runs 5.6): every refresh after a reply sets it, so an entry
    /// can be `[ASSURED]` on the short timeout (the seed's `SAC ... timeout=8s`).
    OnAnyReplied,
}

/// Linux conntrack UDP rules (`nf_conntrack_udp_packet`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ConntrackTimeouts {
    /// Timeout of an entry that has not been promoted (`nf_conntrack_udp_timeout`).
    #[serde(with = "secs")]
    pub unreplied: Duration,
    /// Timeout after a promoting packet (`nf_conntrack_udp_timeout_stream`).
    #[serde(with = "secs")]
    pub stream: Duration,
    /// A packet promotes only when it passes strictly later than `first + grace`.
    #[serde(with = "secs")]
    pub grace: Duration,
    /// When `[ASSURED]` is set.
    pub assured: AssuredRule,
}

/// BSD pf UDP rules (`pf_test_state` for UDP in `sys/net/pf.c`): per-side states
/// NO_TRAFFIC → SINGLE → MULTIPLE, no grace rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct PfTimeouts {
    /// `udp.first`: after the packet that created the state.
    #[serde(with = "secs")]
    pub first: Duration,
    /// `udp.single`: later packets while one side has not sent.
    #[serde(with = "secs")]
    pub single: Duration,
    /// `udp.multiple`: both sides have sent.
    #[serde(with = "secs")]
    pub multiple: Duration,
}

/// The rules a middlebox applies to a UDP entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "rules", rename_all = "kebab-case")]
pub enum Rules {
    /// Linux conntrack and everything built on it (RouterOS, OpenWrt, most home routers).
    Conntrack(ConntrackTimeouts),
    /// FreeBSD / OpenBSD pf (pfSense, OPNsense).
    Pf(PfTimeouts),
}

impl Rules {
    /// The longest timeout an entry can be kept on by one side's periodic packets once the
    /// keeper has done its part: the stream timeout for conntrack (after a promoting follow-up),
    /// `udp.multiple` for pf (both sides have sent during the handshake).
    pub fn sustained_timeout(&self) -> Duration {
        match self {
            Rules::Conntrack(t) => t.stream,
            Rules::Pf(t) => t.multiple,
        }
    }

    /// The timeout a new entry gets from its first packet.
    pub fn initial_timeout(&self) -> Duration {
        match self {
            Rules::Conntrack(t) => t.unreplied,
            Rules::Pf(t) => t.first,
        }
    }

    /// The conntrack rules, if these are conntrack rules.
    pub fn conntrack(&self) -> Option<&ConntrackTimeouts> {
        match self {
            Rules::Conntrack(t) => Some(t),
            Rules::Pf(_) => None,
        }
    }
}

/// A named set of rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProfileName {
    /// Linux defaults: 30 s / 120 s / 2 s.
    Linux,
    /// MikroTik RouterOS 7: 10 s / 180 s / 2 s.
    RouterOs,
    /// OpenWrt: 60 s / 180 s / 2 s.
    OpenWrt,
    /// BSD pf: first 60 s, single 30 s, multiple 60 s.
    Pf,
    /// Timeouts given by hand.
    Custom,
}

impl ProfileName {
    /// Every name that parses, for help texts and errors.
    pub const ALL: [ProfileName; 5] = [
        ProfileName::Linux,
        ProfileName::RouterOs,
        ProfileName::OpenWrt,
        ProfileName::Pf,
        ProfileName::Custom,
    ];

    /// The lower-case name used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileName::Linux => "linux",
            ProfileName::RouterOs => "routeros",
            ProfileName::OpenWrt => "openwrt",
            ProfileName::Pf => "pf",
            ProfileName::Custom => "custom",
        }
    }
}

impl fmt::Display for ProfileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for an unknown profile name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown NAT profile `{0}`: expected one of linux, routeros, openwrt, pf, custom")]
pub struct UnknownProfile(pub String);

impl FromStr for ProfileName {
    type Err = UnknownProfile;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProfileName::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownProfile(s.to_owned()))
    }
}

/// Errors when building a profile from user input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// A conntrack timeout override was given for pf.
    #[error(
        "--udp-timeout, --udp-stream-timeout and --grace describe Linux conntrack; the pf profile \
         has no such timeouts (it uses first 60 s, single 30 s, multiple 60 s)"
    )]
    OverrideOnPf,
    /// A timeout of zero.
    #[error("{0} must be longer than zero")]
    Zero(&'static str),
    /// The custom profile needs both timeouts.
    #[error("the custom profile needs --udp-timeout and --udp-stream-timeout")]
    CustomIncomplete,
}

/// Overrides of the conntrack timeouts, e.g. from `--udp-timeout`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `nf_conntrack_udp_timeout`.
    pub unreplied: Option<Duration>,
    /// `nf_conntrack_udp_timeout_stream`.
    pub stream: Option<Duration>,
    /// The grace period (2 s in every Linux kernel; other values model other middleboxes).
    pub grace: Option<Duration>,
}

impl Overrides {
    /// Whether anything is overridden.
    pub fn is_empty(&self) -> bool {
        self.unreplied.is_none() && self.stream.is_none() && self.grace.is_none()
    }
}

/// A middlebox profile: its name and its rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Profile {
    /// The name; `Custom` once any timeout was overridden.
    pub name: ProfileName,
    /// The rules.
    pub rules: Rules,
}

impl Profile {
    /// Linux defaults.
    pub const fn linux() -> Profile {
        Profile {
            name: ProfileName::Linux,
            rules: Rules::Conntrack(ConntrackTimeouts {
                unreplied: LINUX_UDP_TIMEOUT,
                stream: LINUX_UDP_TIMEOUT_STREAM,
                grace: LINUX_STREAM_GRACE,
                assured: AssuredRule::OnStream,
            }),
        }
    }

    /// MikroTik RouterOS 7 defaults.
    pub const fn routeros() -> Profile {
        Profile {
            name: ProfileName::RouterOs,
            rules: Rules::Conntrack(ConntrackTimeouts {
                unreplied: ROUTEROS_UDP_TIMEOUT,
                stream: ROUTEROS_UDP_STREAM_TIMEOUT,
                grace: LINUX_STREAM_GRACE,
                assured: AssuredRule::OnAnyReplied,
            }),
        }
    }

    /// OpenWrt defaults.
    pub const fn openwrt() -> Profile {
        Profile {
            name: ProfileName::OpenWrt,
            rules: Rules::Conntrack(ConntrackTimeouts {
                unreplied: OPENWRT_UDP_TIMEOUT,
                stream: OPENWRT_UDP_TIMEOUT_STREAM,
                grace: LINUX_STREAM_GRACE,
                assured: AssuredRule::OnStream,
            }),
        }
    }

    /// BSD pf defaults.
    pub const fn pf() -> Profile {
        Profile {
            name: ProfileName::Pf,
            rules: Rules::Pf(PfTimeouts {
                first: PF_UDP_FIRST,
                single: PF_UDP_SINGLE,
                multiple: PF_UDP_MULTIPLE,
            }),
        }
    }

    /// Linux conntrack rules with the given timeouts.
    pub const fn conntrack(unreplied: Duration, stream: Duration, grace: Duration) -> Profile {
        Profile {
            name: ProfileName::Custom,
            rules: Rules::Conntrack(ConntrackTimeouts {
                unreplied,
                stream,
                grace,
                assured: AssuredRule::OnStream,
            }),
        }
    }

    /// The profile of that name with `overrides` applied. `Custom` is the Linux rules with
    /// both timeouts given; any override turns a named profile into `Custom`.
    pub fn build(name: ProfileName, overrides: Overrides) -> Result<Profile, ProfileError> {
        let base = match name {
            ProfileName::Linux => Profile::linux(),
            ProfileName::RouterOs => Profile::routeros(),
            ProfileName::OpenWrt => Profile::openwrt(),
            ProfileName::Pf if overrides.is_empty() => return Ok(Profile::pf()),
            ProfileName::Pf => return Err(ProfileError::OverrideOnPf),
            ProfileName::Custom => {
                if overrides.unreplied.is_none() || overrides.stream.is_none() {
                    return Err(ProfileError::CustomIncomplete);
                }
                Profile::linux()
            }
        };
        if overrides.is_empty() {
            return Ok(base);
        }
        let Rules::Conntrack(mut t) = base.rules else {
            unreachable!("pf returned above")
        };
        for (value, what) in [
            (overrides.unreplied, "--udp-timeout"),
            (overrides.stream, "--udp-stream-timeout"),
            (overrides.grace, "--grace"),
        ] {
            if value == Some(Duration::ZERO) {
                return Err(ProfileError::Zero(what));
            }
        }
        t.unreplied = overrides.unreplied.unwrap_or(t.unreplied);
        t.stream = overrides.stream.unwrap_or(t.stream);
        t.grace = overrides.grace.unwrap_or(t.grace);
        Ok(Profile {
            name: ProfileName::Custom,
            rules: Rules::Conntrack(t),
        })
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rules {
            Rules::Conntrack(t) => write!(
                f,
                "{} (conntrack: udp-timeout {}s, stream {}s, grace {}s)",
                self.name,
                t.unreplied.as_secs_f64(),
                t.stream.as_secs_f64(),
                t.grace.as_secs_f64()
            ),
            Rules::Pf(t) => write!(
                f,
                "{} (pf: first {}s, single {}s, multiple {}s)",
                self.name,
                t.first.as_secs_f64(),
                t.single.as_secs_f64(),
                t.multiple.as_secs_f64()
            ),
        }
    }
}

mod secs {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in ProfileName::ALL {
            assert_eq!(p.as_str().parse::<ProfileName>().unwrap(), p);
        }
        assert_eq!(
            "RouterOS".parse::<ProfileName>().unwrap(),
            ProfileName::RouterOs
        );
        assert!("mikrotik".parse::<ProfileName>().is_err());
    }

    #[test]
    fn overrides_make_custom_and_pf_refuses_them() {
        let p = Profile::build(
            ProfileName::RouterOs,
            Overrides {
                unreplied: Some(Duration::from_secs(20)),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(p.name, ProfileName::Custom);
        let t = p.rules.conntrack().unwrap();
        assert_eq!(
            (t.unreplied, t.stream),
            (Duration::from_secs(20), Duration::from_secs(180))
        );
        assert_eq!(
            Profile::build(
                ProfileName::Pf,
                Overrides {
                    grace: Some(Duration::from_secs(1)),
                    ..Overrides::default()
                }
            ),
            Err(ProfileError::OverrideOnPf)
        );
        assert_eq!(
            Profile::build(ProfileName::Custom, Overrides::default()),
            Err(ProfileError::CustomIncomplete)
        );
        assert_eq!(
            Profile::build(
                ProfileName::Linux,
                Overrides {
                    stream: Some(Duration::ZERO),
                    ..Overrides::default()
                }
            ),
            Err(ProfileError::Zero("--udp-stream-timeout"))
        );
    }
}
