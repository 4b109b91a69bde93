//! A fleet of agents against one provider, in simulated time.
//!
//! `cargo run --release --example fleet -- --nodes 10000 --keys 20 --scenario all`
//!
//! Every node runs the agent's own decision code, not a copy: the provider-wide limiter
//! (`cache::limits::Gate`: `max_concurrent`, `rate`, misses before renewals, `Retry-After`
//! pauses), the renewal schedule (`cache::refresh_in`), the hand-out floor
//! (`cache::hand_out_floor`), the backoff of failed renewals (`cache::backoff`) and the resumption
//! of restored tokens (`cache::persist::resume_in`). Around them the simulation plays what the
//! agent's tasks do with those decisions (the refresher, a miss waiting at most `upstream_timeout`
//! for a turn, coalescing per key) and what the rest of the world does: each workload asks for its
//! key whenever it holds no token it may use, and comes back after the `Retry-After` the agent
//! answered a refusal with (plus up to 1 s); the provider serves `--capacity` exchanges per second
//! (a fixed window per second) and answers 429 with `Retry-After` above that, after 50 ms.
//!
//! Scenarios: `steady` (warm caches, an hour), `cold` (every node starts with an empty cache at
//! once), `restart` (every node restarts at once after 30 s down, with `persist_tokens`),
//! `outage` (the provider refuses every connection for 5 minutes, then recovers), `all`.
//! `--per-second` prints each second's attempted, accepted and refused exchanges as CSV; `--phase even`
//! starts node i's bucket i/nodes full (slots a coordinator would assign) instead of at random.
//! Each node places its renewals with the agent's own `cache::limits::Spacing` (a turn of its
//! `rate` apart, on slots whose phase the node keeps); `--spacing off` places them at the random
//! time of their jitter band only, as the agent did before (for comparison).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use cortexid::cache::limits::{Gate, Limits, Poll, Spacing, Want};
use cortexid::cache::persist::resume_in;
use cortexid::cache::{RefreshSettings, backoff, hand_out_floor, renewal_retry_in};
use cortexid::config::Rate;
use tokio::time::Instant;

const US: u64 = 1_000_000;
const LATENCY: u64 = 50_000;
/// `upstream_timeout`: how long a miss waits for a turn before its caller is told to retry.
const MISS_WAIT: u64 = 10 * US;
const WARM_UP: u64 = 600 * US;
const DOWNTIME: u64 = 30 * US;
const OUTAGE: u64 = 300 * US;
/// `--rate auto`: each node's rate is this fraction of the provider's capacity divided by the nodes.
const SHARE: f64 = 0.9;

