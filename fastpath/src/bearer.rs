//! Inference tokens on the fast path: EdDSA JWTs the provider signs, checked against its
//! public key (from `state.json`; public, so nothing secret reaches the plugin), with the same
//! rules as authgate's: algorithm pinned, `typ`, `iss`, `aud` and `id` of exactly this circuit,
//! `nbf`/`exp` with leeway. A verified token is remembered (bounded) so a client's repeated
//! calls cost a lookup, not a signature check.

use appproxy_gatecore::{
    TokenError,
    decision::Bearer,
    names::{PROVIDER_ISSUER, TYP_INFERENCE},
    remembered::Remembered,
    session,
};
use base64::Engine;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Deserialize;
use uuid::Uuid;

/// Most tokens one instance remembers before it starts over.
const CACHE_MAX: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    #[serde(default)]
    #[allow(dead_code)]
    typ: Option<String>,
}

/// The claims authgate requires of an inference token.
#[derive(Deserialize)]
struct Claims {
    typ: String,
    iss: String,
    sub: String,
    aud: String,
    id: Uuid,
    #[serde(default)]
    user: Option<String>,
    iat: i64,
    nbf: i64,
    exp: i64,
}

/// A verified token: who, and when it stops being valid.
#[derive(Clone)]
struct Verified {
    bearer: Bearer,
    circuit: Uuid,
    nbf: i64,
    exp: i64,
}

pub(crate) struct Bearers {
    cache: Remembered<Verified>,
}

impl Default for Bearers {
    fn default() -> Self {
        Bearers {
            cache: Remembered::new(CACHE_MAX),
        }
    }
}

fn b64(s: &str) -> Result<Vec<u8>, TokenError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| TokenError::Malformed)
}

impl Bearers {
    /// Check `token` for `circuit` at `now` against the provider's `key`.
    pub(crate) fn verify(
        &mut self,
        token: &str,
        key: Option<&[u8; 32]>,
        circuit: Uuid,
        now: i64,
        leeway: i64,
    ) -> Result<Bearer, TokenError> {
        let live = |v: &Verified| {
            if v.circuit != circuit {
                Err(TokenError::Claims)
            } else {
                session::within(v.nbf, v.exp, now, leeway).map(|()| v.bearer.clone())
            }
        };
        if let Some(v) = self.cache.get(token) {
            return live(v);
        }
        let v = verify(token, key.ok_or(TokenError::Signature)?)?;
        let answer = live(&v);
        self.cache.put(token, v);
        answer
    }
}

/// Signature and claims that do not depend on the time or the circuit asked about.
fn verify(token: &str, key: &[u8; 32]) -> Result<Verified, TokenError> {
    let (h, p, s) = appproxy_gatecore::session::split_jwt(token)?;
    let header: Header = serde_json::from_slice(&b64(h)?).map_err(|_| TokenError::Signature)?;
    if header.alg != "EdDSA" {
        return Err(TokenError::Signature);
    }
    let sig: [u8; 64] = b64(s)?.try_into().map_err(|_| TokenError::Signature)?;
    let key = VerifyingKey::from_bytes(key).map_err(|_| TokenError::Signature)?;
    key.verify_strict(
        &token.as_bytes()[..h.len() + 1 + p.len()],
        &Signature::from_bytes(&sig),
    )
    .map_err(|_| TokenError::Signature)?;
    let c: Claims = serde_json::from_slice(&b64(p)?).map_err(|e| match e.is_data() {
        true => TokenError::Claims,
        false => TokenError::Malformed,
    })?;
    if c.typ != TYP_INFERENCE
        || c.iss != PROVIDER_ISSUER
        || c.aud != c.id.as_hyphenated().to_string()
    {
        return Err(TokenError::Claims);
    }
    Ok(Verified {
        bearer: Bearer {
            user: c.user.unwrap_or(c.sub),
            iat: c.iat,
        },
        circuit: c.id,
        nbf: c.nbf,
        exp: c.exp,
    })
}
