//! What the failure-detection bench concludes from what it saw, with no I/O: which members to
//! crash, how long every node took to remove them, which live members were removed by mistake
//! and when, and the summary line.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::watch::Book;
use super::Layout;
use crate::bench::figures::{latency, millis, Latencies};
use crate::bench::BenchError;

/// Seeds the choice of members that crash alone.
const VICTIM_SEED: u64 = 0x6d_656d_6265_7273;

/// The members to crash at once.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Victims {
    /// The address whose server stops, when `--kill` covers all of its members.
    pub address: Option<u32>,
    /// The members of that address.
    pub with_address: Vec<u32>,
    /// Members that crash one by one while their server lives on.
    pub alone: Vec<u32>,
}

impl Victims {
    /// Up to `kill` of the `alive` members: every member of the address with the fewest alive
    /// members if `kill` covers them, so a whole server stops too, and the rest one by one,
    /// picked at random (with a fixed seed, so runs compare) from the others, so they fall on
    /// every group and address.
    pub fn choose(layout: &Layout, alive: &[bool], kill: u32) -> Victims {
        let alive_on = |a: u32| (0..layout.members).filter(move |&n| alive[n as usize] && layout.address(n) == a);
        let address = (0..layout.addresses)
            .map(|a| (alive_on(a).count(), a))
            .filter(|&(count, _)| count > 0 && count <= kill as usize)
            .min()
            .map(|(_, a)| a);
        let with_address: Vec<u32> = address.map(|a| alive_on(a).collect()).unwrap_or_default();
        let rest: Vec<u32> =
            (0..layout.members).filter(|&n| alive[n as usize] && Some(layout.address(n)) != address).collect();
        let wanted = (kill as usize - with_address.len()).min(rest.len());
        let mut alone: Vec<u32> =
            rest.choose_multiple(&mut StdRng::seed_from_u64(VICTIM_SEED), wanted).copied().collect();
        alone.sort_unstable();
        Victims { address, with_address, alone }
    }

    pub fn len(&self) -> usize {
        self.with_address.len() + self.alone.len()
    }

    pub fn all(&self) -> impl Iterator<Item = u32> + '_ {
        self.with_address.iter().chain(&self.alone).copied()
    }
}

/// How long the cluster took to remove a set of crashed members from every node's view.
#[derive(Debug, PartialEq)]
pub(super) struct Detection {
    pub killed: usize,
    pub removed: usize,
    /// p50, p99 and max over the removed members; `None` if none was.
    pub latency: Option<[Duration; 3]>,
}

impl Detection {
    /// A member's detection latency is the time from the crash (`t0`) until the last node's
    /// view lost it; a member some node still shows was not removed.
    pub fn measure(
        vanished: &[Vec<Option<Instant>>],
        victims: impl Iterator<Item = u32>,
        t0: Instant,
    ) -> Result<Detection, BenchError> {
        let mut latencies = Latencies::new()?;
        let mut killed = 0;
        for n in victims {
            killed += 1;
            let last = vanished.iter().map(|node| node[n as usize]).collect::<Option<Vec<Instant>>>();
            if let Some(last) = last.and_then(|times| times.into_iter().max()) {
                latencies.record(last.saturating_duration_since(t0));
            }
        }
        let removed = latencies.len() as usize;
        Ok(Detection { killed, removed, latency: latencies.percentiles() })
    }

    /// `p50 2.6 s, p99 3.4 s, max 3.6 s (100/100 removed)`
    pub fn text(&self) -> String {
        let removed = format!("({}/{} removed)", self.removed, self.killed);
        match self.latency {
            Some([p50, p99, max]) => {
                format!("p50 {}, p99 {}, max {} {removed}", seconds(p50), seconds(p99), seconds(max))
            }
            None => format!("none {removed}"),
        }
    }

    pub fn json(&self) -> Value {
        let ms = |i: usize| self.latency.map(|l| millis(l[i]));
        json!({"killed": self.killed, "removed": self.removed, "p50_ms": ms(0), "p99_ms": ms(1), "max_ms": ms(2)})
    }
}

/// The part of the run a false eviction happened in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Phase {
    /// Before the steady phase: between the joins and the first views, or never seen on a node.
    Setup,
    Steady,
    /// While a node was paused, and the settling time after it resumed.
    Pause,
    /// After the members were crashed.
    Kill,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Setup => "setup",
            Phase::Steady => "steady",
            Phase::Pause => "pause",
            Phase::Kill => "kill",
        }
    }
}