#[derive(Clone)]
struct Opts {
    nodes: usize,
    keys: usize,
    lifetime: Duration,
    capacity: u32,
    rate: Option<Rate>,
    max_concurrent: u32,
    retry_after: u64,
    seed: u64,
    per_second: bool,
    /// `--phase even`: node i's bucket starts i/nodes full (slots assigned by a coordinator)
    /// instead of at a random fill (what an agent alone can do).
    even_phase: bool,
    /// `--spacing off`: renewals at the random time of their jitter band only, as the agent placed
    /// them before `Spacing` (for comparison; the agent always spaces them with a `rate`).
    unspaced: bool,
    trace: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Reason {
    Miss,
    Renewal,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Outcome {
    Accepted,
    Refused,
    Down,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Ev {
    /// The workload asks for its key.
    Want { node: u32, key: u32 },
    /// The refresher's timer (stale unless `epoch` matches).
    Renew { node: u32, key: u32, epoch: u32 },
    /// The node's gate asked to be polled again.
    Wake { node: u32 },
    /// A miss gives up waiting for a turn.
    GiveUp { node: u32, ticket: u64 },
    Response {
        node: u32,
        key: u32,
        reason: Reason,
        outcome: Outcome,
    },
}

#[derive(Clone, Default)]
struct Key {
    expires: Option<u64>,
    /// When the refresher plans the next renewal (what persist_tokens saves).
    planned: Option<u64>,
    epoch: u32,
    failures: u32,
    busy: bool,
    served_at: Option<u64>,
    lapsed: bool,
    /// Since when the key's workload has found no token (its first lapse), until it is served.
    lapsed_since: Option<u64>,
    /// With `--trace`: what happened to this key (printed for the keys that lapsed).
    log: Vec<String>,
}

struct Node {
    gate: Gate,
    /// Where the agent places its renewals (`Cache`'s refresher, through its limiter).
    spacing: Spacing,
    tickets: Vec<(u64, u32, Reason)>,
    wake: Option<u64>,
    keys: Vec<Key>,
}

#[derive(Default, Clone, Copy)]
struct Second {
    attempted: u32,
    renewals: u32,
    accepted: u32,
    refused: u32,
}

struct Sim {
    o: Opts,
    settings: RefreshSettings,
    base: Instant,
    now: u64,
    seq: u64,
    heap: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    nodes: Vec<Node>,
    rng: fastrand::Rng,
    seconds: Vec<Second>,
    window: (u64, u32),
    down: Option<(u64, u64)>,
    /// Keys that had a token and whose workload then asked while the agent held none it may
    /// hand out (each key counted once).
    lapsed: u64,
    /// How long each lapsed key went without a token, once it was served again.
    without_token: Vec<u64>,
}

impl Sim {
    fn new(o: &Opts) -> Sim {
        let settings = RefreshSettings {
            refresh_at: 0.8,
            refresh_jitter: 0.05,
            min_remaining: Duration::from_secs(30),
            idle_expiry: Duration::from_secs(1800),
        };
        let mut sim = Sim {
            o: o.clone(),
            settings,
            // Far enough from the clock's start that a warm key's issue (before 0) is an Instant.
            base: Instant::now() + 4 * o.lifetime,
            now: 0,
            seq: 0,
            heap: BinaryHeap::new(),
            nodes: Vec::new(),
            rng: fastrand::Rng::with_seed(o.seed),
            seconds: Vec::new(),
            window: (0, 0),
            down: None,
            lapsed: 0,
            without_token: Vec::new(),
        };
        sim.nodes = (0..o.nodes)
            .map(|i| Node {
                gate: sim.new_gate(i),
                spacing: Spacing::new(sim.base, sim.rng.f64()),
                tickets: Vec::new(),
                wake: None,
                keys: vec![Key::default(); o.keys],
            })
            .collect();
        sim
    }

    fn new_gate(&mut self, node: usize) -> Gate {
        let fill = match self.o.even_phase {
            true => node as f64 / self.o.nodes as f64,
            false => self.rng.f64(),
        };
        Gate::new(Limits {
            max_concurrent: Some(self.o.max_concurrent),
            rate: self.o.rate,
        })
        .with_fill(fill)
    }

    fn at(&self, t: u64) -> Instant {
        self.base + Duration::from_micros(t)
    }

    /// Simulated time of `i`, rounded up (a wake-up never comes before the gate's time).
    fn micros(&self, i: Instant) -> u64 {
        i.saturating_duration_since(self.base).as_nanos().div_ceil(1000) as u64
    }

    fn push(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((t.max(self.now), self.seq, ev)));
    }

    /// With `--trace`, notes `what` in the key's log at the current time (seconds).
    fn note(&mut self, node: u32, key: u32, what: impl FnOnce() -> String) {
        if self.o.trace {
            let t = self.now as f64 / US as f64;
            let line = format!("{t:9.3} {}", what());
            self.nodes[node as usize].keys[key as usize].log.push(line);
        }
    }

    fn lifetime(&self) -> u64 {
        self.o.lifetime.as_micros() as u64
    }

    fn floor(&self) -> u64 {
        hand_out_floor(self.o.lifetime, self.settings.min_remaining, Duration::ZERO).as_micros() as u64
    }

    fn second(&mut self) -> &mut Second {
        let s = (self.now / US) as usize;
        if self.seconds.len() <= s {
            self.seconds.resize(s + 1, Second::default());
        }
        &mut self.seconds[s]
    }

    /// Keys warm as in a steady state: each node has been running for three renewal periods
    /// before 0, its keys first issued at random times in the first of them, and every renewal
    /// placed by the node's `Spacing` when it was renewed, as its refresher does (renewals before
    /// 0 are taken to go at their planned time); each key's token and next renewal are those left
    /// at 0.
    fn warm(&mut self) {
        let l = self.lifetime();
        let turn = self.turn();
        let period = (l as f64 * self.settings.refresh_at) as u64;
        for n in 0..self.nodes.len() {
            // (micros before 0, key) of every issue still to place, latest first out of the heap.
            let mut issues: BinaryHeap<(u64, usize)> = (0..self.o.keys)
                .map(|k| (2 * period + self.rng.u64(0..period), k))
                .collect();
            while let Some((ago, k)) = issues.pop() {
                let issued = self.base - Duration::from_micros(ago);
                let unit = self.rng.f64() * 2.0 - 1.0;
                let at = self.nodes[n]
                    .spacing
                    .place(issued, issued, self.o.lifetime, &self.settings, turn, unit);
                if at < self.base {
                    issues.push(((self.base - at).as_micros() as u64, k));
                    continue;
                }
                let planned = self.micros(at);
                let key = &mut self.nodes[n].keys[k];
                key.expires = Some(l.saturating_sub(ago));
                key.planned = Some(planned);
                key.served_at = Some(0);
                let epoch = key.epoch;
                self.push(
                    planned,
                    Ev::Renew {
                        node: n as u32,
                        key: k as u32,
                        epoch,
                    },
                );
            }
        }
    }

    /// One token of the node's `rate`: what the agent spaces renewals by.
    fn turn(&self) -> Option<Duration> {
        self.o.rate.filter(|_| !self.o.unspaced).map(|r| r.per / r.count.max(1))
    }

    fn run_until(&mut self, end: u64) {
        while let Some(Reverse((t, _, _))) = self.heap.peek() {
            if *t > end {
                break;
            }
            let Some(Reverse((t, _, ev))) = self.heap.pop() else {
                break;
            };
            self.now = t;
            self.handle(ev);
        }
        self.now = end;
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Want { node, key } => {
                let floor = self.floor();
                let k = &mut self.nodes[node as usize].keys[key as usize];
                let usable = k.expires.is_some_and(|e| e > self.now + floor);
                if !usable && k.served_at.is_some() && !k.lapsed {
                    k.lapsed = true;
                    k.lapsed_since = Some(self.now);
                    self.lapsed += 1;
                    let expires = k.expires;
                    let busy = k.busy;
                    self.note(node, key, || {
                        format!(
                            "LAPSED: no token to hand out (expires at {:?} s, busy {busy})",
                            expires.map(|e| e / US)
                        )
                    });
                }
                let k = &self.nodes[node as usize].keys[key as usize];
                if !usable && !k.busy {
                    self.enqueue(node, key, Reason::Miss);
                }
            }
            Ev::Renew { node, key, epoch } => {
                let floor = self.floor();
                let now = self.now;
                let k = &self.nodes[node as usize].keys[key as usize];
                if k.epoch != epoch || k.busy {
                    return;
                }
                match k.expires {
                    Some(e) if e > now => {
                        let deadline = e.saturating_sub(floor) as f64 / US as f64;
                        let failures = k.failures;
                        self.note(node, key, || {
                            format!("renewal due (failures {failures}), deadline {deadline:.1}")
                        });
                        self.enqueue(node, key, Reason::Renewal)
                    }
                    _ => {
                        // Expired: the refresher stops; the workload's next request is a miss.
                        self.push(now, Ev::Want { node, key });
                    }
                }
                let _ = floor;
            }
            Ev::Wake { node } => {
                let n = &mut self.nodes[node as usize];
                if n.wake.is_some_and(|w| w <= self.now) {
                    n.wake = None;
                }
                self.pump(node);
            }
            Ev::GiveUp { node, ticket } => {
                let now = self.at(self.now);
                let n = &mut self.nodes[node as usize];
                if let Some(told) = n.gate.give_up(ticket, now) {
                    let Some(i) = n.tickets.iter().position(|t| t.0 == ticket) else {
                        return;
                    };
                    let (_, key, _) = n.tickets.swap_remove(i);
                    let k = &mut n.keys[key as usize];
                    k.busy = false;
                    let wait = told.as_micros() as u64 + self.rng.u64(0..US);
                    self.push(self.now + wait, Ev::Want { node, key });
                }
            }
            Ev::Response {
                node,
                key,
                reason,
                outcome,
            } => self.response(node, key, reason, outcome),
        }
    }

    fn enqueue(&mut self, node: u32, key: u32, reason: Reason) {
        let now = self.at(self.now);
        let floor = self.floor();
        let n = &mut self.nodes[node as usize];
        let k = &mut n.keys[key as usize];
        k.busy = true;
        let want = match (reason, k.expires) {
            (Reason::Renewal, Some(e)) => Want::Renewal {
                deadline: self.base + Duration::from_micros(e.saturating_sub(floor)),
                lifetime: self.o.lifetime,
            },
            _ => Want::Miss,
        };
        let ticket = n.gate.enqueue(want, now);
        n.tickets.push((ticket, key, reason));
        if reason == Reason::Miss {
            self.push(self.now + MISS_WAIT, Ev::GiveUp { node, ticket });
        }
        self.pump(node);
    }

    fn pump(&mut self, node: u32) {
        loop {
            let now = self.at(self.now);
            let poll = self.nodes[node as usize].gate.poll(now);
            match poll {
                Poll::Go(ticket) => {
                    let n = &mut self.nodes[node as usize];
                    let Some(i) = n.tickets.iter().position(|t| t.0 == ticket) else {
                        continue;
                    };
                    let (_, key, reason) = n.tickets.swap_remove(i);
                    let outcome = self.provider();
                    let queued = self.nodes[node as usize].gate.queued();
                    self.note(node, key, || {
                        format!("{reason:?} sent: {outcome:?} ({queued} still queued on the node)")
                    });
                    if reason == Reason::Renewal {
                        self.second().renewals += 1;
                    }
                    self.push(
                        self.now + LATENCY,
                        Ev::Response {
                            node,
                            key,
                            reason,
                            outcome,
                        },
                    );
                }
                Poll::WaitUntil(t) => {
                    let t = self.micros(t);
                    let n = &mut self.nodes[node as usize];
                    if n.wake.is_none_or(|w| w > t || w < self.now) {
                        n.wake = Some(t);
                        self.push(t, Ev::Wake { node });
                    }
                    return;
                }
                Poll::Idle => return,
            }
        }
    }

    /// The provider at its capacity: a fixed window per second.
    fn provider(&mut self) -> Outcome {
        let now = self.now;
        let capacity = self.o.capacity;
        self.second().attempted += 1;
        if self.down.is_some_and(|(a, b)| now >= a && now < b) {
            self.second().refused += 1;
            return Outcome::Down;
        }
        let sec = now / US;
        if self.window.0 != sec {
            self.window = (sec, 0);
        }
        if self.window.1 < capacity {
            self.window.1 += 1;
            self.second().accepted += 1;
            Outcome::Accepted
        } else {
            self.second().refused += 1;
            Outcome::Refused
        }
    }

    fn response(&mut self, node: u32, key: u32, reason: Reason, outcome: Outcome) {
        let now = self.now;
        let l = self.lifetime();
        let floor = self.floor();
        let retry_after = (outcome == Outcome::Refused).then(|| Duration::from_secs(self.o.retry_after));
        let unit = self.rng.f64();
        let jitter = self.rng.f64() * 2.0 - 1.0;
        let backoff_unit = self.rng.f64();
        let at_now = self.at(now);
        let n = &mut self.nodes[node as usize];
        n.gate.finished();
        if let Some(ra) = retry_after {
            n.gate.pause(at_now, ra, unit);
        }
        if outcome == Outcome::Down {
            n.gate.no_answer(at_now);
        }
        let k = &mut n.keys[key as usize];
        k.busy = false;
        k.epoch += 1;
        let epoch = k.epoch;
        let mut later = Vec::new();
        let mut regained = None;
        match outcome {
            Outcome::Accepted => {
                regained = k.lapsed_since.take().map(|since| now - since);
                k.expires = Some(now + l);
                k.failures = 0;
                k.served_at.get_or_insert(now);
                let turn = self.o.rate.filter(|_| !self.o.unspaced).map(|r| r.per / r.count.max(1));
                let at = n
                    .spacing
                    .place(at_now, at_now, self.o.lifetime, &self.settings, turn, jitter);
                let next = at.saturating_duration_since(self.base).as_micros() as u64;
                let k = &mut n.keys[key as usize];
                k.planned = Some(next);
                later.push((next, Ev::Renew { node, key, epoch }));
            }
            Outcome::Refused | Outcome::Down => match reason {
                Reason::Miss => {
                    // The caller was told Retry-After (at least 1 s) and comes back then.
                    let told = retry_after.unwrap_or(Duration::from_secs(1)).as_micros() as u64;
                    later.push((now + told + (backoff_unit * US as f64) as u64, Ev::Want { node, key }));
                }
                Reason::Renewal => {
                    k.failures += 1;
                    let until_deadline =
                        Duration::from_micros(k.expires.unwrap_or(now).saturating_sub(floor).saturating_sub(now));
                    let wait = renewal_retry_in(backoff(k.failures, backoff_unit, retry_after), until_deadline)
                        .as_micros() as u64;
                    if self.o.trace {
                        k.log.push(format!(
                            "{:9.3} failed {}; backoff {:.1} s",
                            now as f64 / US as f64,
                            k.failures,
                            wait as f64 / US as f64
                        ));
                    }
                    let expires = k.expires.unwrap_or(now);
                    let next = (now + wait).min(expires.max(now));
                    k.planned = None;
                    later.push((next, Ev::Renew { node, key, epoch }));
                    later.push((expires.saturating_sub(floor), Ev::Want { node, key }));
                }
            },
        }
        for (t, ev) in later {
            self.push(t, ev);
        }
        self.without_token.extend(regained);
        self.pump(node);
    }

    /// Every node restarts at once: after `DOWNTIME`, tokens still usable are restored and their
    /// renewals resume as `cache::persist` plans them; the others are misses.
    fn restart_with_persisted_tokens(&mut self) {
        self.heap.clear();
        self.now += DOWNTIME;
        let floor = self.floor();
        for n in 0..self.nodes.len() {
            let gate = self.new_gate(n);
            let spacing = Spacing::new(self.at(self.now), self.rng.f64());
            let node = &mut self.nodes[n];
            node.gate = gate;
            node.spacing = spacing;
            node.tickets.clear();
            node.wake = None;
            for k in 0..self.o.keys {
                let (node_id, key_id) = (n as u32, k as u32);
                let unit = self.rng.f64();
                let key = &mut self.nodes[n].keys[k];
                key.busy = false;
                key.epoch += 1;
                let epoch = key.epoch;
                match key.expires.filter(|e| *e > self.now + floor) {
                    Some(e) => {
                        let planned_in = key.planned.map(|p| Duration::from_micros(p.saturating_sub(self.now)));
                        let until_deadline = Duration::from_micros(e - floor - self.now);
                        let first = self.now + resume_in(planned_in, until_deadline, unit).as_micros() as u64;
                        self.push(
                            first,
                            Ev::Renew {
                                node: node_id,
                                key: key_id,
                                epoch,
                            },
                        );
                    }
                    None => self.push(
                        self.now,
                        Ev::Want {
                            node: node_id,
                            key: key_id,
                        },
                    ),
                }
            }
        }
    }

    /// Keys without a usable token, or whose renewal is failing.
    fn unserved(&self) -> usize {
        let floor = self.floor();
        self.nodes
            .iter()
            .flat_map(|n| n.keys.iter())
            .filter(|k| k.failures > 0 || k.expires.is_none_or(|e| e <= self.now + floor))
            .count()
    }
}

struct Report {
    name: &'static str,
    from: u64,
    to: u64,
    served_in: Option<f64>,
    capacity_time: Option<f64>,
    /// Keys whose workload found no token after having had one (see `Sim::lapsed`).
    lapsed: Option<u64>,
}

fn summarize(sim: &Sim, r: &Report, o: &Opts) -> String {
    let (from, to) = ((r.from / US) as usize, ((r.to / US) as usize).min(sim.seconds.len()));
    let window = &sim.seconds[from.min(to)..to];
    let secs = window.len().max(1) as f64;
    let total = |f: fn(&Second) -> u32| window.iter().map(|s| u64::from(f(s))).sum::<u64>();
    let (att, acc, refd) = (total(|s| s.attempted), total(|s| s.accepted), total(|s| s.refused));
    let after_first = window.get(1..).unwrap_or(&[]);
    let peak = after_first.iter().map(|s| s.attempted).max().unwrap_or(0);
    let peak_first = window.first().map_or(0, |s| s.attempted);
    let ten: Vec<u32> = after_first
        .windows(10)
        .map(|w| w.iter().map(|s| s.attempted).sum::<u32>() / 10)
        .collect();
    let peak10 = ten.iter().copied().max().unwrap_or(0);
    let ideal = (o.nodes * o.keys) as f64 / (0.8 * o.lifetime.as_secs_f64());
    format!(
        "| {} | {} | {:.1} | {:.1} | {:.1} | {} ({:.2}× cap) | {} ({:.2}× ideal) | {} | {} | {} | {} |",
        r.name,
        (to - from.min(to)),
        att as f64 / secs,
        acc as f64 / secs,
        refd as f64 / secs,
        peak,
        f64::from(peak) / f64::from(o.capacity),
        peak10,
        f64::from(peak10) / ideal,
        peak_first,
        r.served_in.map_or("-".into(), |s| format!("{s:.0} s")),
        r.capacity_time.map_or("-".into(), |s| format!("{s:.0} s")),
        r.lapsed.map_or("-".into(), |n| n.to_string()),
    )
}

fn per_second(sim: &Sim, r: &Report) {
    println!("scenario,second,attempted,accepted,refused,renewals");
    for (i, s) in sim.seconds.iter().enumerate().skip((r.from / US) as usize) {
        if i as u64 * US > r.to {
            break;
        }
        println!(
            "{},{},{},{},{},{}",
            r.name,
            i as u64 - r.from / US,
            s.attempted,
            s.accepted,
            s.refused,
            s.renewals
        );
    }
}

fn scenario(name: &str, o: &Opts) -> (Sim, Report) {
    let mut sim = Sim::new(o);
    let hour = 3600 * US;
    let ideal = (o.nodes * o.keys) as f64 / (0.8 * o.lifetime.as_secs_f64());
    match name {
        "steady" => {
            sim.warm();
            sim.run_until(hour);
            let r = Report {
                name: "steady",
                from: 0,
                to: hour,
                served_in: None,
                capacity_time: None,
                lapsed: Some(sim.lapsed),
            };
            let measured = sim.seconds.iter().map(|s| u64::from(s.accepted)).sum::<u64>() as f64 / 3600.0;
            eprintln!(
                "steady: {measured:.2}/s accepted against the ideal {ideal:.2}/s ({:+.2} %)",
                (measured / ideal - 1.0) * 100.0
            );
            (sim, r)
        }
        "cold" => {
            for n in 0..o.nodes {
                for k in 0..o.keys {
                    let t = sim.rng.u64(0..US);
                    sim.push(
                        t,
                        Ev::Want {
                            node: n as u32,
                            key: k as u32,
                        },
                    );
                }
            }
            let capacity_time = (o.nodes * o.keys) as f64 / f64::from(o.capacity);
            let limit = ((capacity_time * 3.0) as u64 + 600) * US;
            let mut end = limit;
            let mut t = 0;
            while t < limit {
                t += 10 * US;
                sim.run_until(t);
                if sim.unserved() == 0 {
                    end = t;
                    break;
                }
            }
            let served = sim
                .nodes
                .iter()
                .flat_map(|n| n.keys.iter())
                .map(|k| k.served_at.unwrap_or(u64::MAX))
                .max()
                .unwrap_or(0);
            let r = Report {
                name: "cold start",
                from: 0,
                to: end,
                served_in: (served != u64::MAX).then(|| served as f64 / US as f64),
                capacity_time: Some(capacity_time),
                lapsed: None,
            };
            (sim, r)
        }
        "restart" => {
            sim.warm();
            sim.run_until(WARM_UP);
            sim.lapsed = 0;
            sim.restart_with_persisted_tokens();
            let from = sim.now;
            sim.run_until(from + hour);
            let r = Report {
                name: "restart (persisted)",
                from,
                to: from + hour,
                served_in: Some(0.0),
                capacity_time: None,
                lapsed: Some(sim.lapsed),
            };
            (sim, r)
        }
        "outage" => {
            sim.warm();
            sim.down = Some((WARM_UP, WARM_UP + OUTAGE));
            sim.run_until(WARM_UP);
            sim.lapsed = 0;
            sim.without_token.clear();
            let queued_before: usize = sim.nodes.iter().map(|n| n.gate.queued()).sum();
            sim.run_until(WARM_UP + OUTAGE);
            // The keys the outage left failing or expired: served once each was renewed since.
            let floor = sim.floor();
            let backlog: Vec<(usize, usize)> = (0..o.nodes)
                .flat_map(|n| (0..o.keys).map(move |k| (n, k)))
                .filter(|&(n, k)| {
                    let key = &sim.nodes[n].keys[k];
                    key.failures > 0 || key.expires.is_none_or(|e| e <= sim.now + floor)
                })
                .collect();
            // Wider: every key whose renewal was due and not done at the recovery (failing, or
            // queued on its node), and when the last of them was renewed.
            let due: Vec<(usize, usize)> = (0..o.nodes)
                .flat_map(|n| (0..o.keys).map(move |k| (n, k)))
                .filter(|&(n, k)| {
                    let key = &sim.nodes[n].keys[k];
                    key.busy || key.failures > 0 || key.expires.is_none_or(|e| e <= sim.now + floor)
                })
                .collect();
            let mut due_done = 0;
            let from = sim.now;
            let mut served_in = None;
            let mut t = from;
            let mut done_at: Vec<Option<u64>> = vec![None; backlog.len()];
            let waiting: usize = (0..o.nodes).map(|n| sim.nodes[n].gate.queued()).sum();
            while t < from + hour {
                t += US;
                sim.run_until(t);
                for (i, &(n, k)) in backlog.iter().enumerate() {
                    let key = &sim.nodes[n].keys[k];
                    if done_at[i].is_none()
                        && key.failures == 0
                        && key.expires.is_some_and(|e| e > from + sim.lifetime())
                    {
                        done_at[i] = Some((t - from) / US);
                    }
                }
                let renewed = |&(n, k): &(usize, usize)| {
                    let key = &sim.nodes[n].keys[k];
                    key.failures == 0 && key.expires.is_some_and(|e| e > from + sim.lifetime())
                };
                if due_done == 0 && due.iter().all(renewed) {
                    due_done = (t - from) / US;
                }
                if served_in.is_none() && done_at.iter().all(Option::is_some) {
                    served_in = Some((t - from) as f64 / US as f64);
                }
            }
            let mut without = sim.without_token.clone();
            let still = sim
                .nodes
                .iter()
                .flat_map(|n| n.keys.iter())
                .filter_map(|k| k.lapsed_since);
            without.extend(still.map(|since| sim.now - since));
            let mut d: Vec<u64> = done_at.iter().map(|x| x.unwrap_or(u64::MAX)).collect();
            d.sort();
            let q = |f: f64| d[((d.len() as f64 * f) as usize).min(d.len() - 1)];
            if o.trace {
                let mut idx: Vec<usize> = (0..backlog.len()).collect();
                idx.sort_by_key(|&i| Reverse(done_at[i].unwrap_or(u64::MAX)));
                for &i in idx.iter().take(3) {
                    let (n, k) = backlog[i];
                    eprintln!("slow backlog key node {n} key {k} done {:?}:", done_at[i]);
                    for line in &sim.nodes[n].keys[k].log {
                        eprintln!("  {line}");
                    }
                }
            }
            eprintln!(
                "outage: {} keys failing at the recovery, served by 50 % {} s, 90 % {} s, 99 % {} s, all {} s after it; renewals queued on the nodes: {queued_before} when the outage began, {waiting} at the recovery; every key due at the recovery ({}) renewed {} s after it; the keys that lapsed went without a token {} s in all, {} s at most",
                d.len(),
                q(0.5),
                q(0.9),
                q(0.99),
                q(1.0),
                due.len(),
                due_done,
                without.iter().sum::<u64>() / US,
                without.iter().max().unwrap_or(&0) / US
            );
            let backlog = backlog.len();
            let r = Report {
                name: "5 min outage",
                from,
                to: from + hour,
                served_in,
                // What the capacity leaves beside the steady renewals.
                capacity_time: Some(backlog as f64 / (f64::from(o.capacity) - ideal).max(1.0)),
                lapsed: Some(sim.lapsed),
            };
            (sim, r)
        }
        other => {
            eprintln!("unknown scenario {other:?}: steady, cold, restart, outage or all");
            std::process::exit(2);
        }
    }
}

fn main() {
    let mut o = Opts {
        nodes: 1000,
        keys: 20,
        lifetime: Duration::from_secs(3600),
        capacity: 0,
        rate: None,
        max_concurrent: 4,
        retry_after: 5,
        seed: 1,
        per_second: false,
        trace: false,
        even_phase: false,
        unspaced: false,
    };
    let mut scenarios = vec!["steady", "cold", "restart", "outage"];
    let mut rate_arg: Option<String> = None;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        let num = |v: &str| -> u64 {
            v.parse().unwrap_or_else(|_| {
                eprintln!("{} needs a number, not {v:?}", args[i]);
                std::process::exit(2)
            })
        };
        match args[i].as_str() {
            "--nodes" => o.nodes = num(&value) as usize,
            "--keys" => o.keys = num(&value) as usize,
            "--lifetime" => o.lifetime = Duration::from_secs(num(&value)),
            "--capacity" => o.capacity = num(&value) as u32,
            "--max-concurrent" => o.max_concurrent = num(&value) as u32,
            "--retry-after" => o.retry_after = num(&value),
            "--seed" => o.seed = num(&value),
            "--rate" => rate_arg = Some(value),
            "--phase" => {
                o.even_phase = match value.as_str() {
                    "random" => false,
                    "even" => true,
                    other => {
                        eprintln!("--phase: random or even, not {other:?}");
                        std::process::exit(2)
                    }
                }
            }
            "--spacing" => {
                o.unspaced = match value.as_str() {
                    "on" => false,
                    "off" => true,
                    other => {
                        eprintln!("--spacing: on or off, not {other:?}");
                        std::process::exit(2)
                    }
                }
            }
            "--scenario" => {
                scenarios = match value.as_str() {
                    "all" => vec!["steady", "cold", "restart", "outage"],
                    s => vec![match s {
                        "steady" => "steady",
                        "cold" => "cold",
                        "restart" => "restart",
                        "outage" => "outage",
                        other => {
                            eprintln!("unknown scenario {other:?}: steady, cold, restart, outage or all");
                            std::process::exit(2)
                        }
                    }],
                }
            }
            "--trace" => {
                o.trace = true;
                i += 1;
                continue;
            }
            "--per-second" => {
                o.per_second = true;
                i += 1;
                continue;
            }
            other => {
                eprintln!("unknown option {other}; see the comment at the top of examples/fleet.rs");
                std::process::exit(2)
            }
        }
        i += 2;
    }
    let ideal = (o.nodes * o.keys) as f64 / (0.8 * o.lifetime.as_secs_f64());
    if o.capacity == 0 {
        o.capacity = (ideal * 1.5).ceil() as u32;
    }
    // The recommended per-node rate (docs/configuration.md): a tenth below the provider's
    // capacity shared by the nodes.
    o.rate = match rate_arg.as_deref() {
        None | Some("auto") => Some(Rate {
            count: 1,
            per: Duration::from_secs_f64(o.nodes as f64 / (SHARE * f64::from(o.capacity))),
        }),
        Some("share") => Some(Rate {
            count: 1,
            per: Duration::from_secs_f64(o.nodes as f64 / f64::from(o.capacity)),
        }),
        Some("none") => None,
        Some(r) => Some(Rate::parse(r).unwrap_or_else(|e| {
            eprintln!("--rate: {e}");
            std::process::exit(2)
        })),
    };
    println!(
        "{} nodes × {} keys, {} s tokens, provider capacity {}/s (ideal steady {:.1}/s), per-node rate {}, max_concurrent {}, Retry-After {} s",
        o.nodes,
        o.keys,
        o.lifetime.as_secs(),
        o.capacity,
        ideal,
        o.rate.map_or("none".to_string(), |r| format!(
            "{}/{:.1}s",
            r.count,
            r.per.as_secs_f64()
        )),
        o.max_concurrent,
        o.retry_after
    );
    println!();
    println!(
        "| scenario | seconds | attempted/s | accepted/s | refused/s | peak attempted/s after the first second | peak 10 s average | first second | all served in | capacity allows | keys that lapsed |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for s in scenarios {
        let (sim, r) = scenario(s, &o);
        println!("{}", summarize(&sim, &r, &o));
        if o.per_second {
            per_second(&sim, &r);
        }
        if o.trace {
            for (n, node) in sim.nodes.iter().enumerate() {
                for (k, key) in node.keys.iter().enumerate().filter(|(_, k)| k.lapsed) {
                    println!("node {n} key {k} lapsed:");
                    for line in &key.log {
                        println!("  {line}");
                    }
                }
            }
        }
    }
}
