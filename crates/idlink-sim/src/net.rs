//! Network addresses: the ranges each kind of place draws from and how an
//! address is written out. Addresses are kept as plain integers so that a
//! day's events stay compact in memory.

use std::fmt::Write as _;
use std::net::Ipv6Addr;

use rand::RngCore;

use crate::rng::{SimRng, hash3, index};

/// An IPv4 or IPv6 address in compact form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Ip {
    /// IPv4 address as a big-endian integer.
    V4(u32),
    /// IPv6 address split into its /64 prefix and interface id (keeps the
    /// type 8-byte aligned, which keeps events small).
    V6(u64, u64),
}

impl Ip {
    /// Appends the textual form (dotted quad or compressed IPv6).
    pub(crate) fn push_text(&self, out: &mut String) {
        match *self {
            Ip::V4(v) => {
                // Hand-rolled: the generic formatter is a visible share of
                // the time when writing tens of millions of events.
                for (i, octet) in v.to_be_bytes().into_iter().enumerate() {
                    if i > 0 {
                        out.push('.');
                    }
                    if octet >= 100 {
                        out.push(char::from(b'0' + octet / 100));
                    }
                    if octet >= 10 {
                        out.push(char::from(b'0' + octet / 10 % 10));
                    }
                    out.push(char::from(b'0' + octet % 10));
                }
            }
            Ip::V6(hi, lo) => {
                // Writing into a String cannot fail.
                let _ = write!(
                    out,
                    "{}",
                    Ipv6Addr::from((u128::from(hi) << 64) | u128::from(lo))
                );
            }
        }
    }
}

/// Residential /8s (large consumer ISPs in the US and Europe).
const RESIDENTIAL_V4: [u8; 5] = [24, 73, 81, 86, 90];
/// Business/enterprise-looking /8s used for big offices and venues.
const BUSINESS_V4: [u8; 6] = [12, 38, 63, 64, 66, 208];
/// Datacenter IPv4 networks: (base, prefix length). These are exactly the
/// ranges the project's config lists as datacenter.
const DATACENTER_V4: [(u32, u32); 3] = [
    (u32::from_be_bytes([34, 64, 0, 0]), 10),
    (u32::from_be_bytes([35, 192, 0, 0]), 12),
    (u32::from_be_bytes([52, 0, 0, 0]), 11),
];
/// Datacenter IPv6 network 2600:1f00::/24 (top 24 bits).
const DATACENTER_V6_TOP24: u64 = 0x26_001f;
/// Home IPv6 /16s (European ISPs hand out stable /64s under these).
const HOME_V6_TOP16: [u64; 2] = [0x2a02, 0x2003];
/// Carrier IPv6 /32 (2607:fb90::/32), one /64 per phone attachment.
const CARRIER_V6_TOP32: u64 = 0x2607_fb90;

fn in_slash8(rng: &mut SimRng, first: u8) -> u32 {
    // Avoid .0 and .255 host parts so addresses look like hosts.
    let low = rng.next_u32() & 0x00ff_ff00;
    let host = 1 + rng.next_u32() % 254;
    (u32::from(first) << 24) | low | host
}

fn in_net(rng: &mut SimRng, base: u32, prefix: u32) -> u32 {
    let host_bits = 32 - prefix;
    let mask = (1u32 << host_bits) - 1;
    let v = base | (rng.next_u32() & mask);
    // Keep the last octet a plausible host number.
    match v & 0xff {
        0 => v | 1,
        255 => v - 1,
        _ => v,
    }
}

/// A fresh consumer broadband IPv4 address.
pub(crate) fn residential_v4(rng: &mut SimRng) -> u32 {
    let first = RESIDENTIAL_V4[index(rng, RESIDENTIAL_V4.len())];
    in_slash8(rng, first)
}

