//! Signing keys and JSON Web Keys.
//!
//! Used by `cortexid keygen`, by `private_key_jwt` client authentication and by the development
//! provider. All cryptography goes through aws-lc-rs (directly, or through jsonwebtoken and rcgen).
//!
//! Private key material never reaches a log: [`SigningKey`]'s `Debug` shows the algorithm and the
//! key id only, and the PKCS#8 PEM is zeroized when the key is dropped.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
    RsaKeyPair, RsaPublicKeyComponents,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject as _;
use serde_json::{Value, json};
use zeroize::Zeroizing;

/// Why a key could not be made, read, written or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("unknown key algorithm {0:?}: expected ES256, EdDSA or RS256")]
    UnknownAlgorithm(String),
    #[error("could not generate a {alg} key: {reason}")]
    Generate { alg: KeyAlg, reason: String },
    #[error("invalid private key: {0}")]
    InvalidKey(String),
    #[error("unsupported private key: {0}")]
    Unsupported(String),
    #[error("invalid JWK: {0}")]
    InvalidJwk(String),
    #[error("could not sign a JWT: {0}")]
    Sign(String),
    #[error("{}: the file already exists; refusing to overwrite a key file (remove it first or choose another path)", .0.display())]
    Exists(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The signature algorithms a [`SigningKey`] can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyAlg {
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (2048-bit keys when generated).
    RS256,
}

impl KeyAlg {
    /// The jsonwebtoken algorithm.
    pub(crate) fn jwt_alg(self) -> Algorithm {
        match self {
            KeyAlg::ES256 => Algorithm::ES256,
            KeyAlg::EdDSA => Algorithm::EdDSA,
            KeyAlg::RS256 => Algorithm::RS256,
        }
    }

    /// The JOSE name (`alg` header value).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlg::ES256 => "ES256",
            KeyAlg::EdDSA => "EdDSA",
            KeyAlg::RS256 => "RS256",
        }
    }
}

impl fmt::Display for KeyAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyAlg {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_uppercase().as_str() {
            "ES256" => Ok(KeyAlg::ES256),
            "EDDSA" | "ED25519" => Ok(KeyAlg::EdDSA),
            "RS256" => Ok(KeyAlg::RS256),
            _ => Err(KeyError::UnknownAlgorithm(s.to_string())),
        }
    }
}

/// A private signing key with its key id and public JWK.
#[derive(Clone)]
pub struct SigningKey {
    alg: KeyAlg,
    kid: String,
    pem: Zeroizing<String>,
    encoding: EncodingKey,
    jwk: Value,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generate a fresh key (P-256, Ed25519, or RSA 2048).
    pub fn generate(alg: KeyAlg) -> Result<SigningKey, KeyError> {
        let rcgen_alg = match alg {
            KeyAlg::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlg::EdDSA => &rcgen::PKCS_ED25519,
            KeyAlg::RS256 => &rcgen::PKCS_RSA_SHA256,
        };
        let kp = rcgen::KeyPair::generate_for(rcgen_alg).map_err(|e| KeyError::Generate {
            alg,
            reason: e.to_string(),
        })?;
        let der = Zeroizing::new(kp.serialized_der().to_vec());
        Self::from_pkcs8_der(der, alg, None)
    }

