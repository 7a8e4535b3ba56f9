//! Windows FILETIMEs (100 ns ticks since 1601-01-01 UTC) and the PAX time
//! strings (`seconds[.fraction]` since 1970) the layer tars carry them in.

/// The FILETIME of the Unix epoch.
pub const UNIX_EPOCH: i64 = 116_444_736_000_000_000;

const TICKS_PER_SECOND: i64 = 10_000_000;

/// A FILETIME as whole Unix seconds (rounded down) and nanoseconds.
pub fn to_unix(filetime: i64) -> (i64, u32) {
    let ticks = i128::from(filetime) - i128::from(UNIX_EPOCH);
    let secs = ticks.div_euclid(i128::from(TICKS_PER_SECOND));
    let rest = ticks.rem_euclid(i128::from(TICKS_PER_SECOND));
    (secs as i64, (rest * 100) as u32)
}

/// Unix seconds and nanoseconds as a FILETIME (to its 100 ns precision,
/// rounded down); `None` past what a FILETIME holds.
pub fn from_unix(secs: i64, nanos: u32) -> Option<i64> {
    secs.checked_mul(TICKS_PER_SECOND)?
        .checked_add(i64::from(nanos / 100))?
        .checked_add(UNIX_EPOCH)
}

/// A FILETIME as a PAX time: whole seconds, then a fraction with trailing
/// zeros dropped (none when it is zero). A time before 1970 with a fraction
/// is written as its negative distance, as POSIX and Go's tar do.
pub fn to_pax(filetime: i64) -> String {
    let (secs, nanos) = to_unix(filetime);
    if nanos == 0 {
        return secs.to_string();
    }
    let (sign, whole, frac) = if secs < 0 {
        ("-", -(secs + 1), 1_000_000_000 - nanos)
    } else {
        ("", secs, nanos)
    };
    let digits = format!("{frac:09}");
    format!("{sign}{whole}.{}", digits.trim_end_matches('0'))
}

/// A PAX time as a FILETIME; `None` if it is not one. Digits past the
/// FILETIME's 100 ns are dropped.
pub fn from_pax(text: &str) -> Option<i64> {
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, frac) = body.split_once('.').unwrap_or((body, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(frac) || whole.len() > 18 {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let mut nanos_text: String = frac.chars().take(9).collect();
    while nanos_text.len() < 9 {
        nanos_text.push('0');
    }
    let nanos: u32 = nanos_text.parse().ok()?;
    if !negative {
        return from_unix(whole, nanos);
    }
    if nanos == 0 {
        from_unix(-whole, 0)
    } else {
        from_unix(-whole - 1, 1_000_000_000 - nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_example() {
        // 1700000000.1234567 s after 1970 is 133444736001234567 ticks after
        // 1601 (0x01DA1747C67FD687).
        let ft = from_pax("1700000000.1234567").unwrap();
        assert_eq!(ft, 133_444_736_001_234_567);
        assert_eq!(
            ft.to_le_bytes(),
            [0x87, 0xd6, 0x7f, 0xc6, 0x47, 0x17, 0xda, 0x01]
        );
        assert_eq!(to_pax(ft), "1700000000.1234567");
    }

    #[test]
    fn whole_seconds_epoch_and_before() {
        assert_eq!(to_pax(UNIX_EPOCH), "0");
        assert_eq!(from_pax("0"), Some(UNIX_EPOCH));
        assert_eq!(to_pax(0), "-11644473600");
        assert_eq!(from_pax("-11644473600"), Some(0));
        // Half a second before 1970.
        let ft = UNIX_EPOCH - 5_000_000;
        assert_eq!(to_pax(ft), "-0.5");
        assert_eq!(from_pax("-0.5"), Some(ft));
    }

    #[test]
    fn every_tick_survives_the_text() {
        for ft in [
            1,
            99,
            UNIX_EPOCH + 1,
            UNIX_EPOCH - 1,
            133_444_736_001_234_567,
            i64::MAX / 2,
        ] {
            assert_eq!(from_pax(&to_pax(ft)), Some(ft), "{ft}");
        }
    }

    #[test]
    fn not_times() {
        for bad in ["", "-", "1.2.3", "x", "1e9", ".5", "99999999999999999999"] {
            assert_eq!(from_pax(bad), None, "{bad:?}");
        }
        // Beyond 100 ns is dropped, not refused.
        assert_eq!(from_pax("0.123456789"), Some(UNIX_EPOCH + 1_234_567));
    }
}
