//! Parsing a layout's JSON for import in memory bounded by what import
//! needs, not by what the layout holds.
//!
//! Parsed whole, JSON can take far more memory than its bytes: each
//! `"a":""` annotation (7 bytes) becomes a map entry of two `String`s and
//! a tree node, over 100 bytes, so a 4 MiB index of tiny annotations parses
//! to hundreds of MiB. So import does not parse whole:
//!
//! - an index is walked entry by entry, keeping the one entry chosen, the
//!   count and the first few tags (for messages); of an entry's annotations
//!   only the ref name is kept, the rest skipped unparsed;
//! - a manifest keeps of each descriptor its media type, digest and size,
//!   and holds at most `MAX_LAYERS` layers;
//! - a config keeps its rootfs, with at most `MAX_LAYERS` diff ids.
//!
//! Skipped values go through `IgnoredAny`, which checks their syntax and
//! allocates nothing.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::spec::{self, Descriptor, MAX_LAYERS, REF_NAME};
use crate::error::Result as CoreResult;

/// The most tags an index pass keeps for messages.
pub const TAGS_KEPT: usize = 20;

/// An index entry as import reads it: its digest as the index wrote it,
/// checked when the entry becomes a [`Descriptor`].
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listed {
    /// What the entry is: a manifest or a nested index.
    pub media_type: String,
    /// Its digest, unchecked.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// The platform it is for, in an index listing several.
    #[serde(default)]
    pub platform: Option<ListedPlatform>,
    /// Its tag: the only annotation kept.
    #[serde(default, rename = "annotations", deserialize_with = "ref_name_only")]
    pub ref_name: Option<String>,
}

/// The platform of an index entry, as import reads it.
#[derive(Clone, Debug, Deserialize)]
pub struct ListedPlatform {
    /// The CPU architecture, as OCI names it ("amd64", "arm64").
    pub architecture: String,
    /// The operating system, such as "linux".
    pub os: String,
}

impl Listed {
    /// The entry as an OCI descriptor, its digest checked to be a sha256,
    /// with its tag as its only annotation.
    pub fn descriptor(&self) -> CoreResult<Descriptor> {
        let mut descriptor = spec::descriptor(&self.media_type, &self.digest, self.size)?;
        if let Some(name) = &self.ref_name {
            descriptor.set_annotations(Some([(REF_NAME.to_string(), name.clone())].into()));
        }
        Ok(descriptor)
    }
}

/// An annotations map (or null) of which only the ref name is kept.
fn ref_name_only<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    struct Annotations;
    impl<'de> Visitor<'de> for Annotations {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of annotations")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut ref_name = None;
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key == REF_NAME {
                    ref_name = Some(map.next_value::<String>()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(ref_name)
        }
    }
    deserializer.deserialize_option(Annotations)
}

/// What one pass over an index's entries found.
#[derive(Debug, Default)]
pub struct Picked {
    /// The first entry `choose` accepted.
    pub chosen: Option<Listed>,
    /// How many entries the index lists.
    pub count: usize,
    /// The first `TAGS_KEPT` tags, as they are (escape them to show them).
    pub tags: Vec<String>,
    /// How many entries are tagged.
    pub tag_count: usize,
}

/// Walks the index in `bytes`, keeping the first entry `choose` accepts.
pub fn pick(bytes: &[u8], choose: &dyn Fn(&Listed) -> bool) -> serde_json::Result<Picked> {
    let mut picked = Picked::default();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    IndexSeed {
        picked: &mut picked,
        choose,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(picked)
}

struct IndexSeed<'a> {
    picked: &'a mut Picked,
    choose: &'a dyn Fn(&Listed) -> bool,
}

impl<'de> DeserializeSeed<'de> for IndexSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for IndexSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an OCI image index (a JSON object)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut schema_version = false;
        let mut manifests = false;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "schemaVersion" => {
                    if schema_version {
                        return Err(de::Error::duplicate_field("schemaVersion"));
                    }
                    map.next_value::<u32>()?;
                    schema_version = true;
                }
                "manifests" => {
                    if manifests {
                        return Err(de::Error::duplicate_field("manifests"));
                    }
                    map.next_value_seed(EntriesSeed {
                        picked: &mut *self.picked,
                        choose: self.choose,
                    })?;
                    manifests = true;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !schema_version {
            return Err(de::Error::missing_field("schemaVersion"));
        }
        Ok(())
    }
}