    /// Read a private key from PEM: PKCS#8 (`PRIVATE KEY`) with a P-256, Ed25519 or RSA key;
    /// SEC1 (`EC PRIVATE KEY`) and PKCS#1 (`RSA PRIVATE KEY`) are accepted and converted to
    /// PKCS#8. `kid` defaults to the RFC 7638 thumbprint of the public JWK.
    pub(crate) fn from_pem(pem: &str, kid: Option<&str>) -> Result<SigningKey, KeyError> {
        let parsed = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
            KeyError::InvalidKey(format!(
                "no PEM private key found ({e}); expected a PKCS#8 \"PRIVATE KEY\" block"
            ))
        })?;
        let (der, alg) = match &parsed {
            PrivateKeyDer::Pkcs8(p) => {
                let der = p.secret_pkcs8_der();
                (Zeroizing::new(der.to_vec()), detect_pkcs8(der)?)
            }
            PrivateKeyDer::Sec1(s) => {
                let kp = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, s.secret_sec1_der())
                    .map_err(|_| {
                        KeyError::Unsupported(
                            "EC PRIVATE KEY is not a P-256 key (only P-256 / ES256 is supported)".into(),
                        )
                    })?;
                let doc = kp
                    .to_pkcs8v1()
                    .map_err(|_| KeyError::InvalidKey("could not convert the EC key to PKCS#8".into()))?;
                (Zeroizing::new(doc.as_ref().to_vec()), KeyAlg::ES256)
            }
            PrivateKeyDer::Pkcs1(r) => {
                let kp = RsaKeyPair::from_der(r.secret_pkcs1_der())
                    .map_err(|e| KeyError::InvalidKey(format!("RSA PRIVATE KEY rejected: {e}")))?;
                let doc: Pkcs8V1Der<'static> = kp
                    .as_der()
                    .map_err(|_| KeyError::InvalidKey("could not convert the RSA key to PKCS#8".into()))?;
                (Zeroizing::new(doc.as_ref().to_vec()), KeyAlg::RS256)
            }
            _ => return Err(KeyError::Unsupported("unknown private key format".into())),
        };
        Self::from_pkcs8_der(der, alg, kid)
    }

    fn from_pkcs8_der(der: Zeroizing<Vec<u8>>, alg: KeyAlg, kid: Option<&str>) -> Result<SigningKey, KeyError> {
        let mut jwk = match alg {
            KeyAlg::ES256 => {
                let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                    .map_err(|e| KeyError::InvalidKey(format!("P-256 key rejected: {e}")))?;
                let point = kp.public_key().as_ref();
                if point.len() != 65 || point[0] != 4 {
                    return Err(KeyError::InvalidKey("unexpected P-256 public key encoding".into()));
                }
                json!({
                    "kty": "EC",
                    "crv": "P-256",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
                })
            }
            KeyAlg::EdDSA => {
                let kp = Ed25519KeyPair::from_pkcs8(&der)
                    .map_err(|e| KeyError::InvalidKey(format!("Ed25519 key rejected: {e}")))?;
                json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": URL_SAFE_NO_PAD.encode(kp.public_key().as_ref()),
                })
            }
            KeyAlg::RS256 => {
                let kp =
                    RsaKeyPair::from_pkcs8(&der).map_err(|e| KeyError::InvalidKey(format!("RSA key rejected: {e}")))?;
                if kp.public_modulus_len() < 256 {
                    return Err(KeyError::Unsupported(format!(
                        "RSA key of {} bits is too small (2048 bits at least)",
                        kp.public_modulus_len() * 8
                    )));
                }
                let c = RsaPublicKeyComponents::<Vec<u8>>::from(kp.public_key());
                json!({
                    "kty": "RSA",
                    "n": URL_SAFE_NO_PAD.encode(&c.n),
                    "e": URL_SAFE_NO_PAD.encode(&c.e),
                })
            }
        };
        let pem = pkcs8_pem(&der);
        let encoding = match alg {
            KeyAlg::ES256 => EncodingKey::from_ec_der(&der),
            KeyAlg::EdDSA => EncodingKey::from_ed_der(&der),
            // jsonwebtoken's RSA signer wants PKCS#1; its PEM reader extracts it from PKCS#8.
            KeyAlg::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes())
                .map_err(|e| KeyError::InvalidKey(format!("RSA key rejected by the JWT signer: {e}")))?,
        };
        let kid = match kid {
            Some(k) if !k.is_empty() => k.to_string(),
            _ => jwk_thumbprint(&jwk)?,
        };
        if let Some(obj) = jwk.as_object_mut() {
            obj.insert("kid".into(), Value::String(kid.clone()));
            obj.insert("alg".into(), Value::String(alg.as_str().into()));
            obj.insert("use".into(), Value::String("sig".into()));
        }
        Ok(SigningKey {
            alg,
            kid,
            pem,
            encoding,
            jwk,
        })
    }

    pub fn alg(&self) -> KeyAlg {
        self.alg
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWK: `kty`, curve or modulus parameters, `kid`, `alg`, `use: "sig"`.
    pub fn public_jwk(&self) -> &Value {
        &self.jwk
    }

    /// The private key as PKCS#8 PEM, for writing key files (see [`write_key_file`]).
    pub(crate) fn private_pem(&self) -> &str {
        &self.pem
    }

    /// Sign `claims` as a JWT with header `{alg, kid, typ: "JWT"}`.
    pub fn sign<T: serde::Serialize>(&self, claims: &T) -> Result<String, KeyError> {
        self.sign_typed("JWT", claims)
    }

    /// Sign `claims` as a JWT with header `{alg, kid, typ}` (for example `typ: "at+jwt"`).
    pub(crate) fn sign_typed<T: serde::Serialize>(&self, typ: &str, claims: &T) -> Result<String, KeyError> {
        let mut header = Header::new(self.alg.jwt_alg());
        header.typ = Some(typ.to_string());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|e| KeyError::Sign(e.to_string()))
    }
}

