//! The key directory's MAC: a keyed pseudo-random function of an API key, under a secret
//! drawn when the directory is made, that indexes keys without storing them.
//!
//! Two constructions, picked once per directory:
//! - **AES-128 CBC-MAC** over a length-prefixed encoding (one block holding the key's
//!   length, then the key zero-padded to whole blocks), on x86-64 CPUs with AES-NI. The
//!   encoding is prefix-free, which makes CBC-MAC a secure PRF on variable-length input
//!   (Petrank and Rackoff, "CBC MAC for Real-Time Data Sources"). A 30-byte key costs three
//!   block encryptions: about 45 instructions.
//! - **SipHash-2-4 with its 128-bit output** elsewhere (about 250 instructions for the same
//!   key).
//!
//! Either way the output is 128 bits and never leaves the process: an attacker sees no MAC,
//! and would have to find a key whose MAC equals another customer's without it.

use std::hash::{BuildHasher, RandomState};

/// A 128-bit MAC of a key under a directory's secret.
pub(super) type Mac = u128;

/// A directory's secret MAC key: 128 bits drawn from the operating system's random source
/// (through `RandomState`), never shown.
pub(super) enum MacKey {
    /// AES-NI is available: the expanded AES-128 key.
    #[cfg(target_arch = "x86_64")]
    Aes(aes_ni::RoundKeys),
    /// SipHash-2-4-128 under this key.
    Sip([u64; 2]),
}

impl MacKey {
    pub(super) fn random() -> Self {
        // `RandomState` keys come from the OS random source; two distinct inputs through
        // its keyed SipHash give 128 secret bits.
        let s = RandomState::new();
        let k = [
            s.hash_one(0x6d6f_6e65_7469_7a65_u64),
            s.hash_one(0x6b65_7964_6972_6563_u64),
        ];
        #[cfg(target_arch = "x86_64")]
        if let Some(keys) = aes_ni::RoundKeys::new(k) {
            return MacKey::Aes(keys);
        }
        MacKey::Sip(k)
    }

    #[inline]
    pub(super) fn mac(&self, data: &[u8]) -> Mac {
        match self {
            #[cfg(target_arch = "x86_64")]
            MacKey::Aes(keys) => keys.cbc_mac(data),
            MacKey::Sip(k) => siphash_2_4_128(*k, data),
        }
    }
}

/// SipHash-2-4 with its 128-bit output (the reference `siphash` with `outlen = 16`).
#[inline]
pub(super) fn siphash_2_4_128(k: [u64; 2], data: &[u8]) -> u128 {
    let mut v0 = k[0] ^ 0x736f_6d65_7073_6575;
    let mut v1 = k[1] ^ 0x646f_7261_6e64_6f6d ^ 0xee;
    let mut v2 = k[0] ^ 0x6c79_6765_6e65_7261;
    let mut v3 = k[1] ^ 0x7465_6462_7974_6573;
    macro_rules! round {
        () => {
            v0 = v0.wrapping_add(v1);
            v1 = v1.rotate_left(13) ^ v0;
            v0 = v0.rotate_left(32);
            v2 = v2.wrapping_add(v3);
            v3 = v3.rotate_left(16) ^ v2;
            v0 = v0.wrapping_add(v3);
            v3 = v3.rotate_left(21) ^ v0;
            v2 = v2.wrapping_add(v1);
            v1 = v1.rotate_left(17) ^ v2;
            v2 = v2.rotate_left(32);
        };
    }
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let m = u64::from_le_bytes(w);
        v3 ^= m;
        round!();
        round!();
        v0 ^= m;
    }
    let rest = chunks.remainder();
    let mut w = [0u8; 8];
    w[..rest.len()].copy_from_slice(rest);
    let b = u64::from_le_bytes(w) | ((data.len() as u64) << 56);
    v3 ^= b;
    round!();
    round!();
    v0 ^= b;
    v2 ^= 0xee;
    round!();
    round!();
    round!();
    round!();
    let lo = v0 ^ v1 ^ v2 ^ v3;
    v1 ^= 0xdd;
    round!();
    round!();
    round!();
    round!();
    let hi = v0 ^ v1 ^ v2 ^ v3;
    (u128::from(hi) << 64) | u128::from(lo)
}

/// AES-128 with the AES-NI instructions, for the CBC-MAC.
#[cfg(target_arch = "x86_64")]
mod aes_ni {
    use std::arch::x86_64::{
        __m128i, _mm_aesenc_si128, _mm_aesenclast_si128, _mm_aeskeygenassist_si128,
        _mm_cvtsi128_si64, _mm_set_epi64x, _mm_shuffle_epi32, _mm_slli_si128, _mm_unpackhi_epi64,
        _mm_xor_si128,
    };