struct EntriesSeed<'a> {
    picked: &'a mut Picked,
    choose: &'a dyn Fn(&Listed) -> bool,
}

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of descriptors")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        // One entry at a time: only the chosen one outlives its turn.
        while let Some(entry) = seq.next_element::<Listed>()? {
            let picked = &mut *self.picked;
            picked.count += 1;
            if let Some(tag) = &entry.ref_name {
                picked.tag_count += 1;
                if picked.tags.len() < TAGS_KEPT {
                    picked.tags.push(tag.clone());
                }
            }
            if picked.chosen.is_none() && (self.choose)(&entry) {
                picked.chosen = Some(entry);
            }
        }
        Ok(())
    }
}

/// A descriptor in a manifest as import reads it: annotations, platform
/// and anything else skipped; its digest as the manifest wrote it, checked
/// when it becomes a [`Descriptor`].
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Blob {
    /// What the blob is.
    pub media_type: String,
    /// Its digest, unchecked.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
}

impl Blob {
    /// The blob as an OCI descriptor, its digest checked to be a sha256.
    pub fn descriptor(&self) -> CoreResult<Descriptor> {
        spec::descriptor(&self.media_type, &self.digest, self.size)
    }
}

/// A manifest's layer descriptors, at most `MAX_LAYERS`, without their
/// annotations.
pub fn layer_blobs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Blob>, D::Error> {
    at_most::<Blob, D>(d, "layer descriptors")
}

/// A config's diff ids, at most `MAX_LAYERS`.
pub fn diff_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    at_most::<String, D>(d, "diff ids")
}

/// A list of at most `MAX_LAYERS` `T`s: one more is an error as soon as it
/// is seen, before anything further is parsed.
fn at_most<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
    what: &'static str,
) -> Result<Vec<T>, D::Error> {
    struct Bounded<T> {
        what: &'static str,
        kind: std::marker::PhantomData<T>,
    }
    impl<'de, T: Deserialize<'de>> Visitor<'de> for Bounded<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a list of at most {MAX_LAYERS} {}", self.what)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                if items.len() == MAX_LAYERS {
                    return Err(de::Error::invalid_length(MAX_LAYERS + 1, &self));
                }
                items.push(item);
            }
            Ok(items)
        }
    }
    d.deserialize_seq(Bounded {
        what,
        kind: std::marker::PhantomData,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_pass_keeps_the_chosen_entry_and_skips_other_annotations() {
        let d = |tag: &str| {
            serde_json::json!({
                "mediaType": "m", "digest": format!("d-{tag}"), "size": 1,
                "annotations": { "x": "y", REF_NAME: tag, "z": { "nested": [1, 2] } },
            })
        };
        let index = serde_json::json!({
            "schemaVersion": 2,
            "annotations": { "a": "b" },
            "manifests": [d("one"), d("two"), { "mediaType": "m", "digest": "d", "size": 1, "annotations": null }],
        });
        let bytes = serde_json::to_vec(&index).unwrap();
        let picked = pick(&bytes, &|d| d.ref_name.as_deref() == Some("two")).unwrap();
        assert_eq!(picked.chosen.unwrap().digest, "d-two");
        assert_eq!((picked.count, picked.tag_count), (3, 2));
        assert_eq!(picked.tags, ["one", "two"]);
        assert!(pick(br#"{"manifests": []}"#, &|_| true).is_err());
        assert!(pick(br#"{"schemaVersion": 2} x"#, &|_| true).is_err());
    }

    #[test]
    fn lists_longer_than_max_layers_stop_at_the_first_too_many() {
        #[derive(Deserialize)]
        struct T {
            #[serde(deserialize_with = "diff_ids")]
            ids: Vec<String>,
        }
        let ok = serde_json::json!({ "ids": vec!["x"; MAX_LAYERS] });
        assert_eq!(
            serde_json::from_value::<T>(ok).unwrap().ids.len(),
            MAX_LAYERS
        );
        let over =
            serde_json::to_vec(&serde_json::json!({ "ids": vec!["x"; MAX_LAYERS + 1] })).unwrap();
        let err = serde_json::from_slice::<T>(&over)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(&format!("at most {MAX_LAYERS} diff ids")),
            "{err}"
        );
    }
}
