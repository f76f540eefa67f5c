//! Event time: epoch milliseconds, UTC days, and the one output format.

use chrono::{DateTime, SecondsFormat, Utc};
use std::fmt;

/// Milliseconds since the Unix epoch, in event time.
///
/// A newtype so that event time never mixes with durations or wall-clock
/// readings by accident; the engine only ever sees this type.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Millis(pub i64);

/// One minute in milliseconds.
pub const MINUTE_MS: i64 = 60_000;
/// One day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;

impl Millis {
    /// The smallest representable time; used as "no watermark yet".
    pub const MIN: Millis = Millis(i64::MIN);
    /// The largest representable time; the watermark at end of input.
    pub const MAX: Millis = Millis(i64::MAX);

    /// The UTC day this instant falls in, counted from the epoch.
    pub fn day(self) -> i64 {
        self.0.div_euclid(DAY_MS)
    }

    /// Adds a signed number of milliseconds, saturating at the ends.
    pub fn saturating_add(self, ms: i64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }

    /// Subtracts a signed number of milliseconds, saturating at the ends.
    pub fn saturating_sub(self, ms: i64) -> Millis {
        Millis(self.0.saturating_sub(ms))
    }

    /// Converts to a chrono time, if in chrono's range.
    pub fn to_datetime(self) -> Option<DateTime<Utc>> {
        DateTime::<Utc>::from_timestamp_millis(self.0)
    }

    /// Parses RFC 3339 text (any offset) into event time.
    pub fn parse_rfc3339(text: &str) -> Option<Millis> {
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| Millis(t.timestamp_millis()))
    }
}

impl fmt::Display for Millis {
    /// Formats as UTC RFC 3339 with exactly three fractional digits, the
    /// one timestamp format of every output (`2026-01-05T18:03:11.250Z`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_datetime() {
            Some(t) => f.write_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true)),
            None => write!(f, "{}", self.0),
        }
    }
}

/// Serializes event time as its RFC 3339 text (for published records).
pub fn serialize_rfc3339<S: serde::Serializer>(t: &Millis, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(t)
}

/// Formats a UTC day number as `YYYY-MM-DD`.
pub fn format_day(day: i64) -> String {
    let t = Millis(day.saturating_mul(DAY_MS));
    match t.to_datetime() {
        Some(t) => t.format("%Y-%m-%d").to_string(),
        None => day.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_millis() {
        let t = Millis::parse_rfc3339("2026-01-05T19:03:11.25+01:00").unwrap();
        assert_eq!(t.to_string(), "2026-01-05T18:03:11.250Z");
        assert_eq!(format_day(t.day()), "2026-01-05");
    }

    #[test]
    fn negative_times_floor_to_the_previous_day() {
        assert_eq!(Millis(-1).day(), -1);
        assert_eq!(Millis(0).day(), 0);
    }
}