fn detect_pkcs8(der: &[u8]) -> Result<KeyAlg, KeyError> {
    if EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der).is_ok() {
        return Ok(KeyAlg::ES256);
    }
    if Ed25519KeyPair::from_pkcs8(der).is_ok() {
        return Ok(KeyAlg::EdDSA);
    }
    if RsaKeyPair::from_pkcs8(der).is_ok() {
        return Ok(KeyAlg::RS256);
    }
    if EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, der).is_ok() {
        return Err(KeyError::Unsupported(
            "EC P-384 keys are not supported; use P-256 (ES256), Ed25519 or RSA".into(),
        ));
    }
    Err(KeyError::Unsupported(
        "the PKCS#8 key is not a P-256 (ES256), Ed25519 (EdDSA) or RSA (RS256) private key".into(),
    ))
}

fn pkcs8_pem(der: &[u8]) -> Zeroizing<String> {
    let b64 = Zeroizing::new(STANDARD.encode(der));
    let mut pem = Zeroizing::new(String::with_capacity(b64.len() + b64.len() / 64 + 64));
    pem.push_str("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

/// Write `key`'s private PEM to a new file with mode 0600. An existing file is never overwritten.
pub(crate) fn write_key_file(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let io_err = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists(path.to_path_buf())
            } else {
                io_err(e)
            }
        })?;
    file.write_all(key.private_pem().as_bytes()).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    Ok(())
}

/// The RFC 7638 thumbprint of a public JWK: base64url(SHA-256(canonical required members)).
pub(crate) fn jwk_thumbprint(jwk: &Value) -> Result<String, KeyError> {
    let obj = jwk
        .as_object()
        .ok_or_else(|| KeyError::InvalidJwk("a JWK must be a JSON object".into()))?;
    let kty = obj
        .get("kty")
        .and_then(Value::as_str)
        .ok_or_else(|| KeyError::InvalidJwk("missing kty".into()))?;
    // Required members in lexicographic order (RFC 7638 section 3.2).
    let members: &[&str] = match kty {
        "EC" => &["crv", "kty", "x", "y"],
        "OKP" => &["crv", "kty", "x"],
        "RSA" => &["e", "kty", "n"],
        "oct" => &["k", "kty"],
        other => return Err(KeyError::InvalidJwk(format!("unsupported kty {other:?}"))),
    };
    let mut canonical = String::from("{");
    for (i, name) in members.iter().enumerate() {
        let value = obj
            .get(*name)
            .and_then(Value::as_str)
            .ok_or_else(|| KeyError::InvalidJwk(format!("{kty} key without the {name} member")))?;
        if i > 0 {
            canonical.push(',');
        }
        canonical.push_str(&Value::String((*name).to_string()).to_string());
        canonical.push(':');
        canonical.push_str(&Value::String(value.to_string()).to_string());
    }
    canonical.push('}');
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    Ok(URL_SAFE_NO_PAD.encode(digest.as_ref()))
}

/// The signature algorithm a public JWK is for: its `alg` member if present, else derived from
/// `kty`/`crv` (EC P-256 → ES256, P-384 → ES384, OKP Ed25519 → EdDSA, RSA → RS256).
pub(crate) fn jwk_algorithm(jwk: &Value) -> Result<Algorithm, KeyError> {
    if let Some(alg) = jwk.get("alg").and_then(Value::as_str) {
        return Algorithm::from_str(alg).map_err(|_| KeyError::InvalidJwk(format!("unsupported alg {alg:?}")));
    }
    let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or_default();
    let crv = jwk.get("crv").and_then(Value::as_str).unwrap_or_default();
    match (kty, crv) {
        ("EC", "P-256") => Ok(Algorithm::ES256),
        ("EC", "P-384") => Ok(Algorithm::ES384),
        ("OKP", "Ed25519") => Ok(Algorithm::EdDSA),
        ("RSA", _) => Ok(Algorithm::RS256),
        _ => Err(KeyError::InvalidJwk(format!(
            "cannot tell the algorithm of a {kty:?} {crv:?} key"
        ))),
    }
}