/// When each phase began.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timeline {
    pub steady: Instant,
    pub pause: Option<Instant>,
    pub kill: Option<Instant>,
}

impl Timeline {
    fn phase(&self, at: Instant) -> Phase {
        if self.kill.is_some_and(|k| at >= k) {
            Phase::Kill
        } else if self.pause.is_some_and(|p| at >= p) {
            Phase::Pause
        } else if at >= self.steady {
            Phase::Steady
        } else {
            Phase::Setup
        }
    }
}

/// Live members removed from some node's view, counted once each, by the phase in which the
/// first node lost them. `live[n]`: member `n` was joined and never crashed.
pub(super) fn false_evictions(book: &Book, live: &[bool], timeline: &Timeline) -> BTreeMap<Phase, u64> {
    let mut counts = BTreeMap::new();
    for (n, _) in live.iter().enumerate().filter(|(_, &live)| live) {
        let first = book.vanished.iter().filter_map(|node| node[n]).min();
        let phase = match first {
            Some(at) => timeline.phase(at),
            None if book.present.iter().any(|node| !node[n]) => Phase::Setup,
            None => continue,
        };
        *counts.entry(phase).or_default() += 1;
    }
    counts
}

/// `0`, or `3 (setup 1, pause 2)`.
pub(super) fn false_evictions_text(counts: &BTreeMap<Phase, u64>) -> String {
    let total: u64 = counts.values().sum();
    if total == 0 {
        return "0".to_owned();
    }
    let phases: Vec<String> = counts.iter().map(|(phase, n)| format!("{} {n}", phase.name())).collect();
    format!("{total} ({})", phases.join(", "))
}

pub(super) fn false_evictions_json(counts: &BTreeMap<Phase, u64>) -> Value {
    let mut json = serde_json::Map::new();
    json.insert("total".into(), json!(counts.values().sum::<u64>()));
    for (phase, n) in counts {
        json.insert(phase.name().into(), json!(n));
    }
    Value::Object(json)
}

/// A detection time: `2.6 s`, or `620 ms` below a second.
pub(super) fn seconds(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        latency(d)
    }
}

/// The figures of the summary line.
pub(super) struct Summary {
    pub layout: Layout,
    pub interval: Duration,
    pub suspect_after: u32,
    pub detection: Detection,
    pub false_evictions: BTreeMap<Phase, u64>,
    pub cpu_cores: f64,
    pub probes_per_s: f64,
}

