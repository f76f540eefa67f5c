//! Identifier newtypes, so a device id can never be passed where an account
//! id is expected, and the packed form in which both keep their text.
//!
//! An id is packed ([`PackedId`]): a canonical UUID (36 characters, its
//! letters all lower or all upper case: advertising ids, vendor ids and
//! many cookies) as its 16 bytes and its case; any other id as its text in
//! a `SmolStr`, inline up to 23 bytes (most cookie and account ids). So
//! decoding a UUID allocates nothing, an event waiting in the reorder
//! buffer carries its ids in its own cache lines, and the engine's arena
//! keeps a UUID in 16 bytes instead of 36. The text comes back exactly as
//! it came in; ordering, equality and serialization are the text's.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smol_str::SmolStr;
use std::cmp::Ordering;
use std::fmt;
use std::ops::Deref;

/// Length of a UUID's text: 32 hex digits and 4 dashes.
const UUID_LEN: usize = 36;

/// Where a UUID's text has its dashes.
const DASHES: [usize; 4] = [8, 13, 18, 23];

/// How an id is packed. The discriminant is stored (the arena keeps it
/// beside the length) and hashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Form {
    /// The id's text, as it came.
    Text = 0,
    /// A UUID written in lower case (or with no letters at all).
    UuidLower = 1,
    /// A UUID written in upper case.
    UuidUpper = 2,
}

impl Form {
    /// The form of stored discriminant `b` (anything unknown reads as
    /// text, which the arena never writes).
    pub fn from_bits(b: u8) -> Form {
        match b {
            1 => Form::UuidLower,
            2 => Form::UuidUpper,
            _ => Form::Text,
        }
    }
}

/// An id in its packed form, its text borrowed: what the engine's arena
/// hashes, compares and stores. Cheap to copy; its text is built on
/// demand.
#[derive(Clone, Copy, Debug)]
pub enum Key<'a> {
    /// Any id that is not a canonical UUID: its text.
    Text(&'a str),
    /// A canonical UUID: its 16 bytes and the case of its letters
    /// ([`Form::UuidLower`] or [`Form::UuidUpper`]).
    Uuid([u8; 16], Form),
}

impl<'a> Key<'a> {
    /// Packs an id's text.
    pub fn of(s: &'a str) -> Key<'a> {
        match uuid_of(s) {
            Some((bytes, form)) => Key::Uuid(bytes, form),
            None => Key::Text(s),
        }
    }

    /// A key from its stored parts: `bytes` as [`Key::bytes`] gave them
    /// for `form`. A text that is not UTF-8 reads as "", and UUID bytes
    /// of the wrong length as zeros: the arena never stores either.
    pub fn from_parts(form: Form, bytes: &'a [u8]) -> Key<'a> {
        match form {
            Form::Text => Key::Text(std::str::from_utf8(bytes).unwrap_or("")),
            form => Key::Uuid(bytes.try_into().unwrap_or_default(), form),
        }
    }

    /// How the key is packed.
    pub fn form(&self) -> Form {
        match self {
            Key::Text(_) => Form::Text,
            Key::Uuid(_, form) => *form,
        }
    }

    /// The packed bytes: the text, or the UUID's 16 bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Key::Text(s) => s.as_bytes(),
            Key::Uuid(b, _) => b,
        }
    }

    /// The id's text, exactly as it came in.
    pub fn text(&self) -> IdText<'a> {
        match *self {
            Key::Text(s) => IdText::Borrowed(s),
            Key::Uuid(bytes, form) => {
                let digits: &[u8; 16] = match form {
                    Form::UuidUpper => b"0123456789ABCDEF",
                    _ => b"0123456789abcdef",
                };
                let mut buf = [b'-'; UUID_LEN];
                for (&b, &at) in bytes.iter().zip(&PAIRS) {
                    buf[at] = digits[usize::from(b >> 4)];
                    buf[at + 1] = digits[usize::from(b & 15)];
                }
                IdText::Uuid(buf)
            }
        }
    }

    /// The owned id.
    pub fn to_packed(&self) -> PackedId {
        match *self {
            Key::Text(s) => PackedId(Repr::Text(SmolStr::new(s))),
            Key::Uuid(bytes, form) => PackedId(Repr::Uuid(bytes, form)),
        }
    }
}

