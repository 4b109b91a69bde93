//! One connection on the socket as a client sees it: `GET /v1/token` is answered by the agent's
//! own HTTP/1.1 loop, every other request by hyper on the same connection. Pipelined requests
//! are answered in order, malformed ones get their 4xx, limits and deadlines hold, and a grant
//! remembered on a connection is decided again after a reload.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// One answer as read off the socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Reads answers until `n` are whole or the agent closes the connection; also says whether it
/// was closed. The bound only keeps a broken agent from hanging the run.
async fn read_answers(stream: &mut UnixStream, n: usize) -> (Vec<Answer>, bool) {
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    let mut closed = false;
    while answers.len() < n {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = resp.parse(&buf) {
            let headers: Vec<(String, String)> = resp
                .headers
                .iter()
                .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                .collect();
            let body_len: usize = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.parse().unwrap());
            if buf.len() >= len + body_len {
                answers.push(Answer {
                    status: resp.code.unwrap(),
                    headers,
                    body: buf[len..len + body_len].to_vec(),
                });
                buf.drain(..len + body_len);
                continue;
            }
        }
        let mut chunk = [0u8; 8192];
        let read = tokio::time::timeout(Duration::from_secs(40), stream.read(&mut chunk))
            .await
            .expect("the agent neither answered nor closed the connection")
            .unwrap_or(0);
        if read == 0 {
            closed = true;
            break;
        }
        buf.extend_from_slice(&chunk[..read]);
    }
    (answers, closed)
}

/// Whether the agent closes the connection (with nothing more said) before `within`.
async fn closes(stream: &mut UnixStream) -> bool {
    let mut rest = Vec::new();
    match tokio::time::timeout(Duration::from_secs(40), stream.read_to_end(&mut rest)).await {
        Ok(_) => rest.is_empty(),
        Err(_) => false,
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: cortexid\r\n\r\n")
}

fn issued(h: &Harness) -> usize {
    h.audit_lines().iter().filter(|l| l["event"] == "token.issued").count()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_and_each_token_is_audited() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let token = token_path("payments", PAYMENTS, "payments.read");
    let mut s = UnixStream::connect(&h.socket).await.unwrap();
    // Token, token, health (hyper's), token, identities: one write.
    let burst = [
        get(&token),
        get(&token),
        get("/v1/health"),
        get(&token),
        get("/v1/identities"),
    ]
    .concat();
    s.write_all(burst.as_bytes()).await.unwrap();
    let (answers, closed) = read_answers(&mut s, 5).await;
    assert!(!closed, "the connection stays open");
    let kinds: Vec<&str> = answers
        .iter()
        .map(|a| {
            let body = a.json();
            assert_eq!(a.status, 200, "{body}");
            assert_eq!(a.header("content-type"), Some("application/json"));
            if body.get("access_token").is_some() {
                "token"
            } else if body.get("identities").is_some() {
                "identities"
            } else {
                "health"
            }
        })
        .collect();
    assert_eq!(kinds, ["token", "token", "health", "token", "identities"]);
    let tokens: Vec<serde_json::Value> = answers.iter().map(|a| a.json()["access_token"].clone()).collect();
    assert_eq!(tokens[0], tokens[1]);
    assert_eq!(tokens[0], tokens[3]);
    assert_eq!(h.idp.counters().exchanges, 1);
    assert_eq!(issued(&h), 3, "one token.issued line per token handed out");
    // And the connection still serves.
    s.write_all(get(&token).as_bytes()).await.unwrap();
    let (answers, _) = read_answers(&mut s, 1).await;
    assert_eq!(answers[0].status, 200);
    assert_eq!(issued(&h), 4);
}

#[tokio::test]
async fn a_malformed_request_after_a_token_gets_400_and_the_connection_is_closed() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let mut s = UnixStream::connect(&h.socket).await.unwrap();
    let token = get(&token_path("payments", PAYMENTS, ""));
    s.write_all(format!("{token}GET /v1/token HTTP/1.1\r\nBad Header\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (answers, closed) = read_answers(&mut s, 3).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 400]);
    assert!(closed, "a connection that sent garbage is closed after the 400");
    // The agent serves the next connection.
    let (status, _) = h.get(&token_path("payments", PAYMENTS, "")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn bodies_and_heads_over_the_limits_get_413_and_431_after_a_token() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let token = get(&token_path("payments", PAYMENTS, ""));
    let mut s = UnixStream::connect(&h.socket).await.unwrap();
    let body = format!("{{\"audience\":\"{}\"}}", "x".repeat(70 * 1024));
    let post = format!(
        "POST /v1/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(format!("{token}{post}").as_bytes()).await.unwrap();
    let (answers, _) = read_answers(&mut s, 2).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 413]);
    assert_eq!(answers[1].json()["error"], "invalid_request");

    let mut s = UnixStream::connect(&h.socket).await.unwrap();
    let long = get(&format!("/v1/token?audience={}", "a".repeat(20 * 1024)));
    s.write_all(format!("{token}{long}").as_bytes()).await.unwrap();
    let (answers, _) = read_answers(&mut s, 2).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 431]);
    assert!(
        answers[1].json()["error_description"]
            .as_str()
            .unwrap()
            .contains("16384 bytes")
    );
}

