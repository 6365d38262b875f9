//! Memory sizes as Valkey spells them (`1gb`, `512mb`, `64mb`, `100` bytes).
//!
//! Valkey's own parser (`memtoll`) treats `k`/`m`/`g` as powers of 1000 and
//! `kb`/`mb`/`gb` as powers of 1024, case-insensitively. We parse the same way
//! so a value means exactly what the server will read, and we render back the
//! most readable exact form so the generated file stays stable.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

const UNITS: [(&str, u64); 6] = [
    ("gb", 1 << 30),
    ("mb", 1 << 20),
    ("kb", 1 << 10),
    ("g", 1_000_000_000),
    ("m", 1_000_000),
    ("k", 1_000),
];

/// What a valid size looks like, for error messages.
pub const SIZE_HELP: &str =
    "a whole number of bytes or one with a unit (k, kb, m, mb, g, gb), e.g. `512mb`";

impl ByteSize {
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.trim().to_ascii_lowercase();
        let (digits, multiplier) = UNITS
            .iter()
            .find_map(|(unit, mult)| lower.strip_suffix(unit).map(|d| (d, *mult)))
            .unwrap_or((lower.as_str(), 1));
        let invalid = || format!("invalid size `{text}`: expected {SIZE_HELP}");
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        let number: u64 = digits.parse().map_err(|_| invalid())?;
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| format!("size `{text}` is too large"))
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    /// The shortest exact binary form (`1gb`, `64mb`), else plain bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, mult) in &UNITS[..3] {
            if self.0 != 0 && self.0 % mult == 0 {
                return write!(f, "{}{unit}", self.0 / mult);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(SIZE_HELP)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("invalid size `{v}`: expected {SIZE_HELP}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// Bytes for people: `812.3 KiB`, `1.0 GiB`.
pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_for_people() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1 << 30), "1.0 GiB");
        assert_eq!(human(836_560), "817.0 KiB");
    }

    #[test]
    fn parses_like_valkey() {
        let cases = [
            ("1gb", 1 << 30),
            ("1GB", 1 << 30),
            ("512mb", 512 << 20),
            ("64mb", 64 << 20),
            ("1k", 1000),
            ("1kb", 1024),
            ("2g", 2_000_000_000),
            ("100", 100),
            ("0", 0),
        ];
        for (text, bytes) in cases {
            assert_eq!(ByteSize::parse(text), Ok(ByteSize(bytes)), "{text}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for text in [
            "",
            "gb",
            "1tb",
            "1.5gb",
            "-1",
            "1 gb",
            "ten",
            "99999999999999999999gb",
        ] {
            assert!(ByteSize::parse(text).is_err(), "{text} should be rejected");
        }
    }

    #[test]
    fn displays_shortest_exact_form() {
        assert_eq!(ByteSize(1 << 30).to_string(), "1gb");
        assert_eq!(ByteSize(64 << 20).to_string(), "64mb");
        assert_eq!(ByteSize(1536 << 20).to_string(), "1536mb");
        assert_eq!(ByteSize(1_000_000_000).to_string(), "1000000000");
        assert_eq!(ByteSize(0).to_string(), "0");
    }

    #[test]
    fn display_round_trips() {
        for bytes in [0, 1, 1000, 1024, 1 << 30, 3 << 20, 1_000_000_000] {
            assert_eq!(
                ByteSize::parse(&ByteSize(bytes).to_string()),
                Ok(ByteSize(bytes))
            );
        }
    }
}
