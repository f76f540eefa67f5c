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
    /// Configured IPv4 exclusions.
    v4: Ranges<u32>,
    /// Configured IPv6 exclusions.
    v6: Ranges<u128>,
    /// Mask of the IPv6 bucket prefix, from `addresses.ipv6_prefix_len`.
    v6_bucket_bits: u8,
}

/// Address ranges as sorted, disjoint, inclusive intervals. A lookup is a
/// binary search: a real datacenter list of tens of thousands of
/// prefixes costs an event about sixteen comparisons, where a scan of the
/// list would cost it tens of thousands.
#[derive(Clone, Debug, Default)]
struct Ranges<T>(Vec<(T, T)>);

impl<T: Copy + Ord> Ranges<T> {
    /// The union of `(first, last)` intervals.
    fn new(mut intervals: Vec<(T, T)>) -> Self {
        intervals.sort_unstable();
        let mut merged: Vec<(T, T)> = Vec::with_capacity(intervals.len());
        for (first, last) in intervals {
            match merged.last_mut() {
                Some(prev) if first <= prev.1 => prev.1 = prev.1.max(last),
                _ => merged.push((first, last)),
            }
        }
        Ranges(merged)
    }

    /// Whether `x` lies in one of the intervals.
    fn contains(&self, x: T) -> bool {
        let after = self.0.partition_point(|&(first, _)| first <= x);
        after
            .checked_sub(1)
            .and_then(|i| self.0.get(i))
            .is_some_and(|&(_, last)| x <= last)
    }
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
                    let first = u32::from(n.network()) & mask;
                    v4.push((first, first | !mask));
                }
                IpNetwork::V6(n) => {
                    let mask = u128::from(n.mask());
                    let first = u128::from(n.network()) & mask;
                    v6.push((first, first | !mask));
                }
            }
        }
        AddressClassifier {
            v4: Ranges::new(v4),
            v6: Ranges::new(v6),
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
        if self.v4.contains(v) {
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
        if self.v6.contains(v) {
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
    use proptest::prelude::*;

    /// Whether a CIDR list covers `x`, by scanning it: the reference.
    fn scanned<T>(nets: &[(T, u32)], bits: u32, x: T) -> bool
    where
        T: Copy + PartialEq + std::ops::BitAnd<Output = T> + std::ops::Shl<u32, Output = T>,
        T: std::ops::Not<Output = T> + From<u8>,
    {
        nets.iter().any(|&(net, len)| {
            let mask = if len == 0 {
                T::from(0)
            } else {
                !T::from(0) << (bits - len)
            };
            x & mask == net & mask
        })
    }

    proptest! {
        /// The interval search answers as a scan of the prefixes would,
        /// whatever they overlap or contain.
        #[test]
        fn ranges_agree_with_scanning_the_prefixes(
            nets in prop::collection::vec((any::<u32>(), 0u32..=32), 0..40),
            wide in prop::collection::vec((any::<u128>(), 0u32..=128), 0..40),
            probes in prop::collection::vec(any::<u32>(), 1..40),
        ) {
            let v4 = Ranges::new(nets.iter().map(|&(net, len)| {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                (net & mask, (net & mask) | !mask)
            }).collect());
            let v6 = Ranges::new(wide.iter().map(|&(net, len)| {
                let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
                (net & mask, (net & mask) | !mask)
            }).collect());
            // Probes inside and next to the prefixes, and anywhere.
            let near = nets.iter().flat_map(|&(n, _)| [n, n.wrapping_sub(1), n.wrapping_add(1)]);
            for x in probes.into_iter().chain(near) {
                prop_assert_eq!(v4.contains(x), scanned(&nets, 32, x), "{:#x}", x);
                let x6 = (u128::from(x) << 96) | u128::from(x);
                for y in [x6, wide.first().map_or(x6, |w| w.0 ^ u128::from(x))] {
                    prop_assert_eq!(v6.contains(y), scanned(&wide, 128, y), "{:#x}", y);
                }
            }
        }
    }

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
