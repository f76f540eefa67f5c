//! The input contract: one JSON object per line or message, validated into
//! an [`Event`] or rejected with a specific, countable reason.

use crate::agent::Platform;
use crate::config::InputConfig;
use crate::event::{Event, EventKind};
use crate::ids::{AccountId, DeviceId, PackedId};
use crate::time::{MINUTE_MS, Millis};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use std::fmt;
use std::net::IpAddr;

mod scan;

/// Why an input was rejected. Each reason is a metric label and a
/// dead-letter reason, so the set is closed and named in snake_case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// A message with no payload at all.
    EmptyPayload,
    /// Larger than `input.max_message_bytes`.
    TooLarge,
    /// Not valid UTF-8.
    InvalidUtf8,
    /// Not JSON, or JSON with trailing garbage.
    InvalidJson,
    /// Valid JSON that is not an object.
    NotAnObject,
    /// No `ts`.
    MissingTs,
    /// `ts` neither RFC 3339 with offset nor integer epoch milliseconds.
    InvalidTs,
    /// `ts` too far ahead of the validating clock.
    TsInFuture,
    /// `ts` before the configured floor.
    TsTooOld,
    /// No `kind`.
    MissingKind,
    /// `kind` not a non-empty string.
    InvalidKind,
    /// Activity, login or logout without `device_id`.
    MissingDeviceId,
    /// `device_id` of the wrong type, too long, or with control characters.
    InvalidDeviceId,
    /// `device_id` is a placeholder (`null`, `undefined`, `0`, zeros...).
    JunkDeviceId,
    /// Activity, login or logout without `ip`.
    MissingIp,
    /// `ip` not IPv4 or IPv6 text.
    InvalidIp,
    /// `login` without `account_id`.
    MissingAccountId,
    /// `account_id` of the wrong type, too long, or with control characters.
    InvalidAccountId,
    /// `account_id` is a placeholder.
    JunkAccountId,
    /// A privacy request naming neither `account_id` nor `device_id`, or
    /// an opt_out/opt_in naming only a device.
    MissingPrivacyTarget,
    /// An optional field (`event_id`, `source`, `user_agent`) of the wrong type.
    InvalidOptionalField,
}

impl RejectReason {
    /// Every reason, for pre-registering metric series.
    pub const ALL: [RejectReason; 21] = [
        RejectReason::EmptyPayload,
        RejectReason::TooLarge,
        RejectReason::InvalidUtf8,
        RejectReason::InvalidJson,
        RejectReason::NotAnObject,
        RejectReason::MissingTs,
        RejectReason::InvalidTs,
        RejectReason::TsInFuture,
        RejectReason::TsTooOld,
        RejectReason::MissingKind,
        RejectReason::InvalidKind,
        RejectReason::MissingDeviceId,
        RejectReason::InvalidDeviceId,
        RejectReason::JunkDeviceId,
        RejectReason::MissingIp,
        RejectReason::InvalidIp,
        RejectReason::MissingAccountId,
        RejectReason::InvalidAccountId,
        RejectReason::JunkAccountId,
        RejectReason::MissingPrivacyTarget,
        RejectReason::InvalidOptionalField,
    ];

    /// The reason's stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::EmptyPayload => "empty_payload",
            RejectReason::TooLarge => "too_large",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::MissingTs => "missing_ts",
            RejectReason::InvalidTs => "invalid_ts",
            RejectReason::TsInFuture => "ts_in_future",
            RejectReason::TsTooOld => "ts_too_old",
            RejectReason::MissingKind => "missing_kind",
            RejectReason::InvalidKind => "invalid_kind",
            RejectReason::MissingDeviceId => "missing_device_id",
            RejectReason::InvalidDeviceId => "invalid_device_id",
            RejectReason::JunkDeviceId => "junk_device_id",
            RejectReason::MissingIp => "missing_ip",
            RejectReason::InvalidIp => "invalid_ip",
            RejectReason::MissingAccountId => "missing_account_id",
            RejectReason::InvalidAccountId => "invalid_account_id",
            RejectReason::JunkAccountId => "junk_account_id",
            RejectReason::MissingPrivacyTarget => "missing_privacy_target",
            RejectReason::InvalidOptionalField => "invalid_optional_field",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected input: the countable reason and a human explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The reason, for counting and routing.
    pub reason: RejectReason,
    /// What exactly was wrong, for the person reading the dead letter.
    pub detail: String,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

impl std::error::Error for Rejected {}

fn reject(reason: RejectReason, detail: impl Into<String>) -> Rejected {
    Rejected {
        reason,
        detail: detail.into(),
    }
}

/// A JSON value of a known field, reduced to the shapes the contract can
/// tell apart, so a wrongly typed field gets its own reason instead of a
/// generic parse error. Borrowed and `Copy`: the scanner fills an object of
/// these in place, with no drop to run.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Field<'a> {
    Str(&'a str),
    Int(i64),
    Null,
    Other(&'static str),
}

impl Field<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            Field::Str(_) => "a string",
            Field::Int(_) => "an integer",
            Field::Null => "null",
            Field::Other(t) => t,
        }
    }
}

