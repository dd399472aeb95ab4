//! Seeded random traffic for the soak (`wgkeep lab --random-traffic SEED`).
//!
//! Bursts of data separated by idle gaps. A burst is the server pushing something (45%), the
//! client sending something (35%), or a request and its response (20%): 1–8 packets each way,
//! 0–200 ms apart, 32–1400 B each (the inner IPv4 packet). The idle gap before the next burst is
//! 0.1–10 s (50%), 10–120 s (35%) or 120–900 s (15%): some gaps outlive every stream timeout, so
//! the keepalive has to carry the entry through them. The same seed gives the same traffic.

use std::time::Duration;

/// Which way a data packet goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Dir {
    /// Server → client (through the NAT's reply direction).
    Inbound,
    /// Client → server.
    Outbound,
}

/// One data packet of a burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Packet {
    /// From the start of the burst.
    pub after: Duration,
    pub dir: Dir,
    /// Size of the inner IPv4 packet.
    pub size: usize,
}

/// The smallest inner packet: the lab's IPv4 + UDP header and a 4-byte sequence number.
pub(super) const MIN_SIZE: usize = 32;
const MAX_SIZE: usize = 1400;

/// A splitmix64 generator: small, seedable, and the same on every platform.
#[derive(Clone, Debug)]
pub(super) struct RandomTraffic {
    state: u64,
}

impl RandomTraffic {
    pub fn new(seed: u64) -> RandomTraffic {
        RandomTraffic { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (the modulo bias is far below anything the lab measures).
    fn uniform(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// The idle time before the next burst.
    pub fn gap(&mut self) -> Duration {
        let ms = match self.uniform(0, 99) {
            0..=49 => self.uniform(100, 10_000),
            50..=84 => self.uniform(10_000, 120_000),
            _ => self.uniform(120_000, 900_000),
        };
        Duration::from_millis(ms)
    }

    /// The packets of the next burst, in time order, into `out` (cleared first).
    pub fn burst(&mut self, out: &mut Vec<Packet>) {
        out.clear();
        let dirs: &[Dir] = match self.uniform(0, 99) {
            0..=44 => &[Dir::Inbound],
            45..=79 => &[Dir::Outbound],
            _ => &[Dir::Outbound, Dir::Inbound],
        };
        let mut at = Duration::ZERO;
        for &dir in dirs {
            for _ in 0..self.uniform(1, 8) {
                at += Duration::from_millis(self.uniform(0, 200));
                let size = self.uniform(MIN_SIZE as u64, MAX_SIZE as u64) as usize;
                out.push(Packet {
                    after: at,
                    dir,
                    size,
                });
            }
            // The response leaves after the request arrived and was handled.
            at += Duration::from_millis(self.uniform(50, 500));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_traffic_and_within_bounds() {
        let (mut a, mut b) = (RandomTraffic::new(7), RandomTraffic::new(7));
        let (mut pa, mut pb) = (Vec::new(), Vec::new());
        let mut long_gaps = 0;
        let mut dirs = [0u32; 2];
        for _ in 0..2000 {
            let g = a.gap();
            assert_eq!(g, b.gap());
            assert!(g >= Duration::from_millis(100) && g <= Duration::from_secs(900));
            long_gaps += u32::from(g > Duration::from_secs(180));
            a.burst(&mut pa);
            b.burst(&mut pb);
            assert_eq!(pa, pb);
            assert!(!pa.is_empty() && pa.len() <= 16);
            assert!(pa.windows(2).all(|w| w[0].after <= w[1].after));
            for p in &pa {
                assert!((MIN_SIZE..=MAX_SIZE).contains(&p.size));
                dirs[p.dir as usize] += 1;
            }
        }
        // Some idle gaps outlive a 180 s stream timeout; both directions occur.
        assert!(long_gaps > 100, "{long_gaps}");
        assert!(dirs.iter().all(|&n| n > 1000), "{dirs:?}");
        let (mut c, mut d) = (RandomTraffic::new(7), RandomTraffic::new(8));
        assert_ne!(
            (0..10).map(|_| c.gap()).collect::<Vec<_>>(),
            (0..10).map(|_| d.gap()).collect::<Vec<_>>()
        );
    }
}
