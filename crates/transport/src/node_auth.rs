//! SuperNode authentication primitives, as Flower 1.28 puts them on every Fleet call.
//!
//! A SuperNode owns an ECDSA key (P-384 generated at start, or an OpenSSH key file given with
//! `--auth-supernode-private-key`, on P-256, P-384 or P-521). On every Fleet call it sends three
//! metadata entries: its public key as PEM SubjectPublicKeyInfo text, the current time as
//! Python's `datetime.isoformat()` writes it, and an ECDSA signature (DER) over the ASCII bytes of
//! that time string, hashed with SHA-256 whatever the curve. The SuperLink accepts a call when the
//! signature verifies and the time lies strictly within (-5 s, +305 s) of its clock.
//!
//! Keys are compared by their exact PEM bytes elsewhere, so [`NodeSigningKey::public_key_pem`]
//! produces the same bytes as Python's `cryptography` (LF line endings, 64-column base64 and a
//! final newline).

use std::path::Path;

use chrono::{DateTime, FixedOffset, Timelike, Utc};
use ecdsa::signature::hazmat::PrehashSigner;
use p384::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};
use sha2::{Digest, Sha256};

use crate::files::{read_flag_file, FileError};

/// Metadata key of the public key (binary header, base64 on the wire).
pub const PUBLIC_KEY_HEADER: &str = "flwr-public-key-bin";
/// Metadata key of the timestamp (ASCII).
pub const TIMESTAMP_HEADER: &str = "flwr-timestamp";
/// Metadata key of the signature (binary header).
pub const SIGNATURE_HEADER: &str = "flwr-signature-bin";
/// How far a SuperNode's clock may run ahead of the SuperLink's, in seconds.
pub const SYSTEM_TIME_TOLERANCE: f64 = 5.0;
/// How old a signed timestamp may be, in seconds (plus [`SYSTEM_TIME_TOLERANCE`]).
pub const TIMESTAMP_TOLERANCE: f64 = 300.0;

/// The curves a node key may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256 (secp256r1).
    P256,
    /// NIST P-384 (secp384r1), Flower's choice for generated keys.
    P384,
    /// NIST P-521 (secp521r1).
    P521,
}

/// A node key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error(transparent)]
    File(#[from] FileError),
    /// The key file is not an OpenSSH private key on a supported curve.
    #[error(
        "Unable to parse the private key file '{path}': {detail}. Give an unencrypted OpenSSH \
         ECDSA key, for example one made with `ssh-keygen -t ecdsa -b 384 -N \"\" -f {path}`."
    )]
    BadPrivateKey {
        /// The path as given.
        path: String,
        /// Why.
        detail: String,
    },
    /// The bytes are not a PEM public key on a supported curve.
    #[error("the public key is not a PEM-encoded ECDSA key on P-256, P-384 or P-521")]
    BadPublicKey,
}

enum Signing {
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    P521(p521::ecdsa::SigningKey),
}

/// A SuperNode's private key, with its public key in Flower's wire encoding.
pub struct NodeSigningKey {
    key: Signing,
    public_pem: Vec<u8>,
}

impl std::fmt::Debug for NodeSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSigningKey")
            .field("curve", &self.curve())
            .finish_non_exhaustive()
    }
}

/// SHA-256 of `message`, left-padded with zeros to `field_len` bytes.
///
/// ECDSA turns a digest shorter than the group order into an integer as it is; padding keeps that
/// integer and satisfies the length rules of the RustCrypto prehash API (which refuses digests
/// shorter than half the field, as SHA-256 is for P-521).
fn padded_digest(message: &[u8], field_len: usize) -> Vec<u8> {
    let digest = Sha256::digest(message);
    let mut out = vec![0u8; field_len.saturating_sub(digest.len())];
    out.extend_from_slice(&digest);
    out
}

fn pem_of<K: EncodePublicKey>(key: &K) -> Vec<u8> {
    // Encoding a valid curve point cannot fail; keep an empty key rather than panic if it did.
    key.to_public_key_pem(LineEnding::LF)
        .map(String::into_bytes)
        .unwrap_or_default()
}

impl NodeSigningKey {
    /// A fresh P-384 key, as Flower's SuperNode makes at every start without a key file.
    pub fn generate() -> Self {
        let sk = p384::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        Self::from_signing(Signing::P384(sk))
    }

