//! One timeout, searched with many NAT entries at once.
//!
//! Each NAT entry (a *slot*: one socket that did one traffic pattern and then went quiet) can
//! answer exactly one question: "is the timeout longer than `d`?", where `d` is the idle time at
//! which the reflector sends its check packet. The answer arrives at `idle_since + d`: a check
//! that arrives means the entry survived (`T > d`); one that does not means it had expired
//! (`T ≤ d`, plus the path's round trip).
//!
//! The classic method (RFC 5780 §4.6) asks one question at a time and waits for each: doubling,
//! then bisecting, 8–10 full timeouts. Here the questions overlap in time:
//!
//! - **Ladder.** Slot *k* asks about idle `p_k` (spaced by the resolution up to `r / (ρ − 1)`, then
//!   geometric with ratio ρ, up to `--max`). It is opened at `start + β·p_k`, so its answer comes
//!   at about `(1 + β)·p_k`: the first expiry is seen at about `(1 + β)·ρ·T` and leaves a bracket
//!   of width `(ρ − 1)·T`. Slots for points the bracket has already excluded are never opened.
//! - **Trailing slots**, opened all along at a spacing that grows with the elapsed time
//!   (`max(trail_min, κ·elapsed)`), so that whenever a bracket appears there are quiet entries of
//!   every age inside it. Nothing decides their question until they are needed: the question is
//!   sent to the reflector over the control socket, never on the quiet socket itself.
//! - **Refinement.** While the bracket `(lo, hi]` is wider than the resolution, every gap between
//!   known and pending points is split by the first ready slot whose age (plus the scheduling
//!   lead) passes the gap's middle: with many ages in flight each split costs a fraction of a
//!   second, not a timeout.
//!
//! The simulation tests (`planner::tests`) and the namespace end-to-end tests check the bound
//! `1.25·T + 10 s` over dozens of settings. The search never reads a clock: `now` is an argument.

use std::time::Duration;

use crate::Time;

/// How a search spends sockets and time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SearchParams {
    /// Stop when `hi − lo` is at most this.
    pub resolution: Duration,
    /// The largest idle time asked about; a survival there ends the search with `hi = None`.
    pub max: Duration,
    /// ρ: the ladder's ratio above `resolution / (ρ − 1)`.
    pub ladder_ratio: f64,
    /// β: a ladder slot for point `p` is opened `β·p` after the start.
    pub open_lead: f64,
    /// κ: trailing slots are opened every `max(trail_min, κ·elapsed)`.
    pub trail_share: f64,
    /// The smallest spacing of trailing slots.
    pub trail_min: Duration,
    /// A question must reach the reflector before its check is due: asked idle times are at
    /// least the slot's age plus this lead.
    pub ask_lead: Duration,
    /// Added to an expiry point: the entry's idle time at the NAT exceeds the reflector's by up
    /// to one round trip between them.
    pub death_margin: Duration,
    /// The most slots this search may open.
    pub budget: u32,
}

impl SearchParams {
    /// Parameters for the search whose time bound matters (the stream timeout, the handshake
    /// timeout): a fine ladder, many trailing slots. Tuned by simulation (see `BENCHMARKS.md`).
    pub fn primary(resolution: Duration, max: Duration, ask_lead: Duration) -> SearchParams {
        SearchParams {
            resolution,
            max,
            ladder_ratio: 1.12,
            open_lead: 0.03,
            trail_share: 0.12,
            trail_min: Duration::from_millis(500),
            ask_lead,
            death_margin: Duration::ZERO,
            budget: 96,
        }
    }

    /// Parameters for a search that only has to finish within the run (the unreplied timeout):
    /// a coarser ladder and fewer trailing slots.
    pub fn secondary(resolution: Duration, max: Duration, ask_lead: Duration) -> SearchParams {
        SearchParams {
            ladder_ratio: 1.2,
            open_lead: 0.05,
            trail_share: 0.2,
            budget: 64,
            ..SearchParams::primary(resolution, max, ask_lead)
        }
    }
}

