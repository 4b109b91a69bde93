//! JWT shape check, header and claims decoding of an issued token: what the agent does before
//! and instead of verification. No signature is verified here (FUZZING.md, "Not covered").
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let _ = cortexid::upstream::looks_like_jwt(token);
    if let Some(claims) = cortexid::upstream::decode_unverified(token) {
        let _ = serde_json::to_string(&claims);
    }
    if let Ok(header) = jsonwebtoken::decode_header(token) {
        let _ = header.kid;
    }
    let _ = jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(token);
    // Claims from arbitrary JSON (exp as float, aud as list or string, huge numbers).
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = cortexid::token::TokenClaims::from_json(&v);
    }
});
