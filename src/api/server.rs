//! The socket server: HTTP/1.1 over a Unix socket, one task per connection, the caller attested
//! once per connection from its peer credentials, connections capped ([`super::limits`]), then
//! each request routed ([`super::routes`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::caller;
use crate::error::{ApiError, ErrorKind};

use super::limits::{ConnLimits, refuse};
use super::responses::{error_response, json_response};

/// A client must send its request head within this time.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// In-flight requests get this long to finish at shutdown.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves connections from `listener` until `cancel` fires, then lets in-flight requests finish
/// for up to [`SHUTDOWN_GRACE`].
pub async fn serve(listener: UnixListener, agent: Arc<Agent>, cancel: CancellationToken) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let limits = ConnLimits::for_this_process();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = cancel.cancelled() => break,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        agent.note_accept();
        let accepted_ticks = caller::boot_ticks_now();
        // The configuration as it is at this connection (a reload changes it), read once.
        let state = agent.state();
        let admitted = match stream.peer_cred() {
            Ok(cred) => {
                // By uid or primary group: the supplementary groups are read later.
                let operator = state.config.agent.operators.include(cred.uid(), |g| g == cred.gid());
                limits
                    .admit(cred.uid(), cred.pid(), operator)
                    .map(|guard| (cred, guard))
            }
            Err(e) => {
                tracing::warn!(error = %e, "no peer credentials; closing the connection");
                continue;
            }
        };
        let (cred, guard) = match admitted {
            Ok(a) => a,
            Err(refusal) => {
                agent.metrics().request("connection", refusal.error.code());
                refuse(stream, refusal, &limits);
                continue;
            }
        };
        // What the roles use.
        let needs = state.needs;
        drop(state);
        let agent = agent.clone();
        let watcher = graceful.watcher();
        let stop = cancel.clone();
        // Attested in the connection's own task, not here: the `/proc` reads of one caller do
        // not hold up the next accept, and the runtime's workers attest connections side by side.
        tokio::spawn(async move {
            let _guard = guard;
            let attested = Arc::new(caller::attest_peer(&stream, &cred, accepted_ticks, needs));
            super::conn::serve(stream, agent, attested, watcher, stop).await;
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!("in-flight requests did not finish within {SHUTDOWN_GRACE:?}"),
    }
}

/// Connections the metrics listener serves at once; one more is accepted and closed at once.
/// Anyone on the host (or the network it listens on) may connect, and a scraper needs one.
pub(crate) const METRICS_CONNECTIONS: usize = 16;

/// A metrics client must send its request within this time (a scraper sends it at once), so
/// idle connections cannot keep the places from it for long.
pub(crate) const METRICS_HEAD_TIME: Duration = Duration::from_secs(2);

/// How long one metrics connection may last, whatever its client does (reads nothing, sends
/// slowly): one request, then it is closed.
pub(crate) const METRICS_CONNECTION_TIME: Duration = Duration::from_secs(10);

/// Serves `GET /metrics` on a TCP listener (`metrics_listen`) until `cancel` fires: one request
/// per connection, at most [`METRICS_CONNECTIONS`] at once, each closed after
/// [`METRICS_CONNECTION_TIME`], so no client can hold the agent's file descriptors.
pub(crate) async fn serve_metrics(listener: tokio::net::TcpListener, agent: Arc<Agent>, cancel: CancellationToken) {
    let places = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = cancel.cancelled() => return,
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            tracing::debug!("{METRICS_CONNECTIONS} metrics connections are open; closing another");
            drop(stream);
            continue;
        };
        let agent = agent.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let agent = agent.clone();
            async move {
                let resp = if req.method() == Method::GET && req.uri().path() == "/metrics" {
                    let mut r = json_response(200, agent.metrics_text().into_bytes());
                    r.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
                    r
                } else {
                    error_response(&ApiError::new(
                        ErrorKind::NotFound,
                        "this listener serves GET /metrics only",
                    ))
                };
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(METRICS_HEAD_TIME)
            .keep_alive(false)
            .serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _place = place;
            let _ = tokio::time::timeout(METRICS_CONNECTION_TIME, conn).await;
        });
    }
}