/// A business-line IPv4 address (big offices, cafés, airports).
pub(crate) fn business_v4(rng: &mut SimRng) -> u32 {
    let first = BUSINESS_V4[index(rng, BUSINESS_V4.len())];
    in_slash8(rng, first)
}

/// A carrier-grade NAT address from 100.64.0.0/10.
pub(crate) fn cgnat_v4(rng: &mut SimRng) -> u32 {
    in_net(rng, u32::from_be_bytes([100, 64, 0, 0]), 10)
}

/// A public carrier pool address from 172.56.0.0/13.
pub(crate) fn carrier_pool_v4(rng: &mut SimRng) -> u32 {
    in_net(rng, u32::from_be_bytes([172, 56, 0, 0]), 13)
}

/// A datacenter address (cloud hosts running bots), sometimes IPv6.
pub(crate) fn datacenter(rng: &mut SimRng, v6: bool) -> Ip {
    if v6 {
        let hi = (DATACENTER_V6_TOP24 << 40) | (rng.next_u64() & ((1 << 40) - 1));
        Ip::V6(hi, rng.next_u64())
    } else {
        let (base, prefix) = DATACENTER_V4[index(rng, DATACENTER_V4.len())];
        Ip::V4(in_net(rng, base, prefix))
    }
}

/// A stable home /64 prefix under one of the home IPv6 /16s.
pub(crate) fn home_v6_prefix(rng: &mut SimRng) -> u64 {
    let top = HOME_V6_TOP16[index(rng, HOME_V6_TOP16.len())];
    (top << 48) | (rng.next_u64() & ((1 << 48) - 1))
}

/// Privacy-extension interface id: random per device and per day, so the
/// full address changes daily while the /64 stays.
pub(crate) fn privacy_iid(salt: u64, device: u32, day: u32) -> u64 {
    // Clear the universal/local bit like RFC 4941 addresses do.
    hash3(salt, u64::from(device), u64::from(day)) & !0x0200_0000_0000_0000
}

/// A carrier IPv6 /64 for one phone on one day.
pub(crate) fn carrier_v6(salt: u64, device: u32, day: u32) -> Ip {
    let sub = hash3(salt ^ 0xca77, u64::from(device), u64::from(day)) & 0xffff_ffff;
    Ip::V6(
        (CARRIER_V6_TOP32 << 32) | sub,
        privacy_iid(salt, device, day + 7919),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::stream;
    use std::net::Ipv4Addr;

    fn text(ip: Ip) -> String {
        let mut s = String::new();
        ip.push_text(&mut s);
        s
    }

    #[test]
    fn v4_text_matches_std() {
        for v in [0u32, 0x0a00_0001, 0xffff_ffff, 0x6440_0a09, 0x1809_6405] {
            assert_eq!(text(Ip::V4(v)), Ipv4Addr::from(v).to_string());
        }
    }

    #[test]
    fn ranges() {
        let mut rng = stream(3, 3);
        for _ in 0..1000 {
            let c = Ipv4Addr::from(cgnat_v4(&mut rng)).octets();
            assert_eq!(c[0], 100);
            assert!((64..128).contains(&c[1]));
            let p = Ipv4Addr::from(carrier_pool_v4(&mut rng)).octets();
            assert_eq!(p[0], 172);
            assert!((56..64).contains(&p[1]));
            if let Ip::V4(d) = datacenter(&mut rng, false) {
                let o = Ipv4Addr::from(d).octets();
                assert!(
                    (o[0] == 34 && (64..128).contains(&o[1]))
                        || (o[0] == 35 && (192..208).contains(&o[1]))
                        || (o[0] == 52 && o[1] < 32)
                );
            }
        }
        assert!(text(datacenter(&mut rng, true)).starts_with("2600:1f"));
        let pre = home_v6_prefix(&mut rng);
        let t = text(Ip::V6(pre, privacy_iid(1, 2, 3)));
        assert!(t.starts_with("2a02:") || t.starts_with("2003:"), "{t}");
    }
}