    fn from_signing(key: Signing) -> Self {
        let public_pem = match &key {
            Signing::P256(k) => pem_of(k.verifying_key()),
            Signing::P384(k) => pem_of(k.verifying_key()),
            Signing::P521(k) => pem_of(&p521::PublicKey::from_secret_scalar(k.as_nonzero_scalar())),
        };
        Self { key, public_pem }
    }

    /// Parses an unencrypted OpenSSH private key (`-----BEGIN OPENSSH PRIVATE KEY-----`) on
    /// P-256, P-384 or P-521, as written by `ssh-keygen` or Python's `cryptography`. `origin`
    /// names the file in errors.
    pub fn from_openssh(text: &[u8], origin: &str) -> Result<Self, KeyError> {
        let bad = |detail: String| KeyError::BadPrivateKey {
            path: origin.to_owned(),
            detail,
        };
        let (curve, scalar, point) = openssh::parse_ecdsa(text).map_err(|e| bad(e.to_string()))?;
        let (signing, derived_point) = match curve {
            Curve::P256 => {
                let k =
                    p256::ecdsa::SigningKey::from_slice(&scalar).map_err(|e| bad(e.to_string()))?;
                let q = k
                    .verifying_key()
                    .to_encoded_point(false)
                    .as_bytes()
                    .to_vec();
                (Signing::P256(k), q)
            }
            Curve::P384 => {
                let k =
                    p384::ecdsa::SigningKey::from_slice(&scalar).map_err(|e| bad(e.to_string()))?;
                let q = k
                    .verifying_key()
                    .to_encoded_point(false)
                    .as_bytes()
                    .to_vec();
                (Signing::P384(k), q)
            }
            Curve::P521 => {
                let k =
                    p521::ecdsa::SigningKey::from_slice(&scalar).map_err(|e| bad(e.to_string()))?;
                let q = p521::ecdsa::VerifyingKey::from(&k)
                    .to_encoded_point(false)
                    .as_bytes()
                    .to_vec();
                (Signing::P521(k), q)
            }
        };
        if derived_point != point {
            return Err(bad(
                "its private and public parts do not belong together".into()
            ));
        }
        Ok(Self::from_signing(signing))
    }

    /// Reads and parses the key file given to `flag`. Blocking.
    pub fn load_openssh_file(flag: &'static str, path: &Path) -> Result<Self, KeyError> {
        let text = read_flag_file(flag, path)?;
        Self::from_openssh(&text, &path.display().to_string())
    }

    /// The curve of this key.
    pub fn curve(&self) -> Curve {
        match self.key {
            Signing::P256(_) => Curve::P256,
            Signing::P384(_) => Curve::P384,
            Signing::P521(_) => Curve::P521,
        }
    }

    /// The public key as PEM SubjectPublicKeyInfo bytes, as Flower sends and stores it.
    pub fn public_key_pem(&self) -> &[u8] {
        &self.public_pem
    }

    /// Signs `message` with ECDSA over SHA-256; the signature is DER-encoded.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        // Signing with a valid key and a digest of the right length does not fail; an empty
        // signature would simply be refused by the verifier.
        match &self.key {
            Signing::P256(k) => {
                let s: Result<p256::ecdsa::Signature, _> =
                    k.sign_prehash(&padded_digest(message, 32));
                s.map(|s| s.to_der().as_bytes().to_vec())
                    .unwrap_or_default()
            }
            Signing::P384(k) => {
                let s: Result<p384::ecdsa::Signature, _> =
                    k.sign_prehash(&padded_digest(message, 48));
                s.map(|s| s.to_der().as_bytes().to_vec())
                    .unwrap_or_default()
            }
            Signing::P521(k) => {
                let s: Result<p521::ecdsa::Signature, _> =
                    k.sign_prehash(&padded_digest(message, 66));
                s.map(|s| s.to_der().as_bytes().to_vec())
                    .unwrap_or_default()
            }
        }
    }

    /// The three metadata values for a call made now.
    pub fn sign_now(&self) -> SignedTimestamp {
        let timestamp = format_timestamp(Utc::now());
        let signature = self.sign(timestamp.as_bytes());
        SignedTimestamp {
            public_key: self.public_pem.clone(),
            timestamp,
            signature,
        }
    }
}

/// The metadata values of one signed call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedTimestamp {
    /// `flwr-public-key-bin`.
    pub public_key: Vec<u8>,
    /// `flwr-timestamp`.
    pub timestamp: String,
    /// `flwr-signature-bin`.
    pub signature: Vec<u8>,
}

