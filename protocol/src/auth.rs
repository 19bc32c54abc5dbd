//! Challenge-response authentication: the [`Role`] a connection asks for, the [`proof`]
//! a client computes from the shared secret and the server's nonce, and the constant-time
//! [`verify`] the server runs on it. Both sides share this file so that they cannot drift.
//!
//! ```text
//! proof = HMAC-SHA256(key = secret, msg = "qd-auth-v1" || nonce (32 B) || role (1 B))
//! ```
//!
//! The secret never crosses the wire; a fresh random nonce per connection keeps a recorded
//! proof from being replayed; the role byte inside the MAC keeps a worker's proof from being
//! passed off as an admin's when the two roles have different secrets. Which secret grants
//! which role is the server's policy (see `docs/PROTOCOL.md`).

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// What a connection may do. `Worker` may add, reserve, ack, nack, touch, ping and read
/// stats; `Admin` may also send the admin requests (see [`crate::Request::is_admin`]).
///
/// On the wire a varint variant index (0 = Worker, 1 = Admin); in the proof, one byte of
/// the same value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum Role {
    Worker = 0,
    Admin = 1,
}

/// Domain separation: a MAC computed for qd's handshake is useless anywhere else.
const CONTEXT: &[u8] = b"qd-auth-v1";

/// Bytes of the server's nonce and of the proof.
pub const NONCE_LEN: usize = 32;

fn mac(secret: &[u8], nonce: &[u8; NONCE_LEN], role: Role) -> Hmac<Sha256> {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(CONTEXT);
    mac.update(nonce);
    mac.update(&[role as u8]);
    mac
}

/// The proof a client sends in `Auth` for `role`, given the server's challenge `nonce`.
pub fn proof(secret: &[u8], nonce: &[u8; NONCE_LEN], role: Role) -> [u8; NONCE_LEN] {
    mac(secret, nonce, role).finalize().into_bytes().into()
}

/// Whether `proof` is the proof for `role` under `secret`. Compares in constant time, so
/// timing does not tell an attacker how many leading bytes were right.
pub fn verify(secret: &[u8], nonce: &[u8; NONCE_LEN], role: Role, proof: &[u8]) -> bool {
    mac(secret, nonce, role).verify_slice(proof).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the construction: a change here locks out every deployed client.
    /// Computed independently with Python's `hmac.new(b"s3cret", b"qd-auth-v1" + bytes([7] * 32) + bytes([1]), sha256)`.
    #[test]
    fn proof_is_hmac_sha256_of_context_nonce_role() {
        let got = proof(b"s3cret", &[7; 32], Role::Admin);
        assert_eq!(hex(&got), EXPECTED_ADMIN);
    }

    const EXPECTED_ADMIN: &str = "c143cbfa4835cd03646dc53af3b8138d5c028aa12f0f236526ca6a14930b8646";

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn verify_accepts_only_the_matching_secret_nonce_and_role() {
        let nonce = [42; 32];
        let p = proof(b"secret", &nonce, Role::Worker);
        assert!(verify(b"secret", &nonce, Role::Worker, &p));
        assert!(!verify(b"secret", &nonce, Role::Admin, &p), "role is bound");
        assert!(!verify(b"other", &nonce, Role::Worker, &p), "secret is bound");
        assert!(!verify(b"secret", &[43; 32], Role::Worker, &p), "nonce is bound");
        assert!(!verify(b"secret", &nonce, Role::Worker, &p[..31]), "length is checked");
    }
}