#[tokio::test]
async fn connection_close_and_http_1_0_are_answered_then_the_connection_closes() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let path = token_path("payments", PAYMENTS, "");
    let mut s = UnixStream::connect(&h.socket).await.unwrap();
    let close = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    // The request after `Connection: close` is never answered.
    s.write_all(format!("{close}{}", get(&path)).as_bytes()).await.unwrap();
    let (answers, closed) = read_answers(&mut s, 2).await;
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].status, 200);
    assert_eq!(answers[0].header("connection"), Some("close"));
    assert!(answers[0].header("date").is_some(), "{:?}", answers[0].headers);
    assert!(closed);

    let mut s = UnixStream::connect(&h.socket).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (answers, closed) = read_answers(&mut s, 2).await;
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].status, 200, "{:?}", answers[0].json());
    assert!(answers[0].json()["access_token"].is_string());
    assert!(closed, "HTTP/1.0 without keep-alive closes after the answer");
    assert_eq!(issued(&h), 2);
}

#[tokio::test]
async fn a_request_head_that_trickles_in_is_cut_off_at_the_head_deadline() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let path = token_path("payments", PAYMENTS, "");
    let mut s = UnixStream::connect(&h.socket).await.unwrap();
    s.write_all(get(&path).as_bytes()).await.unwrap();
    assert_eq!(read_answers(&mut s, 1).await.0[0].status, 200);
    // The next head, a byte a second: whole only after 30 s, past the agent's 10 s deadline.
    let head = get(&path);
    let (first, last) = head.split_at(head.len() - 30);
    let last = last.as_bytes().to_vec();
    s.write_all(first.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let trickle = tokio::spawn(async move {
        for b in last {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if wr.write_all(&[b]).await.is_err() {
                return false;
            }
        }
        true
    });
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(60), rd.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the agent closes the connection");
    assert!(
        rest.is_empty(),
        "closed without an answer: {}",
        String::from_utf8_lossy(&rest)
    );
    trickle.abort();
    assert_eq!(issued(&h), 1, "the late request got no token");
}

#[tokio::test]
async fn a_reload_that_takes_the_role_away_is_seen_on_an_open_connection() {
    let mut h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let path = token_path("payments", PAYMENTS, "");
    let mut s = UnixStream::connect(&h.socket).await.unwrap();
    for _ in 0..2 {
        s.write_all(get(&path).as_bytes()).await.unwrap();
        assert_eq!(read_answers(&mut s, 1).await.0[0].status, 200);
    }
    h.config = config(
        &h.fx,
        &Setup {
            role_uids: vec![4242],
            ..Setup::default()
        },
    );
    h.write_config();
    h.agent.as_ref().unwrap().reload(&h.config_path).unwrap();
    s.write_all(get(&path).as_bytes()).await.unwrap();
    let (answers, _) = read_answers(&mut s, 1).await;
    assert_eq!(answers[0].status, 403, "{}", answers[0].json());
    assert_eq!(issued(&h), 2);
    let denied = h
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "token.denied")
        .count();
    assert_eq!(denied, 1, "the refusal is audited");
    h.stop().await;
}

#[tokio::test]
async fn a_rotated_credential_starts_a_new_key_on_an_open_connection() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let path = token_path("payments", PAYMENTS, "");
    let mut s = UnixStream::connect(&h.socket).await.unwrap();
    s.write_all(get(&path).as_bytes()).await.unwrap();
    let first = read_answers(&mut s, 1).await.0.remove(0).json();
    write_secret(&h.sa_path, &h.mint_sa("system:serviceaccount:prod:payments-v2"));
    // The request path looks at the file at most once a second.
    let mut subject = String::new();
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(get(&path).as_bytes()).await.unwrap();
        let answer = read_answers(&mut s, 1).await.0.remove(0).json();
        subject = claims(answer["access_token"].as_str().unwrap())["sub"]
            .as_str()
            .unwrap()
            .to_string();
        if answer["access_token"] != first["access_token"] {
            break;
        }
    }
    assert_eq!(subject, "system:serviceaccount:prod:payments-v2");
    assert_eq!(h.idp.counters().exchanges, 2);
}

#[tokio::test]
async fn an_idle_connection_is_closed_at_shutdown() {
    let mut h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let mut s = UnixStream::connect(&h.socket).await.unwrap();
    s.write_all(get(&token_path("payments", PAYMENTS, "")).as_bytes())
        .await
        .unwrap();
    assert_eq!(read_answers(&mut s, 1).await.0[0].status, 200);
    h.stop().await;
    assert!(closes(&mut s).await, "the idle connection is closed, not left open");
}

#[tokio::test]
async fn a_caller_that_does_not_read_its_answers_is_not_answered_further() {
    let h = Harness::new(Duration::from_secs(300), Setup::default()).await;
    let request = get(&token_path("payments", PAYMENTS, ""));
    const N: usize = 4000;
    let s = UnixStream::connect(&h.socket).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let burst = request.repeat(N);
    let writer = tokio::spawn(async move {
        wr.write_all(burst.as_bytes()).await.unwrap();
        wr
    });
    // Nothing is read for a while: the agent stops once its answers fill the socket.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let answered = issued(&h);
    println!("{answered} of {N} answered while nothing was read");
    assert!(
        answered < N / 8,
        "{answered} of {N} pipelined requests were answered to a caller that reads nothing"
    );
    // Once read, every request is answered, in order, and each token audited.
    let mut rest = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    let mut answers = 0;
    while answers < N {
        let n = tokio::time::timeout(Duration::from_secs(40), rd.read(&mut chunk))
            .await
            .expect("the agent goes on answering")
            .unwrap();
        assert!(n > 0, "closed after {answers} answers");
        rest.extend_from_slice(&chunk[..n]);
        answers = rest.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count();
    }
    assert_eq!(answers, N);
    drop(writer.await.unwrap());
    assert_eq!(issued(&h), N);
}