/// A known field's value as serde_json gives it: a string with an escape
/// comes unescaped, in a copy of its own.
#[derive(Debug, PartialEq)]
enum Value<'a> {
    /// Everything but a string that had an escape.
    Borrowed(Field<'a>),
    /// A string that had an escape, unescaped into a copy.
    Owned(String),
}

impl Value<'_> {
    fn view(&self) -> Field<'_> {
        match self {
            Value::Borrowed(f) => *f,
            Value::Owned(s) => Field::Str(s),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Value<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Value<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Value::Borrowed(Field::Str(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Value::Owned(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Value::Owned(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Value::Borrowed(Field::Int(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                let f = i64::try_from(v).map_or(Field::Other("a number out of range"), Field::Int);
                Ok(Value::Borrowed(f))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Value::Borrowed(Field::Other("a fractional number")))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Value::Borrowed(Field::Other("a boolean")))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Value::Borrowed(Field::Null))
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Value::Borrowed(Field::Null))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Value::Borrowed(Field::Other("an array")))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Value::Borrowed(Field::Other("an object")))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The object's known fields; unknown fields are ignored by design (the
/// contract lets producers add fields). `F`: [`Field`] as validated, or
/// [`Value`] as serde_json gives it.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
struct Fields<F> {
    ts: Option<F>,
    kind: Option<F>,
    device_id: Option<F>,
    ip: Option<F>,
    account_id: Option<F>,
    event_id: Option<F>,
    source: Option<F>,
    user_agent: Option<F>,
}

impl<F> Default for Fields<F> {
    /// No field given (a derive would demand `F: Default`).
    fn default() -> Self {
        Fields {
            ts: None,
            kind: None,
            device_id: None,
            ip: None,
            account_id: None,
            event_id: None,
            source: None,
            user_agent: None,
        }
    }
}

/// The object as the scanner reads it and validation takes it.
type Raw<'a> = Fields<Field<'a>>;

/// The object as serde_json reads it, the scanner's reference.
type Parsed<'a> = Fields<Value<'a>>;

impl Parsed<'_> {
    /// The object with every value borrowed, as validation takes it.
    fn view(&self) -> Raw<'_> {
        fn f<'s>(v: &'s Option<Value<'_>>) -> Option<Field<'s>> {
            v.as_ref().map(Value::view)
        }
        Fields {
            ts: f(&self.ts),
            kind: f(&self.kind),
            device_id: f(&self.device_id),
            ip: f(&self.ip),
            account_id: f(&self.account_id),
            event_id: f(&self.event_id),
            source: f(&self.source),
            user_agent: f(&self.user_agent),
        }
    }
}

/// Validates raw input against the contract.
///
/// Holds the precomputed forms of the input settings; `now` is passed per
/// call so the core never reads the clock itself.
#[derive(Clone, Debug)]
pub struct Decoder {
    /// Largest accepted message in bytes.
    max_bytes: usize,
    /// Longest accepted id in bytes.
    max_id_bytes: usize,
    /// Allowed clock skew ahead of `now`, in milliseconds.
    max_future_ms: i64,
    /// Earliest accepted `ts`.
    min_ts: Millis,
    /// Configured junk ids, lowercased.
    junk: Vec<String>,
    /// Length in bytes of the longest junk word (`undefined` or a
    /// configured one): a longer id can only be junk as zeros and dashes.
    longest_junk: usize,
}

impl Decoder {
    /// A decoder for validated input settings.
    pub fn new(cfg: &InputConfig) -> Self {
        Decoder {
            max_bytes: cfg.max_message_bytes,
            max_id_bytes: cfg.max_id_bytes,
            max_future_ms: cfg.max_future_skew_minutes.saturating_mul(MINUTE_MS),
            min_ts: Millis::parse_rfc3339(&cfg.min_ts).unwrap_or(Millis::MIN),
            junk: cfg.junk_ids.iter().map(|s| s.to_lowercase()).collect(),
            longest_junk: cfg
                .junk_ids
                .iter()
                .map(|s| s.to_lowercase().len())
                .chain(["undefined".len()])
                .max()
                .unwrap_or_default(),
        }
    }

    /// Decodes one line or message payload. `now` is the validating
    /// process's clock, used only for the future-skew check.
    pub fn decode(&self, payload: &[u8], now: Millis) -> Result<Event, Rejected> {
        self.decode_with(payload, now, Path::Fast)
    }

