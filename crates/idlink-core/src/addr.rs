//! Address buckets and the addresses that say nothing about a person.

use ipnetwork::IpNetwork;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU64;

/// Where co-location is counted: an IPv4 address, or an IPv6 prefix
/// (the /64 by default, which survives privacy-extension rotation).
///
/// Packed in 8 non-zero bytes, since the engine keys all its bucket
/// state by it (and `Option<Bucket>` costs nothing extra): an IPv4
/// address is stored as 2^32 + the address; an IPv6 bucket as the top 64
/// bits of its prefix. Only global unicast (2000::/3) IPv6 is ever usable
/// and prefixes are at least /32, so an IPv6 bucket is at least 2^61 and
/// the two families never meet.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Bucket(NonZeroU64);

/// Where IPv4 buckets start.
const V4_BASE: u64 = 1 << 32;

impl Bucket {
    /// A whole IPv4 address.
    pub fn v4(ip: u32) -> Bucket {
        Bucket(NonZeroU64::MIN.saturating_add(V4_BASE - 1 + u64::from(ip)))
    }

    /// An IPv6 prefix of a global unicast address, as its top 64 bits
    /// (longer prefixes are truncated to 64, which the config allows only
    /// as a coarsening).
    fn v6(top: u64) -> Bucket {
        Bucket(NonZeroU64::new(top).unwrap_or(NonZeroU64::MAX))
    }

    fn is_v4(self) -> bool {
        self.0.get() < 2 * V4_BASE
    }

    /// Stable bytes for hashing (a tag distinguishes the families).
    pub fn to_bytes(self) -> [u8; 9] {
        let mut b = [0u8; 9];
        if self.is_v4() {
            b[0] = 4;
            b[1..5].copy_from_slice(&(self.0.get() as u32).to_be_bytes());
        } else {
            b[0] = 6;
            b[1..9].copy_from_slice(&self.0.get().to_be_bytes());
        }
        b
    }
}

/// Why an address does or does not count as evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    /// A public address that may count, in this bucket.
    Usable(Bucket),
    /// Private, loopback, link-local, multicast, unspecified, broadcast,
    /// documentation or otherwise reserved: not routable, says nothing.
    NonPublic,
    /// Carrier-grade NAT (100.64.0.0/10): thousands of subscribers.
    CarrierNat,
    /// In a configured exclusion list (datacenter, VPN, proxy).
    Excluded,
}

impl AddressClass {
    /// Metric label of the class.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressClass::Usable(_) => "usable",
            AddressClass::NonPublic => "non_public",
            AddressClass::CarrierNat => "carrier_nat",
            AddressClass::Excluded => "excluded",
        }
    }
}

/// Classifies addresses: built-in non-public ranges plus configured lists.
#[derive(Clone, Debug, Default)]
pub struct AddressClassifier {
    /// Configured IPv4 exclusions as (network, mask), sorted by network so
    /// lookups can stop early.
    v4: Vec<(u32, u32)>,
    /// Configured IPv6 exclusions as (network, mask).
    v6: Vec<(u128, u128)>,
    /// Mask of the IPv6 bucket prefix, from `addresses.ipv6_prefix_len`.
    v6_bucket_bits: u8,
}

