//! Fast CSV row formatting for generated rows.
//!
//! `record::csv_fields` allocates thirteen `String`s per row, which would dominate a 10M-row run.
//! Generated values never need CSV quoting (ids, numbers, codes), so rows are formatted straight
//! into a reused byte buffer. The output is byte-for-byte what `record::csv_fields` would give for
//! the same values (tests check the timestamp and amount forms against it).

use crate::record::Channel;

/// Appends `n` in decimal, left-padded with zeros to at least `width` digits.
pub(crate) fn push_padded(buf: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for _ in (digits.len() - i)..width {
        buf.push(b'0');
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Appends an amount given in cents as `units.cc` (the `{:.2}` form).
pub(crate) fn push_cents(buf: &mut Vec<u8>, cents: u64) {
    push_padded(buf, cents / 100, 1);
    buf.push(b'.');
    push_padded(buf, cents % 100, 2);
}

/// (year, month, day) of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

const DAY_MS: i64 = 86_400_000;

/// Appends a non-negative, whole-second epoch-ms time as `YYYY-MM-DDTHH:MM:SSZ`, the form
/// `record::format_timestamp` gives for whole seconds. The generator only produces whole
/// seconds, so the millisecond form is never needed.
pub(crate) fn push_timestamp(buf: &mut Vec<u8>, ms: i64) {
    debug_assert!(ms >= 0 && ms % 1000 == 0);
    let (y, m, d) = civil_from_days(ms.div_euclid(DAY_MS));
    let secs = ms.rem_euclid(DAY_MS) / 1000;
    push_padded(buf, y.max(0) as u64, 4);
    buf.push(b'-');
    push_padded(buf, u64::from(m), 2);
    buf.push(b'-');
    push_padded(buf, u64::from(d), 2);
    buf.push(b'T');
    push_padded(buf, (secs / 3600) as u64, 2);
    buf.push(b':');
    push_padded(buf, (secs / 60 % 60) as u64, 2);
    buf.push(b':');
    push_padded(buf, (secs % 60) as u64, 2);
    buf.push(b'Z');
}

pub(crate) fn channel_bytes(c: Channel) -> &'static [u8] {
    c.as_str().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::format_timestamp;

    fn s(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut b = Vec::new();
        f(&mut b);
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn timestamps_match_record_formatting() {
        // Leap days, year ends, century rules and the epoch itself.
        let mut ms = 0i64;
        while ms < 5_000_000_000_000 {
            assert_eq!(s(|b| push_timestamp(b, ms)), format_timestamp(ms), "{ms}");
            ms += 7_777_777_000;
        }
        for t in [951_782_400_000i64, 1_583_020_799_000, 4_107_542_400_000] {
            assert_eq!(s(|b| push_timestamp(b, t)), format_timestamp(t));
        }
    }

    #[test]
    fn amounts_and_padding() {
        assert_eq!(s(|b| push_cents(b, 5)), "0.05");
        assert_eq!(s(|b| push_cents(b, 123_456)), "1234.56");
        assert_eq!(s(|b| push_cents(b, 100)), format!("{:.2}", 1.0));
        assert_eq!(s(|b| push_padded(b, 42, 6)), "000042");
        assert_eq!(s(|b| push_padded(b, 1_234_567, 3)), "1234567");
        assert_eq!(s(|b| push_padded(b, 0, 0)), "0");
    }
}
