//! A role's rate holds on a keep-alive connection: the requests a connection has handed out
//! again (without deciding them afresh) and those decided on the full path, on that connection
//! or another of the same process, count in one bucket.

mod common;

use std::time::Duration;

use common::*;
use cortexid::config::Rate;
use cortexid::devidp::fixture::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// One `GET` on `stream` and its answer: status and JSON body.
async fn ask(stream: &mut UnixStream, path: &str) -> (u16, serde_json::Value) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: cortexid\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = resp.parse(&buf) {
            let body_len: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map_or(0, |h| std::str::from_utf8(h.value).unwrap().parse().unwrap());
            if buf.len() >= len + body_len {
                let body = serde_json::from_slice(&buf[len..len + body_len]).unwrap();
                return (resp.code.unwrap(), body);
            }
        }
        let mut chunk = [0u8; 8192];
        // The bound only keeps a broken agent from hanging the run.
        let read = tokio::time::timeout(Duration::from_secs(40), stream.read(&mut chunk))
            .await
            .expect("the agent did not answer")
            .unwrap();
        assert!(read > 0, "the agent closed the connection");
        buf.extend_from_slice(&chunk[..read]);
    }
}

#[tokio::test]
async fn a_roles_rate_counts_every_request_of_a_keep_alive_connection() {
    let me = nix::unistd::getuid().as_raw();
    let limited = Role {
        // Three requests an hour: none comes back within the test.
        rate: Some(Rate {
            count: 3,
            per: Duration::from_secs(3600),
        }),
        ..Role::new("limited", &["payments"]).uids(&[me])
    };
    let setup = Setup {
        role_uids: vec![4242],
        roles: vec![limited],
        ..Setup::default()
    };
    let h = Harness::new(Duration::from_secs(300), setup).await;
    let path = token_path("payments", PAYMENTS, "payments.read");
    let mut s = UnixStream::connect(&h.socket).await.unwrap();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (status, body) = ask(&mut s, &path).await;
        if status == 429 {
            assert_eq!(body["error"], "slow_down", "{body}");
        }
        statuses.push(status);
    }
    // The first is decided, the next two handed out again, the rest over the rate.
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // Another connection of the same process is in the same bucket.
    let mut other = UnixStream::connect(&h.socket).await.unwrap();
    assert_eq!(ask(&mut other, &path).await.0, 429);
    let issued = h
        .audit_lines()
        .iter()
        .filter(|l| l["event"] == "token.issued" && l["role"] == "limited")
        .count();
    assert_eq!(issued, 3, "one token.issued line per token handed out");
}
