//! What a provider answers: token endpoint bodies (`parse_token_answer`) and discovery documents
//! (`parse_discovery`). Whatever the bytes, the result is a usable answer or an error, never a
//! panic; an accepted answer has a non-empty token and, if any, a positive finite lifetime.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(answer) = cortexid::upstream::parse_token_answer(data) {
        assert!(!answer.access_token.expose().is_empty());
        if let Some(d) = answer.expires_in {
            assert!(!d.is_zero());
        }
        // The fingerprint of whatever was accepted is computable and never the token itself.
        assert_eq!(answer.access_token.fingerprint().len(), 16);
    }
    let _ = cortexid::upstream::parse_discovery(data);
});
