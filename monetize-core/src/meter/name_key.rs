//! Names compared in a few loads: the handler-reported quantity a meter or filter reads
//! is looked up on every metered response, against names that are short.

/// A name prepared when the config is compiled, so that comparing it with a candidate
/// costs a length test and two word compares (names of up to 16 bytes) instead of a byte
/// loop or a `memcmp` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NameKey {
    name: Box<str>,
    /// The name's first and last bytes, packed by [`words`] (both zero past 16 bytes).
    words: (u64, u64),
}

/// Up to 16 bytes packed into two words that, for strings of one length, are equal
/// exactly when the strings are: two overlapping 8-byte loads (8 to 16 bytes), two
/// overlapping 4-byte loads (4 to 7), or bytes 0, `n / 2` and `n - 1` (1 to 3; together
/// they cover every position).
#[inline(always)]
fn words(b: &[u8]) -> (u64, u64) {
    let n = b.len();
    if let (Some(h), Some(t)) = (b.first_chunk::<8>(), b.last_chunk::<8>()) {
        (u64::from_le_bytes(*h), u64::from_le_bytes(*t))
    } else if let (Some(h), Some(t)) = (b.first_chunk::<4>(), b.last_chunk::<4>()) {
        (
            u64::from(u32::from_le_bytes(*h)),
            u64::from(u32::from_le_bytes(*t)),
        )
    } else {
        let at = |i: usize| b.get(i).copied().map_or(0, u64::from);
        (at(0) | at(n / 2) << 8 | at(n.wrapping_sub(1)) << 16, 0)
    }
}

impl NameKey {
    /// Prepares `name`.
    pub(crate) fn new(name: &str) -> Self {
        let b = name.as_bytes();
        Self {
            name: name.into(),
            words: if b.len() <= 16 { words(b) } else { (0, 0) },
        }
    }

    /// Whether `s` is this name.
    #[inline]
    pub(crate) fn is(&self, s: &str) -> bool {
        let (b, want) = (s.as_bytes(), self.name.as_bytes());
        if b.len() != want.len() {
            return false;
        }
        if b.len() > 16 {
            return b == want;
        }
        words(b) == self.words
    }

    /// The quantity reported under this name.
    #[inline]
    pub(crate) fn find(&self, r: &super::ReportedUsage) -> Option<u64> {
        r.iter().find(|(n, _)| self.is(n)).map(|(_, q)| q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_exactly_when_the_names_are() {
        let names = [
            "",
            "a",
            "b",
            "ab",
            "ba",
            "abc",
            "acb",
            "abd",
            "tokens",
            "tokenz",
            "rows",
            "token",
            "tokens_",
            "abcdefgh",
            "abcdefgi",
            "bbcdefgh",
            "abcdefghi",
            "abcdefghijklmnop",
            "abcdefghijklmnoq",
            "xbcdefghijklmnop",
            "abcdefgxijklmnop",
            "abcdefghijklmnopq",
            "abcdefghijklmnopr",
            "0123456789abcdefghij",
            "0123456789abcdefghik",
        ];
        for a in names {
            let k = NameKey::new(a);
            for b in names {
                assert_eq!(k.is(b), a == b, "{a:?} vs {b:?}");
            }
        }
        // Every single-byte change of every position, for lengths 1 to 20.
        for n in 1..=20usize {
            let base: String = (0..n).map(|i| char::from(b'a' + i as u8)).collect();
            let k = NameKey::new(&base);
            assert!(k.is(&base));
            for i in 0..n {
                let mut v = base.clone().into_bytes();
                v[i] = b'Z';
                let v = String::from_utf8(v).unwrap_or_default();
                assert!(!k.is(&v), "{base:?} vs {v:?}");
            }
        }
    }

    #[test]
    fn finds_reported_quantities() {
        let mut r = super::super::ReportedUsage::new();
        r.add("rows", 2);
        r.add("tokens", 5);
        assert_eq!(NameKey::new("tokens").find(&r), Some(5));
        assert_eq!(NameKey::new("rows").find(&r), Some(2));
        assert_eq!(NameKey::new("row").find(&r), None);
        for name in ["rows", "tokens", "row", "token", "tokens_", ""] {
            assert_eq!(NameKey::new(name).find(&r), r.get(name), "{name:?}");
        }
    }
}