    /// [`Decoder::decode`] without its fast paths: every payload goes
    /// through the standard library's UTF-8 check and serde_json, every
    /// `ts` through chrono and every `ip` through the standard library. The reference that the fuzz target
    /// and the tests compare the fast paths with; not for production use.
    #[doc(hidden)]
    pub fn decode_reference(&self, payload: &[u8], now: Millis) -> Result<Event, Rejected> {
        self.decode_with(payload, now, Path::Reference)
    }

    /// Decodes by the fast paths or by their references.
    fn decode_with(&self, payload: &[u8], now: Millis, path: Path) -> Result<Event, Rejected> {
        if payload.is_empty() {
            return Err(reject(
                RejectReason::EmptyPayload,
                "the message has no payload",
            ));
        }
        if payload.len() > self.max_bytes {
            return Err(reject(
                RejectReason::TooLarge,
                format!(
                    "{} bytes exceed the limit of {}",
                    payload.len(),
                    self.max_bytes
                ),
            ));
        }
        // An ASCII line (nearly every one) is valid UTF-8 as it stands;
        // simdutf8 validates the rest in a fraction of std's time; std,
        // the reference, only describes what simdutf8 has rejected.
        let valid = match path {
            Path::Fast if all_ascii(payload) => {
                // SAFETY: every byte is below 0x80, and ASCII is UTF-8.
                Some(unsafe { std::str::from_utf8_unchecked(payload) })
            }
            Path::Fast => simdutf8::basic::from_utf8(payload).ok(),
            Path::Reference => None,
        };
        let text = match valid {
            Some(text) => text,
            None => std::str::from_utf8(payload)
                .map_err(|e| reject(RejectReason::InvalidUtf8, e.to_string()))?,
        };
        if !text.starts_with('{') && !text.trim_start().starts_with('{') {
            return Err(match serde_json::from_str::<IgnoredAny>(text) {
                Ok(_) => reject(
                    RejectReason::NotAnObject,
                    "the payload is JSON but not an object",
                ),
                Err(e) => reject(RejectReason::InvalidJson, e.to_string()),
            });
        }
        // Filled in place and read by reference: moving the object by
        // value cost three copies a line.
        let mut raw = Raw::default();
        let scanned = match path {
            Path::Fast => scan::scan(text, &mut raw).is_some(),
            Path::Reference => false,
        };
        if scanned {
            return self.validate(&raw, now, path);
        }
        let parsed: Parsed<'_> = serde_json::from_str(text)
            .map_err(|e| reject(RejectReason::InvalidJson, e.to_string()))?;
        self.validate(&parsed.view(), now, path)
    }

