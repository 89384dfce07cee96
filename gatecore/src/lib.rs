//! The auth decision of one request, pure: no I/O, no clock of its own, no async. Two hosts
//! run it: authgate behind Traefik's ForwardAuth, and the fast-path plugin that Traefik loads
//! as an http-wasm middleware (built for `wasm32-wasip1` from `fastpath/`). Both call the same
//! [`decision::decide`], parse cookies with the same [`jar::Jar`] and verify session cookies
//! with the same [`session::verify`], so the two paths cannot disagree.

pub mod answer;
pub mod decision;
pub mod jar;
pub mod names;
pub mod origin;
pub mod remembered;
pub mod revocation;
pub mod session;

/// Why a token was refused (kept coarse on the wire; precise in metrics and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    Signature,
    Expired,
    Claims,
}

impl TokenError {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::Signature => "signature",
            TokenError::Expired => "expired",
            TokenError::Claims => "claims",
        }
    }
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenError::Malformed => "malformed token",
            TokenError::Signature => "bad signature or algorithm",
            TokenError::Expired => "expired or not yet valid",
            TokenError::Claims => "wrong claims",
        })
    }
}

impl std::error::Error for TokenError {}