/// A socket of this search, numbered from 0 in the order the search asked for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(pub u32);

#[derive(Clone, Copy, Debug, PartialEq)]
enum SlotState {
    /// Opened; the traffic pattern is under way.
    Opening,
    /// Quiet since `idle_since`, no question asked yet.
    Ready { idle_since: Time },
    /// Asked about idle `point`; the answer is pending.
    Asked { point: Duration },
    /// Answered, or lost.
    Spent,
}

#[derive(Clone, Copy, Debug)]
struct SlotInfo {
    state: SlotState,
    /// The ladder point this slot was opened for, while it is still meant for it.
    ladder: Option<Duration>,
}

/// The parallel search for one timeout.
#[derive(Clone, Debug)]
pub struct TimeoutSearch {
    params: SearchParams,
    start: Time,
    ladder: Vec<Duration>,
    next_ladder: usize,
    next_trail: Time,
    slots: Vec<SlotInfo>,
    lo: Duration,
    /// Expiry points (with the margin), the smallest above `lo` is `hi`.
    deaths: Vec<Duration>,
    last_now: Time,
    finished_at: Option<Time>,
}

impl TimeoutSearch {
    /// A search that starts at `start`.
    pub fn new(params: SearchParams, start: Time) -> TimeoutSearch {
        let r = params.resolution.as_secs_f64().max(0.001);
        let max = params.max.as_secs_f64();
        let rho = params.ladder_ratio.max(1.01);
        let mut ladder = Vec::new();
        let mut p = r;
        while p < max {
            ladder.push(Duration::from_secs_f64(p));
            p = if p < r / (rho - 1.0) { p + r } else { p * rho };
        }
        ladder.push(params.max);
        TimeoutSearch {
            params,
            start,
            ladder,
            next_ladder: 0,
            next_trail: start + params.trail_min,
            slots: Vec::new(),
            lo: Duration::ZERO,
            deaths: Vec::new(),
            last_now: start,
            finished_at: None,
        }
    }

    /// The bracket so far: the timeout lies in `(lo, hi]`; `hi` is `None` while no entry has been
    /// seen to expire (at the end: the timeout exceeds `max`).
    pub fn bracket(&self) -> (Duration, Option<Duration>) {
        (self.lo, self.hi())
    }

    fn hi(&self) -> Option<Duration> {
        self.deaths.iter().copied().filter(|d| *d > self.lo).min()
    }

    /// Whether the search has its answer (or can make no further progress).
    pub fn is_done(&self) -> bool {
        self.finished_at.is_some()
    }

    /// When the search finished.
    pub fn finished_at(&self) -> Option<Time> {
        self.finished_at
    }

    /// How many sockets the search asked for.
    pub fn slots_opened(&self) -> u32 {
        self.slots.len() as u32
    }

    fn width_ok(&self) -> bool {
        match self.hi() {
            Some(hi) => hi.saturating_sub(self.lo) <= self.params.resolution,
            None => self.lo >= self.params.max,
        }
    }

    fn budget_left(&self) -> bool {
        (self.slots.len() as u32) < self.params.budget
    }

    fn check_done(&mut self, now: Time) {
        if self.finished_at.is_some() {
            return;
        }
        let stuck = !self.budget_left()
            && !self.slots.iter().any(|s| {
                matches!(
                    s.state,
                    SlotState::Opening | SlotState::Ready { .. } | SlotState::Asked { .. }
                )
            });
        if self.width_ok() || stuck {
            self.finished_at = Some(now);
        }
    }