impl PartialEq for Key<'_> {
    /// Packing is canonical (a text that is a UUID is always packed), so
    /// equal texts have equal keys.
    fn eq(&self, o: &Self) -> bool {
        self.form() == o.form() && self.bytes() == o.bytes()
    }
}
impl Eq for Key<'_> {}

impl Ord for Key<'_> {
    /// The texts' byte order. Two UUIDs of one case compare by their
    /// bytes, which is the same order (hex digits sort as their values).
    fn cmp(&self, o: &Self) -> Ordering {
        match (self, o) {
            (Key::Uuid(a, fa), Key::Uuid(b, fb)) if fa == fb => a.cmp(b),
            _ => self.text().as_bytes().cmp(o.text().as_bytes()),
        }
    }
}
impl PartialOrd for Key<'_> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl<'a> From<&'a str> for Key<'a> {
    fn from(s: &'a str) -> Key<'a> {
        Key::of(s)
    }
}

impl<'a> From<&'a String> for Key<'a> {
    fn from(s: &'a String) -> Key<'a> {
        Key::of(s)
    }
}

impl<'a> From<&'a Box<str>> for Key<'a> {
    fn from(s: &'a Box<str>) -> Key<'a> {
        Key::of(s)
    }
}

impl<'a> From<&'a PackedId> for Key<'a> {
    fn from(id: &'a PackedId) -> Key<'a> {
        id.key()
    }
}

impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl Serialize for Key<'_> {
    /// As its text.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text())
    }
}

impl From<Key<'_>> for Box<str> {
    fn from(k: Key<'_>) -> Box<str> {
        Box::from(&*k.text())
    }
}

impl From<Key<'_>> for String {
    fn from(k: Key<'_>) -> String {
        String::from(&*k.text())
    }
}

/// An id's text, borrowed or (for a UUID) rebuilt on the stack.
#[derive(Clone, Copy, Debug)]
pub enum IdText<'a> {
    /// Text stored as it came.
    Borrowed(&'a str),
    /// A UUID's text, rebuilt from its bytes.
    Uuid([u8; UUID_LEN]),
}

impl Deref for IdText<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            IdText::Borrowed(s) => s,
            // Hex digits and dashes: always ASCII.
            IdText::Uuid(b) => std::str::from_utf8(b).unwrap_or(""),
        }
    }
}

/// Where each of a UUID's 16 bytes is written in its text: two hex
/// digits, never split by a dash.
const PAIRS: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];

/// Per byte: a hex digit's value in the low nibble and its case above it
/// (16: a lower-case letter, 32: upper case, 0: a decimal digit); 128
/// for anything else.
const HEX: [u8; 256] = {
    let mut t = [128u8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 16 | (10 + i as u8);
        t[b'A' as usize + i] = 32 | (10 + i as u8);
        i += 1;
    }
    t
};

/// The 16 bytes and case of a canonical UUID text, if `s` is one. Every
/// decoded id of 36 bytes is tried, so it is one pass through a table
/// with no branch per digit.
fn uuid_of(s: &str) -> Option<([u8; 16], Form)> {
    let t: &[u8; UUID_LEN] = s.as_bytes().try_into().ok()?;
    if DASHES.iter().any(|&i| t[i] != b'-') {
        return None;
    }
    let mut bytes = [0u8; 16];
    let mut seen = 0u8;
    for (b, &at) in bytes.iter_mut().zip(&PAIRS) {
        let (hi, lo) = (HEX[usize::from(t[at])], HEX[usize::from(t[at + 1])]);
        seen |= hi | lo;
        *b = (hi & 15) << 4 | (lo & 15);
    }
    match seen >> 4 {
        0 | 1 => Some((bytes, Form::UuidLower)),
        2 => Some((bytes, Form::UuidUpper)),
        _ => None, // both cases (3), or not a hex digit (8 and up)
    }
}

/// An owned id, packed: see the module documentation.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PackedId(Repr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    /// Any id that is not a canonical UUID.
    Text(SmolStr),
    /// A canonical UUID: its bytes and the case of its letters.
    Uuid([u8; 16], Form),
}

impl PackedId {
    /// Packs an id's text.
    pub fn new(s: &str) -> PackedId {
        Key::of(s).to_packed()
    }