    fn validate(&self, raw: &Raw<'_>, now: Millis, path: Path) -> Result<Event, Rejected> {
        let ts = self.ts(raw.ts, now, path)?;
        let kind = match raw.kind {
            None | Some(Field::Null) => {
                return Err(reject(RejectReason::MissingKind, "`kind` is required"));
            }
            Some(Field::Str(k)) if !trim(k).is_empty() => k,
            Some(other) => {
                return Err(reject(
                    RejectReason::InvalidKind,
                    format!(
                        "`kind` must be a non-empty string, got {}",
                        other.type_name()
                    ),
                ));
            }
        };
        let kind = match kind {
            "login" => EventKind::Login,
            "logout" => EventKind::Logout,
            "opt_out" => EventKind::OptOut,
            "opt_in" => EventKind::OptIn,
            "erase" => EventKind::Erase,
            _ => EventKind::Activity,
        };
        for (name, f) in [
            ("event_id", &raw.event_id),
            ("source", &raw.source),
            ("user_agent", &raw.user_agent),
        ] {
            if let Some(f @ (Field::Int(_) | Field::Other(_))) = f
                && !(name == "event_id" && matches!(f, Field::Int(_)))
            {
                return Err(reject(
                    RejectReason::InvalidOptionalField,
                    format!("`{name}` must be a string, got {}", f.type_name()),
                ));
            }
        }
        let account = self.id(
            raw.account_id,
            "account_id",
            RejectReason::InvalidAccountId,
            RejectReason::JunkAccountId,
        )?;
        let device = self.id(
            raw.device_id,
            "device_id",
            RejectReason::InvalidDeviceId,
            RejectReason::JunkDeviceId,
        )?;
        if kind.is_privacy() {
            let ok = match kind {
                EventKind::Erase => account.is_some() || device.is_some(),
                _ => account.is_some(),
            };
            if !ok {
                return Err(reject(
                    RejectReason::MissingPrivacyTarget,
                    format!(
                        "`{}` needs an `account_id`{}",
                        kind.as_str(),
                        if kind == EventKind::Erase {
                            " or a `device_id`"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            // An erase names one subject; prefer the account when both
            // are given so the request's scope is never ambiguous.
            let device = if kind == EventKind::Erase && account.is_some() {
                None
            } else {
                device
            };
            let device = if kind == EventKind::Erase {
                device
            } else {
                None
            };
            return Ok(Event {
                ts,
                kind,
                device: device.map(DeviceId),
                account: account.map(AccountId),
                ip: None,
                platform: Platform::Unknown,
            });
        }
        let Some(device) = device else {
            return Err(reject(
                RejectReason::MissingDeviceId,
                format!("`device_id` is required for `{}`", kind.as_str()),
            ));
        };
        let ip = match raw.ip {
            None | Some(Field::Null) => {
                return Err(reject(
                    RejectReason::MissingIp,
                    format!("`ip` is required for `{}`", kind.as_str()),
                ));
            }
            Some(Field::Str(s)) => match path {
                Path::Fast => parse_ip(s),
                Path::Reference => s.parse().ok(),
            }
            .ok_or_else(|| {
                reject(
                    RejectReason::InvalidIp,
                    format!("`ip` {:?} is not an IPv4 or IPv6 address", truncate(s, 64)),
                )
            })?,
            Some(other) => {
                return Err(reject(
                    RejectReason::InvalidIp,
                    format!("`ip` must be a string, got {}", other.type_name()),
                ));
            }
        };
        if kind == EventKind::Login && account.is_none() {
            return Err(reject(
                RejectReason::MissingAccountId,
                "`login` needs an `account_id`",
            ));
        }
        let platform = match raw.user_agent {
            Some(Field::Str(ua)) => Platform::of_user_agent(ua),
            _ => Platform::Unknown,
        };
        Ok(Event {
            ts,
            kind,
            device: Some(DeviceId(device)),
            account: account.map(AccountId),
            ip: Some(ip),
            platform,
        })
    }

    fn ts(&self, f: Option<Field<'_>>, now: Millis, path: Path) -> Result<Millis, Rejected> {
        let ts = match f {
            None | Some(Field::Null) => {
                return Err(reject(RejectReason::MissingTs, "`ts` is required"));
            }
            Some(Field::Int(ms)) => Millis(ms),
            Some(Field::Str(s)) => match path {
                Path::Fast => Millis::parse_rfc3339(s),
                Path::Reference => Millis::parse_rfc3339_reference(s),
            }
            .ok_or_else(|| {
                reject(
                    RejectReason::InvalidTs,
                    format!("`ts` {:?} is not RFC 3339 with an offset", truncate(s, 64)),
                )
            })?,
            Some(other) => {
                return Err(reject(
                    RejectReason::InvalidTs,
                    format!(
                        "`ts` must be RFC 3339 text or integer epoch milliseconds, got {}",
                        other.type_name()
                    ),
                ));
            }
        };
        if ts < self.min_ts {
            return Err(reject(
                RejectReason::TsTooOld,
                format!("`ts` {ts} is before the floor {}", self.min_ts),
            ));
        }
        if ts > now.saturating_add(self.max_future_ms) {
            return Err(reject(
                RejectReason::TsInFuture,
                format!(
                    "`ts` {ts} is more than {} minutes ahead of the clock",
                    self.max_future_ms / MINUTE_MS
                ),
            ));
        }
        Ok(ts)
    }

    fn id(
        &self,
        f: Option<Field<'_>>,
        name: &str,
        invalid: RejectReason,
        junk: RejectReason,
    ) -> Result<Option<PackedId>, Rejected> {
        let s = match f {
            None | Some(Field::Null) => return Ok(None),
            Some(Field::Str(s)) => s,
            Some(other) => {
                return Err(reject(
                    invalid,
                    format!("`{name}` must be a string, got {}", other.type_name()),
                ));
            }
        };
        if s.len() > self.max_id_bytes {
            return Err(reject(
                invalid,
                format!(
                    "`{name}` is {} bytes, more than {}",
                    s.len(),
                    self.max_id_bytes
                ),
            ));
        }
        // Printable ASCII, nearly every id, eight bytes at a time; the rest
        // char by char (for ASCII, `is_control` is exactly below 0x20 and
        // DEL).
        let printable = printable_ascii(s.as_bytes());
        let control = !printable && s.chars().any(char::is_control);
        if control {
            return Err(reject(
                invalid,
                format!("`{name}` contains control characters"),
            ));
        }
        if self.is_junk(s) {
            return Err(reject(
                junk,
                format!("`{name}` {:?} is a placeholder, not an id", truncate(s, 64)),
            ));
        }
        Ok(Some(PackedId::new(s)))
    }

    /// Whether an id is a placeholder that many clients send for "no id".
    pub fn is_junk(&self, id: &str) -> bool {
        let t = trim(id);
        if t.is_empty() || t.bytes().all(|b| b == b'0' || b == b'-') {
            return true;
        }
        if t.len() > self.longest_junk {
            return false;
        }
        if t.eq_ignore_ascii_case("null") || t.eq_ignore_ascii_case("undefined") {
            return true;
        }
        self.junk.iter().any(|j| t.eq_ignore_ascii_case(j))
    }
}

/// Which way [`Decoder::decode_with`] reads a payload.
#[derive(Clone, Copy)]
enum Path {
    /// The ASCII check and simdutf8, the JSON scanner (with its plain
    /// known keys), the `ts` reader and the address readers where they
    /// are sure, their references elsewhere: production.
    Fast,
    /// The standard library (UTF-8, addresses), serde_json and chrono
    /// only: what the fast paths must agree with.
    Reference,
}

/// Parses IPv4 or IPv6 text. Dotted-quad IPv4 and hexadecimal IPv6 are
/// read in one pass; everything else (an IPv4 tail in IPv6, a zone, any
/// error) goes to the standard library's parser, the reference
/// (properties `the_ipv4_fast_path_agrees_with_std` and
/// `the_ipv6_fast_path_agrees_with_std`), whose generic reader cost more
/// than the rest of an event's validation.
fn parse_ip(text: &str) -> Option<IpAddr> {
    if let Some(octets) = plain_ipv4(text.as_bytes()) {
        return Some(IpAddr::from(octets));
    }
    if let Some(groups) = plain_ipv6(text.as_bytes()) {
        return Some(IpAddr::from(groups));
    }
    text.parse().ok()
}

/// Eight groups of one to four hex digits separated by colons, or fewer
/// with one `::` standing for at least one zero group, or `None`.
fn plain_ipv6(text: &[u8]) -> Option<[u16; 8]> {
    // Groups on each side of the `::`, or all of them without one.
    let mut sides = [[0u16; 8]; 2];
    let mut counts = [0usize; 2];
    let mut side = 0;
    let mut at = 0;
    if text.starts_with(b"::") {
        side = 1;
        at = 2;
    }
    while at < text.len() {
        let start = at;
        let mut group = 0u16;
        while let Some(d) = text.get(at).and_then(|&c| char::from(c).to_digit(16)) {
            if at - start == 4 {
                return None;
            }
            group = group << 4 | d as u16;
            at += 1;
        }
        if at == start || counts[0] + counts[1] == 8 {
            return None;
        }
        sides[side][counts[side]] = group;
        counts[side] += 1;
        match text.get(at..) {
            Some([]) => break,
            Some([b':', b':', ..]) if side == 0 => {
                side = 1;
                at += 2;
            }
            Some([b':', _, ..]) => at += 1,
            _ => return None,
        }
    }
    let filled = counts[0] + counts[1];
    if (side == 0 && filled != 8) || (side == 1 && filled > 7) {
        return None;
    }
    let mut groups = sides[0];
    groups[8 - counts[1]..].copy_from_slice(&sides[1][..counts[1]]);
    Some(groups)
}

/// Four decimal octets of one to three digits, at most 255, without a
/// leading zero (which the standard library rejects), or `None`.
fn plain_ipv4(text: &[u8]) -> Option<[u8; 4]> {
    let mut octets = [0u8; 4];
    let mut at = 0;
    for (k, octet) in octets.iter_mut().enumerate() {
        if k > 0 {
            if text.get(at) != Some(&b'.') {
                return None;
            }
            at += 1;
        }
        let start = at;
        let mut value = 0u32;
        while let Some(d) = text
            .get(at)
            .map(|c| c.wrapping_sub(b'0'))
            .filter(|&d| d < 10)
        {
            if at - start == 3 {
                return None;
            }
            value = value * 10 + u32::from(d);
            at += 1;
        }
        let digits = at - start;
        if digits == 0 || (digits > 1 && text[start] == b'0') {
            return None;
        }
        *octet = u8::try_from(value).ok()?;
    }
    (at == text.len()).then_some(octets)
}

/// Eight bytes at a time: all of `s` as whole words, and its last eight
/// bytes, which overlap bytes already read (or, if `s` is shorter, `s`
/// padded with `pad`). For tests that every byte passes.
fn words(s: &[u8], pad: u8) -> (impl Iterator<Item = u64> + '_, u64) {
    let (words, _) = s.as_chunks::<8>();
    let (last, _) = last_block::<8>(s, pad);
    (
        words.iter().map(|w| u64::from_le_bytes(*w)),
        u64::from_le_bytes(last),
    )
}

/// The last `N` bytes of `s` and where they start: a whole block that
/// overlaps the bytes before it, so a block-at-a-time reader needs no
/// byte loop for the rest; or, if `s` is shorter, `s` padded with `pad`,
/// starting at 0.
fn last_block<const N: usize>(s: &[u8], pad: u8) -> ([u8; N], usize) {
    match s.last_chunk::<N>() {
        Some(last) => (*last, s.len() - N),
        None => {
            let mut padded = [pad; N];
            padded[..s.len()].copy_from_slice(s);
            (padded, 0)
        }
    }
}

/// Every byte's high bit, in a word.
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Whether every byte is ASCII (below 0x80): the words OR-ed together
/// (on these short lines `<[u8]>::is_ascii` cost more than checking
/// UTF-8).
fn all_ascii(s: &[u8]) -> bool {
    let (all, last) = words(s, 0);
    (all.fold(last, |acc, w| acc | w) & HIGH) == 0
}

/// Whether every byte is printable ASCII, a space to `~`, eight bytes in
/// one integer.
fn printable_ascii(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    // For bytes below 0x80 no sum below carries into the next byte: the
    // high bit of `x + 0x60` is clear exactly below 0x20, and that of
    // `x + 1` is set exactly at 0x7f (DEL).
    let word = |w: u64| w & HIGH == 0 && (!(w + ONES * 0x60) | (w + ONES)) & HIGH == 0;
    let (mut all, last) = words(s, b'a');
    word(last) && all.all(word)
}

/// `s` without leading and trailing whitespace, as `str::trim` gives it,
/// with no call where both ends are visible ASCII (nearly every id).
fn trim(s: &str) -> &str {
    match (s.as_bytes().first(), s.as_bytes().last()) {
        (Some(a), Some(b)) if a.is_ascii_graphic() && b.is_ascii_graphic() => s,
        _ => s.trim(),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec() -> Decoder {
        Decoder::new(&InputConfig::default())
    }

    use proptest::strategy::Strategy as _;

    /// Where a fast reader answered `fast` for `text`, the standard
    /// library answers the same; and `parse_ip` always does.
    fn agrees_with_std(
        fast: Option<IpAddr>,
        text: &str,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        let reference = text.parse::<IpAddr>().ok();
        if fast.is_some() {
            proptest::prop_assert_eq!(fast, reference, "{}", text);
        }
        proptest::prop_assert_eq!(parse_ip(text), reference, "{}", text);
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        /// The word-at-a-time test of printable ASCII answers as a byte
        /// loop does.
        #[test]
        fn printable_ascii_agrees_with_a_byte_loop(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![
                    8 => b' '..=b'~',
                    1 => proptest::sample::select(vec![0u8, 0x1f, 0x7f, 0x80, 0xa0, 0xff]),
                    1 => proptest::prelude::any::<u8>(),
                ],
                0..40,
            )
        ) {
            let reference = bytes.iter().all(|b| (b' '..=b'~').contains(b));
            proptest::prop_assert_eq!(printable_ascii(&bytes), reference);
        }

        /// The word-at-a-time test of ASCII answers as std's does.
        #[test]
        fn all_ascii_agrees_with_std(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![
                    16 => 0u8..0x80,
                    1 => proptest::prelude::any::<u8>(),
                ],
                0..100,
            )
        ) {
            proptest::prop_assert_eq!(all_ascii(&bytes), bytes.is_ascii());
        }

        /// The trim that skips the call where both ends are visible ASCII
        /// trims what `str::trim` does.
        #[test]
        fn trim_agrees_with_std(text in "[ -~\t\n\u{85}\u{a0}\u{3000}\u{e9}]{0,6}") {
            proptest::prop_assert_eq!(trim(&text), text.trim());
        }

        /// Where the IPv4 fast path answers, the standard library agrees,
        /// and every address's dotted quad takes it.
        #[test]
        fn the_ipv4_fast_path_agrees_with_std(
            text in proptest::prop_oneof![
                proptest::collection::vec("[0-9]{0,4}|0[0-9]{1,2}|2[5-9][0-9]|[+-][0-9]", 3..=5)
                    .prop_map(|octets| octets.join(".")),
                "[0-9.:a-f]{0,16}",
            ],
            octets: [u8; 4],
        ) {
            let dotted = std::net::Ipv4Addr::from(octets).to_string();
            proptest::prop_assert_eq!(plain_ipv4(dotted.as_bytes()), Some(octets));
            agrees_with_std(plain_ipv4(text.as_bytes()).map(IpAddr::from), &text)?;
        }

        /// Where the IPv6 fast path answers, the standard library agrees,
        /// and every address's full and compressed forms take it.
        #[test]
        fn the_ipv6_fast_path_agrees_with_std(
            text in proptest::prop_oneof![
                proptest::collection::vec(
                    proptest::prop_oneof![
                        12 => "[0-9a-fA-F]{1,4}",
                        1 => "[0-9a-fA-F]{0,5}",
                        1 => "[0-9a-g.%]{0,4}",
                    ],
                    0..=10,
                )
                .prop_flat_map(|groups| {
                    let n = groups.len();
                    (
                        proptest::strategy::Just(groups),
                        proptest::collection::vec(
                            proptest::sample::select(vec![
                                ":", ":", ":", ":", ":", ":", ":", ":", "::", "::", ":::", "",
                            ]),
                            n,
                        ),
                        proptest::bool::ANY,
                    )
                })
                .prop_map(|(groups, seps, lead)| {
                    let mut t = if lead { "::".to_owned() } else { String::new() };
                    for (i, g) in groups.iter().enumerate() {
                        t.push_str(g);
                        if i + 1 < groups.len() || seps[i] == "::" {
                            t.push_str(seps[i]);
                        }
                    }
                    t
                }),
                "[0-9a-f:]{0,20}",
            ],
            groups: [u16; 8],
        ) {
            let full = groups.map(|g| format!("{g:x}")).join(":");
            let compressed = std::net::Ipv6Addr::from(groups).to_string();
            for form in [full, compressed] {
                if form.contains('.') {
                    continue;
                }
                proptest::prop_assert_eq!(plain_ipv6(form.as_bytes()), Some(groups), "{}", form);
            }
            agrees_with_std(plain_ipv6(text.as_bytes()).map(IpAddr::from), &text)?;
        }

        /// Every fast path together (scanner, `ts`, IPv4) gives what the
        /// references give, acceptance and rejection detail alike, on
        /// events near the contract's shape.
        #[test]
        fn decoding_agrees_with_the_reference(
            ts in proptest::prop_oneof![
                "\"20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9](\\.[0-9]{0,10})?(Z|[+-][0-2][0-9]:[0-5][0-9]|z)?\"",
                "[0-9]{1,14}",
                "\"[0-9T:.Z+-]{0,26}\"",
            ],
            ip in proptest::prop_oneof![
                "\"[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\"",
                "\"[0-9a-f:.]{0,20}\"",
                "\"[0-9.]{0,16}\"",
                proptest::strategy::Just("null".to_owned()),
            ],
            kind in "\"(login|page_view|erase|logout)\"",
            device in "\"[a-zA-Z0-9 -]{0,8}\"",
        ) {
            let line = format!(
                r#"{{"ts":{ts},"kind":{kind},"device_id":{device},"ip":{ip},"account_id":"a1"}}"#
            );
            let d = dec();
            proptest::prop_assert_eq!(
                d.decode(line.as_bytes(), NOW),
                d.decode_reference(line.as_bytes(), NOW),
                "{}",
                line
            );
        }
    }
    const NOW: Millis = Millis(1_800_000_000_000);

    fn reason(line: &str) -> RejectReason {
        dec().decode(line.as_bytes(), NOW).unwrap_err().reason
    }

    #[test]
    fn accepts_the_contract() {
        let e = dec()
            .decode(br#"{"ts":"2026-01-05T18:00:00+01:00","kind":"page_view","device_id":"d1","ip":"81.2.3.4","x":[1]}"#, NOW)
            .unwrap();
        assert_eq!(e.kind, EventKind::Activity);
        assert_eq!(e.ts.to_string(), "2026-01-05T17:00:00.000Z");
        let e = dec()
            .decode(br#"{"ts":1767632400000,"kind":"login","device_id":"d1","ip":"2a02::1","account_id":"a"}"#, NOW)
            .unwrap();
        assert_eq!(e.kind, EventKind::Login);
        let e = dec()
            .decode(
                br#"{"ts":1767632400000,"kind":"erase","device_id":"d1"}"#,
                NOW,
            )
            .unwrap();
        assert_eq!(e.device.unwrap().to_string(), "d1");
    }

    #[test]
    fn the_user_agent_gives_the_phone_platform_on_both_paths() {
        let d = dec();
        for (ua, want) in [
            (
                r#","user_agent":"Mozilla/5.0 (iPhone; CPU iPhone OS 17_4)""#,
                Platform::Ios,
            ),
            (
                r#","user_agent":"Dalvik/2.1.0 (Linux; U; Android 14)""#,
                Platform::Android,
            ),
            (
                r#","user_agent":"Mozilla/5.0 (Android\u0020tablet)""#,
                Platform::Android,
            ),
            (
                r#","user_agent":"Mozilla/5.0 (Macintosh)""#,
                Platform::Unknown,
            ),
            (r#","user_agent":null"#, Platform::Unknown),
            ("", Platform::Unknown),
        ] {
            let line = format!(
                r#"{{"ts":1767632400000,"kind":"page_view","device_id":"d1","ip":"81.2.3.4"{ua}}}"#
            );
            let fast = d.decode(line.as_bytes(), NOW).unwrap();
            assert_eq!(fast.platform, want, "{line}");
            assert_eq!(Ok(fast), d.decode_reference(line.as_bytes(), NOW), "{line}");
        }
        let erase =
            br#"{"ts":1767632400000,"kind":"erase","device_id":"d1","user_agent":"iPhone"}"#;
        assert_eq!(d.decode(erase, NOW).unwrap().platform, Platform::Unknown);
    }

    #[test]
    fn every_reason_is_specific() {
        let base = r#""ts":1767632400000,"kind":"page_view","ip":"81.2.3.4""#;
        assert_eq!(reason(""), RejectReason::EmptyPayload);
        assert_eq!(reason("{"), RejectReason::InvalidJson);
        assert_eq!(reason("[1,2]"), RejectReason::NotAnObject);
        assert_eq!(
            reason(r#"{"kind":"page_view","device_id":"d","ip":"81.2.3.4"}"#),
            RejectReason::MissingTs
        );
        assert_eq!(
            reason(r#"{"ts":"yesterday","kind":"x","device_id":"d","ip":"81.2.3.4"}"#),
            RejectReason::InvalidTs
        );
        assert_eq!(
            reason(r#"{"ts":1.5,"kind":"x","device_id":"d","ip":"81.2.3.4"}"#),
            RejectReason::InvalidTs
        );
        assert_eq!(
            reason(r#"{"ts":0,"kind":"x","device_id":"d","ip":"81.2.3.4"}"#),
            RejectReason::TsTooOld
        );
        assert_eq!(
            reason(r#"{"ts":9999999999999,"kind":"x","device_id":"d","ip":"81.2.3.4"}"#),
            RejectReason::TsInFuture
        );
        assert_eq!(
            reason(r#"{"ts":1767632400000,"device_id":"d","ip":"81.2.3.4"}"#),
            RejectReason::MissingKind
        );
        assert_eq!(
            reason(r#"{"ts":1767632400000,"kind":7,"device_id":"d","ip":"81.2.3.4"}"#),
            RejectReason::InvalidKind
        );
        assert_eq!(
            reason(&format!("{{{base}}}")),
            RejectReason::MissingDeviceId
        );
        for junk in ["", "null", "undefined", "0", "0000-0000", "---", "NONE"] {
            assert_eq!(
                reason(&format!(r#"{{{base},"device_id":"{junk}"}}"#)),
                RejectReason::JunkDeviceId,
                "{junk}"
            );
        }
        assert_eq!(
            reason(&format!(r#"{{{base},"device_id":"a\u0001b"}}"#)),
            RejectReason::InvalidDeviceId
        );
        assert_eq!(
            reason(&format!(r#"{{{base},"device_id":{}}}"#, "1")),
            RejectReason::InvalidDeviceId
        );
        let long = "x".repeat(257);
        assert_eq!(
            reason(&format!(r#"{{{base},"device_id":"{long}"}}"#)),
            RejectReason::InvalidDeviceId
        );
        assert_eq!(
            reason(r#"{"ts":1767632400000,"kind":"x","device_id":"d"}"#),
            RejectReason::MissingIp
        );
        assert_eq!(
            reason(r#"{"ts":1767632400000,"kind":"x","device_id":"d","ip":"999.1.1.1"}"#),
            RejectReason::InvalidIp
        );
        assert_eq!(
            reason(r#"{"ts":1767632400000,"kind":"login","device_id":"d","ip":"81.2.3.4"}"#),
            RejectReason::MissingAccountId
        );
        assert_eq!(
            reason(&format!(
                r#"{{{base},"device_id":"d","account_id":"null"}}"#
            )),
            RejectReason::JunkAccountId
        );
        assert_eq!(
            reason(r#"{"ts":1767632400000,"kind":"opt_out","device_id":"d"}"#),
            RejectReason::MissingPrivacyTarget
        );
        assert_eq!(
            reason(&format!(r#"{{{base},"device_id":"d","source":5}}"#)),
            RejectReason::InvalidOptionalField
        );
        assert_eq!(
            dec().decode(&[0xff, 0xfe], NOW).unwrap_err().reason,
            RejectReason::InvalidUtf8
        );
        let huge = format!(
            r#"{{{base},"device_id":"d","pad":"{}"}}"#,
            "x".repeat(70_000)
        );
        assert_eq!(reason(&huge), RejectReason::TooLarge);
    }

    #[test]
    fn unicode_ids_are_accepted() {
        let e = dec()
            .decode("{\"ts\":1767632400000,\"kind\":\"x\",\"device_id\":\"gerät-ü\",\"ip\":\"81.2.3.4\"}".as_bytes(), NOW)
            .unwrap();
        assert_eq!(e.device.unwrap().to_string(), "gerät-ü");
    }
}