mod openssh {
    //! The unencrypted `openssh-key-v1` container (OpenSSH's PROTOCOL.key), ECDSA keys only.
    //!
    //! Read here rather than with the `ssh-key` crate (which the SuperNode uses for the Ed25519
    //! public keys of `--trusted-entities`): ssh-key 0.6.7 takes an ECDSA private scalar only as
    //! an mpint of exactly the field's size, so it refuses P-521 keys (and about one P-256 or
    //! P-384 key in 256) whose scalar begins with a zero byte, which `ssh-keygen` and Python's
    //! `cryptography` write; `node_auth_interop` caught it.

    use super::Curve;
    use base64ct::Encoding;

    const BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
    const END: &str = "-----END OPENSSH PRIVATE KEY-----";
    const MAGIC: &[u8] = b"openssh-key-v1\0";

    #[derive(Debug, thiserror::Error)]
    pub(super) enum Error {
        #[error("it is not an OpenSSH private key (no `{BEGIN}` block)")]
        NoBlock,
        #[error("its base64 text is damaged")]
        Base64,
        #[error("it is truncated or malformed")]
        Malformed,
        #[error("it is encrypted with a passphrase (cipher `{0}`)")]
        Encrypted(String),
        #[error("it holds {0} keys, but exactly one is required")]
        KeyCount(u32),
        #[error(
            "it is a `{0}` key, but an ECDSA key (nistp256, nistp384 or nistp521) is required"
        )]
        NotEcdsa(String),
    }

    struct Reader<'a>(&'a [u8]);

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
            if self.0.len() < n {
                return Err(Error::Malformed);
            }
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            Ok(head)
        }
        fn u32(&mut self) -> Result<u32, Error> {
            let b = self.take(4)?;
            Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }
        fn string(&mut self) -> Result<&'a [u8], Error> {
            let n = self.u32()? as usize;
            self.take(n)
        }
    }

    /// Returns the curve, the private scalar (field-sized, big-endian) and the public point
    /// (SEC1 uncompressed) of an ECDSA key.
    pub(super) fn parse_ecdsa(text: &[u8]) -> Result<(Curve, Vec<u8>, Vec<u8>), Error> {
        let text = std::str::from_utf8(text).map_err(|_| Error::NoBlock)?;
        let start = text.find(BEGIN).ok_or(Error::NoBlock)? + BEGIN.len();
        let end = text[start..].find(END).ok_or(Error::NoBlock)? + start;
        // Line width differs between writers (70 for ssh-keygen, 76 for cryptography).
        let body: String = text[start..end].split_whitespace().collect();
        let raw = base64ct::Base64::decode_vec(&body).map_err(|_| Error::Base64)?;
        let mut r = Reader(&raw);
        if r.take(MAGIC.len())? != MAGIC {
            return Err(Error::Malformed);
        }
        let cipher = r.string()?;
        let _kdf = r.string()?;
        let _kdf_options = r.string()?;
        if cipher != b"none" {
            return Err(Error::Encrypted(
                String::from_utf8_lossy(cipher).into_owned(),
            ));
        }
        let count = r.u32()?;
        if count != 1 {
            return Err(Error::KeyCount(count));
        }
        let _public_blob = r.string()?;
        let mut p = Reader(r.string()?);
        if p.u32()? != p.u32()? {
            return Err(Error::Malformed);
        }
        let key_type = p.string()?;
        let (curve, size) = match key_type {
            b"ecdsa-sha2-nistp256" => (Curve::P256, 32),
            b"ecdsa-sha2-nistp384" => (Curve::P384, 48),
            b"ecdsa-sha2-nistp521" => (Curve::P521, 66),
            other => return Err(Error::NotEcdsa(String::from_utf8_lossy(other).into_owned())),
        };
        let _curve_name = p.string()?;
        let point = p.string()?.to_vec();
        // An mpint: big-endian, possibly with a leading zero byte; pad to the field size.
        let mpint = p.string()?;
        let digits: &[u8] = match mpint.iter().position(|b| *b != 0) {
            Some(i) => &mpint[i..],
            None => return Err(Error::Malformed),
        };
        if digits.len() > size {
            return Err(Error::Malformed);
        }
        let mut scalar = vec![0u8; size - digits.len()];
        scalar.extend_from_slice(digits);
        Ok((curve, scalar, point))
    }
}

