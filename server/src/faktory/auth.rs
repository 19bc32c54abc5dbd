//! The Faktory handshake's password check: the server greets with a random salt and
//! iteration count, the client answers `pwdhash` = lower-case hex of SHA-256 applied
//! `iterations` times, first to `password + salt`, then to the raw 32-byte digest.
//!
//! The password is the server's worker secret (`ServerConfig::secrets.worker`, or the admin
//! secret when only that one is set), so one secret guards both ports. A client that
//! sends no protocol version, or one below 2, hashes once whatever the greeting said: the
//! Python client does, and Faktory's own server accepts it, so we must too.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The challenge of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub salt: String,
    pub iterations: u32,
}

impl Challenge {
    /// A fresh salt (16 hex digits) and 4,000 to 8,095 iterations, from the OS's randomness.
    pub fn random() -> Result<Challenge, getrandom::Error> {
        let mut bytes = [0u8; 10];
        getrandom::getrandom(&mut bytes)?;
        let salt = bytes[..8].iter().map(|b| format!("{b:02x}")).collect();
        let iterations = 4000 + u32::from(u16::from_le_bytes([bytes[8], bytes[9]]) % 4096);
        Ok(Challenge { salt, iterations })
    }

    /// The greeting line's JSON. No spaces: the Node client splits the line on them.
    pub fn greeting(challenge: Option<&Challenge>) -> String {
        match challenge {
            None => "HI {\"v\":2}".to_owned(),
            Some(c) => format!("HI {{\"v\":2,\"i\":{},\"s\":\"{}\"}}", c.iterations, c.salt),
        }
    }

    /// Whether `pwdhash` proves `password` for a client speaking protocol `version`.
    pub fn verify(&self, password: &[u8], version: i64, pwdhash: &str) -> bool {
        let iterations = if version < 2 { 1 } else { self.iterations };
        let expected = hash(password, &self.salt, iterations);
        expected.as_bytes().ct_eq(pwdhash.as_bytes()).into()
    }
}

/// Lower-case hex of SHA-256 iterated `iterations` times (at least once) over
/// `password + salt`.
pub fn hash(password: &[u8], salt: &str, iterations: u32) -> String {
    let mut digest = Sha256::new().chain_update(password).chain_update(salt).finalize();
    for _ in 1..iterations {
        digest = Sha256::digest(digest);
    }
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of Faktory's protocol specification: password "password", salt
    /// "123456789abc", iterations 1735... is not published with its hash, so pin the
    /// construction against a value computed by the definition instead.
    #[test]
    fn one_iteration_is_plain_sha256_of_password_and_salt() {
        let direct: String =
            Sha256::digest(b"secretsalt").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hash(b"secret", "salt", 1), direct);
        let twice: String = Sha256::digest(Sha256::digest(b"secretsalt"))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hash(b"secret", "salt", 2), twice);
    }

    #[test]
    fn old_clients_hash_once() {
        let c = Challenge { salt: "abc".into(), iterations: 5000 };
        assert!(c.verify(b"pw", 2, &hash(b"pw", "abc", 5000)));
        assert!(c.verify(b"pw", 1, &hash(b"pw", "abc", 1)), "no v: one iteration");
        assert!(!c.verify(b"pw", 2, &hash(b"pw", "abc", 1)));
        assert!(!c.verify(b"other", 2, &hash(b"pw", "abc", 5000)));
    }

    #[test]
    fn greetings_have_no_spaces_in_their_json() {
        let c = Challenge::random().unwrap();
        assert!((4000..8096).contains(&c.iterations));
        let line = Challenge::greeting(Some(&c));
        assert_eq!(line.split(' ').count(), 2, "{line}");
        assert_eq!(Challenge::greeting(None), "HI {\"v\":2}");
    }
}