    /// The borrowed key.
    pub fn key(&self) -> Key<'_> {
        match &self.0 {
            Repr::Text(s) => Key::Text(s),
            Repr::Uuid(bytes, form) => Key::Uuid(*bytes, *form),
        }
    }

    /// The id's text.
    pub fn text(&self) -> IdText<'_> {
        self.key().text()
    }

    /// Whether the text lives in a heap block of its own (a text id of
    /// more than 23 bytes): the engine prefetches it.
    pub fn heap_text(&self) -> Option<&[u8]> {
        match &self.0 {
            Repr::Text(s) if s.is_heap_allocated() => Some(s.as_bytes()),
            _ => None,
        }
    }
}

impl Ord for PackedId {
    fn cmp(&self, o: &Self) -> Ordering {
        self.key().cmp(&o.key())
    }
}
impl PartialOrd for PackedId {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl fmt::Debug for PackedId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text(), f)
    }
}

impl fmt::Display for PackedId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl Serialize for PackedId {
    /// As its text: snapshots and messages hold the text, as before ids
    /// were packed.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text())
    }
}

impl<'de> Deserialize<'de> for PackedId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(PackedId::new(&s))
    }
}

/// A device or cookie identifier as it appears in the input contract.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceId(pub PackedId);

/// An account identifier as it appears in the input contract.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountId(pub PackedId);

macro_rules! id_impls {
    ($t:ident) => {
        impl $t {
            /// The id's text.
            pub fn text(&self) -> IdText<'_> {
                self.0.text()
            }
            /// The packed key the engine's arena uses.
            pub fn key(&self) -> Key<'_> {
                self.0.key()
            }
        }
        impl From<&str> for $t {
            fn from(s: &str) -> Self {
                $t(PackedId::new(s))
            }
        }
        impl From<Key<'_>> for $t {
            fn from(k: Key<'_>) -> Self {
                $t(k.to_packed())
            }
        }
        impl<'a> From<&'a $t> for Key<'a> {
            fn from(id: &'a $t) -> Key<'a> {
                id.0.key()
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}
id_impls!(DeviceId);
id_impls!(AccountId);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LOWER: &str = "65fe1ec4-4430-4024-8422-5e4ef9ba55d3";
    const UPPER: &str = "65FE1EC4-4430-4024-8422-5E4EF9BA55D3";

    #[test]
    fn packs_canonical_uuids_only() {
        let form = |s: &str| Key::of(s).form();
        assert_eq!(form(LOWER), Form::UuidLower);
        assert_eq!(form(UPPER), Form::UuidUpper);
        assert_eq!(
            form("12345678-1234-1234-1234-123456789012"),
            Form::UuidLower
        );
        for text in [
            "65fe1ec4-4430-4024-8422-5E4EF9BA55D3", // mixed case
            "65fe1ec4-4430-4024-8422-5e4ef9ba55d",  // short
            "65fe1ec4-4430-4024-8422-5e4ef9ba55d3a",
            "65fe1ec4+4430-4024-8422-5e4ef9ba55d3",
            "65fe1ec4-4430-4024-8422-5e4ef9ba55g3",
            "65fe1ec44430402484225e4ef9ba55d3",
            "{65fe1ec4-4430-4024-8422-5e4ef9ba55d}",
            "65fe1ec4-4430-4024-8422-5e4ef9ba55d\u{e9}",
        ] {
            assert_eq!(form(text), Form::Text, "{text}");
        }
    }

    #[test]
    fn an_event_id_stays_24_bytes() {
        assert_eq!(std::mem::size_of::<PackedId>(), 24);
        assert_eq!(std::mem::size_of::<Option<DeviceId>>(), 24);
    }

    proptest! {
        #[test]
        fn text_comes_back_and_orders_as_text(
            a in "[0-9a-fA-F]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-fA-F]{12}|[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}|.{0,40}",
            b in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}|.{0,40}",
        ) {
            let (pa, pb) = (PackedId::new(&a), PackedId::new(&b));
            prop_assert_eq!(&*pa.text(), a.as_str());
            prop_assert_eq!(pa.to_string(), a.clone());
            prop_assert_eq!(pa.cmp(&pb), a.cmp(&b));
            prop_assert_eq!(pa == pb, a == b);
            prop_assert_eq!(pa.key().to_packed(), pa.clone());
            let bytes = postcard::to_stdvec(&pa).expect("serializes");
            prop_assert_eq!(bytes, postcard::to_stdvec(&a).expect("serializes"));
        }
    }
}