/// A parsed node public key. Verification runs on AWS-LC, whose P-384 is several times faster
/// than the pure-Rust curves (every Fleet call is verified, so this is the SuperLink's hottest
/// path); parsing and validation of the PEM text stay with the RustCrypto types.
pub struct NodePublicKey {
    curve: Curve,
    key: aws_lc_rs::signature::ParsedPublicKey,
}

impl std::fmt::Debug for NodePublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodePublicKey")
            .field("curve", &self.curve)
            .finish()
    }
}

impl NodePublicKey {
    /// Parses PEM SubjectPublicKeyInfo bytes of an EC key on P-256, P-384 or P-521.
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        use aws_lc_rs::signature::{
            ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA256_ASN1, ECDSA_P521_SHA256_ASN1,
        };
        let text = std::str::from_utf8(pem).map_err(|_| KeyError::BadPublicKey)?;
        let (curve, point, algorithm) =
            if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_pem(text) {
                let point = k.to_encoded_point(false).as_bytes().to_vec();
                (Curve::P384, point, &ECDSA_P384_SHA256_ASN1)
            } else if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(text) {
                let point = k.to_encoded_point(false).as_bytes().to_vec();
                (Curve::P256, point, &ECDSA_P256_SHA256_ASN1)
            } else if let Ok(k) = p521::PublicKey::from_public_key_pem(text) {
                use ecdsa::elliptic_curve::sec1::ToEncodedPoint;
                let point = k.to_encoded_point(false).as_bytes().to_vec();
                (Curve::P521, point, &ECDSA_P521_SHA256_ASN1)
            } else {
                return Err(KeyError::BadPublicKey);
            };
        let key = aws_lc_rs::signature::ParsedPublicKey::new(algorithm, point)
            .map_err(|_| KeyError::BadPublicKey)?;
        Ok(Self { curve, key })
    }

    /// The curve of this key.
    pub fn curve(&self) -> Curve {
        self.curve
    }

    /// Verifies a DER ECDSA signature over SHA-256 of `message`.
    pub fn verify(&self, message: &[u8], der_signature: &[u8]) -> bool {
        self.key.verify_sig(message, der_signature).is_ok()
    }
}

/// Formats a time as Python's `datetime.isoformat()` does for an aware UTC datetime:
/// `2026-11-26T08:37:32.721672+00:00`, without the fraction when the microseconds are zero.
pub fn format_timestamp(t: DateTime<Utc>) -> String {
    if t.nanosecond() / 1000 == 0 {
        t.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
    }
}

/// The current time in the format of [`format_timestamp`].
pub fn timestamp_now() -> String {
    format_timestamp(Utc::now())
}

/// Parses an ISO-8601 timestamp with an offset (`+00:00`, `+02:00`, `Z`), with or without a
/// fraction of a second. A time without offset is refused, as Flower refuses it.
pub fn parse_timestamp(s: &str) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(s).ok()
}

/// Why a signed call is refused. The texts are Flower's, which clients match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// One of the three metadata entries is missing.
    #[error("Missing authentication metadata")]
    MissingMetadata,
    /// The key does not parse or the signature does not verify.
    #[error("Invalid signature")]
    InvalidSignature,
    /// The timestamp is malformed or outside the window.
    #[error("Invalid timestamp")]
    InvalidTimestamp,
}

/// True when `timestamp` lies within Flower's window around `now`: −5 s < now − t < 305 s.
pub fn timestamp_in_window(timestamp: &str, now: DateTime<Utc>) -> bool {
    let Some(t) = parse_timestamp(timestamp) else {
        return false;
    };
    let age = (now - t.with_timezone(&Utc))
        .num_microseconds()
        .map(|us| us as f64 / 1e6);
    age.is_some_and(|age| {
        -SYSTEM_TIME_TOLERANCE < age && age < TIMESTAMP_TOLERANCE + SYSTEM_TIME_TOLERANCE
    })
}

/// A call's signed metadata as it came in its headers: the public key and the signature decoded
/// from base64 (padded or not, as gRPC allows), the timestamp as text. `None` when any of the
/// three is missing or damaged. Reads the headers in place (no copy of the map per call).
pub fn signed_metadata(headers: &http::HeaderMap) -> Option<(bytes::Bytes, &str, bytes::Bytes)> {
    let public_key = binary_header(headers, PUBLIC_KEY_HEADER)?;
    let timestamp = headers.get(TIMESTAMP_HEADER)?.to_str().ok()?;
    let signature = binary_header(headers, SIGNATURE_HEADER)?;
    Some((public_key, timestamp, signature))
}

