//! Sessions, login and CSRF protection for the dashboard.
//!
//! Every browser gets a session: a random id in an `HttpOnly`, `SameSite=Strict` cookie,
//! held in memory only (a restart logs everyone out, which is fine for an operator tool).
//! Each session has its own CSRF token, put in a hidden field of every form and checked on
//! every POST; POSTs must also not come from another site (`Origin`, `Sec-Fetch-Site`).
//! When the server has an admin secret, a session is only created by logging in with it;
//! without one, the first page view creates it (the dashboard is then as open as the
//! protocol port, and the CSRF check still keeps other sites from driving it).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const COOKIE: &str = "qd_session";
/// How long a session lives after it was created.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions held; beyond this the oldest are dropped first.
const MAX_SESSIONS: usize = 10_000;

/// One browser's session.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    /// The token every form of this session carries.
    pub csrf: String,
    created: Instant,
}

/// The sessions of this process.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// The live session named by the request's cookie, if any.
    pub fn get(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers, COOKIE)?;
        let map = self.map.lock().expect("sessions lock");
        map.get(id).filter(|s| s.created.elapsed() < SESSION_TTL).cloned()
    }

    /// A new session.
    pub fn create(&self) -> Session {
        let session = Session { id: random_token(), csrf: random_token(), created: Instant::now() };
        let mut map = self.map.lock().expect("sessions lock");
        map.retain(|_, s| s.created.elapsed() < SESSION_TTL);
        while map.len() >= MAX_SESSIONS {
            let oldest = map.values().min_by_key(|s| s.created).map(|s| s.id.clone());
            match oldest {
                Some(id) => map.remove(&id),
                None => break,
            };
        }
        map.insert(session.id.clone(), session.clone());
        session
    }

    /// Ends a session (logout).
    pub fn remove(&self, id: &str) {
        self.map.lock().expect("sessions lock").remove(id);
    }
}

/// The `Set-Cookie` value for `session`. `Path=/` so every page sees it; no `Secure`, since
/// the dashboard itself speaks plain HTTP (put TLS in a proxy in front).
pub fn set_cookie(session: &Session) -> String {
    format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        session.id,
        SESSION_TTL.as_secs()
    )
}

/// The `Set-Cookie` value that removes the cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Whether a POST may go on: the form's token is the session's, and the browser does not
/// say the request came from another site. Compared in constant time.
pub fn csrf_ok(session: &Session, form_token: Option<&str>, headers: &HeaderMap) -> bool {
    let Some(token) = form_token else { return false };
    if !bool::from(token.as_bytes().ct_eq(session.csrf.as_bytes())) {
        return false;
    }
    same_origin(headers)
}

/// `Sec-Fetch-Site` (modern browsers) must be `same-origin` or `none` (typed by the user);
/// `Origin`, when sent, must name this host. Clients that send neither (curl, tests) pass on
/// the token alone.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site")) {
        if site != "same-origin" && site != "none" {
            return false;
        }
    }
    match (text(header::ORIGIN), text(header::HOST)) {
        (Some(origin), Some(host)) => {
            let origin = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
            origin == Some(host)
        }
        (Some(_), None) => false,
        (None, _) => true,
    }
}

/// Whether `given` is the admin secret, in constant time (for equal lengths).
pub fn secret_matches(secret: &[u8], given: &[u8]) -> bool {
    bool::from(secret.ct_eq(given))
}

/// The value of cookie `name` in the request.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// 32 random bytes from the OS, as hex.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // The OS's random source failing is not something a web request can recover from; the
    // engine already needed it at start-up.
    getrandom::getrandom(&mut bytes).expect("the OS random source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn csrf_needs_the_sessions_token_and_a_same_site_request() {
        let sessions = Sessions::default();
        let s = sessions.create();
        let plain = headers(&[("host", "127.0.0.1:8080")]);
        assert!(csrf_ok(&s, Some(&s.csrf.clone()), &plain));
        assert!(!csrf_ok(&s, None, &plain));
        assert!(!csrf_ok(&s, Some("0000"), &plain));
        let cross = headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")]);
        assert!(!csrf_ok(&s, Some(&s.csrf.clone()), &cross));
        let other = headers(&[("host", "127.0.0.1:8080"), ("origin", "http://evil.example")]);
        assert!(!csrf_ok(&s, Some(&s.csrf.clone()), &other));
        let same = headers(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080")]);
        assert!(csrf_ok(&s, Some(&s.csrf.clone()), &same));
    }

    #[test]
    fn sessions_are_found_by_cookie_and_removed() {
        let sessions = Sessions::default();
        let s = sessions.create();
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, format!("a=b; {COOKIE}={}", s.id).parse().unwrap());
        assert_eq!(sessions.get(&h).map(|f| f.csrf), Some(s.csrf.clone()));
        sessions.remove(&s.id);
        assert!(sessions.get(&h).is_none());
    }
}
