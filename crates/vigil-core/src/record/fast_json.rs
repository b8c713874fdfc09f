//! A fast path for decoding the JSON transaction record, the Kafka path's input.
//!
//! serde_json's derived decoder is costly on this record (`perf`: string scanning, the field-name
//! visitor, `Option` wrappers, copies), and decoding was a large share of a scoring thread's time;
//! this path is markedly faster (BENCHMARKS.md, "Figures moved from code comments (vigil-core)").
//! The record is a flat object of a dozen known fields with plain values, so this reads exactly
//! that shape directly and gives up (`None`) on anything else: escapes in strings, unknown or
//! repeated fields, nested values, numbers outside the range where every decoder agrees, bad
//! syntax. The caller then decodes with serde_json, which accepts the same language and words the
//! errors. So for every input, the result equals serde_json's; the tests check it on generated
//! records and on edge cases.

use super::{RawLabel, RawTimestamp, RawTransaction};

/// Decodes `bytes` if it is a plain transaction object; `None` means "use the full decoder"
/// (not "invalid").
pub(super) fn decode(bytes: &[u8]) -> Option<RawTransaction> {
    let mut p = Parser { b: bytes, i: 0 };
    let mut raw = RawTransaction::default();
    // Fields seen, one bit each, so a repeated field (an error for serde) goes the slow way.
    let mut seen = 0u16;
    p.ws();
    p.eat(b'{')?;
    p.ws();
    if p.peek()? == b'}' {
        p.i += 1;
    } else {
        loop {
            p.ws();
            // Field names are ASCII: compared as bytes.
            let (key, _) = p.raw_string()?;
            p.ws();
            p.eat(b':')?;
            p.ws();
            let bit = match key {
                b"transaction_id" => {
                    raw.transaction_id = p.opt_string()?;
                    0
                }
                b"timestamp" => {
                    raw.timestamp = p.opt_timestamp()?;
                    1
                }
                b"card_id" => {
                    raw.card_id = p.opt_string()?;
                    2
                }
                b"merchant_id" => {
                    raw.merchant_id = p.opt_string()?;
                    3
                }
                b"amount" => {
                    raw.amount = p.opt_f64()?;
                    4
                }
                b"label" => {
                    raw.label = p.opt_label()?;
                    5
                }
                b"label_time" => {
                    raw.label_time = p.opt_timestamp()?;
                    6
                }
                b"currency" => {
                    raw.currency = p.opt_string()?;
                    7
                }
                b"mcc" => {
                    raw.mcc = match p.opt_int()? {
                        None => None,
                        Some(v) => Some(u16::try_from(v).ok()?),
                    };
                    8
                }
                b"country" => {
                    raw.country = p.opt_string()?;
                    9
                }
                b"channel" => {
                    raw.channel = p.opt_string()?;
                    10
                }
                b"lat" => {
                    raw.lat = p.opt_f64()?;
                    11
                }
                b"lon" => {
                    raw.lon = p.opt_f64()?;
                    12
                }
                _ => return None,
            };
            if seen & (1 << bit) != 0 {
                return None;
            }
            seen |= 1 << bit;
            p.ws();
            match p.next()? {
                b',' => continue,
                b'}' => break,
                _ => return None,
            }
        }
    }
    p.ws();
    // Trailing bytes other than whitespace are an error for serde_json.
    (p.i == bytes.len()).then_some(raw)
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    /// JSON whitespace.
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// The bytes of a string without escapes or control characters (not checked as UTF-8).
    fn raw_string(&mut self) -> Option<(&'a [u8], bool)> {
        self.eat(b'"')?;
        let start = self.i;
        let mut ascii = true;
        loop {
            let c = self.next()?;
            match c {
                b'"' => return Some((&self.b[start..self.i - 1], ascii)),
                b'\\' | 0..=0x1f => return None,
                0x80.. => ascii = false,
                _ => {}
            }
        }
    }

    /// A string without escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        let (s, ascii) = self.raw_string()?;
        if ascii {
            // SAFETY: every byte is below 0x80, so `s` is ASCII, which is valid UTF-8.
            Some(unsafe { std::str::from_utf8_unchecked(s) })
        } else {
            std::str::from_utf8(s).ok()
        }
    }

    /// `null`, consumed; `None` if the next value is something else (nothing consumed).
    fn null(&mut self) -> bool {
        if self.b[self.i..].starts_with(b"null") {
            self.i += 4;
            true
        } else {
            false
        }
    }

    fn opt_string(&mut self) -> Option<Option<String>> {
        if self.null() {
            return Some(None);
        }
        Some(Some(self.string()?.to_string()))
    }

    /// A JSON number, split as (negative, integer digits, fraction digits, exponent).
    fn number(&mut self) -> Option<Number<'a>> {
        let neg = self.peek()? == b'-';
        if neg {
            self.i += 1;
        }
        let digits = |p: &mut Parser<'a>| {
            let start = p.i;
            while p.peek().is_some_and(|c| c.is_ascii_digit()) {
                p.i += 1;
            }
            &p.b[start..p.i]
        };
        let int = digits(self);
        // JSON: at least one digit, and no leading zero before more digits.
        if int.is_empty() || (int.len() > 1 && int[0] == b'0') {
            return None;
        }
        let mut frac: &[u8] = &[];
        if self.peek() == Some(b'.') {
            self.i += 1;
            frac = digits(self);
            if frac.is_empty() {
                return None;
            }
        }
        let mut exp = 0i32;
        let mut has_exp = false;
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            has_exp = true;
            let eneg = match self.peek()? {
                b'-' => {
                    self.i += 1;
                    true
                }
                b'+' => {
                    self.i += 1;
                    false
                }
                _ => false,
            };
            let e = digits(self);
            if e.is_empty() || e.len() > 4 {
                return None;
            }
            let v: i32 = std::str::from_utf8(e).ok()?.parse().ok()?;
            exp = if eneg { -v } else { v };
        }
        Some(Number {
            neg,
            int,
            frac,
            exp,
            has_exp,
        })
    }

    /// An integer (no fraction or exponent) that fits in an `i64`, or null. Negative zero,
    /// which serde_json reads as a float, goes the slow way.
    fn opt_int(&mut self) -> Option<Option<i64>> {
        if self.null() {
            return Some(None);
        }
        let n = self.number()?;
        if !n.frac.is_empty() || n.has_exp || n.int.len() > 18 || (n.neg && n.int == b"0") {
            return None;
        }
        let mut v: i64 = 0;
        for &d in n.int {
            v = v * 10 + i64::from(d - b'0');
        }
        Some(Some(if n.neg { -v } else { v }))
    }

    /// A number as `f64`, or null. Only where the decimal value is exactly a ratio of two
    /// doubles, at most 15 significant digits and a power of ten up to 10^22, so the one
    /// correctly rounded division or product here is what every decoder returns.
    fn opt_f64(&mut self) -> Option<Option<f64>> {
        if self.null() {
            return Some(None);
        }
        let n = self.number()?;
        let mut m: u64 = 0;
        let mut sig = 0usize;
        for &d in n.int.iter().chain(n.frac) {
            if sig > 0 || d != b'0' {
                sig += 1;
            }
            if sig > 15 {
                return None;
            }
            m = m * 10 + u64::from(d - b'0');
        }
        // Negative zero: serde_json reads `-0` as an integer (positive zero), `-0.0` as a float.
        if n.neg && m == 0 {
            return None;
        }
        let e = n.exp - i32::try_from(n.frac.len()).ok()?;
        if !(-22..=22).contains(&e) {
            return None;
        }
        // `m < 10^15 < 2^53` and `10^|e| <= 10^22` are exact doubles.
        let (m, p) = (m as f64, POW10[e.unsigned_abs() as usize]);
        let v = if e < 0 { m / p } else { m * p };
        Some(Some(if n.neg { -v } else { v }))
    }

    fn opt_timestamp(&mut self) -> Option<Option<RawTimestamp>> {
        match self.peek()? {
            b'"' => Some(Some(RawTimestamp::Text(self.string()?.to_string()))),
            _ => Some(self.opt_int()?.map(RawTimestamp::Millis)),
        }
    }

    fn opt_label(&mut self) -> Option<Option<RawLabel>> {
        if self.b[self.i..].starts_with(b"true") {
            self.i += 4;
            return Some(Some(RawLabel::Bool(true)));
        }
        if self.b[self.i..].starts_with(b"false") {
            self.i += 5;
            return Some(Some(RawLabel::Bool(false)));
        }
        match self.peek()? {
            b'"' => Some(Some(RawLabel::Text(self.string()?.to_string()))),
            _ => Some(self.opt_int()?.map(RawLabel::Int)),
        }
    }
}

