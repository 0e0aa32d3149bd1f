//! Ed25519 signing (RFC 8032 PureEdDSA) by one call into aws-lc's `ED25519_sign`.
//!
//! aws-lc-rs's `Ed25519KeyPair::sign` makes the same call through aws-lc's EVP interface: for
//! each signature it allocates an EVP context and a vector, and zeroes and copies into a
//! signature buffer of several kilobytes. With a 4 KB message signed in ~15 µs that showed in
//! the profile at 1-2%; the key is the same aws-lc key and the signature the same octets
//! (Ed25519 is deterministic; a test compares the two).

/// An Ed25519 private key as `ED25519_sign` takes it: the 32-octet seed, then the 32-octet
/// public key, both from aws-lc's own expansion of the seed (a public half that did not belong
/// to the seed would make signatures that give the key away). Zeroed when dropped.
pub(crate) struct Ed25519Secret(zeroize::Zeroizing<[u8; 64]>);

impl Ed25519Secret {
    /// The key of `seed`.
    pub(crate) fn from_seed(seed: &[u8; 32]) -> Ed25519Secret {
        let mut key = zeroize::Zeroizing::new([0u8; 64]);
        let mut public = [0u8; 32];
        // SAFETY: ED25519_keypair_from_seed reads 32 octets of `seed` (a 32-octet array) and
        // writes 32 to `out_public_key` and 64 to `out_private_key` (arrays of those lengths);
        // it keeps none of the pointers.
        unsafe { aws_lc_sys::ED25519_keypair_from_seed(public.as_mut_ptr(), key.as_mut_ptr(), seed.as_ptr()) };
        Ed25519Secret(key)
    }

    /// The public key (RFC 8032 §5.1.5).
    pub(crate) fn public(&self) -> &[u8] {
        &self.0[32..]
    }

    /// The signature of `message`, or `None` if aws-lc reports a failure.
    pub(crate) fn sign(&self, message: &[u8]) -> Option<[u8; 64]> {
        let mut sig = [0u8; 64];
        // SAFETY: ED25519_sign writes 64 octets to `out_sig` (`sig` is 64 long), reads
        // `message_len` octets of `message` (a live slice of that length) and 64 of
        // `private_key` (the 64-octet array), and keeps none of the pointers.
        let ok =
            unsafe { aws_lc_sys::ED25519_sign(sig.as_mut_ptr(), message.as_ptr(), message.len(), self.0.as_ptr()) };
        (ok == 1).then_some(sig)
    }
}
