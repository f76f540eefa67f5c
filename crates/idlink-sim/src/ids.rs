//! Identifier generation. Real traffic mixes several id shapes, so the
//! simulator does too: sequential-looking and opaque account ids, 22-char
//! base64url cookie ids for browsers and UUIDs for app installs.

use rand::RngCore;

use crate::rng::{SimRng, mix};

const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Account id for the `n`-th account. Most look like `acct-000123`; some
/// are opaque (`usr_` + 16 hex) the way migrated or partner accounts look.
/// Both shapes are unique per `n` (the opaque one through a bijective mix).
pub(crate) fn account_id(n: u32, salt: u64, rng: &mut SimRng) -> String {
    if rng.next_u32() % 100 < 70 {
        format!("acct-{:06}", n + 1)
    } else {
        let v = mix(u64::from(n) ^ mix(salt ^ 0xacc0_acc0));
        format!("usr_{}", hex::encode(v.to_be_bytes()))
    }
}

/// A browser cookie id: 22 random base64url characters (132 bits).
pub(crate) fn cookie_id(rng: &mut SimRng) -> String {
    let mut out = String::with_capacity(22);
    let mut bits = 0u64;
    let mut have = 0;
    for _ in 0..22 {
        if have < 6 {
            bits = rng.next_u64();
            have = 64;
        }
        out.push(char::from(BASE64URL[(bits & 63) as usize]));
        bits >>= 6;
        have -= 6;
    }
    out
}

/// An app-install id: a random (version 4) UUID in canonical lowercase form.
pub(crate) fn uuid_v4(rng: &mut SimRng) -> String {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Event id for the `n`-th written event: unique because the mix is a
/// bijection of the counter, random-looking so nothing can lean on order.
pub(crate) fn push_event_id(out: &mut Vec<u8>, n: u64, salt: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let v = mix(n ^ salt);
    out.extend_from_slice(b"ev-");
    for i in (0..16).rev() {
        out.push(HEX[((v >> (i * 4)) & 15) as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::stream;

    #[test]
    fn shapes() {
        let mut rng = stream(1, 1);
        let c = cookie_id(&mut rng);
        assert_eq!(c.len(), 22);
        assert!(c.bytes().all(|b| BASE64URL.contains(&b)));
        let u = uuid_v4(&mut rng);
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        let mut e = Vec::new();
        push_event_id(&mut e, 5, 9);
        assert_eq!(e.len(), 19);
    }
}
