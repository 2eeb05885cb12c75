//! The key directory's MAC: a keyed pseudo-random function of an API key, under a secret
//! drawn when the directory is made, that indexes keys without storing them.
//!
//! The construction is AES-CMAC (NIST SP 800-38B, RFC 4493) from the RustCrypto `cmac` and
//! `aes` crates: AES-128 with the CPU's AES instructions where it has them (detected at
//! run time), the crate's constant-time software AES elsewhere. The 128-bit secret comes
//! from the operating system's random source (`getrandom`). Nothing cryptographic here is
//! written by hand.
//!
//! The output is 128 bits and never leaves the process: an attacker sees no MAC, and would
//! have to find a key whose MAC equals another customer's without knowing the secret.

use aes::Aes128Enc;
use cmac::digest::common::InnerInit;
use cmac::{Cmac, KeyInit, Mac as _};

/// A 128-bit MAC of a key under a directory's secret.
pub(super) type Mac = u128;

/// A directory's secret MAC key: AES-128 keyed with 128 bits drawn from the operating
/// system's random source, never shown. Each MAC runs CMAC over a reference to it, so the
/// key schedule is neither recomputed nor copied per key.
pub(super) struct MacKey {
    aes: Aes128Enc,
}

impl MacKey {
    /// A key drawn from the operating system's random source.
    ///
    /// # Panics
    ///
    /// If the operating system cannot give random bytes (a directory keyed without them
    /// would not be secret).
    pub(super) fn random() -> Self {
        let mut secret = [0u8; 16];
        if let Err(e) = getrandom::fill(&mut secret) {
            panic!(
                "the operating system's random source failed ({e}): cannot key the API key directory"
            );
        }
        Self::from_secret(secret)
    }

    fn from_secret(secret: [u8; 16]) -> Self {
        Self {
            aes: Aes128Enc::new(&secret.into()),
        }
    }

    /// AES-CMAC of `data` under this key, read as a little-endian number.
    #[inline]
    pub(super) fn mac(&self, data: &[u8]) -> Mac {
        let mut cmac = Cmac::<&Aes128Enc>::inner_init(&self.aes);
        cmac.update(data);
        u128::from_le_bytes(cmac.finalize().into_bytes().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex16(s: &str) -> [u8; 16] {
        let mut w = [0u8; 16];
        hex::decode_to_slice(s, &mut w).unwrap();
        w
    }

    #[test]
    fn cmac_matches_rfc_4493() {
        // RFC 4493, section 4: AES-CMAC with K = 2b7e1516 28aed2a6 abf71588 09cf4f3c.
        let key = MacKey::from_secret(hex16("2b7e151628aed2a6abf7158809cf4f3c"));
        let msg = hex::decode(concat!(
            "6bc1bee22e409f96e93d7e117393172a",
            "ae2d8a571e03ac9c9eb76fac45af8e51",
            "30c81c46a35ce411e5fbc1191a0a52ef",
            "f69f2445df4f9b17ad2b417be66c3710",
        ))
        .unwrap();
        for (len, want) in [
            (0, "bb1d6929e95937287fa37d129b756746"),
            (16, "070a16b46b4d4144f79bdd9dd04a287c"),
            (40, "dfa66747de9ae63030ca32611497c827"),
            (64, "51f0bebf7e3b9d92fc49741779363cfe"),
        ] {
            assert_eq!(
                key.mac(&msg[..len]),
                u128::from_le_bytes(hex16(want)),
                "{len} bytes"
            );
        }
    }

    #[test]
    fn each_key_is_its_own_secret_and_macs_tell_keys_apart() {
        let (a, b) = (MacKey::random(), MacKey::random());
        assert_ne!(a.mac(b"k"), b.mac(b"k"));
        assert_ne!(a.mac(b"k"), a.mac(b"l"));
        assert_eq!(a.mac(b"sk_live_0123456789"), a.mac(b"sk_live_0123456789"));
        // CMAC pads a partial block with 0x80: a key is not its zero-extended self.
        assert_ne!(a.mac(b"k"), a.mac(b"k\0"));
        assert_ne!(a.mac(b""), a.mac(&[0u8; 16]));
    }
}