    /// A new socket should be opened now (the caller runs the pattern on it and reports
    /// [`on_ready`](Self::on_ready)).
    pub fn poll_open(&mut self, now: Time) -> Option<Slot> {
        self.last_now = self.last_now.max(now);
        if self.is_done() || !self.budget_left() {
            return None;
        }
        let hi = self.hi();
        // Ladder slots, in order; skip points the bracket has excluded.
        while let Some(&p) = self.ladder.get(self.next_ladder) {
            if hi.is_some_and(|hi| p >= hi) || p <= self.lo {
                self.next_ladder += 1;
                continue;
            }
            if self.open_time(p) <= now {
                self.next_ladder += 1;
                return Some(self.push_slot(Some(p)));
            }
            break;
        }
        if now >= self.next_trail {
            let elapsed = now.saturating_since(self.start);
            let spacing = elapsed
                .mul_f64(self.params.trail_share)
                .max(self.params.trail_min);
            self.next_trail = now + spacing;
            return Some(self.push_slot(None));
        }
        None
    }

    fn open_time(&self, p: Duration) -> Time {
        self.start + p.mul_f64(self.params.open_lead)
    }

    fn push_slot(&mut self, ladder: Option<Duration>) -> Slot {
        self.slots.push(SlotInfo {
            state: SlotState::Opening,
            ladder,
        });
        Slot(self.slots.len() as u32 - 1)
    }

    /// The slot's pattern is done: its entry has been quiet since `idle_since`.
    pub fn on_ready(&mut self, slot: Slot, idle_since: Time) {
        if let Some(s) = self.slots.get_mut(slot.0 as usize) {
            if s.state == SlotState::Opening {
                s.state = SlotState::Ready { idle_since };
            }
        }
    }

    /// The slot is lost (its pattern failed, or the reflector refused its question).
    pub fn on_void(&mut self, slot: Slot, now: Time) {
        if let Some(s) = self.slots.get_mut(slot.0 as usize) {
            s.state = SlotState::Spent;
        }
        self.check_done(now);
    }

    /// The answer to the question asked on `slot`: the check arrived (`survived`) or not.
    pub fn on_answer(&mut self, slot: Slot, survived: bool, now: Time) {
        let Some(s) = self.slots.get_mut(slot.0 as usize) else {
            return;
        };
        let SlotState::Asked { point } = s.state else {
            return;
        };
        s.state = SlotState::Spent;
        if survived {
            // A survival is certain; an expiry below it was a lost packet.
            self.lo = self.lo.max(point);
        } else {
            self.deaths.push(point + self.params.death_margin);
        }
        self.check_done(now);
    }

    /// The next question to send: `(slot, idle)`. Call until `None` after every change.
    pub fn poll_ask(&mut self, now: Time) -> Option<(Slot, Duration)> {
        self.last_now = self.last_now.max(now);
        if self.is_done() {
            return None;
        }
        let lead = self.params.ask_lead;
        let hi = self.hi();
        // Ladder slots ask their point when it comes due.
        for i in 0..self.slots.len() {
            let s = self.slots[i];
            let (SlotState::Ready { idle_since }, Some(p)) = (s.state, s.ladder) else {
                continue;
            };
            if hi.is_some_and(|hi| p >= hi) || p <= self.lo {
                // Excluded already: the slot joins the refinement pool.
                self.slots[i].ladder = None;
                continue;
            }
            let age = now.saturating_since(idle_since);
            if age + lead >= p {
                let point = p.max(age + lead);
                self.slots[i].state = SlotState::Asked { point };
                return Some((Slot(i as u32), point));
            }
        }
        let hi = hi?;
        // Refinement: split the widest-first gap that a ready slot can split now.
        let r = self.params.resolution;
        let marks = self.marks(hi);
        for w in marks.windows(2) {
            let (a, b) = (w[0], w[1]);
            if b.saturating_sub(a) <= r {
                continue;
            }
            let mid = a + (b - a) / 2;
            let mut best: Option<(usize, Duration)> = None;
            for (i, s) in self.slots.iter().enumerate() {
                let SlotState::Ready { idle_since } = s.state else {
                    continue;
                };
                if s.ladder.is_some() {
                    continue;
                }
                let q = now.saturating_since(idle_since) + lead;
                if q >= mid && q < b && best.is_none_or(|(_, bq)| q < bq) {
                    best = Some((i, q));
                }
            }
            if let Some((i, q)) = best {
                self.slots[i].state = SlotState::Asked { point: q };
                return Some((Slot(i as u32), q));
            }
        }
        None
    }

