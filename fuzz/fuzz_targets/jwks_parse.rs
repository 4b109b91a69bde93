//! A provider's JWKS and discovery-like JSON: `parse_jwks`, then key selection for every
//! accepted algorithm and building a decoding key from what was selected.
#![no_main]

use jsonwebtoken::{Algorithm, DecodingKey};
use libfuzzer_sys::fuzz_target;

const ALGS: [Algorithm; 5] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::EdDSA,
];

fuzz_target!(|data: &[u8]| {
    let Ok(keys) = cortexid::upstream::parse_jwks(data) else {
        return;
    };
    let kids: Vec<Option<String>> = keys.iter().map(|(k, _)| k.clone()).collect();
    for alg in ALGS {
        for kid in kids.iter().map(Option::as_deref).chain([None, Some("")]) {
            if let Some(jwk) = cortexid::upstream::find_key(&keys, kid, alg) {
                let _ = DecodingKey::from_jwk(jwk);
            }
        }
    }
});