impl AddressClassifier {
    /// A classifier with the given IPv6 bucket prefix and exclusion ranges.
    pub fn new(ipv6_prefix_len: u8, exclusions: &[IpNetwork]) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in exclusions {
            match net {
                IpNetwork::V4(n) => {
                    let mask = u32::from(n.mask());
                    v4.push((u32::from(n.network()) & mask, mask));
                }
                IpNetwork::V6(n) => {
                    let mask = u128::from(n.mask());
                    v6.push((u128::from(n.network()) & mask, mask));
                }
            }
        }
        v4.sort_unstable();
        v4.dedup();
        v6.sort_unstable();
        v6.dedup();
        AddressClassifier {
            v4,
            v6,
            v6_bucket_bits: ipv6_prefix_len.clamp(1, 64),
        }
    }

    /// Parses CIDR lines (`#` starts a comment, blank lines ignored);
    /// returns the ranges or the first bad line with its number.
    pub fn parse_cidr_list(text: &str) -> Result<Vec<IpNetwork>, (usize, String)> {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            match line.parse::<IpNetwork>() {
                Ok(n) => out.push(n),
                Err(_) => return Err((i + 1, line.to_string())),
            }
        }
        Ok(out)
    }

    /// Classifies one address.
    pub fn classify(&self, ip: IpAddr) -> AddressClass {
        match ip {
            IpAddr::V4(a) => self.classify_v4(a),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => self.classify_v4(v4),
                None => self.classify_v6(a),
            },
        }
    }

    fn classify_v4(&self, a: Ipv4Addr) -> AddressClass {
        let v = u32::from(a);
        let o = a.octets();
        if o[0] == 100 && (o[1] & 0xc0) == 64 {
            return AddressClass::CarrierNat;
        }
        let reserved = a.is_private()
            || a.is_loopback()
            || a.is_link_local()
            || a.is_multicast()
            || a.is_unspecified()
            || a.is_broadcast()
            || a.is_documentation()
            || o[0] == 0
            || o[0] >= 240
            || (o[0] == 192 && o[1] == 0 && o[2] == 0)
            || (o[0] == 198 && (o[1] & 0xfe) == 18);
        if reserved {
            return AddressClass::NonPublic;
        }
        if self.v4.iter().any(|&(net, mask)| v & mask == net) {
            return AddressClass::Excluded;
        }
        AddressClass::Usable(Bucket::v4(v))
    }

    fn classify_v6(&self, a: Ipv6Addr) -> AddressClass {
        let v = u128::from(a);
        let seg0 = a.segments()[0];
        // Only global unicast (2000::/3) is public; inside it, exclude the
        // documentation range and the well-known translation/tunnel ones.
        let global = (seg0 & 0xe000) == 0x2000;
        let documentation = seg0 == 0x2001 && a.segments()[1] == 0x0db8;
        let teredo_or_orchid = seg0 == 0x2001 && a.segments()[1] < 0x0200;
        let six_to_four = seg0 == 0x2002;
        if !global || documentation || teredo_or_orchid || six_to_four {
            return AddressClass::NonPublic;
        }
        if self.v6.iter().any(|&(net, mask)| v & mask == net) {
            return AddressClass::Excluded;
        }
        let top = (v >> 64) as u64;
        let mask = if self.v6_bucket_bits >= 64 {
            u64::MAX
        } else {
            !(u64::MAX >> self.v6_bucket_bits)
        };
        AddressClass::Usable(Bucket::v6(top & mask))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(c: &AddressClassifier, s: &str) -> AddressClass {
        c.classify(s.parse().unwrap())
    }

    #[test]
    fn non_public_ranges_never_count() {
        let c = AddressClassifier::new(64, &[]);
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.1.1",
            "224.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "192.0.2.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::",
            "2001:db8::1",
        ] {
            assert_eq!(classify(&c, ip), AddressClass::NonPublic, "{ip}");
        }
        assert_eq!(classify(&c, "100.64.0.1"), AddressClass::CarrierNat);
        assert_eq!(classify(&c, "100.127.255.1"), AddressClass::CarrierNat);
        assert!(matches!(
            classify(&c, "100.128.0.1"),
            AddressClass::Usable(_)
        ));
    }

    #[test]
    fn ipv6_buckets_by_prefix() {
        let c = AddressClassifier::new(64, &[]);
        let a = classify(&c, "2a02:1:2:3:aaaa::1");
        let b = classify(&c, "2a02:1:2:3:bbbb::2");
        let d = classify(&c, "2a02:1:2:4::1");
        assert_eq!(a, b);
        assert_ne!(a, d);
        assert_eq!(classify(&c, "::ffff:10.0.0.1"), AddressClass::NonPublic);
    }

    #[test]
    fn bucket_bytes_keep_the_family() {
        let c = AddressClassifier::new(32, &[]);
        let AddressClass::Usable(v4) = classify(&c, "81.2.3.4") else {
            panic!("usable")
        };
        assert_eq!(v4.to_bytes(), [4, 81, 2, 3, 4, 0, 0, 0, 0]);
        // The shortest prefix allowed still keeps the 2000::/3 bits, so an
        // IPv6 bucket never reads as an IPv4 one.
        let AddressClass::Usable(v6) = classify(&c, "2000:0:ffff::1") else {
            panic!("usable")
        };
        assert_eq!(v6.to_bytes(), [6, 0x20, 0, 0, 0, 0, 0, 0, 0]);
        assert!(v4 < v6);
        assert_eq!(std::mem::size_of::<Option<Bucket>>(), 8);
    }

    #[test]
    fn configured_lists_exclude() {
        let nets =
            AddressClassifier::parse_cidr_list("# dc\n34.64.0.0/10\n\n2600:1f00::/24 # aws\n")
                .unwrap();
        let c = AddressClassifier::new(64, &nets);
        assert_eq!(classify(&c, "34.100.1.1"), AddressClass::Excluded);
        assert_eq!(classify(&c, "2600:1f00:5::1"), AddressClass::Excluded);
        assert!(matches!(classify(&c, "35.1.1.1"), AddressClass::Usable(_)));
        assert_eq!(
            AddressClassifier::parse_cidr_list("1.2.3.4/33")
                .unwrap_err()
                .0,
            1
        );
    }
}
