//! Revocations as both hosts read them: a set of fields (`u:<user>`, `l:<login session
//! hash>`) each with the epoch seconds it was revoked at; a credential issued at or before that
//! time is refused. authgate keeps the set in memory from Redis, the fast-path plugin reads
//! authgate's copy of it.

/// Revocation field for a user.
pub fn user_field(user: &str) -> String {
    format!("u:{user}")
}

/// Revocation field for a login session hash.
pub fn login_field(ls_hash: &str) -> String {
    format!("l:{ls_hash}")
}

/// Whether a credential of `user` / login session `ls` (either may be empty: not bound),
/// issued at `iat`, is revoked in the set `revoked_at` looks fields up in.
pub fn is_revoked(
    revoked_at: impl Fn(&str) -> Option<i64>,
    user: &str,
    ls: &str,
    iat: i64,
) -> bool {
    let hit = |field: String| revoked_at(&field).is_some_and(|at| iat <= at);
    (!user.is_empty() && hit(user_field(user))) || (!ls.is_empty() && hit(login_field(ls)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_at_or_before_the_revocation_is_revoked() {
        let set = |f: &str| match f {
            "u:alice" => Some(100),
            "l:abc" => Some(200),
            _ => None,
        };
        assert!(is_revoked(set, "alice", "", 100));
        assert!(!is_revoked(set, "alice", "", 101));
        assert!(is_revoked(set, "bob", "abc", 150));
        assert!(!is_revoked(set, "bob", "abc", 201));
        assert!(!is_revoked(set, "", "", 0));
    }
}