impl Summary {
    /// `fd: 10000 members on 8 addresses, interval 1s, suspect-after 3: detection p50 2.6 s, p99
    /// 3.4 s, max 3.6 s (100/100 removed), false evictions 0, probing CPU 0.41 cores, 9870 probes/s`
    pub fn line(&self) -> String {
        format!(
            "fd: {} members on {} addresses, interval {}, suspect-after {}: detection {}, false evictions {}, \
             probing CPU {:.2} cores, {:.0} probes/s",
            self.layout.members,
            self.layout.addresses,
            humantime::format_duration(self.interval),
            self.suspect_after,
            self.detection.text(),
            false_evictions_text(&self.false_evictions),
            self.cpu_cores,
            self.probes_per_s,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn layout(members: u32, addresses: u32) -> Layout {
        Layout { members, addresses, groups: 3 }
    }

    #[test]
    fn a_small_kill_spreads_over_groups_and_addresses_and_stops_no_server() {
        let l = Layout { members: 10_000, addresses: 8, groups: 10 };
        let v = Victims::choose(&l, &vec![true; 10_000], 100);
        assert_eq!(v.address, None);
        assert_eq!(v.alone.len(), 100);
        assert!(v.alone.windows(2).all(|w| w[0] < w[1]), "distinct and sorted");
        let addresses: BTreeSet<u32> = v.alone.iter().map(|&n| l.address(n)).collect();
        let groups: BTreeSet<u32> = v.alone.iter().map(|&n| l.group_of(n)).collect();
        assert_eq!((addresses.len(), groups.len()), (8, 10));
        assert_eq!(Victims::choose(&l, &vec![true; 10_000], 100), v, "the same every run");
    }

    #[test]
    fn a_large_kill_stops_the_smallest_server_and_crashes_the_rest_alone() {
        let l = layout(12, 3);
        let mut alive = [true; 12];
        // Address 1 (members 1, 4, 7, 10) has lost member 4 already: it is the smallest.
        alive[4] = false;
        let v = Victims::choose(&l, &alive, 5);
        assert_eq!(v.address, Some(1));
        assert_eq!(v.with_address, vec![1, 7, 10]);
        assert_eq!(v.alone.len(), 2);
        assert!(v.alone.iter().all(|&n| l.address(n) != 1 && alive[n as usize]));
        assert_eq!(v.len(), 5);
    }

    #[test]
    fn a_kill_beyond_the_members_takes_them_all() {
        let l = layout(6, 2);
        let v = Victims::choose(&l, &[true; 6], 100);
        assert_eq!(v.address, Some(0));
        assert_eq!(v.len(), 6);
    }

    #[test]
    fn detection_waits_for_the_last_node() {
        let t0 = Instant::now();
        let at = |ms: u64| Some(t0 + Duration::from_millis(ms));
        // Three nodes, four members; member 3 is still shown by node 2.
        let vanished = vec![
            vec![at(2000), at(2500), None, at(100)],
            vec![at(2100), at(2400), None, at(100)],
            vec![at(2600), at(2450), None, None],
        ];
        let d = Detection::measure(&vanished, [0, 1, 3].into_iter(), t0).expect("detection");
        assert_eq!((d.killed, d.removed), (3, 2));
        let [p50, _, max] = d.latency.expect("latencies");
        let near = |d: Duration, ms: u64| (d.as_secs_f64() * 1e3 - ms as f64).abs() < 5.0;
        assert!(near(p50, 2500), "{p50:?}");
        assert!(near(max, 2600), "{max:?}");
        assert_eq!(d.text(), "p50 2.5 s, p99 2.6 s, max 2.6 s (2/3 removed)");
    }

    #[test]
    fn no_removal_reads_none() {
        let d = Detection::measure(&[vec![None]], [0].into_iter(), Instant::now()).expect("detection");
        assert_eq!(d.text(), "none (0/1 removed)");
        assert_eq!(d.json()["p50_ms"], Value::Null);
    }

    #[test]
    fn false_evictions_are_counted_once_by_their_first_phase() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let timeline = Timeline { steady: s(10), pause: Some(s(20)), kill: Some(s(30)) };
        let mut book = Book::new(2, 6);
        book.present = vec![vec![true, false, false, true, false, true], vec![true, false, true, false, false, false]];
        book.vanished = vec![
            vec![None, Some(s(25)), Some(s(12)), None, Some(s(31)), None],
            vec![None, Some(s(15)), None, None, Some(s(31)), None],
        ];
        // Member 0 stayed; 1 left node 1 in steady state first; 2 in steady state; 3 never
        // showed on node 1; 4 was crashed; 5 was never joined.
        let live = [true, true, true, true, false, false];
        let counts = false_evictions(&book, &live, &timeline);
        assert_eq!(counts, BTreeMap::from([(Phase::Setup, 1), (Phase::Steady, 2)]));
        assert_eq!(false_evictions_text(&counts), "3 (setup 1, steady 2)");
        assert_eq!(false_evictions_json(&counts)["total"], 3);
        assert_eq!(false_evictions_text(&BTreeMap::new()), "0");
    }

    #[test]
    fn the_summary_line_has_every_figure() {
        let ms = Duration::from_millis;
        let summary = Summary {
            layout: layout(10_000, 8),
            interval: Duration::from_secs(1),
            suspect_after: 3,
            detection: Detection { killed: 100, removed: 100, latency: Some([ms(2_600), ms(3_400), ms(3_640)]) },
            false_evictions: BTreeMap::new(),
            cpu_cores: 0.414,
            probes_per_s: 9870.2,
        };
        assert_eq!(
            summary.line(),
            "fd: 10000 members on 8 addresses, interval 1s, suspect-after 3: detection p50 2.6 s, p99 3.4 s, \
             max 3.6 s (100/100 removed), false evictions 0, probing CPU 0.41 cores, 9870 probes/s"
        );
        assert_eq!(seconds(ms(620)), "620 ms");
    }
}
