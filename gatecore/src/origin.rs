//! Hosts and origins, pure: what a `Host` and an `Origin` may be, and the one normal form
//! two origins are compared in.

/// A host name or IP address (no scheme, port, path or spaces).
pub fn validate_host(host: &str) -> Result<(), String> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{host:?} is not a valid host name or IP address"))
    }
}

/// An origin `http(s)://host[:port]` (`[v6]` allowed), lowercase, without the scheme's default
/// port or a trailing dot on the host; `None` for anything else (paths, user info, `null`,
/// wildcards, port 0). Used for `allowed_origins` and for the `Origin` header authgate checks.
pub fn normalize_origin(origin: &str) -> Option<String> {
    let lower = origin.trim().to_ascii_lowercase();
    let (scheme, rest) = lower.split_once("://")?;
    let default = match scheme {
        "http" => ":80",
        "https" => ":443",
        _ => return None,
    };
    // `[v6]:port`, `[v6]`, `host:port`, `host`.
    let (host, port) = match rest.strip_prefix('[').and_then(|r| r.split_once(']')) {
        Some((v6, tail)) => {
            v6.parse::<std::net::Ipv6Addr>().ok()?;
            let port = match tail {
                "" => None,
                t => Some(t.strip_prefix(':')?),
            };
            (format!("[{v6}]"), port)
        }
        None => {
            let (h, p) = match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            };
            let h = h.strip_suffix('.').unwrap_or(h);
            validate_host(h).ok()?;
            (h.to_string(), p)
        }
    };
    let port: Option<u16> = match port {
        Some(p) => Some(p.parse().ok().filter(|p| *p != 0)?),
        None => None,
    };
    let full = match port {
        Some(p) => format!("{scheme}://{host}:{p}"),
        None => format!("{scheme}://{host}"),
    };
    Some(full.strip_suffix(default).unwrap_or(&full).to_string())
}
