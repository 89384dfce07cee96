//! The decision, pure: the request as forwarded, the target (circuit, generation, mode) and
//! the host's [`Credentials`] (key checks and the revocation set) in; allow (with the headers
//! the app may see) or deny (with a reason) out. authgate calls it for ForwardAuth, the
//! fast-path plugin for the requests Traefik hands it.

use uuid::Uuid;

use crate::{
    TokenError,
    jar::{CookieError, Jar},
    names::SETUP_PATH_PREFIX,
    origin::normalize_origin,
    session::SessionClaims,
};

/// What the host checks with its own keys and state.
pub trait Credentials {
    /// The claims of a session cookie valid for exactly this circuit and generation.
    fn session(
        &self,
        token: &str,
        circuit: Uuid,
        generation: i64,
    ) -> Result<SessionClaims, TokenError>;
    /// The user of an inference token for this circuit.
    fn inference(&self, token: &str, circuit: Uuid) -> Result<Bearer, TokenError>;
    /// Whether a credential of `user` / login session `ls`, issued at `iat`, is revoked.
    fn is_revoked(&self, user: &str, ls: &str, iat: i64) -> bool;
    /// False until the revocation set was loaded: then nothing private is allowed.
    fn ready(&self) -> bool;
}

/// Who an inference token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bearer {
    pub user: String,
    pub iat: i64,
}

/// Interactive (cookie) or inference (bearer token) circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Interactive,
    Inference,
}

/// From the forwardAuth address: `/auth/<circuit>?g=<generation>&m=<mode>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub circuit: Uuid,
    pub generation: i64,
    pub mode: Mode,
    /// A public circuit (`o=1`, behind authgate for its plugin or its rate limit): no
    /// credential is checked (a plugin replaces the built-in checks).
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
    /// `X-Forwarded-Proto` (the scheme of the app's own origin).
    pub proto: Vec<Result<&'a str, ()>>,
    /// `Origin` and `Sec-Fetch-Site`: where a browser request comes from.
    pub origin: Vec<Result<&'a str, ()>>,
    pub fetch_site: Vec<Result<&'a str, ()>>,
    /// `Access-Control-Request-Method` (a CORS preflight names the method it asks for).
    pub preflight_method: Vec<Result<&'a str, ()>>,
    /// `Sec-WebSocket-Key` (Traefik drops the hop-by-hop `Upgrade`, this one arrives).
    pub websocket_key: Vec<Result<&'a str, ()>>,
    /// `Content-Length` and `Transfer-Encoding`: whether the request carries a body.
    pub content_length: Vec<Result<&'a str, ()>>,
    pub transfer_encoding: Vec<Result<&'a str, ()>>,
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
    /// A cookie-authorized unsafe request or WebSocket upgrade made by another origin's page.
    CrossOrigin,
}

impl Deny {
    pub fn status(self) -> u16 {
        match self {
            Deny::BadForwarded | Deny::BadCookieHeader => 400,
            Deny::NotReady => 503,
            Deny::CrossOrigin => 403,
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
            Deny::CrossOrigin => "E20011",
        }
    }

    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            Deny::NoCookie | Deny::BadCookie(_) => "This browser has no valid access to this app.",
            Deny::Revoked => "You were logged out: access to this app was revoked.",
            Deny::NoToken => "Authorization header required.",
            Deny::BadScheme => "Use Authorization: Bearer <token>.",
            Deny::BadToken(_) => "Invalid API token.",
            Deny::NotReady => "Auth service is starting; retry shortly.",
            Deny::BadForwarded | Deny::BadCookieHeader => "Malformed request.",
            Deny::CrossOrigin => "This request came from another site's page and was refused.",
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
            Deny::CrossOrigin => "cross_origin",
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
    /// The login session (hash) of the cookie that let it in (empty when none).
    pub login_session: String,
    /// An authorized WebSocket upgrade (`GET` with `Sec-WebSocket-Key`), by that key: it is
    /// activity until the access-log record of the same request arrives.
    pub websocket: Option<String>,
    /// A CORS preflight let through without a credential (plugins are skipped too).
    pub preflight: bool,
}

/// The request headers an allow decides for the app (ForwardAuth's `authResponseHeaders`):
/// each replaces what the client sent, or removes it. `Authorization` only on inference
/// circuits (the bearer token; an interactive app gets the client's own).
pub fn app_headers(mode: Mode) -> &'static [&'static str] {
    match mode {
        Mode::Interactive => &["Cookie", "Referer"],
        Mode::Inference => &["Cookie", "Referer", "Authorization"],
    }
}

impl Allow {
    /// [`app_headers`] with their values (`None`: removed).
    pub fn into_app_headers(self, mode: Mode) -> Vec<(&'static str, Option<String>)> {
        let mut values = [self.cookie, self.referer, self.authorization].into_iter();
        app_headers(mode)
            .iter()
            .map(|name| (*name, values.next().flatten()))
            .collect()
    }
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

pub struct Settings<'a> {
    pub forward_inference_authorization: bool,
    /// Origins besides the app's own whose pages may make unsafe requests and WebSocket
    /// upgrades with the circuit's cookie (`scheme://host[:port]`, lowercase).
    pub extra_origins: &'a [String],
}

/// A real CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method` and no
/// body. Browsers send it without cookies, so it passes without a credential; any other
/// `OPTIONS` needs one like every other method.
fn is_preflight(f: &Forwarded<'_>, method: &str) -> bool {
    let no_body = f.transfer_encoding.is_empty()
        && match f.content_length.as_slice() {
            [] => true,
            [Ok(n)] => n.trim() == "0",
            _ => false,
        };
    method == "OPTIONS"
        && single(&f.origin).is_some()
        && single(&f.preflight_method).is_some()
        && no_body
}