    /// Keys up to this many bytes long have their length block's encryption precomputed.
    const LENGTHS: usize = 64;

    /// An expanded AES-128 key (FIPS-197, section 5.2), and the encryption of the length
    /// block of every length up to [`LENGTHS`] (the first step of every MAC, the same for
    /// every key of one length). Only made where the CPU has AES-NI ([`RoundKeys::new`]
    /// checks), which is what makes calling the `aes` functions sound.
    pub(in crate::identify) struct RoundKeys {
        rk: [__m128i; 11],
        first: Box<[__m128i; LENGTHS + 1]>,
    }

    // SAFETY: plain data (eleven 128-bit values), never mutated after it is made.
    unsafe impl Send for RoundKeys {}
    // SAFETY: as above.
    unsafe impl Sync for RoundKeys {}

    impl RoundKeys {
        /// The round keys of `key`, or `None` when the CPU has no AES-NI.
        pub(in crate::identify) fn new(key: [u64; 2]) -> Option<Self> {
            if !std::arch::is_x86_feature_detected!("aes") {
                return None;
            }
            // SAFETY: the CPU has AES-NI (checked above); SSE2 is part of x86-64.
            let rk = unsafe { expand(key) };
            // SAFETY: as above.
            let first = Box::new(std::array::from_fn(|len| unsafe {
                encrypt(&rk, from_u128(len as u128))
            }));
            Some(Self { rk, first })
        }

        /// CBC-MAC of the length-prefixed, zero-padded `data` (see the module docs).
        #[inline]
        pub(in crate::identify) fn cbc_mac(&self, data: &[u8]) -> u128 {
            // SAFETY: a `RoundKeys` exists only where the CPU has AES-NI (`new`).
            unsafe { cbc_mac(self, data) }
        }

        /// One block through AES-128 (for the known-answer tests).
        #[cfg(test)]
        pub(in crate::identify) fn encrypt(&self, block: u128) -> u128 {
            // SAFETY: as in `cbc_mac`.
            unsafe { to_u128(encrypt(&self.rk, from_u128(block))) }
        }
    }

