//! Tokens the provider signs (Ed25519): setup links and inference API tokens.
//!
//! Only the provider holds the private key; authgate verifies with the public half, so a
//! compromised worker host cannot mint access to circuits of other workers.

use std::time::{SystemTime, UNIX_EPOCH};

use appproxy_common::auth::{
    InferenceClaims, PROVIDER_ISSUER, SETUP_PATH, SetupClaims, TYP_INFERENCE, TYP_SETUP, audience,
    login_session_hash, safe_redirect,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use uuid::Uuid;

use crate::domain::{Circuit, Worker};

/// Signs provider tokens.
#[derive(Clone)]
pub struct Signer {
    key: EncodingKey,
    setup_ttl: i64,
}

/// A minted setup link.
#[derive(Debug, Clone)]
pub struct SetupLink {
    pub url: String,
    pub expires_at: i64,
}

/// What a setup link is for, beyond the circuit.
#[derive(Debug, Default, Clone)]
pub struct SetupRequest<'a> {
    pub user_id: Option<Uuid>,
    pub login_session_token: Option<&'a str>,
    pub redirect: Option<&'a str>,
    pub state: Option<&'a str>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read signing key {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("signing key {path} is not an Ed25519 PKCS#8 PEM key: {source}")]
    Key {
        path: String,
        source: jsonwebtoken::errors::Error,
    },
    #[error("cannot sign: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Signer {
    /// Load the key and prove it signs (a bad key fails at start, not at the first launch).
    pub fn from_file(path: &str, setup_ttl_secs: u64) -> Result<Signer, TokenError> {
        let pem = std::fs::read(path).map_err(|source| TokenError::Read {
            path: path.into(),
            source,
        })?;
        let key = EncodingKey::from_ed_pem(&pem).map_err(|source| TokenError::Key {
            path: path.into(),
            source,
        })?;
        let s = Signer {
            key,
            setup_ttl: setup_ttl_secs as i64,
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            &serde_json::json!({}),
            &s.key,
        )
        .map_err(|source| TokenError::Key {
            path: path.into(),
            source,
        })?;
        Ok(s)
    }

    /// A setup URL: for HTTP circuits on the app's own origin
    /// (`<origin>/_appproxy/setup?token=<jwt>`); for TCP circuits on the worker API
    /// (`<api endpoint>/setup?token=<jwt>`, which hands off to Backend.AI's desktop forwarder).
    pub fn setup_link(
        &self,
        c: &Circuit,
        w: &Worker,
        req: &SetupRequest<'_>,
    ) -> Result<SetupLink, TokenError> {
        let (token, expires_at) = self.setup_token(c, w, req)?;
        let url = if c.protocol.is_http() {
            format!("{}{SETUP_PATH}?token={token}", c.url(w))
        } else {
            format!("{}/setup?token={token}", w.api_endpoint())
        };
        Ok(SetupLink { url, expires_at })
    }

    fn setup_token(
        &self,
        c: &Circuit,
        w: &Worker,
        req: &SetupRequest<'_>,
    ) -> Result<(String, i64), TokenError> {
        let origin = c.origin(w);
        let now = now_secs();
        let user = req.user_id.or(c.user_id).map(|u| u.to_string());
        let claims = SetupClaims {
            typ: TYP_SETUP.into(),
            iss: PROVIDER_ISSUER.into(),
            sub: user.unwrap_or_default(),
            aud: audience(c.id, c.generation),
            cid: c.id,
            generation: c.generation,
            origin: origin.clone(),
            path: c.path_prefix().map(str::to_string),
            // TCP: only whether a redirect was asked for matters (302 vs JSON hand-off).
            redirect: match (c.protocol.is_http(), req.redirect) {
                (true, r) => safe_redirect(r.unwrap_or("/")),
                (false, Some(r)) if !r.is_empty() => "/".into(),
                (false, _) => String::new(),
            },
            ls: req
                .login_session_token
                .map(login_session_hash)
                .unwrap_or_default(),
            state: req.state.map(str::to_string),
            iat: now,
            nbf: now,
            exp: now + self.setup_ttl,
            jti: Uuid::new_v4().simple().to_string(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.key)?;
        Ok((token, claims.exp))
    }

    /// An inference API token for a circuit, valid until `exp` (epoch seconds).
    pub fn inference_token(
        &self,
        c: &Circuit,
        user: Option<String>,
        exp: i64,
    ) -> Result<String, TokenError> {
        let now = now_secs();
        let claims = InferenceClaims {
            typ: TYP_INFERENCE.into(),
            iss: PROVIDER_ISSUER.into(),
            sub: user.clone().unwrap_or_default(),
            aud: c.id.as_hyphenated().to_string(),
            id: c.id,
            user,
            endpoint_id: c.endpoint_id,
            iat: now,
            nbf: now,
            exp,
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            &claims,
            &self.key,
        )?)
    }
}
