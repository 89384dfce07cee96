//! Verifying provider tokens (Ed25519 public key) and minting/verifying session cookies
//! (HS256 with a key per circuit derived from authgate's own secret, `appproxy_gatecore::session`).
//! One algorithm per kind, pinned: the token's own
//! `alg` never chooses the key or the algorithm, and headers that point elsewhere for a key
//! (`jku`, `jwk`, `x5u`, `x5c`) are refused outright.

use appproxy_common::auth::{
    AUTHGATE_ISSUER, InferenceClaims, PROVIDER_ISSUER, SessionClaims, SetupClaims, TYP_INFERENCE,
    TYP_SESSION, TYP_SETUP, audience,
};
use appproxy_gatecore::{remembered::Remembered, session};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::DeserializeOwned;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

pub use appproxy_gatecore::TokenError;

/// authgate's keys.
#[derive(Clone)]
pub struct Keys {
    provider: DecodingKey,
    /// authgate's cookie secret: each circuit's cookies are signed with a key derived from it
    /// (`appproxy_gatecore::session::circuit_key`).
    cookie_secret: Arc<[u8]>,
    leeway: u64,
    sessions: Arc<SessionCache>,
}

/// Session cookies verified recently: the exact cookie value → the circuit, generation and
/// claims it was verified for, so a browser's repeat requests skip base64, HMAC and JSON.
/// Only successful verifications are kept; a hit still checks circuit, generation and expiry
/// (revocation is checked by the caller on every request). Bounded: cleared when full.
struct SessionCache {
    entries: Mutex<Remembered<(Uuid, i64, SessionClaims)>>,
}

impl Default for SessionCache {
    fn default() -> Self {
        SessionCache {
            entries: Mutex::new(Remembered::new(SESSION_CACHE_MAX)),
        }
    }
}

/// Most cookies the session cache holds before it starts over.
const SESSION_CACHE_MAX: usize = 4096;

impl SessionCache {
    fn get(
        &self,
        token: &str,
        circuit: Uuid,
        generation: i64,
        leeway: u64,
    ) -> Option<SessionClaims> {
        let entries = self.entries.lock().expect("session cache lock");
        let (c, g, claims) = entries.get(token)?;
        let now = unix_now();
        (*c == circuit
            && *g == generation
            && session::within(claims.nbf, claims.exp, now, leeway as i64).is_ok())
        .then(|| claims.clone())
    }

    fn put(&self, token: &str, circuit: Uuid, generation: i64, claims: &SessionClaims) {
        let mut entries = self.entries.lock().expect("session cache lock");
        entries.put(token, (circuit, generation, claims.clone()));
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(i64::MAX)
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0} is not an Ed25519 public key in PEM: {1}")]
    Parse(String, jsonwebtoken::errors::Error),
}

impl Keys {
    pub fn new(
        provider_pem: &[u8],
        cookie_secret: &[u8],
        leeway: u64,
    ) -> Result<Keys, jsonwebtoken::errors::Error> {
        Ok(Keys {
            provider: DecodingKey::from_ed_pem(provider_pem)?,
            cookie_secret: cookie_secret.into(),
            leeway,
            sessions: Arc::default(),
        })
    }

    pub fn load(
        provider_key_file: &str,
        cookie_secret: &str,
        leeway: u64,
    ) -> Result<Keys, KeyError> {
        let pem = std::fs::read(provider_key_file)
            .map_err(|e| KeyError::Read(provider_key_file.into(), e))?;
        Keys::new(&pem, cookie_secret.as_bytes(), leeway)
            .map_err(|e| KeyError::Parse(provider_key_file.into(), e))
    }

    fn validation(&self, alg: Algorithm, iss: &str, aud: Option<&str>) -> Validation {
        let mut v = Validation::new(alg);
        v.set_required_spec_claims(&["exp", "nbf", "iat", "aud", "iss", "sub"]);
        v.validate_nbf = true;
        v.leeway = self.leeway;
        v.set_issuer(&[iss]);
        match aud {
            Some(a) => v.set_audience(&[a]),
            // Checked by the caller against claims it must read first (setup tokens).
            None => v.validate_aud = false,
        }
        v
    }