    /// A block from its 16 bytes read as a little-endian number (byte 0 first in memory).
    #[inline]
    #[target_feature(enable = "sse2")]
    fn from_u128(x: u128) -> __m128i {
        _mm_set_epi64x((x >> 64) as i64, x as i64)
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    fn to_u128(x: __m128i) -> u128 {
        let lo = _mm_cvtsi128_si64(x) as u64;
        let hi = _mm_cvtsi128_si64(_mm_unpackhi_epi64(x, x)) as u64;
        (u128::from(hi) << 64) | u128::from(lo)
    }

    /// One step of the key schedule: the next round key from the previous one and the
    /// `aeskeygenassist` of it (with the round constant).
    #[inline]
    #[target_feature(enable = "aes,sse2")]
    fn next(prev: __m128i, assist: __m128i) -> __m128i {
        let t = _mm_shuffle_epi32::<0xff>(assist);
        let mut k = prev;
        k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
        k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
        k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
        _mm_xor_si128(k, t)
    }

    #[target_feature(enable = "aes,sse2")]
    fn expand(key: [u64; 2]) -> [__m128i; 11] {
        let k0 = from_u128((u128::from(key[1]) << 64) | u128::from(key[0]));
        let k1 = next(k0, _mm_aeskeygenassist_si128::<0x01>(k0));
        let k2 = next(k1, _mm_aeskeygenassist_si128::<0x02>(k1));
        let k3 = next(k2, _mm_aeskeygenassist_si128::<0x04>(k2));
        let k4 = next(k3, _mm_aeskeygenassist_si128::<0x08>(k3));
        let k5 = next(k4, _mm_aeskeygenassist_si128::<0x10>(k4));
        let k6 = next(k5, _mm_aeskeygenassist_si128::<0x20>(k5));
        let k7 = next(k6, _mm_aeskeygenassist_si128::<0x40>(k6));
        let k8 = next(k7, _mm_aeskeygenassist_si128::<0x80>(k7));
        let k9 = next(k8, _mm_aeskeygenassist_si128::<0x1b>(k8));
        let k10 = next(k9, _mm_aeskeygenassist_si128::<0x36>(k9));
        [k0, k1, k2, k3, k4, k5, k6, k7, k8, k9, k10]
    }

    #[inline]
    #[target_feature(enable = "aes,sse2")]
    fn encrypt(rk: &[__m128i; 11], block: __m128i) -> __m128i {
        let mut s = _mm_xor_si128(block, rk[0]);
        for k in &rk[1..10] {
            s = _mm_aesenc_si128(s, *k);
        }
        _mm_aesenclast_si128(s, rk[10])
    }

    /// A whole block.
    #[inline]
    fn block(bytes: &[u8; 16]) -> u128 {
        u128::from_le_bytes(*bytes)
    }

    /// Bytes `at..at + n` of `b` (n ≤ 8, `at + n ≤ b.len()`) as a little-endian number.
    #[inline]
    fn word(b: &[u8], at: usize, n: usize) -> u64 {
        let mut w = [0u8; 8];
        w[..n].copy_from_slice(&b[at..at + n]);
        u64::from_le_bytes(w)
    }

    /// A block of fewer than 16 bytes, zero-padded: read as (at most) two overlapping
    /// fixed-size words rather than copied byte by byte.
    #[inline]
    pub(in crate::identify) fn partial_block(b: &[u8]) -> u128 {
        let n = b.len();
        let (lo, hi) = match n {
            8.. => {
                // The last 8 bytes, shifted down past the ones the first word holds.
                let tail = word(b, n - 8, 8);
                (
                    word(b, 0, 8),
                    tail.checked_shr(8 * (16 - n) as u32).unwrap_or(0),
                )
            }
            4..=7 => {
                let head = u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                let tail = u64::from(u32::from_le_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]]));
                // The overlap holds the same bytes in both: OR keeps them.
                (head | (tail << (8 * (n - 4))), 0)
            }
            _ => (word(b, 0, n), 0),
        };
        (u128::from(hi) << 64) | u128::from(lo)
    }

    #[inline]
    #[target_feature(enable = "aes,sse2")]
    fn cbc_mac(keys: &RoundKeys, data: &[u8]) -> u128 {
        let rk = &keys.rk;
        // The length block first: the encoding is prefix-free.
        let mut s = match keys.first.get(data.len()) {
            Some(s) => *s,
            None => encrypt(rk, from_u128(data.len() as u128)),
        };
        let (chunks, rest) = data.as_chunks::<16>();
        for c in chunks {
            s = encrypt(rk, _mm_xor_si128(s, from_u128(block(c))));
        }
        if !rest.is_empty() {
            s = encrypt(rk, _mm_xor_si128(s, from_u128(partial_block(rest))));
        }
        to_u128(s)
    }

    /// CBC encryption of whole blocks with an IV (for the known-answer tests): the blocks
    /// of the ciphertext.
    #[cfg(test)]
    pub(in crate::identify) fn cbc_encrypt(
        keys: &RoundKeys,
        iv: u128,
        blocks: &[u128],
    ) -> Vec<u128> {
        let mut prev = iv;
        blocks
            .iter()
            .map(|b| {
                prev = keys.encrypt(prev ^ b);
                prev
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex16(s: &str) -> u128 {
        let mut w = [0u8; 16];
        hex::decode_to_slice(s, &mut w).unwrap();
        u128::from_le_bytes(w)
    }

    #[test]
    fn siphash_matches_the_reference_vectors() {
        // `vectors_sip128` of the SipHash reference implementation (key 00..0f, message
        // 00..len-1), for a few lengths around the 8-byte blocks.
        let vectors = [
            (0, "a3817f04ba25a8e66df67214c7550293"),
            (1, "da87c1d86b99af44347659119b22fc45"),
            (7, "a1f1ebbed8dbc153c0b84aa61ff08239"),
            (8, "3b62a9ba6258f5610f83e264f31497b4"),
            (15, "5493e99933b0a8117e08ec0f97cfc3d9"),
            (16, "6ee2a4ca67b054bbfd3315bf85230577"),
            (31, "2939b0183223fafc1723de4f52c43d35"),
            (32, "7c3956ca5eeafc3e363e9d556546eb68"),
            (63, "5150d1772f50834a503e069a973fbd7c"),
        ];
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let k = [
            u64::from_le_bytes(key[..8].try_into().unwrap()),
            u64::from_le_bytes(key[8..].try_into().unwrap()),
        ];
        let msg: [u8; 64] = std::array::from_fn(|i| i as u8);
        for (len, want) in vectors {
            assert_eq!(siphash_2_4_128(k, &msg[..len]), hex16(want), "len {len}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn aes_keys(key_hex: &str) -> Option<aes_ni::RoundKeys> {
        let k = hex16(key_hex);
        aes_ni::RoundKeys::new([k as u64, (k >> 64) as u64])
    }

    /// Whether this machine takes the AES-NI path: CI runs on x86-64 machines with AES-NI,
    /// where the AES tests below must not pass vacuously.
    #[cfg(target_arch = "x86_64")]
    fn has_aes_ni() -> bool {
        std::arch::is_x86_feature_detected!("aes")
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn aes_matches_fips_197_and_sp_800_38a() {
        if !has_aes_ni() {
            // Without AES-NI the directory uses SipHash (tested above) and `RoundKeys`
            // cannot be made.
            assert!(aes_keys("000102030405060708090a0b0c0d0e0f").is_none());
            assert!(matches!(MacKey::random(), MacKey::Sip(_)));
            return;
        }
        // FIPS-197 appendix C.1: AES-128.
        let keys = aes_keys("000102030405060708090a0b0c0d0e0f").unwrap();
        assert_eq!(
            keys.encrypt(hex16("00112233445566778899aabbccddeeff")),
            hex16("69c4e0d86a7b0430d8cdb78070b4c55a")
        );
        // FIPS-197 appendix B (the key-expansion example key).
        let keys = aes_keys("2b7e151628aed2a6abf7158809cf4f3c").unwrap();
        assert_eq!(
            keys.encrypt(hex16("3243f6a8885a308d313198a2e0370734")),
            hex16("3925841d02dc09fbdc118597196a0b32")
        );
        // SP 800-38A F.2.1, CBC-AES128.Encrypt (same key).
        let plain = [
            "6bc1bee22e409f96e93d7e117393172a",
            "ae2d8a571e03ac9c9eb76fac45af8e51",
            "30c81c46a35ce411e5fbc1191a0a52ef",
            "f69f2445df4f9b17ad2b417be66c3710",
        ]
        .map(hex16);
        let cipher = [
            "7649abac8119b246cee98e9b12e9197d",
            "5086cb9b507219ee95db113a917678b2",
            "73bed6b8e3c1743b7116e69e22229516",
            "3ff1caa1681fac09120eca307586e1a7",
        ]
        .map(hex16);
        let iv = hex16("000102030405060708090a0b0c0d0e0f");
        assert_eq!(aes_ni::cbc_encrypt(&keys, iv, &plain), cipher);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn partial_blocks_are_the_bytes_zero_padded() {
        let msg: [u8; 16] = std::array::from_fn(|i| (i as u8) ^ 0xa5);
        for n in 0..16 {
            let mut b = [0u8; 16];
            b[..n].copy_from_slice(&msg[..n]);
            assert_eq!(
                aes_ni::partial_block(&msg[..n]),
                u128::from_le_bytes(b),
                "{n} bytes"
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn cbc_mac_is_cbc_over_the_length_prefixed_padded_key() {
        let Some(keys) = aes_keys("2b7e151628aed2a6abf7158809cf4f3c") else {
            assert!(!has_aes_ni());
            return;
        };
        let msg: [u8; 100] = std::array::from_fn(|i| (i * 7 + 3) as u8);
        for len in (0..=70).chain([99, 100]) {
            let data = &msg[..len];
            let mut blocks = vec![len as u128];
            for c in data.chunks(16) {
                let mut b = [0u8; 16];
                b[..c.len()].copy_from_slice(c);
                blocks.push(u128::from_le_bytes(b));
            }
            let want = *aes_ni::cbc_encrypt(&keys, 0, &blocks).last().unwrap();
            assert_eq!(keys.cbc_mac(data), want, "len {len}");
        }
        // Zero padding does not make a key equal to its zero-extended self: the lengths
        // differ.
        assert_ne!(keys.cbc_mac(b"k"), keys.cbc_mac(b"k\0"));
        assert_ne!(keys.cbc_mac(b""), keys.cbc_mac(&[0u8; 16]));
    }

    #[test]
    fn each_key_is_its_own_secret_and_macs_tell_keys_apart() {
        let (a, b) = (MacKey::random(), MacKey::random());
        assert_ne!(a.mac(b"k"), b.mac(b"k"));
        assert_ne!(a.mac(b"k"), a.mac(b"l"));
        assert_eq!(a.mac(b"sk_live_0123456789"), a.mac(b"sk_live_0123456789"));
        #[cfg(target_arch = "x86_64")]
        assert_eq!(matches!(a, MacKey::Aes(_)), has_aes_ni());
    }
}
