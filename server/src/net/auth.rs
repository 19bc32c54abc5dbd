//! Who may connect and as what: the role policy of
//! docs/PROTOCOL.md §3.1.1, and the [`FailureThrottle`] that slows down guessing. The
//! handshake itself (sending the challenge, reading `Auth`) is `conn`'s; the HMAC and its
//! constant-time comparison are the protocol crate's (`qd_protocol::auth`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use qd_protocol::auth::{self, NONCE_LEN};
use qd_protocol::Role;

use crate::config::Secrets;

/// Whether `proof` answers `nonce` for `role` under `secrets` (the table of
/// docs/PROTOCOL.md §3.1.1). A role no secret grants is refused like a wrong proof, so the
/// answer does not tell which secrets exist.
pub fn check(secrets: &Secrets, nonce: &[u8; NONCE_LEN], role: Role, proof: &[u8]) -> bool {
    let secret = match role {
        Role::Worker => secrets.worker.as_deref(),
        Role::Admin => secrets.admin.as_deref().or(secrets.worker.as_deref()),
    };
    secret.is_some_and(|secret| auth::verify(secret, nonce, role, proof))
}

/// Peers remembered at most; past this the oldest entries are dropped, so a scan from many
/// addresses costs bounded memory (and loses some throttling, not correctness).
const MAX_PEERS: usize = 4096;
/// Failures older than this are forgotten.
const WINDOW: Duration = Duration::from_secs(60);
/// Delay before the `Goodbye` of the first failure; doubles with each further one.
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// Longest delay: long enough to make guessing pointless, short enough that a client with
/// a mistyped secret still hears why soon.
const MAX_DELAY: Duration = Duration::from_secs(5);

/// Recent handshake failures per peer address. A failed `Auth` is answered only after
/// [`FailureThrottle::fail`]'s delay, growing with the peer's recent failures: an online
/// guess of the secret costs seconds, not microseconds. (A connection slot stays taken
/// during the delay, which also slows a parallel guesser.)
#[derive(Debug, Default)]
pub struct FailureThrottle {
    peers: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl FailureThrottle {
    /// Records a failure of `peer` at `now` and returns how long to wait before answering.
    pub fn fail(&self, peer: IpAddr, now: Instant) -> Duration {
        let mut peers = self.peers.lock().expect("throttle lock never poisoned");
        if peers.len() >= MAX_PEERS && !peers.contains_key(&peer) {
            peers.retain(|_, (_, last)| now.duration_since(*last) < WINDOW);
            if peers.len() >= MAX_PEERS {
                // Still full of recent failures: forget the oldest to make room.
                if let Some(oldest) = peers.iter().min_by_key(|(_, (_, t))| *t).map(|(ip, _)| *ip) {
                    peers.remove(&oldest);
                }
            }
        }
        let entry = peers.entry(peer).or_insert((0, now));
        if now.duration_since(entry.1) >= WINDOW {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        let doublings = (entry.0 - 1).min(16);
        (FIRST_DELAY * 2u32.pow(doublings)).min(MAX_DELAY)
    }

    /// Peers currently remembered.
    pub fn len(&self) -> usize {
        self.peers.lock().expect("throttle lock never poisoned").len()
    }

    /// Whether no peer is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_policy_follows_the_protocol_table() {
        let nonce = [9; NONCE_LEN];
        let p = |s: &[u8], r| auth::proof(s, &nonce, r);
        let one = Secrets { worker: Some(b"s".to_vec()), admin: None };
        assert!(check(&one, &nonce, Role::Worker, &p(b"s", Role::Worker)));
        assert!(check(&one, &nonce, Role::Admin, &p(b"s", Role::Admin)), "one secret grants all");
        assert!(!check(&one, &nonce, Role::Worker, &p(b"x", Role::Worker)));

        let two = Secrets { worker: Some(b"s".to_vec()), admin: Some(b"a".to_vec()) };
        assert!(!check(&two, &nonce, Role::Admin, &p(b"s", Role::Admin)), "worker secret");
        assert!(check(&two, &nonce, Role::Admin, &p(b"a", Role::Admin)));
        assert!(check(&two, &nonce, Role::Worker, &p(b"s", Role::Worker)));

        let admin_only = Secrets { worker: None, admin: Some(b"a".to_vec()) };
        assert!(!check(&admin_only, &nonce, Role::Worker, &p(b"a", Role::Worker)));
        assert!(check(&admin_only, &nonce, Role::Admin, &p(b"a", Role::Admin)));
        assert!(!Secrets::default().required());
        let shown = format!("{:?}", Secrets { worker: Some(b"hunter2".to_vec()), admin: None });
        assert!(!shown.contains("hunter2") && !shown.contains("104"), "{shown}");
    }

    #[test]
    fn delay_grows_per_peer_and_is_capped() {
        let t = FailureThrottle::default();
        let now = Instant::now();
        let ip: IpAddr = [10, 0, 0, 1].into();
        assert_eq!(t.fail(ip, now), FIRST_DELAY);
        assert_eq!(t.fail(ip, now), FIRST_DELAY * 2);
        for _ in 0..20 {
            t.fail(ip, now);
        }
        assert_eq!(t.fail(ip, now), MAX_DELAY);
        assert_eq!(t.fail([10, 0, 0, 2].into(), now), FIRST_DELAY, "per peer");
        assert_eq!(t.fail(ip, now + WINDOW), FIRST_DELAY, "forgotten after the window");
    }

    #[test]
    fn remembered_peers_are_bounded() {
        let t = FailureThrottle::default();
        let now = Instant::now();
        for i in 0..(MAX_PEERS as u32 + 100) {
            t.fail(IpAddr::from(i.to_be_bytes()), now);
        }
        assert_eq!(t.len(), MAX_PEERS);
    }
}