/// A verification key and its algorithm from a public JWK.
pub(crate) fn decoding_key(jwk: &Value) -> Result<(DecodingKey, Algorithm), KeyError> {
    let alg = jwk_algorithm(jwk)?;
    let parsed: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(jwk.clone()).map_err(|e| KeyError::InvalidJwk(e.to_string()))?;
    let key = DecodingKey::from_jwk(&parsed).map_err(|e| KeyError::InvalidJwk(e.to_string()))?;
    if key.family() != alg.family() {
        return Err(KeyError::InvalidJwk(format!("alg {alg:?} does not match the key type")));
    }
    Ok((key, alg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::Validation;

    fn verify(key: &SigningKey, token: &str) -> Value {
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.public_jwk().clone()).unwrap();
        let dk = DecodingKey::from_jwk(&jwk).unwrap();
        let mut v = Validation::new(key.alg().jwt_alg());
        v.set_audience(&["api"]);
        jsonwebtoken::decode::<Value>(token, &dk, &v).unwrap().claims
    }

    fn claims() -> Value {
        let now = jsonwebtoken::get_current_timestamp();
        json!({"sub": "svc", "aud": "api", "exp": now + 60})
    }

    fn roundtrip(alg: KeyAlg) {
        let key = SigningKey::generate(alg).unwrap();
        assert_eq!(key.alg(), alg);
        let jwk = key.public_jwk();
        assert_eq!(jwk["kid"], key.kid());
        assert_eq!(jwk["alg"], alg.as_str());
        assert_eq!(jwk["use"], "sig");
        assert_eq!(key.kid(), jwk_thumbprint(jwk).unwrap());

        let token = key.sign(&claims()).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, alg.jwt_alg());
        assert_eq!(header.kid.as_deref(), Some(key.kid()));
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        assert_eq!(verify(&key, &token)["sub"], "svc");

        let typed = key.sign_typed("at+jwt", &claims()).unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&typed).unwrap().typ.as_deref(),
            Some("at+jwt")
        );

        // The PEM reads back to the same key (same thumbprint), with or without a kid.
        let again = SigningKey::from_pem(key.private_pem(), None).unwrap();
        assert_eq!(again.alg(), alg);
        assert_eq!(again.kid(), key.kid());
        assert_eq!(again.public_jwk(), key.public_jwk());
        let named = SigningKey::from_pem(key.private_pem(), Some("k1")).unwrap();
        assert_eq!(named.kid(), "k1");
        assert_eq!(verify(&key, &named.sign(&claims()).unwrap())["sub"], "svc");

        // decoding_key() agrees.
        let (dk, a) = decoding_key(key.public_jwk()).unwrap();
        assert_eq!(a, alg.jwt_alg());
        let mut v = Validation::new(a);
        v.set_audience(&["api"]);
        jsonwebtoken::decode::<Value>(&token, &dk, &v).unwrap();

        // Debug never shows key material.
        let dbg = format!("{key:?}");
        assert!(dbg.contains(key.kid()));
        assert!(!dbg.contains("PRIVATE"));
    }

    #[test]
    fn es256_roundtrip() {
        roundtrip(KeyAlg::ES256);
    }

    #[test]
    fn eddsa_roundtrip() {
        roundtrip(KeyAlg::EdDSA);
    }

    #[test]
    fn rs256_roundtrip() {
        roundtrip(KeyAlg::RS256);
    }

    #[test]
    fn alg_parse_and_display() {
        assert_eq!("es256".parse::<KeyAlg>().unwrap(), KeyAlg::ES256);
        assert_eq!("EDDSA".parse::<KeyAlg>().unwrap(), KeyAlg::EdDSA);
        assert_eq!("rs256".parse::<KeyAlg>().unwrap(), KeyAlg::RS256);
        assert!("HS256".parse::<KeyAlg>().is_err());
        assert_eq!(KeyAlg::EdDSA.to_string(), "EdDSA");
    }

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 section 3.1.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            jwk_thumbprint(&jwk).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        assert!(jwk_thumbprint(&json!({"kty": "EC", "crv": "P-256"})).is_err());
    }

    #[test]
    fn rejects_garbage_pem() {
        assert!(SigningKey::from_pem("not a pem", None).is_err());
        let cert_only = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(SigningKey::from_pem(cert_only, None).is_err());
    }

    #[test]
    fn reads_sec1_ec_key() {
        let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let sec1 = kp.private_key().as_der().unwrap();
        let b64 = STANDARD.encode(sec1.as_ref());
        let pem = format!("-----BEGIN EC PRIVATE KEY-----\n{b64}\n-----END EC PRIVATE KEY-----\n");
        let key = SigningKey::from_pem(&pem, None).unwrap();
        assert_eq!(key.alg(), KeyAlg::ES256);
        assert!(key.private_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(verify(&key, &key.sign(&claims()).unwrap())["sub"], "svc");
    }

    #[test]
    fn key_file_is_0600_and_not_overwritten() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        let key = SigningKey::generate(KeyAlg::ES256).unwrap();
        write_key_file(&path, &key).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = SigningKey::from_pem(&std::fs::read_to_string(&path).unwrap(), None).unwrap();
        assert_eq!(back.kid(), key.kid());
        let err = write_key_file(&path, &key).unwrap_err();
        assert!(matches!(err, KeyError::Exists(_)));
        assert!(err.to_string().contains("refusing to overwrite"));
    }
}
