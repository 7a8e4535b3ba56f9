//! The names the store gives things, as types: a layer's, an image's and a
//! container's id, and a content digest. Each is checked once, where it is
//! made from text, so a function that takes a [`LayerId`] cannot be handed
//! an image's id or a name, and code past the check need not look again.
//!
//! A *reference* (an id, a name or a unique id prefix, as the command takes
//! them) stays text; resolving it gives the id.
//!
//! Each id reads as a `str` (it derefs to one), prints as its text and is
//! stored and serialised as its text, so records and JSON output are what
//! they were when ids were plain strings.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use strata_plugin_abi::{is_valid_layer_id, validate_layer_id};

use crate::error::{CoreError, Result};

/// Whether `text` is 64 hex digits: the form of image and container ids.
fn is_hex64(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Defines an id type: a checked string with the conversions every id has.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $problem:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            #[doc = concat!("Checks `text` as ", $what, " id; InvalidInput, saying why, if it is not one.")]
            pub fn new(text: impl Into<String>) -> Result<$name> {
                let text = text.into();
                let problem: fn(&str) -> Option<String> = $problem;
                match problem(&text) {
                    None => Ok($name(text)),
                    Some(why) => Err(CoreError::InvalidInput(why)),
                }
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id as an owned string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = CoreError;
            fn from_str(text: &str) -> Result<$name> {
                $name::new(text)
            }
        }

        impl TryFrom<String> for $name {
            type Error = CoreError;
            fn try_from(text: String) -> Result<$name> {
                $name::new(text)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<$name, D::Error> {
                let text = String::deserialize(deserializer)?;
                $name::new(text).map_err(serde::de::Error::custom)
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::Borrowed(ValueRef::Text(self.0.as_bytes())))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<$name> {
                let text = value.as_str()?;
                // A row the store wrote holds a checked id; one that does
                // not was damaged, and reading it says so.
                $name::new(text).map_err(|e| FromSqlError::Other(Box::new(e)))
            }
        }
    };
}

id_type!(
    /// A layer's id, as drivers name layers: 1 to 128 characters from
    /// `[A-Za-z0-9_.-]`, not starting with `.` or `-` (the rule of
    /// [`strata_plugin_abi::validate_layer_id`]).
    LayerId,
    "a layer",
    |text| {
        if is_valid_layer_id(text) {
            None
        } else if text.len() > 128 {
            Some(format!(
                "invalid layer id {:?}: it is longer than 128 characters",
                shorten(text)
            ))
        } else {
            // The ABI's own words for what is wrong.
            validate_layer_id(text).err().map(|e| e.message().to_string())
        }
    }
);

id_type!(
    /// An image's id: 64 hex digits, the sha256 of its config (as podman and
    /// containers/storage name images).
    ImageId,
    "an image",
    |text| {
        (!is_hex64(text)).then(|| {
            format!(
                "invalid image id '{}': not 64 hex digits (a sha256)",
                shorten(text)
            )
        })
    }
);

id_type!(
    /// A container's id: 64 random hex digits. Its read-write layer has the
    /// same id ([`ContainerId::layer`]).
    ContainerId,
    "a container",
    |text| {
        (!is_hex64(text))
            .then(|| format!("invalid container id '{}': not 64 hex digits", shorten(text)))
    }
);

impl ContainerId {
    /// The id of the container's read-write layer: the container's own.
    pub fn layer(&self) -> LayerId {
        // 64 hex digits are a valid layer id.
        LayerId(self.0.clone())
    }
}

impl LayerId {
    /// A fresh random layer id: 64 hex digits.
    pub fn random() -> Result<LayerId> {
        Ok(LayerId(crate::db::random_id()?))
    }
}

impl ContainerId {
    /// A fresh random container id: 64 hex digits.
    pub fn random() -> Result<ContainerId> {
        Ok(ContainerId(crate::db::random_id()?))
    }
}

impl ImageId {
    /// The image id a config digest gives: its hex part.
    pub fn of_config(config: &Digest) -> ImageId {
        ImageId(config.encoded().to_owned())
    }
}

/// At most this much of a refused text goes into the message: enough to
/// recognise it, never a whole hostile input.
const SHOWN: usize = 80;

/// `text`, cut to [`SHOWN`] characters and with control characters escaped,
/// for an error message (a terminal never gets raw escapes from input).
pub(crate) fn shorten(text: &str) -> String {
    match text.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}...", text[..end].escape_debug()),
        None => text.escape_debug().to_string(),
    }
}

/// A content digest, `sha256:<64 lowercase hex digits>`: what strata
/// computes for every blob and diff, and the only algorithm it verifies
/// (other algorithms are refused where a digest is read).
///
/// It holds the OCI image-spec's own digest type
/// ([`oci_spec::image::Digest`]), which [`as_oci`](Self::as_oci) and the
/// conversions give to code that speaks oci-spec.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Digest(oci_spec::image::Digest);

