//! The ForwardAuth decision: [`appproxy_gatecore::decision`] (the same code the fast-path
//! plugin runs inside Traefik) over authgate's [`Keys`] and [`Revocations`].

pub use appproxy_gatecore::decision::{
    Allow, Bearer, Credentials, Deny, Forwarded, Mode, Settings, Target,
};
use appproxy_gatecore::{TokenError, session::SessionClaims};
use uuid::Uuid;

use crate::{revocation::Revocations, token::Keys};

/// authgate's keys and revocation set, as the decision asks for them.
struct Gate<'a> {
    keys: &'a Keys,
    revoked: &'a Revocations,
}

impl Credentials for Gate<'_> {
    fn session(
        &self,
        token: &str,
        circuit: Uuid,
        generation: i64,
    ) -> Result<SessionClaims, TokenError> {
        self.keys.verify_session(token, circuit, generation)
    }

    fn inference(&self, token: &str, circuit: Uuid) -> Result<Bearer, TokenError> {
        let c = self.keys.verify_inference(token, circuit)?;
        Ok(Bearer {
            user: c.user.unwrap_or(c.sub),
            iat: c.iat,
        })
    }

    fn is_revoked(&self, user: &str, ls: &str, iat: i64) -> bool {
        self.revoked.is_revoked(user, ls, iat)
    }

    fn ready(&self) -> bool {
        self.revoked.synced()
    }
}

/// Decide one request. Token times are checked by the verifier against the system clock.
pub fn decide(
    f: &Forwarded<'_>,
    t: Target,
    keys: &Keys,
    revoked: &Revocations,
    s: &Settings<'_>,
) -> Result<Allow, Deny> {
    appproxy_gatecore::decision::decide(f, t, &Gate { keys, revoked }, s)
}

#[cfg(test)]
pub(crate) mod tests;