/// The bytes of a binary (`-bin`) header.
fn binary_header(headers: &http::HeaderMap, name: &str) -> Option<bytes::Bytes> {
    use base64ct::Encoding;
    let text = std::str::from_utf8(headers.get(name)?.as_bytes()).ok()?;
    base64ct::Base64Unpadded::decode_vec(text.trim_end_matches('='))
        .ok()
        .map(bytes::Bytes::from)
}

/// Checks a signed call: the timestamp window first (cheap), then the signature (the costly
/// part), so that stale replays cost no ECDSA work.
pub fn verify_signed_timestamp(
    key: &NodePublicKey,
    timestamp: &str,
    signature: &[u8],
    now: DateTime<Utc>,
) -> Result<(), AuthError> {
    if !timestamp_in_window(timestamp, now) {
        return Err(AuthError::InvalidTimestamp);
    }
    if !key.verify(timestamp.as_bytes(), signature) {
        return Err(AuthError::InvalidSignature);
    }
    Ok(())
}

/// Signed timestamps verified lately, remembered by a digest of (key, timestamp, signature),
/// so that the same three presented again (a replayed or repeated call) cost no ECDSA work. The
/// caller still checks the timestamp window on every call. Safe wherever the SuperLink runs,
/// unlike the per-connection proof: the three were verified together, whichever connection
/// presents them again. Bounded: an entry is useless once its timestamp left the window, and
/// when `limit` entries are held those are dropped first, then all.
pub struct VerifiedSignatures {
    entries: parking_lot::Mutex<std::collections::HashMap<[u8; 32], std::time::Instant>>,
    limit: usize,
}

/// How long a verified signature is remembered: its timestamp's whole window.
const REMEMBER_FOR: std::time::Duration =
    std::time::Duration::from_secs((TIMESTAMP_TOLERANCE + 2.0 * SYSTEM_TIME_TOLERANCE) as u64);

impl VerifiedSignatures {
    /// Remembers at most `limit` signatures.
    pub fn new(limit: usize) -> Self {
        Self {
            entries: parking_lot::Mutex::new(std::collections::HashMap::new()),
            limit,
        }
    }