    /// Known bounds and pending points, sorted, between `lo` and `hi`.
    fn marks(&self, hi: Duration) -> Vec<Duration> {
        let mut marks = vec![self.lo, hi];
        for s in &self.slots {
            if let SlotState::Asked { point } = s.state {
                if point > self.lo && point < hi {
                    marks.push(point);
                }
            }
        }
        marks.sort();
        marks
    }

    /// When the search next wants to open a socket or ask a question.
    pub fn poll_timeout(&self) -> Option<Time> {
        if self.is_done() {
            return None;
        }
        let lead = self.params.ask_lead;
        let hi = self.hi();
        let mut next: Option<Time> = None;
        let mut consider = |t: Time| next = Some(next.map_or(t, |n: Time| n.min(t)));
        if self.budget_left() {
            if let Some(&p) = self.ladder[self.next_ladder.min(self.ladder.len())..]
                .iter()
                .find(|p| **p > self.lo && hi.is_none_or(|hi| **p < hi))
            {
                consider(self.open_time(p));
            }
            consider(self.next_trail);
        }
        for s in &self.slots {
            if let (SlotState::Ready { idle_since }, Some(p)) = (s.state, s.ladder) {
                consider((idle_since + p).saturating_sub(lead));
            }
        }
        if let Some(hi) = hi {
            let marks = self.marks(hi);
            for w in marks.windows(2) {
                let (a, b) = (w[0], w[1]);
                if b.saturating_sub(a) <= self.params.resolution {
                    continue;
                }
                let mid = a + (b - a) / 2;
                for s in &self.slots {
                    if let (SlotState::Ready { idle_since }, None) = (s.state, s.ladder) {
                        // The moment this slot's point passes the middle of the gap.
                        let t = (idle_since + mid).saturating_sub(lead);
                        if t + (b - mid) > self.last_now {
                            consider(t.max(self.last_now));
                        }
                    }
                }
            }
        }
        next
    }

    /// Progress for display: `(lo, hi, done)`.
    pub fn progress(&self) -> (Duration, Option<Duration>, bool) {
        (self.lo, self.hi(), self.is_done())
    }
}

/// The RFC 5780 §4.6 method, for comparison: one question at a time, each on a fresh entry,
/// doubling the idle time until an entry expires, then bisecting.
#[derive(Clone, Debug)]
pub struct SerialSearch {
    params: SearchParams,
    lo: Duration,
    hi: Option<Duration>,
    slots: u32,
    /// The slot in flight and its state.
    current: Option<(Slot, SlotState)>,
    finished_at: Option<Time>,
}

impl SerialSearch {
    /// A serial search.
    pub fn new(params: SearchParams) -> SerialSearch {
        SerialSearch {
            params,
            lo: Duration::ZERO,
            hi: None,
            slots: 0,
            current: None,
            finished_at: None,
        }
    }

    fn next_point(&self) -> Duration {
        let r = self.params.resolution;
        match self.hi {
            None if self.lo.is_zero() => r,
            None => (self.lo * 2).min(self.params.max),
            Some(hi) => self.lo + (hi - self.lo) / 2,
        }
    }

    fn check_done(&mut self, now: Time) {
        let done = match self.hi {
            Some(hi) => hi.saturating_sub(self.lo) <= self.params.resolution,
            None => self.lo >= self.params.max,
        } || self.slots >= self.params.budget && self.current.is_none();
        if done && self.finished_at.is_none() {
            self.finished_at = Some(now);
        }
    }
}

