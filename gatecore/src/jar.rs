//! The `Cookie` request header: parsing (all header lines merged, as browsers and Traefik may
//! send several), finding a circuit's cookie, and the header the app may see (ours removed).

use uuid::Uuid;

use crate::names::{cookie_name, is_our_cookie};

/// Most bytes of `Cookie` we read; more is refused rather than half-parsed.
pub const MAX_COOKIE_BYTES: usize = 16 * 1024;
/// Most cookies carrying one circuit's name we try (cookie tossing plants extra ones).
pub const MAX_CANDIDATES: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieError {
    TooLarge,
    TooMany,
}

/// Cookies of a request, in order.
#[derive(Debug, Default, Clone)]
pub struct Jar<'a> {
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Jar<'a> {
    /// Parse every `Cookie` header line.
    pub fn parse(lines: &[&'a str]) -> Result<Jar<'a>, CookieError> {
        if lines.iter().map(|l| l.len()).sum::<usize>() > MAX_COOKIE_BYTES {
            return Err(CookieError::TooLarge);
        }
        let pairs = lines
            .iter()
            .flat_map(|l| l.split(';'))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((n, v)) => (n.trim(), v.trim().trim_matches('"')),
                None => ("", p),
            })
            .collect();
        Ok(Jar { pairs })
    }

    /// Values of this circuit's session cookie (plain, `__Host-` and — path mode under TLS —
    /// `__Secure-` names), at most [`MAX_CANDIDATES`].
    pub fn candidates(&self, circuit: Uuid) -> Result<Vec<&'a str>, CookieError> {
        let (plain, host) = (cookie_name(circuit, false), cookie_name(circuit, true));
        let secure = format!("__Secure-{plain}");
        let found: Vec<&str> = self
            .pairs
            .iter()
            .filter(|(n, _)| *n == plain || *n == host || *n == secure)
            .map(|(_, v)| *v)
            .collect();
        if found.len() > MAX_CANDIDATES {
            return Err(CookieError::TooMany);
        }
        Ok(found)
    }

    /// Values of cookies called `name` or `__Host-<name>`, at most [`MAX_CANDIDATES`].
    pub fn values(&self, name: &str) -> Vec<&'a str> {
        let host = format!("__Host-{name}");
        self.pairs
            .iter()
            .filter(|(n, _)| *n == name || *n == host)
            .map(|(_, v)| *v)
            .take(MAX_CANDIDATES)
            .collect()
    }

    /// The `Cookie` header for the app: every cookie but ours, or `None` when nothing is left.
    /// A nameless entry is written as its bare value, so one whose value holds `=` (sent as
    /// `=name=value`, which no browser does) is dropped: it would reach the app as a cookie
    /// called `name` — ours too (found by the `cookie` fuzz target).
    pub fn without_ours(&self) -> Option<String> {
        let kept: Vec<String> = self
            .pairs
            .iter()
            .filter(|(n, v)| !(is_our_cookie(n) || (n.is_empty() && v.contains('='))))
            .map(|(n, v)| {
                if n.is_empty() {
                    v.to_string()
                } else {
                    format!("{n}={v}")
                }
            })
            .collect();
        (!kept.is_empty()).then(|| kept.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ours_are_stripped_from_every_line_and_others_kept_in_order() {
        let c = Uuid::new_v4();
        let other = Uuid::new_v4();
        let mine = format!("{}=tok", cookie_name(c, false));
        let theirs = format!("__Host-{}=x", cookie_name(other, false));
        let l1 = format!("a=1; {mine}");
        let l2 = format!("{theirs}; b=2; appproxy_permit=zzz; c");
        let jar = Jar::parse(&[&l1, &l2]).unwrap();
        assert_eq!(jar.without_ours().as_deref(), Some("a=1; b=2; c"));
        assert_eq!(jar.candidates(c).unwrap(), vec!["tok"]);
        assert!(jar.candidates(Uuid::new_v4()).unwrap().is_empty());
    }

    #[test]
    fn a_nameless_entry_never_becomes_our_cookie() {
        let c = Uuid::new_v4();
        let line = format!("a=1; = {}=planted; =x=y; bare", cookie_name(c, true));
        let jar = Jar::parse(&[&line]).unwrap();
        let kept = jar.without_ours().unwrap();
        assert_eq!(kept, "a=1; bare");
        assert!(
            Jar::parse(&[&kept])
                .unwrap()
                .candidates(c)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn nothing_left_means_no_header() {
        let c = Uuid::new_v4();
        let l = format!("{}=t", cookie_name(c, true));
        assert_eq!(Jar::parse(&[&l]).unwrap().without_ours(), None);
    }

    #[test]
    fn limits() {
        let big = "a".repeat(MAX_COOKIE_BYTES + 1);
        assert_eq!(Jar::parse(&[&big]).unwrap_err(), CookieError::TooLarge);
        let c = Uuid::new_v4();
        let many: Vec<String> = (0..MAX_CANDIDATES + 1)
            .map(|i| format!("{}=v{i}", cookie_name(c, false)))
            .collect();
        let line = many.join("; ");
        let jar = Jar::parse(&[&line]).unwrap();
        assert_eq!(jar.candidates(c).unwrap_err(), CookieError::TooMany);
    }
}
