//! Fast RFC 3339 formatting of millisecond timestamps. Formatting millions
//! of timestamps through chrono's generic formatter is a measurable share
//! of the run time, and the shape needed here is fixed.

/// Milliseconds in one simulated day.
pub(crate) const DAY_MS: u64 = 86_400_000;

/// Appends `YYYY-MM-DDTHH:MM:SS.mmmZ` for a Unix time in milliseconds.
pub(crate) fn push_rfc3339_ms(out: &mut Vec<u8>, epoch_ms: i64) {
    let days = epoch_ms.div_euclid(DAY_MS as i64);
    let ms_of_day = epoch_ms.rem_euclid(DAY_MS as i64);
    let (y, m, d) = civil_from_days(days);
    let secs = ms_of_day / 1000;
    let ms = ms_of_day % 1000;
    push_num(out, y, 4);
    out.push(b'-');
    push_num(out, i64::from(m), 2);
    out.push(b'-');
    push_num(out, i64::from(d), 2);
    out.push(b'T');
    push_num(out, secs / 3600, 2);
    out.push(b':');
    push_num(out, secs / 60 % 60, 2);
    out.push(b':');
    push_num(out, secs % 60, 2);
    out.push(b'.');
    push_num(out, ms, 3);
    out.push(b'Z');
}

/// Formats into a fresh string (used for truth and link files).
pub(crate) fn rfc3339_ms(epoch_ms: i64) -> String {
    let mut buf = Vec::with_capacity(24);
    push_rfc3339_ms(&mut buf, epoch_ms);
    String::from_utf8_lossy(&buf).into_owned()
}

fn push_num(out: &mut Vec<u8>, value: i64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut v = value.unsigned_abs();
    let mut n = 0;
    while v > 0 || n == 0 {
        digits[n] = b'0' + (v % 10) as u8;
        v /= 10;
        n += 1;
    }
    if value < 0 {
        out.push(b'-');
    }
    for _ in n..width {
        out.push(b'0');
    }
    for i in (0..n).rev() {
        out.push(digits[i]);
    }
}

/// Howard Hinnant's days-to-civil conversion (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{SecondsFormat, TimeZone, Utc};

    #[test]
    fn matches_chrono() {
        for ms in [
            0i64,
            1_767_571_200_000,
            1_767_571_391_250,
            951_782_400_999,
            4_102_444_799_999,
        ] {
            let expected = Utc
                .timestamp_millis_opt(ms)
                .single()
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true));
            assert_eq!(Some(rfc3339_ms(ms)), expected);
        }
    }
}