/// A search strategy: [`TimeoutSearch`] or [`SerialSearch`] behind one interface.
#[derive(Clone, Debug)]
pub enum Search {
    /// Many entries at once.
    Parallel(TimeoutSearch),
    /// One entry at a time (RFC 5780).
    Serial(SerialSearch),
}

impl Search {
    /// See [`TimeoutSearch::poll_open`].
    pub fn poll_open(&mut self, now: Time) -> Option<Slot> {
        match self {
            Search::Parallel(s) => s.poll_open(now),
            Search::Serial(s) => {
                if s.finished_at.is_some() || s.current.is_some() || s.slots >= s.params.budget {
                    return None;
                }
                let slot = Slot(s.slots);
                s.slots += 1;
                s.current = Some((slot, SlotState::Opening));
                Some(slot)
            }
        }
    }

    /// See [`TimeoutSearch::on_ready`].
    pub fn on_ready(&mut self, slot: Slot, idle_since: Time) {
        match self {
            Search::Parallel(s) => s.on_ready(slot, idle_since),
            Search::Serial(s) => {
                if let Some((cur, st)) = &mut s.current {
                    if *cur == slot && *st == SlotState::Opening {
                        *st = SlotState::Ready { idle_since };
                    }
                }
            }
        }
    }

    /// See [`TimeoutSearch::on_void`].
    pub fn on_void(&mut self, slot: Slot, now: Time) {
        match self {
            Search::Parallel(s) => s.on_void(slot, now),
            Search::Serial(s) => {
                if s.current.is_some_and(|(cur, _)| cur == slot) {
                    s.current = None;
                }
                s.check_done(now);
            }
        }
    }

    /// See [`TimeoutSearch::on_answer`].
    pub fn on_answer(&mut self, slot: Slot, survived: bool, now: Time) {
        match self {
            Search::Parallel(s) => s.on_answer(slot, survived, now),
            Search::Serial(s) => {
                let Some((cur, SlotState::Asked { point })) = s.current else {
                    return;
                };
                if cur != slot {
                    return;
                }
                s.current = None;
                if survived {
                    s.lo = s.lo.max(point);
                } else {
                    let d = point + s.params.death_margin;
                    s.hi = Some(s.hi.map_or(d, |h| h.min(d)));
                }
                s.check_done(now);
            }
        }
    }

    /// See [`TimeoutSearch::poll_ask`].
    pub fn poll_ask(&mut self, now: Time) -> Option<(Slot, Duration)> {
        match self {
            Search::Parallel(s) => s.poll_ask(now),
            Search::Serial(s) => {
                let point = s.next_point();
                let (slot, st) = s.current.as_mut()?;
                let SlotState::Ready { idle_since } = *st else {
                    return None;
                };
                let point = point.max(now.saturating_since(idle_since) + s.params.ask_lead);
                *st = SlotState::Asked { point };
                Some((*slot, point))
            }
        }
    }

    /// See [`TimeoutSearch::poll_timeout`]. The serial search acts only on events.
    pub fn poll_timeout(&self) -> Option<Time> {
        match self {
            Search::Parallel(s) => s.poll_timeout(),
            Search::Serial(_) => None,
        }
    }

    /// See [`TimeoutSearch::bracket`].
    pub fn bracket(&self) -> (Duration, Option<Duration>) {
        match self {
            Search::Parallel(s) => s.bracket(),
            Search::Serial(s) => (s.lo, s.hi),
        }
    }

    /// See [`TimeoutSearch::is_done`].
    pub fn is_done(&self) -> bool {
        self.finished_at().is_some()
    }

    /// See [`TimeoutSearch::finished_at`].
    pub fn finished_at(&self) -> Option<Time> {
        match self {
            Search::Parallel(s) => s.finished_at(),
            Search::Serial(s) => s.finished_at,
        }
    }