struct Number<'a> {
    neg: bool,
    int: &'a [u8],
    frac: &'a [u8],
    exp: i32,
    has_exp: bool,
}

const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast decoder's result, or serde_json's, compared field by field through `Debug`.
    fn same_as_serde(input: &str) -> bool {
        let slow: Result<RawTransaction, _> = serde_json::from_str(input);
        match decode(input.as_bytes()) {
            Some(fast) => {
                let slow = slow.unwrap_or_else(|e| {
                    panic!("fast path accepted what serde_json refuses ({e}): {input}")
                });
                assert_eq!(
                    format!("{fast:?}"),
                    format!("{slow:?}"),
                    "fast and serde_json differ on {input}"
                );
                // Floats compared bit for bit too (Debug prints shortest round-trip forms).
                for (a, b) in [(fast.amount, slow.amount), (fast.lat, slow.lat)] {
                    assert_eq!(a.map(f64::to_bits), b.map(f64::to_bits), "{input}");
                }
                true
            }
            None => false,
        }
    }

    #[test]
    fn plain_records_take_the_fast_path_and_equal_serde() {
        let cases = [
            r#"{"transaction_id":"t1","timestamp":1700000000000,"card_id":"c_000123","merchant_id":"m_0042","amount":912.5,"currency":"EUR","mcc":5411,"country":"FR","channel":"online","lat":48.85,"lon":2.35}"#,
            r#" { "transaction_id" : "t2" , "timestamp" : "2018-04-01T00:00:31Z", "card_id":"c", "merchant_id":"m", "amount": 0 } "#,
            r#"{"transaction_id":"t3","timestamp":-5,"card_id":"c","merchant_id":"m","amount":-1.25e2,"label":1,"label_time":17}"#,
            r#"{"transaction_id":"t4","timestamp":1,"card_id":"c","merchant_id":"m","amount":33.27,"label":true,"lat":-0.5,"lon":null}"#,
            r#"{"transaction_id":"t5","timestamp":1,"card_id":"ç€","merchant_id":"m","amount":1E+3,"label":"0","mcc":0}"#,
            r#"{"transaction_id":null,"amount":123456789012345}"#,
            r#"{"amount":0.000000000000000000001}"#,
            "{}",
            "{\n\t\"card_id\": \"x\"\r\n}",
        ];
        for c in cases {
            assert!(same_as_serde(c), "expected the fast path for {c}");
        }
    }

    #[test]
    fn anything_unusual_falls_back_to_serde() {
        let cases = [
            r#"{"transaction_id":"t\"1"}"#,
            r#"{"transaction_id":"t\u00e91"}"#,
            r#"{"transaction_id":"t1","extra":1}"#,
            r#"{"transaction_id":"t1","transaction_id":"t2"}"#,
            r#"{"amount":01}"#,
            r#"{"amount":1.}"#,
            r#"{"amount":.5}"#,
            r#"{"amount":1234567890123456}"#,
            r#"{"amount":1e23}"#,
            r#"{"amount":1e400}"#,
            r#"{"amount":"5"}"#,
            r#"{"amount":-}"#,
            r#"{"timestamp":1.5}"#,
            r#"{"timestamp":-0}"#,
            r#"{"amount":-0}"#,
            r#"{"amount":-0.0}"#,
            r#"{"timestamp":9223372036854775808}"#,
            r#"{"mcc":70000}"#,
            r#"{"mcc":-1}"#,
            r#"{"label":1.0}"#,
            r#"{"transaction_id":"t1"} x"#,
            r#"{"transaction_id":"t1",}"#,
            r#"{"transaction_id":"t1""#,
            r#"{"transaction_id":tru}"#,
            r#"[1]"#,
            "",
            "{\"card_id\":\"a\u{1}b\"}",
        ];
        for c in cases {
            assert!(!same_as_serde(c), "expected the slow path for {c}");
        }
        // Invalid UTF-8 inside a string.
        assert!(decode(b"{\"card_id\":\"\xff\"}").is_none());
    }

    /// Generated records of every shape the replayer writes, plus random amounts and
    /// coordinates with up to 15 significant digits: the fast path takes them all and agrees
    /// with serde_json bit for bit.
    #[test]
    fn generated_records_equal_serde() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for k in 0..20_000 {
            let digits = 1 + rnd() % 15;
            let m = rnd() % 10u64.pow(digits as u32);
            let scale = rnd() % (digits + 1);
            let amount = if scale == 0 {
                m.to_string()
            } else {
                let s = format!("{m:0width$}", width = scale as usize + 1);
                let (a, b) = s.split_at(s.len() - scale as usize);
                format!("{a}.{b}")
            };
            let lat = format!(
                "{}{}.{}",
                if k % 3 == 0 { "-" } else { "" },
                rnd() % 90,
                rnd() % 1_000_000
            );
            let input = format!(
                r#"{{"transaction_id":"tx-{k}","timestamp":{},"card_id":"c{}","merchant_id":"m{}","amount":{amount},"mcc":{},"lat":{lat},"label":{}}}"#,
                1_500_000_000_000u64 + rnd() % 100_000_000_000,
                rnd() % 1000,
                rnd() % 100,
                rnd() % 10_000,
                rnd() % 2
            );
            assert!(same_as_serde(&input), "expected the fast path for {input}");
        }
    }
}
