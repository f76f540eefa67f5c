//! Keyed hashing: the only form in which addresses and erased ids may
//! leave the engine.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use siphasher::sip128::{Hasher128, SipHasher13};
use std::hash::Hasher;

type HmacSha256 = Hmac<Sha256>;

/// Derives keyed, non-reversible tags from a configured secret.
///
/// HMAC-SHA256 for anything published (bucket tags, privacy acks); a
/// SipHash-1-3 key derived from the same secret for erase markers, which are
/// checked on the hot path and never published.
/// `Default` is an empty key, only a placeholder for deserialization;
/// the engine replaces it from the config on restore.
#[derive(Clone)]
pub struct KeyedHasher {
    /// HMAC keyed with the secret and given no data: each tag starts from
    /// a copy, so the key's two padded blocks are hashed once, not per
    /// tag (half of a tag's compressions).
    keyed: HmacSha256,
    /// Key for erase-marker fingerprints, derived once from the secret.
    sip_key: [u8; 16],
}

impl Default for KeyedHasher {
    fn default() -> Self {
        KeyedHasher::new(&[])
    }
}

impl std::fmt::Debug for KeyedHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyedHasher(<secret>)")
    }
}

impl KeyedHasher {
    /// A hasher for the given secret.
    pub fn new(secret: &[u8]) -> Self {
        let keyed = match HmacSha256::new_from_slice(secret) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        let mut this = KeyedHasher {
            keyed,
            sip_key: [0; 16],
        };
        let derived = this.hmac(b"erase-marker-key");
        this.sip_key.copy_from_slice(&derived[..16]);
        this
    }

    /// Full HMAC-SHA256 of `data`.
    pub fn hmac(&self, data: &[u8]) -> [u8; 32] {
        let mut mac = self.keyed.clone();
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// The published tag of a bucket or id: HMAC-SHA256 truncated to 64
    /// bits, as 16 hex digits.
    pub fn tag(&self, data: &[u8]) -> u64 {
        let h = self.hmac(data);
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[..8]);
        u64::from_be_bytes(b)
    }

    /// A 128-bit keyed fingerprint for erase markers (namespaced so a
    /// device and an account with the same text never collide).
    pub fn fingerprint(&self, namespace: u8, id: &str) -> u128 {
        let mut h = SipHasher13::new_with_key(&self.sip_key);
        h.write_u8(namespace);
        h.write(id.as_bytes());
        h.finish128().as_u128()
    }
}

/// Formats a 64-bit tag as 16 lowercase hex digits.
pub fn tag_hex(tag: u64) -> String {
    format!("{tag:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_depend_on_the_secret() {
        let a = KeyedHasher::new(b"secret-one-0123456789");
        let b = KeyedHasher::new(b"secret-two-0123456789");
        assert_ne!(a.tag(b"1.2.3.4"), b.tag(b"1.2.3.4"));
        assert_eq!(a.tag(b"1.2.3.4"), a.tag(b"1.2.3.4"));
        assert_ne!(a.fingerprint(0, "x"), a.fingerprint(1, "x"));
    }

    #[test]
    fn is_hmac_sha256() {
        // RFC 4231, test case 2.
        let h = KeyedHasher::new(b"Jefe");
        let mac = h.hmac(b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // A copy of the keyed state serves every tag alike.
        assert_eq!(h.hmac(b"x"), h.hmac(b"x"));
    }
}
