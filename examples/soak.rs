//! Soak test: the development provider and a real agent in this process, many concurrent callers
//! for a long time against short-lived tokens. Not part of `cargo test`; run it with
//!
//! ```sh
//! cargo run --release --example soak -- --seconds 300 --callers 50 --lifetime 3s
//! ```
//!
//! It reports requests served, exchanges and renewals, errors, and the least remaining lifetime
//! (from the JWT `exp`) of any token handed out. It exits 1 if an expired token was handed out or
//! any request failed. Tokens are never printed.

use std::collections::BTreeMap;
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

struct Args {
    seconds: u64,
    callers: usize,
    lifetime: Duration,
    pause: Duration,
}

fn usage() -> ! {
    eprintln!("usage: soak [--seconds N] [--callers N] [--lifetime DURATION] [--pause DURATION]");
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
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--seconds" => a.seconds = value.parse().unwrap_or_else(|_| usage()),
            "--callers" => a.callers = value.parse().unwrap_or_else(|_| usage()),
            "--lifetime" => a.lifetime = humantime::parse_duration(&value).unwrap_or_else(|_| usage()),
            "--pause" => a.pause = humantime::parse_duration(&value).unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    a
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn jwt_exp(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes).ok()?["exp"].as_i64()
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
            let mut i = n;
            while Instant::now() < deadline {
                let path = &keys[i % keys.len()];
                i += 1;
                let t0 = Instant::now();
                match client.get(path).await {
                    Ok(r) if r.status == 200 => {
                        let received = now_ms();
                        stats.max_latency_us.fetch_max(t0.elapsed().as_micros() as u64, Relaxed);
                        let body = r.json().unwrap_or_default();
                        match body["access_token"].as_str().and_then(jwt_exp) {
                            Some(exp) => {
                                let left = exp * 1000 - received;
                                stats.min_left_ms.fetch_min(left, Relaxed);
                                if left <= 0 {
                                    stats.expired.fetch_add(1, Relaxed);
                                }
                                stats.served.fetch_add(1, Relaxed);
                            }
                            None => stats.error("200 without a JWT with exp".into()),
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
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed();
    let counters = &agent.agent.cache().counters;
    let served = stats.served.load(Relaxed);
    let expired = stats.expired.load(Relaxed);
    let errors = stats.errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let error_total: u64 = errors.values().sum();
    let floor_ms = args.lifetime.as_millis() as i64 / 4;
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
    println!("  provider tokens issued   {}", idp.counters().tokens_issued);
    println!("  agent exchanges          {}", counters.exchanges.load(Relaxed));
    println!("  agent renewals           {}", counters.renewals.load(Relaxed));
    println!("  agent exchange failures  {}", counters.failures.load(Relaxed));
    println!("  errors                   {error_total} {errors:?}");
    println!("  expired tokens served    {expired}");
    println!(
        "  min remaining lifetime   {} ms (JWT exp, 1 s resolution; hand-out floor lifetime/4 = {floor_ms} ms)",
        stats.min_left_ms.load(Relaxed)
    );
    println!(
        "  max latency              {:.1} ms",
        stats.max_latency_us.load(Relaxed) as f64 / 1000.0
    );
    agent.shutdown().await;
    idp.shutdown().await;
    if expired > 0 || error_total > 0 {
        std::process::exit(1);
    }
}