/// Whether a cookie-authorized request may go on: safe methods always (top-level navigations
/// and subresources); unsafe methods and WebSocket upgrades only from the app's own origin
/// (or an extra allowed one) when the browser says where it comes from. Clients that send
/// neither `Origin` nor `Sec-Fetch-Site` (curl, SDKs) are not browsers acting for a page.
fn same_origin_or_allowed(f: &Forwarded<'_>, method: &str, host: &str, s: &Settings<'_>) -> bool {
    let unsafe_method = !matches!(method, "GET" | "HEAD" | "OPTIONS");
    if !unsafe_method && f.websocket_key.is_empty() {
        return true;
    }
    if !f.origin.is_empty() {
        let Some(origin) = single(&f.origin).and_then(normalize_origin) else {
            // `Origin: null` (sandboxed frames, opaque redirects), repeated or garbled.
            return false;
        };
        let proto = single(&f.proto).unwrap_or("http");
        let own = normalize_origin(&format!("{proto}://{host}"));
        return own.as_deref() == Some(origin.as_str()) || s.extra_origins.contains(&origin);
    }
    match f.fetch_site.as_slice() {
        [] => true,
        [Ok(site)] => matches!(site.trim(), "same-origin" | "none"),
        _ => false,
    }
}

/// Decide one request. Token times are checked by the verifier against the system clock.
pub fn decide(
    f: &Forwarded<'_>,
    t: Target,
    creds: &impl Credentials,
    s: &Settings<'_>,
) -> Result<Allow, Deny> {
    let method = single(&f.method).ok_or(Deny::BadForwarded)?;
    let host = single(&f.host).ok_or(Deny::BadForwarded)?;
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
    // Counted only for a `GET` upgrade with one key: an `OPTIONS` or `POST` carrying the
    // header is not a WebSocket, and its access-log record would never release the count.
    let websocket = match (method, single(&f.websocket_key)) {
        ("GET", Some(k)) => Some(k.trim().to_string()),
        _ => None,
    };
    let preflight = is_preflight(f, method);
    let allow = Allow {
        cookie: jar.without_ours(),
        referer: single(&f.referer)
            .filter(|r| !r.contains(SETUP_PATH_PREFIX))
            .map(str::to_string),
        authorization: None,
        user: String::new(),
        login_session: String::new(),
        websocket,
        preflight,
    };
    if t.public || preflight {
        return Ok(allow);
    }
    if !creds.ready() {
        return Err(Deny::NotReady);
    }
    match t.mode {
        Mode::Interactive => {
            let (user, login_session) = by_cookie(&jar, t, creds)?;
            if !same_origin_or_allowed(f, method, host, s) {
                return Err(Deny::CrossOrigin);
            }
            Ok(Allow {
                user,
                login_session,
                ..allow
            })
        }
        Mode::Inference => {
            let (user, raw) = by_token(f, t, creds)?;
            let authorization = s.forward_inference_authorization.then(|| raw.to_string());
            Ok(Allow {
                user,
                authorization,
                ..allow
            })
        }
    }
}

/// The user and login session of the first of the circuit's cookies that verifies and is not
/// revoked; else why none did (a revoked or bad cookie says more than none at all).
fn by_cookie(jar: &Jar, t: Target, creds: &impl Credentials) -> Result<(String, String), Deny> {
    let candidates = jar
        .candidates(t.circuit)
        .map_err(|_| Deny::BadCookieHeader)?;
    let mut last = Deny::NoCookie;
    for value in candidates {
        match creds.session(value, t.circuit, t.generation) {
            Ok(c) if creds.is_revoked(&c.sub, &c.ls, c.iat) => last = Deny::Revoked,
            Ok(c) => return Ok((c.sub, c.ls)),
            Err(e) if last == Deny::NoCookie => last = Deny::BadCookie(e),
            Err(_) => {}
        }
    }
    Err(last)
}

/// The user of the request's inference token (`Authorization: Bearer|BackendAI <token>`) and
/// the header as sent.
fn by_token<'a>(
    f: &Forwarded<'a>,
    t: Target,
    creds: &impl Credentials,
) -> Result<(String, &'a str), Deny> {
    let raw = match f.authorization.as_slice() {
        [] => return Err(Deny::NoToken),
        [Ok(v)] => v.trim(),
        _ => return Err(Deny::BadToken(TokenError::Malformed)),
    };
    let (scheme, token) = raw.split_once(' ').ok_or(Deny::BadScheme)?;
    if !(scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("backendai")) {
        return Err(Deny::BadScheme);
    }
    let b = creds
        .inference(token.trim(), t.circuit)
        .map_err(Deny::BadToken)?;
    if creds.is_revoked(&b.user, "", b.iat) {
        return Err(Deny::Revoked);
    }
    Ok((b.user, raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allow_names_every_header_the_app_gets_and_authorization_only_for_inference() {
        let allow = || Allow {
            cookie: Some("a=1".into()),
            referer: None,
            authorization: Some("Bearer t".into()),
            user: "u".into(),
            login_session: String::new(),
            websocket: None,
            preflight: false,
        };
        assert_eq!(
            allow().into_app_headers(Mode::Interactive),
            [("Cookie", Some("a=1".into())), ("Referer", None)]
        );
        assert_eq!(
            allow().into_app_headers(Mode::Inference),
            [
                ("Cookie", Some("a=1".into())),
                ("Referer", None),
                ("Authorization", Some("Bearer t".into()))
            ]
        );
    }
}
