//! Soak test: the development provider and a real agent in this process, many concurrent callers
//! for a long time against short-lived tokens. Not part of `cargo test`; run it with
//!
//! ```sh
//! cargo run --release --example soak -- --seconds 300 --callers 50 --lifetime 3s
//! ```
//!
//! It reports requests served, exchanges and renewals, errors, and the least remaining lifetime
//! (from the JWT `exp`) of any token handed out, and exits 1, saying which check failed, if
//!
//! - any request was not answered 200 with a JWT that has an `exp` and a `jti`;
//! - a token was handed out already expired (its `exp` passed before its request was sent);
//! - a token was handed out with less than its hand-out floor left (docs/lifecycle.md:
//!   `floor = max(min_valid, min(min_remaining, lifetime / 4))`, with `min_valid` 0, the
//!   soak's own `min_remaining`, and the lifetime the agent computed for that token, bounded from
//!   below with the `ts` and `duration_ms` of its `token.exchanged` audit line — see [`Floor`]);
//! - two exchanges of one key ran at once (their intervals in the audit log overlap);
//! - a token issued by the provider was never handed out although a later token of the same key
//!   was (an exchange nobody needed), checked when every key is requested much more often than
//!   it is renewed.
//!
//! Tokens are never printed, nor their `jti`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use cortexid::cmd::client::SocketClient;
use cortexid::devidp::fixture::{ConfigFile, Fixture, Identity, Role};
use cortexid::devidp::{DevClient, DevClientAuth};

const CLIENT_ID: &str = "soak-node";
const SECRET: &str = "soak secret, never printed";
const AUDIENCES: [&str; 2] = ["https://payments.internal", "https://ledger.internal"];
/// `[agent] min_remaining` of the soak's agent (the default, written out so the floor check
/// computes with the same value).
const MIN_REMAINING: Duration = Duration::from_secs(30);

const USAGE: &str = "usage: soak [--seconds N] [--callers N] [--lifetime DURATION] [--pause DURATION]

  --seconds N          how long the callers run (default 300)
  --callers N          concurrent callers (default 50)
  --lifetime DURATION  the provider's token lifetime, whole seconds count (default 3s)
  --pause DURATION     each caller's pause between requests (default 10ms)

Exits 1 if a request failed, a token was handed out expired or below its hand-out floor, two
exchanges of one key overlapped, or a token was issued that no one received while a later token
of its key was served. SOAK.md says how each is measured.";

struct Args {
    seconds: u64,
    callers: usize,
    lifetime: Duration,
    pause: Duration,
}

fn usage() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        seconds: 300,
        callers: 50,
        lifetime: Duration::from_secs(3),
        pause: Duration::from_millis(10),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--seconds" => a.seconds = value.parse().unwrap_or_else(|_| usage()),
            "--callers" => a.callers = value.parse().unwrap_or_else(|_| usage()),
            "--lifetime" => a.lifetime = humantime::parse_duration(&value).unwrap_or_else(|_| usage()),
            "--pause" => a.pause = humantime::parse_duration(&value).unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if a.callers == 0 || a.lifetime < Duration::from_secs(2) {
        eprintln!("soak: --callers must be at least 1 and --lifetime at least 2s");
        usage();
    }
    a
}

fn ms_since_epoch(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn now_ms() -> i64 {
    ms_since_epoch(SystemTime::now())
}

/// `exp` (in ms) and `jti` of a JWT, read without verification (the agent verified it).
fn jwt_exp_jti(token: &str) -> Option<(i64, String)> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims = serde_json::from_slice::<serde_json::Value>(&bytes).ok()?;
    Some((claims["exp"].as_i64()? * 1000, claims["jti"].as_str()?.to_string()))
}

/// What the callers saw of one token.
#[derive(Clone, Copy, Debug)]
struct Seen {
    exp_ms: i64,
    /// The latest time a request that got this token was sent: the token was handed out after it.
    last_sent_ms: i64,
}

#[derive(Default)]
struct Stats {
    served: AtomicU64,
    expired: AtomicU64,
    min_left_ms: AtomicI64,
    max_latency_us: AtomicU64,
    errors: std::sync::Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    fn error(&self, what: String) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(what)
            .or_default() += 1;
    }
}

/// One `token.exchanged` or `token.exchange_failed` line of the audit log.
struct Exchange {
    key: (String, String, String),
    /// `ts`: written after the exchange returned, so no earlier than the agent received the token.
    end_ms: i64,
    duration_ms: i64,
    renewal: bool,
    /// `token.jti` and `token.exp` (in ms) of a successful exchange.
    token: Option<(String, i64)>,
}

impl Exchange {
    fn start_ms(&self) -> i64 {
        self.end_ms - self.duration_ms
    }
}