    fn decode<T: DeserializeOwned>(
        &self,
        token: &str,
        key: &DecodingKey,
        v: &Validation,
    ) -> Result<T, TokenError> {
        if token.len() > 8192 {
            return Err(TokenError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.jku.is_some()
            || header.jwk.is_some()
            || header.x5u.is_some()
            || header.x5c.is_some()
        {
            return Err(TokenError::Signature);
        }
        jsonwebtoken::decode::<T>(token, key, v)
            .map(|d| d.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::ExpiredSignature | K::ImmatureSignature => TokenError::Expired,
                    K::InvalidSignature
                    | K::InvalidAlgorithm
                    | K::InvalidAlgorithmName
                    | K::InvalidKeyFormat => TokenError::Signature,
                    K::InvalidAudience
                    | K::InvalidIssuer
                    | K::InvalidSubject
                    | K::MissingRequiredClaim(_) => TokenError::Claims,
                    _ => TokenError::Malformed,
                }
            })
    }

    /// A setup token: provider-signed, typ `ap-setup`, `aud` matching its circuit and generation.
    pub fn verify_setup(&self, token: &str) -> Result<SetupClaims, TokenError> {
        let v = self.validation(Algorithm::EdDSA, PROVIDER_ISSUER, None);
        let c: SetupClaims = self.decode(token, &self.provider, &v)?;
        if c.typ != TYP_SETUP || c.aud != audience(c.cid, c.generation) || c.jti.is_empty() {
            return Err(TokenError::Claims);
        }
        Ok(c)
    }

    /// A session cookie for exactly this circuit and generation.
    pub fn verify_session(
        &self,
        token: &str,
        circuit: Uuid,
        generation: i64,
    ) -> Result<SessionClaims, TokenError> {
        if let Some(c) = self.sessions.get(token, circuit, generation, self.leeway) {
            return Ok(c);
        }
        let now = unix_now();
        let leeway = self.leeway as i64;
        let key = self.cookie_key(circuit);
        let c = match session::verify(token, &key, circuit, generation, now, leeway) {
            // Cookies minted before keys were derived per circuit (signed with the secret
            // itself) stay valid here until they expire; the fast path never accepts them.
            Err(TokenError::Signature) => {
                session::verify(token, &self.cookie_secret, circuit, generation, now, leeway)?
            }
            other => other?,
        };
        self.sessions.put(token, circuit, generation, &c);
        Ok(c)
    }

    /// An inference API token for exactly this circuit.
    pub fn verify_inference(
        &self,
        token: &str,
        circuit: Uuid,
    ) -> Result<InferenceClaims, TokenError> {
        let aud = circuit.as_hyphenated().to_string();
        let v = self.validation(Algorithm::EdDSA, PROVIDER_ISSUER, Some(&aud));
        let c: InferenceClaims = self.decode(token, &self.provider, &v)?;
        if c.typ != TYP_INFERENCE || c.id != circuit {
            return Err(TokenError::Claims);
        }
        Ok(c)
    }

    /// Mint the session cookie value that a verified setup token entitles to.
    pub fn mint_session(&self, setup: &SetupClaims, now: i64, ttl: i64) -> String {
        let claims = SessionClaims {
            typ: TYP_SESSION.into(),
            iss: AUTHGATE_ISSUER.into(),
            sub: setup.sub.clone(),
            aud: setup.aud.clone(),
            ls: setup.ls.clone(),
            iat: now,
            nbf: now,
            exp: now + ttl,
        };
        session::sign(&self.cookie_key(setup.cid), &claims)
    }

    /// The key `circuit`'s cookies are signed with (what the fast-path plugin is given).
    pub fn cookie_key(&self, circuit: Uuid) -> session::Key {
        session::circuit_key(&self.cookie_secret, circuit)
    }
}