    /// See [`TimeoutSearch::slots_opened`].
    pub fn slots_opened(&self) -> u32 {
        match self {
            Search::Parallel(s) => s.slots_opened(),
            Search::Serial(s) => s.slots,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drive a search against an oracle timeout `t` with instant patterns and answers that arrive
    /// `det` after the check (expiries) or at it (survivals), stepping through `poll_timeout`.
    fn run(params: SearchParams, t: f64, det: f64) -> (f64, u32, Duration, Option<Duration>) {
        let mut s = Search::Parallel(TimeoutSearch::new(params, Time::ZERO));
        let mut now = Time::ZERO;
        let mut ready_at: Vec<Time> = Vec::new();
        let mut answers: Vec<(Time, Slot, bool)> = Vec::new();
        for _ in 0..1_000_000 {
            while let Some(slot) = s.poll_open(now) {
                s.on_ready(slot, now);
                ready_at.push(now);
            }
            while let Some((slot, d)) = s.poll_ask(now) {
                let survived = d.as_secs_f64() < t;
                let at = ready_at[slot.0 as usize] + d;
                let at = if survived {
                    at
                } else {
                    at + Duration::from_secs_f64(det)
                };
                answers.push((at, slot, survived));
            }
            if s.is_done() {
                break;
            }
            let next_answer = answers.iter().map(|a| a.0).min();
            let next = [s.poll_timeout(), next_answer]
                .into_iter()
                .flatten()
                .min()
                .expect("a search that is not done has something to wait for");
            assert!(next >= now, "time goes forward: {next:?} < {now:?}");
            now = next;
            answers.sort_by_key(|a| a.0);
            while answers.first().is_some_and(|a| a.0 <= now) {
                let (_, slot, survived) = answers.remove(0);
                s.on_answer(slot, survived, now);
            }
        }
        let (lo, hi) = s.bracket();
        (now.as_secs_f64(), s.slots_opened(), lo, hi)
    }

    #[test]
    fn brackets_contain_the_truth_within_the_bound() {
        let r = Duration::from_secs(1);
        let max = Duration::from_secs(600);
        let lead = Duration::from_millis(300);
        let mut worst: f64 = 0.0;
        for i in 0..300 {
            let t = 1.3 + i as f64 * 1.997;
            let (took, n, lo, hi) = run(SearchParams::primary(r, max, lead), t, 0.4);
            let hi = hi.expect("an expiry is seen below max");
            assert!(
                lo.as_secs_f64() < t && t <= hi.as_secs_f64(),
                "T={t}: ({lo:?}, {hi:?}]"
            );
            assert!(hi - lo <= r, "T={t}: ({lo:?}, {hi:?}]");
            assert!(n <= 96, "T={t}: {n} slots");
            worst = worst.max(took / (1.25 * t + 10.0));
        }
        // Simulated worst case 0.949 (ρ 1.12, β 0.03, κ 0.12, 96 slots): keep a margin.
        assert!(worst < 0.96, "worst ratio to the bound {worst}");
    }

    #[test]
    fn a_timeout_above_max_ends_with_no_upper_bound() {
        let p = SearchParams::primary(
            Duration::from_secs(1),
            Duration::from_secs(60),
            Duration::from_millis(300),
        );
        let (took, _, lo, hi) = run(p, 1000.0, 0.4);
        assert_eq!((lo, hi), (Duration::from_secs(60), None));
        assert!(took < 64.0, "{took}");
    }

    #[test]
    fn secondary_search_is_cheaper() {
        let r = Duration::from_secs(1);
        let max = Duration::from_secs(600);
        let lead = Duration::from_millis(300);
        for t in [5.4, 10.2, 30.3, 60.7] {
            let (_, n, lo, hi) = run(SearchParams::secondary(r, max, lead), t, 0.4);
            let hi = hi.unwrap();
            assert!(lo.as_secs_f64() < t && t <= hi.as_secs_f64());
            assert!(n <= 64, "T={t}: {n}");
        }
    }
}