fn read_exchanges(path: &Path) -> std::io::Result<Vec<Exchange>> {
    let mut out = Vec::new();
    for line in std::io::BufReader::new(std::fs::File::open(path)?).lines() {
        let line = line?;
        if !line.contains("\"event\":\"token.exchange") {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line).map_err(std::io::Error::other)?;
        let ts = v["ts"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .ok_or_else(|| std::io::Error::other("an exchange line without a readable ts"))?;
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        out.push(Exchange {
            key: (s("identity"), s("audience"), s("scope")),
            end_ms: ms_since_epoch(ts),
            duration_ms: v["duration_ms"].as_i64().unwrap_or(0),
            renewal: v["reason"] == "renewal",
            token: match (v["token"]["jti"].as_str(), v["token"]["exp"].as_i64()) {
                (Some(jti), Some(exp)) if v["outcome"] == "success" => Some((jti.to_string(), exp * 1000)),
                _ => None,
            },
        });
    }
    Ok(out)
}

/// A lower bound of a token's hand-out floor. The agent takes as lifetime
/// `L = min(expires_in − d, exp − r)`, where `r` is when it received the token and `d` how long
/// the exchange took (`src/upstream/grants.rs`). The audit line's `ts` (ms, truncated) is
/// written after `r`, so `r < ts + 1 ms`, and its `duration_ms` (truncated) spans the exchange,
/// so `d < duration_ms + 1 ms`: `L > min(expires_in − duration_ms, exp − ts) − 1 ms`. With the
/// provider's whole-second `exp`, `L` is between `expires_in − 1 s` and `expires_in`, so a
/// floor of `lifetime / 4` from the settings alone would be up to 250 ms too high for a 3 s token.
struct Floor {
    expires_in_ms: i64,
    min_remaining_ms: i64,
}

impl Floor {
    fn at_least(&self, ex: &Exchange, exp_ms: i64) -> i64 {
        let lifetime = (self.expires_in_ms - ex.duration_ms).min(exp_ms - ex.end_ms) - 1;
        // min_valid is 0: the soak never sends it.
        self.min_remaining_ms.min(lifetime / 4).max(0)
    }
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let dir = tempfile::tempdir().expect("temp dir");
    let client = DevClient::new(CLIENT_ID, DevClientAuth::SecretBasic(SECRET.into()))
        .with_audiences(&AUDIENCES)
        .with_scopes(&["read", "write"]);
    let fx = Fixture::start(dir.path(), args.lifetime, client)
        .await
        .expect("start the development provider");
    let idp = fx.idp();
    let sa = fx
        .service_account("system:serviceaccount:soak", Duration::from_secs(86_400))
        .expect("mint a credential");
    let sa_file = fx.write_credential("sa.jwt", &sa).expect("write the credential");
    let mut agent = fx.agent();
    agent.upstream_timeout = Some(Duration::from_secs(5));
    agent.min_remaining = Some(MIN_REMAINING);
    let config = ConfigFile {
        agent,
        providers: vec![fx.provider("corp")],
        identities: vec![
            Identity::exchange("payments", "corp", sa_file)
                .audiences(&AUDIENCES)
                .scopes(&["read", "write"]),
            Identity::client_credentials("batch", "corp")
                .audiences(&[AUDIENCES[1]])
                .scopes(&["read"]),
        ],
        roles: vec![Role::new("soak", &["payments", "batch"]).uids(&[nix::unistd::getuid().as_raw()])],
        ..ConfigFile::default()
    };
    let config_path = fx.write_config(&config).expect("write config");
    let config = cortexid::agent::load_config(&config_path).unwrap_or_else(|e| panic!("{e}"));
    let agent = cortexid::run::daemon::start(config, cortexid::run::systemd::Notifier::disabled())
        .await
        .expect("start the agent");
    let client = SocketClient::new(fx.socket());

    // Six keys: two identities, audiences and scope sets, so renewals of several keys interleave.
    let keys: Vec<String> = [
        ("payments", AUDIENCES[0], "read"),
        ("payments", AUDIENCES[0], "read write"),
        ("payments", AUDIENCES[1], "read"),
        ("payments", AUDIENCES[1], ""),
        ("batch", AUDIENCES[1], "read"),
        ("batch", AUDIENCES[1], ""),
    ]
    .iter()
    .map(|(i, a, s)| {
        let q = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("identity", i)
            .append_pair("audience", a)
            .append_pair("scope", s)
            .finish();
        format!("/v1/token?{q}")
    })
    .collect();
    let keys = Arc::new(keys);

    eprintln!(
        "soak: {} callers for {} s against {:?} tokens, {} keys",
        args.callers,
        args.seconds,
        args.lifetime,
        keys.len()
    );
    let stats = Arc::new(Stats {
        min_left_ms: AtomicI64::new(i64::MAX),
        ..Stats::default()
    });
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for n in 0..args.callers {
        let (client, stats, keys) = (client.clone(), stats.clone(), keys.clone());
        let pause = args.pause;
        tasks.push(tokio::spawn(async move {
            let mut seen: HashMap<String, Seen> = HashMap::new();
            let mut i = n;
            while Instant::now() < deadline {
                let path = &keys[i % keys.len()];
                i += 1;
                let sent = now_ms();
                let t0 = Instant::now();
                match client.get(path).await {
                    Ok(r) if r.status == 200 => {
                        let received = now_ms();
                        stats.max_latency_us.fetch_max(t0.elapsed().as_micros() as u64, Relaxed);
                        let body = r.json().unwrap_or_default();
                        match body["access_token"].as_str().and_then(jwt_exp_jti) {
                            Some((exp_ms, jti)) => {
                                stats.min_left_ms.fetch_min(exp_ms - received, Relaxed);
                                if exp_ms <= sent {
                                    stats.expired.fetch_add(1, Relaxed);
                                }
                                stats.served.fetch_add(1, Relaxed);
                                let s = seen.entry(jti).or_insert(Seen {
                                    exp_ms,
                                    last_sent_ms: sent,
                                });
                                s.last_sent_ms = s.last_sent_ms.max(sent);
                            }
                            None => stats.error("200 without a JWT with exp and jti".into()),
                        }
                    }
                    Ok(r) => {
                        let code = r.json().ok().and_then(|b| b["error"].as_str().map(str::to_string));
                        stats.error(format!("{} {}", r.status, code.unwrap_or_default()));
                    }
                    Err(e) => stats.error(format!("transport: {e}")),
                }
                tokio::time::sleep(pause).await;
            }
            seen
        }));
    }
    let mut last = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(10).min(deadline.saturating_duration_since(Instant::now()))).await;
        let served = stats.served.load(Relaxed);
        eprintln!(
            "soak: {:>4} s  served {served} (+{})  exchanges {}  min left {} ms",
            start.elapsed().as_secs(),
            served - last,
            idp.counters().tokens_issued,
            stats.min_left_ms.load(Relaxed)
        );
        last = served;
    }
    let mut seen: HashMap<String, Seen> = HashMap::new();
    for t in tasks {
        for (jti, s) in t.await.expect("a caller task panicked") {
            let e = seen.entry(jti).or_insert(s);
            e.last_sent_ms = e.last_sent_ms.max(s.last_sent_ms);
        }
    }
    let elapsed = start.elapsed();
    let counters = &agent.agent.cache().counters;
    let (agent_exchanges, agent_renewals, agent_failures, agent_misses) = (
        counters.exchanges.load(Relaxed),
        counters.renewals.load(Relaxed),
        counters.failures.load(Relaxed),
        counters.misses.load(Relaxed),
    );
    agent.shutdown().await;
    let issued = idp.issued();
    let provider_issued = idp.counters().tokens_issued;
    idp.shutdown().await;
    let exchanges = read_exchanges(&fx.audit_log()).expect("read the agent's audit log");

    let served = stats.served.load(Relaxed);
    let expired = stats.expired.load(Relaxed);
    let errors = stats.errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let error_total: u64 = errors.values().sum();
    let mut failed: Vec<String> = Vec::new();
    if error_total > 0 {
        failed.push(format!(
            "{error_total} requests were not answered with a token: {errors:?}"
        ));
    }
    if expired > 0 {
        failed.push(format!("{expired} tokens were handed out after their exp"));
    }

    // The hand-out floor of every token handed out.
    let floor = Floor {
        expires_in_ms: args.lifetime.as_secs() as i64 * 1000,
        min_remaining_ms: MIN_REMAINING.as_millis() as i64,
    };
    let by_jti: HashMap<&str, &Exchange> = exchanges
        .iter()
        .filter_map(|e| e.token.as_ref().map(|(jti, _)| (jti.as_str(), e)))
        .collect();
    let (mut below_floor, mut unaccounted) = (0u64, 0u64);
    let mut least: Option<(i64, i64)> = None; // (left when last requested, its floor), least margin
    for (jti, s) in &seen {
        let Some(ex) = by_jti.get(jti.as_str()) else {
            unaccounted += 1;
            continue;
        };
        let f = floor.at_least(ex, s.exp_ms);
        let left = s.exp_ms - s.last_sent_ms;
        // 1 ms for the agent's monotonic expiry, set a few µs after its wall-clock reading.
        if left < f - 1 {
            below_floor += 1;
        }
        if least.is_none_or(|(l, lf)| left - f < l - lf) {
            least = Some((left, f));
        }
    }
    if below_floor > 0 {
        failed.push(format!(
            "{below_floor} tokens were handed out with less than their hand-out floor left"
        ));
    }
    if unaccounted > 0 {
        failed.push(format!(
            "{unaccounted} tokens handed out have no token.exchanged line in the audit log"
        ));
    }

    // No two exchanges of one key at once. Sequential exchanges of a key are at least 1 ms
    // apart in these figures (both are truncated to ms, and the next one starts after the
    // previous one's line was written); an overlap beyond that is two exchanges at once.
    let mut per_key: BTreeMap<&(String, String, String), Vec<&Exchange>> = BTreeMap::new();
    for e in &exchanges {
        per_key.entry(&e.key).or_default().push(e);
    }
    let mut overlaps = 0u64;
    for list in per_key.values_mut() {
        list.sort_by_key(|e| e.start_ms());
        let mut end = i64::MIN;
        for e in list.iter() {
            if e.start_ms() + 1 < end {
                overlaps += 1;
            }
            end = end.max(e.end_ms);
        }
    }
    if overlaps > 0 {
        failed.push(format!(
            "{overlaps} exchanges ran while another exchange of the same key was running"
        ));
    }

    // No exchange nobody needed: in the provider's issue order, per key (sub, aud, scope), a
    // token no one received followed by one that was received. Only meaningful when each key is
    // requested far more often than the schedule could renew it (never sooner than a tenth of
    // the lifetime, which is at least `expires_in − 1 s`).
    let per_key_request_ms = args.pause.as_millis() as i64 * keys.len() as i64 / args.callers as i64;
    let soonest_renewal_ms = (floor.expires_in_ms - 1000) / 10;
    let wasted_checked = per_key_request_ms * 10 < soonest_renewal_ms;
    let mut issued_keys: HashMap<(String, String, String), Vec<bool>> = HashMap::new();
    for c in &issued {
        let key = (
            c["sub"].as_str().unwrap_or_default().to_string(),
            c["aud"].to_string(),
            c["scope"].as_str().unwrap_or_default().to_string(),
        );
        let got = c["jti"].as_str().is_some_and(|j| seen.contains_key(j));
        issued_keys.entry(key).or_default().push(got);
    }
    let wasted: usize = issued_keys
        .values()
        .map(|got| {
            let last_received = got.iter().rposition(|g| *g).map_or(0, |i| i + 1);
            got[..last_received].iter().filter(|g| !**g).count()
        })
        .sum();
    if wasted_checked && wasted > 0 {
        failed.push(format!(
            "{wasted} tokens were issued and replaced without being handed out (an exchange nobody needed)"
        ));
    }

    let distinct_issued: HashSet<&str> = issued.iter().filter_map(|c| c["jti"].as_str()).collect();
    let miss_exchanges = exchanges.iter().filter(|e| !e.renewal).count();
    println!("soak results");
    println!("  duration                 {:.1} s", elapsed.as_secs_f64());
    println!("  callers                  {}", args.callers);
    println!("  keys                     {}", keys.len());
    println!("  token lifetime           {:?}", args.lifetime);
    println!("  requests served          {served}");
    println!(
        "  throughput               {:.0} req/s",
        served as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  provider tokens issued   {provider_issued} ({} distinct jti)",
        distinct_issued.len()
    );
    println!(
        "  distinct tokens served   {} ({} keys at the provider)",
        seen.len(),
        issued_keys.len()
    );
    println!(
        "  agent exchanges          {agent_exchanges} (audit: {} lines, {miss_exchanges} misses + {} renewals)",
        exchanges.len(),
        exchanges.len() - miss_exchanges
    );
    println!("  agent renewals           {agent_renewals}");
    println!("  agent exchange failures  {agent_failures}");
    println!("  cache misses (requests)  {agent_misses}");
    println!("  errors                   {error_total} {errors:?}");
    println!("  expired tokens served    {expired}");
    println!(
        "  least left at receipt    {} ms (JWT exp, whole seconds, against the wall clock when the answer arrived)",
        stats.min_left_ms.load(Relaxed)
    );
    match least {
        Some((left, f)) => {
            println!("  closest to the floor     {left} ms left when its request was sent, floor at least {f} ms")
        }
        None => println!("  closest to the floor     -"),
    }
    println!("  below the floor          {below_floor}");
    println!("  overlapping exchanges    {overlaps}");
    if wasted_checked {
        println!("  exchanges not needed     {wasted}");
    } else {
        println!(
            "  exchanges not needed     {wasted} (not checked: each key is requested about every {per_key_request_ms} ms, not much more often than the soonest renewal, {soonest_renewal_ms} ms)"
        );
    }
    println!(
        "  max latency              {:.1} ms",
        stats.max_latency_us.load(Relaxed) as f64 / 1000.0
    );
    if failed.is_empty() {
        println!("soak: all checks passed");
    } else {
        for f in &failed {
            eprintln!("soak: FAILED: {f}");
        }
        std::process::exit(1);
    }
}
