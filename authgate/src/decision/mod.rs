//! The ForwardAuth decision, pure: the forwarded request, the target the provider put into
//! the forwardAuth address, authgate's keys and the revocation set in; allow (with the headers
//! the app may see) or deny (with a reason) out. No I/O, no clock of its own.

use uuid::Uuid;

use crate::{
    cookie::{CookieError, Jar},
    revocation::Revocations,
    token::{Keys, TokenError},
};

/// Interactive (cookie) or inference (bearer token) circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Interactive,
    Inference,
}

/// From the forwardAuth address: `/auth/<circuit>?g=<generation>&m=<mode>`.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub circuit: Uuid,
    pub generation: i64,
    pub mode: Mode,
    /// A public circuit with a plugin (`o=1`): the plugin replaces the built-in checks.
    pub public: bool,
}

/// What Traefik forwarded (header values that are not valid UTF-8 arrive as `Err(())`).
#[derive(Debug, Default)]
pub struct Forwarded<'a> {
    pub method: Vec<Result<&'a str, ()>>,
    pub host: Vec<Result<&'a str, ()>>,
    pub uri: Vec<Result<&'a str, ()>>,
    pub cookies: Vec<Result<&'a str, ()>>,
    pub authorization: Vec<Result<&'a str, ()>>,
    pub referer: Vec<Result<&'a str, ()>>,
}

/// Why a request was denied. Each maps to one status and one Backend.AI error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deny {
    /// Missing/repeated/invalid `X-Forwarded-*`: not a request Traefik made.
    BadForwarded,
    /// Cookie header too large, too many candidates, or not UTF-8.
    BadCookieHeader,
    /// No cookie for this circuit (E20004).
    NoCookie,
    /// A cookie for this circuit that does not verify (E20005).
    BadCookie(TokenError),
    /// Valid credential of a revoked user or login session.
    Revoked,
    /// Inference: no `Authorization` (E20006).
    NoToken,
    /// Inference: a scheme other than Bearer/BackendAI (E20007).
    BadScheme,
    /// Inference: token does not verify (E20008).
    BadToken(TokenError),
    /// The revocation set was never loaded: fail closed.
    NotReady,
}

impl Deny {
    pub fn status(self) -> u16 {
        match self {
            Deny::BadForwarded | Deny::BadCookieHeader => 400,
            Deny::NotReady => 503,
            _ => 401,
        }
    }

    /// Backend.AI worker error code where one exists.
    pub fn code(self) -> &'static str {
        match self {
            Deny::NoCookie => "E20004",
            Deny::BadCookie(_) | Deny::Revoked => "E20005",
            Deny::NoToken => "E20006",
            Deny::BadScheme => "E20007",
            Deny::BadToken(TokenError::Claims) => "E20009",
            Deny::BadToken(_) => "E20008",
            Deny::BadForwarded | Deny::BadCookieHeader => "E20001",
            Deny::NotReady => "E10001",
        }
    }

    /// Metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Deny::BadForwarded => "bad_forwarded",
            Deny::BadCookieHeader => "bad_cookie_header",
            Deny::NoCookie => "no_cookie",
            Deny::BadCookie(_) => "bad_cookie",
            Deny::Revoked => "revoked",
            Deny::NoToken => "no_token",
            Deny::BadScheme => "bad_scheme",
            Deny::BadToken(_) => "bad_token",
            Deny::NotReady => "not_ready",
        }
    }
}

/// What the app gets on allow: exactly these values for the headers the provider listed in
/// `authResponseHeaders` (`None` → Traefik deletes the header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    pub cookie: Option<String>,
    /// The client's `Referer`, unless it points into `/_appproxy/` (a setup link).
    pub referer: Option<String>,
    pub authorization: Option<String>,
    /// Who was let in (empty for preflight).
    pub user: String,
}

/// The only header value of a name, if exactly one valid one was sent.
fn single<'a>(v: &[Result<&'a str, ()>]) -> Option<&'a str> {
    match v {
        [Ok(s)] if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// An origin-form request target as Traefik sends it (`RequestURI()`): starts with `/`, no
/// control characters, no spaces, bounded.
fn valid_uri(u: &str) -> bool {
    u.starts_with('/') && u.len() <= 16 * 1024 && !u.bytes().any(|b| b <= 0x20 || b == 0x7f)
}

pub struct Settings {
    pub forward_inference_authorization: bool,
}

/// Decide one request. Token times are checked by the verifier against the system clock.
pub fn decide(
    f: &Forwarded<'_>,
    t: Target,
    keys: &Keys,
    revoked: &Revocations,
    s: &Settings,
) -> Result<Allow, Deny> {
    let method = single(&f.method).ok_or(Deny::BadForwarded)?;
    let _host = single(&f.host).ok_or(Deny::BadForwarded)?;
    let uri = single(&f.uri).ok_or(Deny::BadForwarded)?;
    if !valid_uri(uri) || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Deny::BadForwarded);
    }
    let lines: Vec<&str> = f
        .cookies
        .iter()
        .map(|l| l.map_err(|_| Deny::BadCookieHeader))
        .collect::<Result<_, _>>()?;
    let jar = Jar::parse(&lines).map_err(|_: CookieError| Deny::BadCookieHeader)?;
    let cookie = jar.without_ours();
    let referer = single(&f.referer)
        .filter(|r| !r.contains(appproxy_common::names::SETUP_PATH_PREFIX))
        .map(str::to_string);
    if method == "OPTIONS" || t.public {
        return Ok(Allow {
            cookie,
            referer,
            authorization: None,
            user: String::new(),
        });
    }
    if !revoked.synced() {
        return Err(Deny::NotReady);
    }
    match t.mode {
        Mode::Interactive => {
            let candidates = jar
                .candidates(t.circuit)
                .map_err(|_| Deny::BadCookieHeader)?;
            let mut last = Deny::NoCookie;
            for value in candidates {
                match keys.verify_session(value, t.circuit, t.generation) {
                    Ok(c) if revoked.is_revoked(&c.sub, &c.ls, c.iat) => last = Deny::Revoked,
                    Ok(c) => {
                        return Ok(Allow {
                            cookie,
                            referer,
                            authorization: None,
                            user: c.sub,
                        });
                    }
                    Err(e) => {
                        if last == Deny::NoCookie {
                            last = Deny::BadCookie(e);
                        }
                    }
                }
            }
            Err(last)
        }
        Mode::Inference => {
            let raw = match f.authorization.as_slice() {
                [] => return Err(Deny::NoToken),
                [Ok(v)] => v.trim(),
                _ => return Err(Deny::BadToken(TokenError::Malformed)),
            };
            let (scheme, token) = raw.split_once(' ').ok_or(Deny::BadScheme)?;
            if !(scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("backendai"))
            {
                return Err(Deny::BadScheme);
            }
            let c = keys
                .verify_inference(token.trim(), t.circuit)
                .map_err(Deny::BadToken)?;
            let user = c.user.clone().unwrap_or_else(|| c.sub.clone());
            if revoked.is_revoked(&user, "", c.iat) {
                return Err(Deny::Revoked);
            }
            Ok(Allow {
                cookie,
                referer,
                authorization: s.forward_inference_authorization.then(|| raw.to_string()),
                user,
            })
        }
    }
}

#[cfg(test)]
mod tests;
