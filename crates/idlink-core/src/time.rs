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
    ///
    /// The shape producers send, `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`,
    /// is read directly; anything else (lowercase or space separators, a
    /// leap second, more than nine fractional digits, an invalid date) goes
    /// to chrono, which stays the reference: the property
    /// `the_fast_path_agrees_with_chrono` compares the two.
    pub fn parse_rfc3339(text: &str) -> Option<Millis> {
        plain_rfc3339(text.as_bytes()).or_else(|| chrono_rfc3339(text))
    }

    /// [`Millis::parse_rfc3339`] by chrono alone: the reference of its
    /// fast path, for the decoder's reference path. Not for production.
    #[doc(hidden)]
    pub fn parse_rfc3339_reference(text: &str) -> Option<Millis> {
        chrono_rfc3339(text)
    }
}

/// RFC 3339 as chrono reads it: the reference of the fast path.
fn chrono_rfc3339(text: &str) -> Option<Millis> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| Millis(t.timestamp_millis()))
}

/// The fast path of [`Millis::parse_rfc3339`]; `None` defers to chrono.
fn plain_rfc3339(b: &[u8]) -> Option<Millis> {
    // `YYYY-MM-DDTHH:MM:SS` as two words, `YYYY-MM-` and `HH:MM:SS`, each
    // checked against its pattern at once, and `DDT` between them.
    let head: &[u8; 19] = b.first_chunk()?;
    let word = |at: usize| {
        let mut w = [0; 8];
        w.copy_from_slice(&head[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let (date, time) = (word(0), word(11));
    if !fits(date, b"0000-00-") || !fits(time, b"00:00:00") || head[10] != b'T' {
        return None;
    }
    // A digit's value is its low nibble; byte `i` of a word is bits 8i on.
    let digit = |w: u64, i: u32| i64::from((w >> (8 * i)) as u8 & 0x0f);
    let two = |w: u64, i: u32| digit(w, i) * 10 + digit(w, i + 1);
    let year = two(date, 0) * 100 + two(date, 2);
    let (month, day) = (two(date, 5), two_digits(head[8], head[9])?);
    let (hour, minute, second) = (two(time, 0), two(time, 3), two(time, 6));
    let valid = (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour < 24
        && minute < 60
        && second < 60;
    if !valid {
        return None;
    }
    let mut at = 19;
    let mut millis = 0;
    if let Some((b'.', fraction)) = b[at..].split_first() {
        // One to nine digits. Milliseconds are the first three (chrono
        // truncates the rest), padded with zeros.
        let digits = fraction
            .iter()
            .position(|c| !c.is_ascii_digit())
            .unwrap_or(fraction.len());
        if !(1..=9).contains(&digits) {
            return None;
        }
        let digit = |i: usize| match fraction.get(i) {
            Some(&c) if i < digits => i64::from(c - b'0'),
            _ => 0,
        };
        millis = digit(0) * 100 + digit(1) * 10 + digit(2);
        at += 1 + digits;
    }
    let offset = match b.get(at..)? {
        b"Z" => 0,
        &[sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (h, m) = (two_digits(h1, h2)?, two_digits(m1, m2)?);
            if h >= 24 || m >= 60 {
                return None;
            }
            let east = h * 3600 + m * 60;
            if sign == b'-' { -east } else { east }
        }
        _ => return None,
    };
    let secs =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some(Millis(secs * 1000 + millis))
}

/// Whether the eight bytes of `w` (first byte lowest) match `pattern`,
/// where a `0` in the pattern stands for any ASCII digit and any other
/// byte for itself. Every byte at once: a digit is `0x3_` with a low
/// nibble that does not carry when 6 is added to it.
fn fits(w: u64, pattern: &[u8; 8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let digits = pattern.map(|c| if c == b'0' { 0xff } else { 0 });
    let digits = u64::from_le_bytes(digits);
    let others = u64::from_le_bytes(*pattern) & !digits;
    let nibbles = w & digits & (ONES * 0x0f);
    w & !digits == others
        && w & digits & (ONES * 0xf0) == digits & (ONES * 0x30)
        && (nibbles + (digits & (ONES * 6))) & (ONES * 0x10) == 0
}

/// The number two ASCII digits write, if both are digits.
fn two_digits(tens: u8, ones: u8) -> Option<i64> {
    let (t, o) = (tens.wrapping_sub(b'0'), ones.wrapping_sub(b'0'));
    (t < 10 && o < 10).then(|| i64::from(t) * 10 + i64::from(o))
}

/// Days in a month of the proleptic Gregorian calendar.
fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date (`days_from_civil` of H. Hinnant's
/// "chrono-Compatible Low-Level Date Algorithms").
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Date of a day counted from 1970-01-01 (`civil_from_days` of the same
/// paper as [`days_from_civil`]): year, month 1–12, day 1–31.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Length of `YYYY-MM-DDTHH:MM:SS.mmmZ`.
const RFC3339_MILLIS_LEN: usize = 24;

/// `t` as `YYYY-MM-DDTHH:MM:SS.mmmZ`, if its year has four digits
/// (0000–9999), written without chrono: every published link carries
/// two of these, and chrono's formatting builds a `String` for each.
/// The property `the_fast_format_agrees_with_chrono` holds it to
/// chrono's rendering.
fn plain_format(t: Millis) -> Option<[u8; RFC3339_MILLIS_LEN]> {
    let (year, month, day) = civil_from_days(t.day());
    if !(0..=9999).contains(&year) {
        return None;
    }
    let ms_of_day = t.0.rem_euclid(DAY_MS);
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut value: i64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, ms_of_day / 3_600_000);
    put(14, 2, ms_of_day / MINUTE_MS % 60);
    put(17, 2, ms_of_day / 1000 % 60);
    put(20, 3, ms_of_day % 1000);
    Some(out)
}

impl fmt::Display for Millis {
    /// Formats as UTC RFC 3339 with exactly three fractional digits, the
    /// one timestamp format of every output (`2026-01-05T18:03:11.250Z`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(text) = plain_format(*self) {
            // Digits and ASCII punctuation only: always UTF-8.
            return f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?);
        }
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

    #[test]
    fn what_it_is_unsure_of_goes_to_chrono() {
        for text in [
            "2026-01-05t18:03:11Z",
            "2026-01-05 18:03:11Z",
            "2026-01-05T18:03:11z",
            "2016-12-31T23:59:60Z",
            "2026-01-05T18:03:11.1234567891Z",
            "2026-02-29T00:00:00Z",
            "2026-01-05T18:03:11+24:00",
            "2026-01-05T18:03:11",
            "2026-01-05T18:03:1:Z",
            "2026-0?-05T18:03:11Z",
            "2026-01-05T18-03:11Z",
            "2026/01-05T18:03:11Z",
        ] {
            assert_eq!(plain_rfc3339(text.as_bytes()), None, "{text}");
        }
        assert_eq!(
            Millis::parse_rfc3339("2016-12-31T23:59:60.5Z"),
            chrono_rfc3339("2016-12-31T23:59:60.5Z")
        );
    }

    /// An RFC 3339 text of `ms` in chrono's rendering at some offset and
    /// precision, then maybe one character replaced.
    fn text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let ms = -62_167_219_200_000i64..253_402_300_799_999; // years 0000..=9999
        let offset = prop_oneof![
            Just(0),
            -86_399i32..86_400,
            (-23i32..24).prop_map(|h| h * 3600)
        ];
        let digits = 0usize..=9;
        let edit = proptest::option::weighted(
            0.3,
            (
                any::<proptest::sample::Index>(),
                proptest::sample::select(b"0123459:-+.TtZz 6".to_vec()),
            ),
        );
        (ms, offset, digits, edit).prop_map(|(ms, offset, digits, edit)| {
            let offset = chrono::FixedOffset::east_opt(offset)
                .unwrap_or(chrono::FixedOffset::east_opt(0).unwrap());
            let t = DateTime::<Utc>::from_timestamp_millis(ms)
                .unwrap()
                .with_timezone(&offset);
            let mut text = t.format("%Y-%m-%dT%H:%M:%S").to_string();
            if digits > 0 {
                let nanos = format!("{:09}", t.timestamp_subsec_nanos());
                text.push('.');
                text.push_str(&nanos[..digits]);
            }
            text.push_str(&t.format("%:z").to_string().replace("+00:00", "Z"));
            if let Some((at, c)) = edit {
                let i = at.index(text.len());
                text.replace_range(i..=i, &(c as char).to_string());
            }
            text
        })
    }

    /// chrono's rendering of `t`, the reference of [`plain_format`].
    fn chrono_format(t: Millis) -> Option<String> {
        t.to_datetime()
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    #[test]
    fn formats_the_ends_of_four_digit_years() {
        for (ms, text) in [
            (-62_167_219_200_000, "0000-01-01T00:00:00.000Z"),
            (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
        ] {
            assert_eq!(Millis(ms).to_string(), text);
        }
        assert_eq!(plain_format(Millis(-62_167_219_200_001)), None);
        assert_eq!(plain_format(Millis(253_402_300_800_000)), None);
        assert_eq!(
            Millis(253_402_300_800_000).to_string(),
            chrono_format(Millis(253_402_300_800_000)).unwrap()
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(4096))]

        /// Written without chrono, a time reads as chrono writes it.
        #[test]
        fn the_fast_format_agrees_with_chrono(ms in -70_000_000_000_000i64..260_000_000_000_000) {
            let t = Millis(ms);
            if let Some(text) = plain_format(t) {
                proptest::prop_assert_eq!(Some(String::from_utf8_lossy(&text).into_owned()), chrono_format(t));
            }
            proptest::prop_assert_eq!(Some(t.to_string()), chrono_format(t));
        }

        /// The fast path answers as chrono does, or defers to it.
        #[test]
        fn the_fast_path_agrees_with_chrono(text in text()) {
            let fast = plain_rfc3339(text.as_bytes());
            if fast.is_some() {
                proptest::prop_assert_eq!(fast, chrono_rfc3339(&text), "{}", text);
            }
            proptest::prop_assert_eq!(Millis::parse_rfc3339(&text), chrono_rfc3339(&text), "{}", text);
        }
    }
}
