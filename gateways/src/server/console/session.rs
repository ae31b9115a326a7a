//! The console's sessions: a random token in an HttpOnly, SameSite=Strict cookie that
//! expires, mapped to the identity its sign-in checked. The map is keyed by a hash of the
//! token (`crypto::credential_hash`), so a lookup's timing says nothing about tokens held,
//! and the token itself is kept nowhere on the server. Bounded by `SESSIONS_MAX`: a full
//! map drops expired sessions, then the oldest.
//! Not here: the sign-in's credential check (`front_door::Authenticator`).

use crate::server::front_door::Identity;
use engine::crypto::{self, SecretKey};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sessions held at once.
pub const SESSIONS_MAX: usize = 1024;
/// How long a session lasts after its sign-in (the cookie's Max-Age too).
pub const SESSION_TTL: Duration = Duration::from_secs(30 * 60);
/// The session cookie's name.
pub const COOKIE: &str = "vs_session";

struct Session {
    identity: Identity,
    expires_at: Instant,
    started_at: Instant,
}

#[derive(Default)]
pub struct Sessions {
    by_token_hash: Mutex<HashMap<[u8; 32], Session>>,
}

fn token_hash(token_hex: &str) -> Option<[u8; 32]> {
    let mut token = [0u8; 32];
    if token_hex.len() != 64 || hex::decode_to_slice(token_hex, &mut token).is_err() {
        return None;
    }
    let hash = crypto::credential_hash(&token);
    zeroize::Zeroize::zeroize(&mut token);
    Some(hash)
}

impl Sessions {
    /// A new session for `identity`: the cookie value to hand to the browser (hex).
    pub fn start(&self, identity: Identity) -> zeroize::Zeroizing<String> {
        let token = SecretKey::random();
        let token_hex = zeroize::Zeroizing::new(hex::encode(token.expose()));
        let hash = crypto::credential_hash(token.expose());
        let now = Instant::now();
        let mut sessions = self.by_token_hash.lock().expect("the session map's lock is never poisoned");
        if sessions.len() >= SESSIONS_MAX {
            sessions.retain(|_, session| session.expires_at > now);
        }
        if sessions.len() >= SESSIONS_MAX
            && let Some(oldest) = sessions.iter().min_by_key(|(_, session)| session.started_at).map(|(hash, _)| *hash)
        {
            sessions.remove(&oldest);
        }
        sessions.insert(hash, Session { identity, expires_at: now + SESSION_TTL, started_at: now });
        token_hex
    }

    /// The identity of an unexpired session, from the cookie's value.
    pub fn identity(&self, token_hex: &str) -> Option<Identity> {
        let hash = token_hash(token_hex)?;
        let mut sessions = self.by_token_hash.lock().expect("the session map's lock is never poisoned");
        match sessions.get(&hash) {
            Some(session) if session.expires_at > Instant::now() => Some(session.identity.clone()),
            Some(_) => {
                sessions.remove(&hash);
                None
            }
            None => None,
        }
    }

    /// Ends a session (sign-out, or a revoked party).
    pub fn end(&self, token_hex: &str) {
        if let Some(hash) = token_hash(token_hex) {
            self.by_token_hash.lock().expect("the session map's lock is never poisoned").remove(&hash);
        }
    }

    pub fn len(&self) -> usize {
        self.by_token_hash.lock().expect("the session map's lock is never poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The session cookie's value in a request's `Cookie` headers.
pub fn cookie_value(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// `Set-Cookie` for a new session.
pub fn set_cookie(token_hex: &str) -> String {
    format!("{COOKIE}={token_hex}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}", SESSION_TTL.as_secs())
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_token_only_and_ends() {
        let sessions = Sessions::default();
        let token = sessions.start(Identity::Auditor("a1".into()));
        assert_eq!(sessions.identity(&token), Some(Identity::Auditor("a1".into())));
        // Control: another token, a malformed one, a truncated one.
        assert_eq!(sessions.identity(&hex::encode([7u8; 32])), None);
        assert_eq!(sessions.identity("not-hex"), None);
        assert_eq!(sessions.identity(&token[..63]), None);
        sessions.end(&token);
        assert_eq!(sessions.identity(&token), None);
        let cookie = set_cookie(&token);
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Max-Age=1800"), "{cookie}");
    }

    #[test]
    fn the_map_stays_within_its_bound() {
        let sessions = Sessions::default();
        let first = sessions.start(Identity::Operator("op".into()));
        for _ in 0..SESSIONS_MAX {
            sessions.start(Identity::Operator("op".into()));
        }
        assert_eq!(sessions.len(), SESSIONS_MAX);
        assert_eq!(sessions.identity(&first), None, "the oldest made room");
    }

    #[test]
    fn the_cookie_is_read_among_others() {
        let mut headers = http::HeaderMap::new();
        headers.append(http::header::COOKIE, "a=1; vs_session=abc; b=2".parse().expect("header"));
        assert_eq!(cookie_value(&headers).as_deref(), Some("abc"));
        let mut other = http::HeaderMap::new();
        other.append(http::header::COOKIE, "vs_sessionx=abc".parse().expect("header"));
        assert_eq!(cookie_value(&other), None);
    }
}