impl Digest {
    /// Checks `text` as a sha256 digest.
    pub fn new(text: &str) -> Result<Digest> {
        let refuse = || {
            CoreError::InvalidInput(format!(
                "digest '{}' is not sha256:<64 lowercase hex digits> (only sha256 is supported)",
                shorten(text)
            ))
        };
        let hex = text.strip_prefix("sha256:").ok_or_else(refuse)?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(refuse());
        }
        oci_spec::image::Digest::from_str(text)
            .map(Digest)
            .map_err(|_| refuse())
    }

    /// The digest of the sha256 `hash`.
    pub fn sha256(hash: &[u8; 32]) -> Digest {
        let text = format!("sha256:{}", hex::encode(hash));
        Digest(oci_spec::image::Digest::from_str(&text).expect("a sha256 digest is valid"))
    }

    /// The digest of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest::sha256(&sha2::Sha256::digest(bytes).into())
    }

    /// The whole digest, `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        self.0.as_ref()
    }

    /// The hex part, which names the blob's file in an OCI layout.
    pub fn encoded(&self) -> &str {
        self.0.digest()
    }

    /// The OCI image-spec's digest.
    pub fn as_oci(&self) -> &oci_spec::image::Digest {
        &self.0
    }
}

impl Deref for Digest {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialOrd for Digest {
    fn partial_cmp(&self, other: &Digest) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Digest {
    fn cmp(&self, other: &Digest) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Digest {
    type Err = CoreError;
    fn from_str(text: &str) -> Result<Digest> {
        Digest::new(text)
    }
}

impl PartialEq<str> for Digest {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Digest {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl From<Digest> for oci_spec::image::Digest {
    fn from(digest: Digest) -> oci_spec::image::Digest {
        digest.0
    }
}

impl From<strata_archive::Sha256Digest> for Digest {
    fn from(digest: strata_archive::Sha256Digest) -> Digest {
        Digest::sha256(digest.as_bytes())
    }
}

impl TryFrom<oci_spec::image::Digest> for Digest {
    type Error = CoreError;
    fn try_from(digest: oci_spec::image::Digest) -> Result<Digest> {
        Digest::new(digest.as_ref())
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Digest, D::Error> {
        let text = String::deserialize(deserializer)?;
        Digest::new(&text).map_err(serde::de::Error::custom)
    }
}

impl ToSql for Digest {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Text(
            self.as_str().as_bytes(),
        )))
    }
}

impl FromSql for Digest {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Digest> {
        Digest::new(value.as_str()?).map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_ids_follow_the_abi_rule() {
        assert!(LayerId::new("abc-1.2_3").is_ok());
        for bad in ["", ".hidden", "-x", "a/b", "..", &"x".repeat(129)] {
            let error = LayerId::new(bad).unwrap_err();
            assert_eq!(error.kind(), crate::ErrorKind::InvalidInput, "{bad}");
        }
    }

    #[test]
    fn image_and_container_ids_are_64_hex_digits() {
        let hex = "0123456789abcdef".repeat(4);
        assert!(ImageId::new(hex.as_str()).is_ok());
        assert!(ContainerId::new(hex.as_str()).is_ok());
        assert!(ImageId::new("abc").is_err());
        assert!(ContainerId::new(format!("{hex}0")).is_err());
        let container = ContainerId::new(hex.as_str()).unwrap();
        assert_eq!(container.layer().as_str(), hex);
    }

    #[test]
    fn ids_read_and_serialise_as_their_text() {
        let id = LayerId::new("layer-1").unwrap();
        assert_eq!(&*id, "layer-1");
        assert_eq!(id, "layer-1");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"layer-1\"");
        let back: LayerId = serde_json::from_str("\"layer-1\"").unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<LayerId>("\"../x\"").is_err());
    }

    #[test]
    fn digests_are_sha256_only() {
        let text = format!("sha256:{}", "a".repeat(64));
        let digest = Digest::new(&text).unwrap();
        assert_eq!(digest.encoded(), "a".repeat(64));
        assert_eq!(digest.as_oci().to_string(), text);
        for bad in [
            "sha256:ABC".to_string(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha512:{}", "a".repeat(128)),
            "sha256:../../etc/passwd".to_string(),
            String::new(),
        ] {
            assert!(Digest::new(&bad).is_err(), "{bad}");
        }
        assert_eq!(
            Digest::of_bytes(b"").encoded(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn refused_text_is_cut_short_and_escaped_in_messages() {
        let long = "x/".repeat(10_000);
        let message = LayerId::new(long).unwrap_err().to_string();
        assert!(message.len() < 300, "{message}");
        let message = ImageId::new("\u{1b}[31mred").unwrap_err().to_string();
        assert!(!message.contains('\u{1b}'), "{message}");
    }
}
