//! The socket request path: `GET /v1/token` query strings and `POST /v1/token` JSON bodies.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(query) = std::str::from_utf8(data) {
        match cortexid::api::routes::parse_query(Some(query)) {
            Ok(ask) => assert!(ask.audience.as_deref() != Some("")),
            Err(e) => assert_eq!(e.status(), 400),
        }
    }
    match cortexid::api::routes::parse_body(data) {
        Ok(ask) => {
            for t in [&ask.subject_token, &ask.actor_token].into_iter().flatten() {
                assert!(!t.token.expose().trim().is_empty());
            }
        }
        Err(e) => assert_eq!(e.status(), 400),
    }
});