    /// The digest under which these three are remembered (compute it once per call).
    pub fn digest(public_key: &[u8], timestamp: &str, signature: &[u8]) -> [u8; 32] {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for part in [public_key, timestamp.as_bytes(), signature] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// True when the three behind `digest` were verified within [`REMEMBER_FOR`].
    pub fn contains(&self, digest: &[u8; 32]) -> bool {
        self.entries
            .lock()
            .get(digest)
            .is_some_and(|at| at.elapsed() < REMEMBER_FOR)
    }

    /// Remembers the three behind `digest`, just verified.
    pub fn insert(&self, digest: [u8; 32]) {
        let mut entries = self.entries.lock();
        if entries.len() >= self.limit {
            entries.retain(|_, at| at.elapsed() < REMEMBER_FOR);
            if entries.len() >= self.limit {
                entries.clear();
            }
        }
        entries.insert(digest, std::time::Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn verified_signatures_are_remembered_by_all_three_parts_and_bounded() {
        let cache = VerifiedSignatures::new(2);
        cache.insert(VerifiedSignatures::digest(b"k", "t", b"s"));
        assert!(cache.contains(&VerifiedSignatures::digest(b"k", "t", b"s")));
        for (k, t, s) in [
            (&b"K"[..], "t", &b"s"[..]),
            (b"k", "T", b"s"),
            (b"k", "t", b"S"),
        ] {
            assert!(
                !cache.contains(&VerifiedSignatures::digest(k, t, s)),
                "{k:?} {t} {s:?}"
            );
        }
        // Parts are delimited: moving a byte from one to the next is another triple.
        assert!(!cache.contains(&VerifiedSignatures::digest(b"kt", "", b"s")));
        cache.insert(VerifiedSignatures::digest(b"k2", "t", b"s"));
        cache.insert(VerifiedSignatures::digest(b"k3", "t", b"s"));
        assert!(cache.entries.lock().len() <= 2, "bounded");
        assert!(cache.contains(&VerifiedSignatures::digest(b"k3", "t", b"s")));
    }

    #[test]
    fn generated_key_signs_and_verifies_with_sha256() {
        let key = NodeSigningKey::generate();
        assert_eq!(key.curve(), Curve::P384);
        let pem = key.public_key_pem();
        let text = std::str::from_utf8(pem).unwrap();
        assert!(text.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert!(text.ends_with("\n-----END PUBLIC KEY-----\n"));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.len(),
            5,
            "P-384 SPKI is 120 bytes: 64+64+32 base64 characters"
        );
        assert_eq!(
            (lines[1].len(), lines[2].len(), lines[3].len()),
            (64, 64, 32)
        );

        let public = NodePublicKey::from_pem(pem).unwrap();
        let sig = key.sign(b"2026-11-26T08:37:32.721672+00:00");
        assert!(public.verify(b"2026-11-26T08:37:32.721672+00:00", &sig));
        assert!(!public.verify(b"2026-11-26T08:37:32.721673+00:00", &sig));
        assert!(!public.verify(b"2026-11-26T08:37:32.721672+00:00", b"\x30\x00"));
    }

    #[test]
    fn timestamps_look_like_python_isoformat() {
        let t = Utc.with_ymd_and_hms(2026, 11, 26, 8, 37, 32).unwrap();
        assert_eq!(format_timestamp(t), "2026-11-26T08:37:32+00:00");
        let t = t + chrono::Duration::microseconds(721_672);
        assert_eq!(format_timestamp(t), "2026-11-26T08:37:32.721672+00:00");
        let t = t + chrono::Duration::nanoseconds(999);
        assert_eq!(format_timestamp(t), "2026-11-26T08:37:32.721672+00:00");
        assert!(parse_timestamp("2026-11-26T08:37:32+00:00").is_some());
        assert!(parse_timestamp("2026-11-26T10:37:32.5+02:00").is_some());
        assert!(parse_timestamp("2026-11-26T08:37:32Z").is_some());
        assert!(
            parse_timestamp("2026-11-26T08:37:32").is_none(),
            "naive times are refused"
        );
        assert!(parse_timestamp("yesterday").is_none());
    }

    #[test]
    fn the_window_is_strict_minus_5_to_305_seconds() {
        let now = Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap();
        let at = |secs_ago: f64| {
            format_timestamp(now - chrono::Duration::microseconds((secs_ago * 1e6) as i64))
        };
        assert!(timestamp_in_window(&at(0.0), now));
        assert!(timestamp_in_window(&at(300.0), now));
        assert!(timestamp_in_window(&at(304.9), now));
        assert!(!timestamp_in_window(&at(305.0), now));
        assert!(!timestamp_in_window(&at(306.0), now));
        assert!(timestamp_in_window(&at(-4.5), now));
        assert!(!timestamp_in_window(&at(-5.0), now));
        assert!(!timestamp_in_window(&at(-6.0), now));
        // Other offsets are the same instant.
        assert!(timestamp_in_window("2026-11-26T14:00:00+02:00", now));
        assert!(!timestamp_in_window("2026-11-26T12:00:00", now));
    }

    #[test]
    fn verification_checks_signature_then_window() {
        let key = NodeSigningKey::generate();
        let public = NodePublicKey::from_pem(key.public_key_pem()).unwrap();
        let signed = key.sign_now();
        assert_eq!(
            verify_signed_timestamp(&public, &signed.timestamp, &signed.signature, Utc::now()),
            Ok(())
        );
        let later = Utc::now() + chrono::Duration::seconds(400);
        assert_eq!(
            verify_signed_timestamp(&public, &signed.timestamp, &signed.signature, later),
            Err(AuthError::InvalidTimestamp)
        );
        let other = NodeSigningKey::generate();
        assert_eq!(
            verify_signed_timestamp(
                &public,
                &signed.timestamp,
                &other.sign(signed.timestamp.as_bytes()),
                Utc::now()
            ),
            Err(AuthError::InvalidSignature)
        );
    }

    #[test]
    fn public_keys_of_other_curves_parse() {
        let p256 = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let k = NodeSigningKey::from_signing(Signing::P256(p256));
        let pk = NodePublicKey::from_pem(k.public_key_pem()).unwrap();
        assert_eq!(pk.curve(), Curve::P256);
        assert!(pk.verify(b"x", &k.sign(b"x")));

        let p521 = p521::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let k = NodeSigningKey::from_signing(Signing::P521(p521));
        let pk = NodePublicKey::from_pem(k.public_key_pem()).unwrap();
        assert_eq!(pk.curve(), Curve::P521);
        assert!(pk.verify(b"x", &k.sign(b"x")));

        assert!(NodePublicKey::from_pem(b"not-a-key").is_err());
    }

    #[test]
    fn refuses_non_ecdsa_and_garbage_private_keys() {
        let e = NodeSigningKey::from_openssh(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "k",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("Unable to parse the private key file 'k'"),
            "{e}"
        );
        // An Ed25519 OpenSSH key (made with ssh-keygen -t ed25519 -N "").
        let ed = b"-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACBtVVPEFxMN0nnFr1OHryLCNGNv+vUYDuAKJYFSLedN3QAAAIjDY2oIw2Nq
CAAAAAtzc2gtZWQyNTUxOQAAACBtVVPEFxMN0nnFr1OHryLCNGNv+vUYDuAKJYFSLedN3Q
AAAECALQJdYAjZ7i271kmASQEb+CbJay6jGG6NvZ5AqBBZZW1VU8QXEw3SecWvU4evIsI0
Y2/69RgO4AolgVIt503dAAAABHRlc3QB
-----END OPENSSH PRIVATE KEY-----
";
        let e = NodeSigningKey::from_openssh(ed, "ed").unwrap_err();
        assert!(
            e.to_string()
                .contains("`ssh-ed25519` key, but an ECDSA key"),
            "{e}"
        );
        // A P-256 key with a passphrase (ssh-keygen -t ecdsa -b 256 -N secret).
        let encrypted = b"-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0AAAAGAAAABCteJIjke
sdVL82bacQGkdYAAAAEAAAAAEAAABoAAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlz
dHAyNTYAAABBBAvQtcQn9HJ1IIPGpHS2/DPryQEXiVLoE8wkBE4xjrmnT8aBhh+dtn3OhH
ix2cC+aeyerO8uzKkPDZQQH7WPyBMAAACgxeIWWECAtTN6Fnb4G8UkP2WktX2oBRqRatmw
4R8qkyK1O/UeoL/j7FrgJqFDDSBkKxEFWSSj7wV7eTU6jdB0uat84AZF2V51zgt6f3Xz/o
Fq13yokIrDfENwegmF4rn6vnbXev1oWGVVvqQr2ovqCpIU5CBZlIR/Z//TOGS4qNA2zoJ/
CnACHZOwQGkwYZNHhOYfWmGAyXGM37ewKNxrOQ==
-----END OPENSSH PRIVATE KEY-----
";
        let e = NodeSigningKey::from_openssh(encrypted, "enc").unwrap_err();
        assert!(
            e.to_string()
                .contains("encrypted with a passphrase (cipher `aes256-ctr`)"),
            "{e}"
        );
        // The Ed25519 container cut short (its last line gone).
        let text = std::str::from_utf8(ed).unwrap();
        let cut = text.replace("Y2/69RgO4AolgVIt503dAAAABHRlc3QB\n", "");
        assert_ne!(cut, text);
        let e = NodeSigningKey::from_openssh(cut.as_bytes(), "cut").unwrap_err();
        assert!(e.to_string().contains("truncated or malformed"), "{e}");
        let e = NodeSigningKey::from_openssh(&encrypted[..100], "half").unwrap_err();
        assert!(e.to_string().contains("no `-----BEGIN OPENSSH"), "{e}");
    }

    #[test]
    fn signed_metadata_is_read_from_padded_and_unpadded_binary_headers() {
        let headers = |key: &str, sig: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(PUBLIC_KEY_HEADER, key.parse().unwrap());
            h.insert(TIMESTAMP_HEADER, "2026-12-02T12:00:00Z".parse().unwrap());
            h.insert(SIGNATURE_HEADER, sig.parse().unwrap());
            h
        };
        // "key" is "a2V5" either way; "sg" is "c2c=" padded and "c2c" unpadded.
        for (key, sig) in [("a2V5", "c2c="), ("a2V5", "c2c")] {
            let h = headers(key, sig);
            let (k, t, s) = signed_metadata(&h).expect(sig);
            assert_eq!(
                (&k[..], t, &s[..]),
                (&b"key"[..], "2026-12-02T12:00:00Z", &b"sg"[..])
            );
        }
        assert!(signed_metadata(&headers("a2V5", "not base64!")).is_none());
        let mut missing = headers("a2V5", "c2c");
        missing.remove(TIMESTAMP_HEADER);
        assert!(signed_metadata(&missing).is_none());
    }
}
