//! Reading an OCI image layout: its index, manifests, configs and blobs,
//! every blob checked against its digest and size.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::files::{ArchiveLayout, LayoutDir, LayoutRoot, Refusal};
pub use super::files::{BlobReader, SizeFault};
use super::parse::{self, Picked};
pub use super::parse::{Blob, Listed};
use super::shown::{self, json_error, shown};
pub use super::spec::{
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, Descriptor, ImageIndex, ImageManifest, LAYOUT_VERSION,
    MAX_LAYERS, MEDIA_TYPE_CONFIG, MEDIA_TYPE_INDEX, MEDIA_TYPE_LAYER, MEDIA_TYPE_MANIFEST,
    MediaType, REF_NAME, digest_of, layout_digest, ref_name,
};
use crate::error::{CoreError, Result};
use crate::ids::Digest;

/// An image manifest as import reads it, before its digests are checked
/// (each [`Blob`] becomes an OCI [`Descriptor`] once checked): the
/// descriptors' annotations are skipped, and more than `MAX_LAYERS` layers
/// are refused while parsing (see `parse`). What export writes is oci-spec's
/// own [`ImageManifest`].
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The format version, 2; import does not check it.
    pub schema_version: u32,
    /// [`MEDIA_TYPE_MANIFEST`] or [`DOCKER_MANIFEST`], if the manifest says.
    #[serde(default)]
    pub media_type: Option<String>,
    /// The image's config blob.
    pub config: Blob,
    /// The layer blobs, base layer first.
    #[serde(default, deserialize_with = "parse::layer_blobs")]
    pub layers: Vec<Blob>,
}

/// What of a config strata reads: the layers' diff ids.
#[derive(Clone, Debug, Deserialize)]
pub struct ConfigRootfs {
    /// The config's `rootfs` object.
    pub rootfs: Rootfs,
}

/// The `rootfs` of an image config: the diff ids of its layers.
#[derive(Clone, Debug, Deserialize)]
pub struct Rootfs {
    /// Its `type`; import refuses any but "layers".
    #[serde(rename = "type")]
    pub kind: String,
    /// The diff id (`sha256:` of the uncompressed tar) of each layer, base
    /// layer first, one per layer of the manifest.
    ///
    /// At most `MAX_LAYERS`, refused while parsing beyond that.
    #[serde(deserialize_with = "parse::diff_ids")]
    pub diff_ids: Vec<String>,
}

/// `DIR` or `DIR:TAG` as given on the command line: the tag is what follows
/// the last `:` when `DIR` itself is not a directory by that whole name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageLocation {
    /// The layout's directory.
    pub dir: PathBuf,
    /// The tag of the image in the layout (its [`REF_NAME`]). Without one,
    /// import takes the only image the layout holds, and export tags the
    /// image with its first name (leaving it untagged if it has none).
    pub tag: Option<String>,
    /// What `dir` is: a layout directory, or an archive file.
    pub kind: LocationKind,
}

/// What an [`ImageLocation`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocationKind {
    /// An OCI layout directory (`DIR`, `oci:DIR`).
    Layout,
    /// An OCI archive, a tar of a layout (`oci-archive:FILE`).
    OciArchive,
    /// A docker archive, as `docker save`, `podman save` and skopeo write
    /// one (`docker-archive:FILE`); `tag` is then the image's reference in
    /// it (`app:v1`).
    DockerArchive,
}

impl ImageLocation {
    /// Splits `DIR:TAG`: if `text` names nothing that exists and has a
    /// last `:` followed by a tag without `/`, that is the tag; otherwise
    /// all of `text` is the directory. Never fails: whether the directory
    /// is a layout is found out when it is opened.
    pub fn parse(text: &str) -> ImageLocation {
        if !Path::new(text).exists()
            && let Some((dir, tag)) = text.rsplit_once(':')
            && !tag.is_empty()
            && !tag.contains(['/', '\\'])
        {
            return ImageLocation {
                dir: PathBuf::from(dir),
                tag: Some(tag.to_string()),
                kind: LocationKind::Layout,
            };
        }
        ImageLocation {
            dir: PathBuf::from(text),
            tag: None,
            kind: LocationKind::Layout,
        }
    }
}

impl ImageLocation {
    /// A location as skopeo, podman and buildah write one: `oci:DIR[:TAG]`,
    /// or a bare `DIR[:TAG]` (an OCI layout either way). The transports
    /// strata does not read are refused with what to run instead: a
    /// registry (`docker://`) is skopeo's job, and the other transports
    /// are skopeo's to turn into a layout.
    pub fn from_transport(text: &str) -> Result<ImageLocation> {
        if let Some(rest) = text.strip_prefix("oci:") {
            return Ok(ImageLocation::parse(rest));
        }
        if let Some(rest) = text.strip_prefix("oci-archive:") {
            return Ok(ImageLocation {
                kind: LocationKind::OciArchive,
                ..ImageLocation::parse(rest)
            });
        }
        if text.starts_with("docker://") {
            return Err(CoreError::InvalidInput(format!(
                "{}: strata reads no registries; fetching is skopeo's job: \
                 skopeo copy {} oci:DIR:TAG, then strata image import oci:DIR:TAG",
                shown(text),
                shown(text)
            )));
        }
        // Other transports skopeo knows, named before the first ':' (one
        // letter is a Windows drive, not a transport).
        if let Some(rest) = text.strip_prefix("docker-archive:") {
            // FILE[:REFERENCE], the reference holding colons of its own
            // (`app:v1`): FILE is the shortest prefix that is a file.
            let split = rest
                .match_indices(':')
                .map(|(at, _)| at)
                .find(|&at| Path::new(&rest[..at]).is_file());
            return Ok(match split {
                Some(at) if !Path::new(rest).is_file() => ImageLocation {
                    dir: PathBuf::from(&rest[..at]),
                    tag: Some(rest[at + 1..].to_string()).filter(|t| !t.is_empty()),
                    kind: LocationKind::DockerArchive,
                },
                _ => ImageLocation {
                    dir: PathBuf::from(rest),
                    tag: None,
                    kind: LocationKind::DockerArchive,
                },
            });
        }
        const OTHERS: [&str; 4] = ["docker-daemon", "containers-storage", "dir", "sif"];
        if let Some((transport, _)) = text.split_once(':')
            && OTHERS.contains(&transport)
            && !Path::new(text).exists()
        {
            return Err(CoreError::Unsupported(format!(
                "{}: this version of strata reads OCI layouts and archives and docker archives \
                 (DIR[:TAG], oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:REF]); \
                 make a layout with: skopeo copy {} oci:DIR:TAG",
                shown(text),
                shown(text)
            )));
        }
        Ok(ImageLocation::parse(text))
    }
}

/// This machine's architecture as OCI names it.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The chain ids of a stack of diff ids: the first is the first diff id,
/// each next one the sha256 of `"<previous chain id> <diff id>"`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut chain: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(previous) => Digest::of_bytes(format!("{previous} {diff_id}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

/// The most bytes of `index.json` read: an index names images, a few
/// hundred bytes each; 4 MiB is over ten thousand of them.
pub const MAX_INDEX_SIZE: u64 = 4 << 20;
/// The most bytes of an image manifest (or a nested index) read: a manifest
/// is a few hundred bytes per layer.
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;
/// The most bytes of an image config read: configs carry the image's
/// history and can be large, but not this large.
pub const MAX_CONFIG_SIZE: u64 = 16 << 20;
/// The most bytes of the `oci-layout` marker read: it is one short field.
pub const MAX_MARKER_SIZE: u64 = 4 << 10;

/// Why a file of the layout (`index.json`, `oci-layout`) was not read,
/// said of the file.
enum FileError {
    Refused(Refusal),
    TooLarge { size: u64, limit: u64 },
    Read(std::io::Error),
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileError::Refused(refusal) => write!(f, "{refusal}"),
            FileError::TooLarge { size, limit } => write!(
                f,
                "is {size} bytes; strata reads at most {} of it: refused",
                shown::size(*limit)
            ),
            FileError::Read(e) => write!(f, "cannot be read: {e}"),
        }
    }
}

/// Reads `name` (a path inside the layout) whole, refusing it unless it is
/// a regular file of at most `limit` bytes; the size is checked before
/// anything is read, and the read stops after `limit + 1` bytes should the
/// file grow meanwhile.
fn read_file(root: &LayoutRoot, name: &str, limit: u64) -> Result<Vec<u8>, FileError> {
    let (file, size) = root.open_regular(name).map_err(FileError::Refused)?;
    if size > limit {
        return Err(FileError::TooLarge { size, limit });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(FileError::Read)?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge {
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// The index of the layout `root` (opened from `dir`), or None if it has no
/// `index.json`.
fn read_index(root: &LayoutRoot, dir: &Path) -> Result<Option<ImageIndex>> {
    let bytes = match read_file(root, "index.json", MAX_INDEX_SIZE) {
        Ok(bytes) => bytes,
        Err(FileError::Refused(Refusal::Missing)) => return Ok(None),
        Err(e) => {
            return Err(CoreError::InvalidImage(format!(
                "the index (index.json) of {} {e}",
                dir.display()
            )));
        }
    };
    let index = serde_json::from_slice(&bytes).map_err(|e| {
        CoreError::InvalidImage(format!(
            "the index (index.json) of {} is not a valid OCI index: {}",
            dir.display(),
            json_error(&e)
        ))
    })?;
    Ok(Some(index))
}

/// The index of the existing layout in `dir` that an export adds to, read
/// as import reads it (a hostile one cannot hang the export or fill its
/// memory); None if it has none yet.
pub(super) fn existing_index(dir: &Path) -> Result<Option<ImageIndex>> {
    let root = LayoutDir::open(dir).map_err(|e| CoreError::io("open", dir, e))?;
    read_index(&LayoutRoot::Dir(root), dir)
}

/// The error for `dir`, which is not an OCI image layout, and why.
fn not_a_layout(dir: &Path, why: String) -> CoreError {
    CoreError::InvalidImage(format!(
        "{} is not an OCI image layout: {why}",
        dir.display()
    ))
}

/// An OCI image layout on disk. Its files are opened beneath its directory
/// only, and only if they are regular files (see `files`).
pub struct Layout {
    /// The layout's directory (or archive), as it was given.
    pub dir: PathBuf,
    root: LayoutRoot,
}

impl Layout {
    /// Opens the layout in `dir`, checking its `oci-layout` marker.
    pub fn open(dir: &Path) -> Result<Layout> {
        let root =
            LayoutDir::open(dir).map_err(|e| not_a_layout(dir, format!("cannot open it: {e}")))?;
        Layout::checked(dir, LayoutRoot::Dir(root))
    }

    /// Opens the OCI archive (a tar of a layout) at `path`, in place.
    pub fn open_archive(path: &Path) -> Result<Layout> {
        let root = ArchiveLayout::open(path).map_err(|e| {
            CoreError::InvalidImage(format!("{} is not an OCI archive: {e}", path.display()))
        })?;
        Layout::checked(path, LayoutRoot::Archive(root))
    }

    /// Opens the docker archive at `path` (`docker save`, `podman save`,
    /// `skopeo copy ... docker-archive:`), in place, as the layout it
    /// describes: its `manifest.json` entry for `reference` (`app:v1`; the
    /// only image when none is given) becomes an OCI manifest whose config
    /// and layers are the archive's own files, named by the config's digest
    /// and the layers' diff ids (a docker archive's layers are uncompressed
    /// tars, so each one's digest is its diff id, checked as it is read).
    pub fn open_docker_archive(path: &Path, reference: Option<&str>) -> Result<Layout> {
        let bad = |why: String| {
            CoreError::InvalidImage(format!("{} is not a docker archive: {why}", path.display()))
        };
        let mut archive = ArchiveLayout::open(path).map_err(|e| bad(e.to_string()))?;
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            layers: Vec<String>,
        }
        let listed: Vec<Entry> = serde_json::from_slice(
            &archive
                .read_member("manifest.json", MAX_MANIFEST_SIZE)
                .map_err(bad)?,
        )
        .map_err(|e| bad(format!("its manifest.json is not one: {}", json_error(&e))))?;
        let matches = |entry: &Entry, wanted: &str| {
            entry.repo_tags.iter().flatten().any(|tag| {
                tag == wanted
                    || tag.ends_with(&format!("/{wanted}"))
                    || (!wanted.contains(':')
                        && (tag == &format!("{wanted}:latest")
                            || tag.ends_with(&format!("/{wanted}:latest"))))
            })
        };
        let tags = |entries: &[Entry]| {
            entries
                .iter()
                .flat_map(|e| e.repo_tags.iter().flatten())
                .map(|t| shown(t))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let entry = match reference {
            Some(wanted) => listed.iter().find(|e| matches(e, wanted)).ok_or_else(|| {
                bad(format!(
                    "it has no image {} (it has: {})",
                    shown(wanted),
                    tags(&listed)
                ))
            })?,
            None if listed.len() == 1 => &listed[0],
            None => {
                return Err(bad(format!(
                    "it holds {} images; name one (docker-archive:FILE:REF) of: {}",
                    listed.len(),
                    tags(&listed)
                )));
            }
        };
        let config = archive
            .read_member(&entry.config, MAX_CONFIG_SIZE)
            .map_err(bad)?;
        let config_digest = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(&config));
        let rootfs: ConfigRootfs = serde_json::from_slice(&config)
            .map_err(|e| bad(format!("its config is not one: {}", json_error(&e))))?;
        let diff_ids = rootfs.rootfs.diff_ids;
        if diff_ids.len() != entry.layers.len() {
            return Err(bad(format!(
                "its config names {} diff ids for {} layers",
                diff_ids.len(),
                entry.layers.len()
            )));
        }
        archive
            .alias(&entry.config, format!("blobs/sha256/{config_digest}"))
            .map_err(bad)?;
        let mut layers = Vec::new();
        for (file, diff_id) in entry.layers.iter().zip(&diff_ids) {
            let hex = diff_id
                .strip_prefix("sha256:")
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| bad(format!("a diff id that is not sha256: {}", shown(diff_id))))?;
            let size = archive.read_member_size(file).map_err(bad)?;
            archive
                .alias(file, format!("blobs/sha256/{hex}"))
                .map_err(bad)?;
            layers.push(serde_json::json!({
                "mediaType": MEDIA_TYPE_LAYER,
                "digest": diff_id,
                "size": size,
            }));
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": {
                "mediaType": MEDIA_TYPE_CONFIG,
                "digest": format!("sha256:{config_digest}"),
                "size": config.len(),
            },
            "layers": layers,
        }))
        .expect("a manifest serialises");
        let manifest_digest = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(&manifest));
        let mut descriptor = serde_json::json!({
            "mediaType": MEDIA_TYPE_MANIFEST,
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
        });
        if let Some(wanted) = reference {
            descriptor["annotations"] = serde_json::json!({ REF_NAME: wanted });
        }
        let index = serde_json::json!({ "schemaVersion": 2, "manifests": [descriptor] });
        archive.add(format!("blobs/sha256/{manifest_digest}"), manifest);
        archive.add(
            "index.json".into(),
            serde_json::to_vec(&index).expect("an index serialises"),
        );
        archive.add(
            "oci-layout".into(),
            format!("{{\"imageLayoutVersion\":\"{LAYOUT_VERSION}\"}}").into_bytes(),
        );
        Layout::checked(path, LayoutRoot::Archive(archive))
    }

    /// The layout, once its `oci-layout` marker is checked.
    fn checked(dir: &Path, root: LayoutRoot) -> Result<Layout> {
        let not_a_layout = |why: String| not_a_layout(dir, why);
        let layout = Layout {
            dir: dir.to_path_buf(),
            root,
        };
        let bytes = match read_file(&layout.root, "oci-layout", MAX_MARKER_SIZE) {
            Ok(bytes) => bytes,
            Err(FileError::Refused(Refusal::Missing)) => {
                return Err(not_a_layout("it has no oci-layout file".to_string()));
            }
            Err(e) => return Err(not_a_layout(format!("its oci-layout file {e}"))),
        };
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            not_a_layout(format!(
                "its oci-layout file is not JSON: {}",
                json_error(&e)
            ))
        })?;
        match value.get("imageLayoutVersion") {
            Some(serde_json::Value::String(v)) if v == LAYOUT_VERSION => {}
            other => {
                // A version number is shown; anything else there is not.
                let found = match other {
                    None => "no imageLayoutVersion".to_string(),
                    Some(serde_json::Value::String(v))
                        if v.len() <= 32
                            && v.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b)) =>
                    {
                        format!("imageLayoutVersion \"{v}\"")
                    }
                    Some(_) => "an imageLayoutVersion that is not a version".to_string(),
                };
                return Err(CoreError::InvalidImage(format!(
                    "{}: its oci-layout file has {found}; only {LAYOUT_VERSION} is understood",
                    dir.display()
                )));
            }
        }
        Ok(layout)
    }

    /// Reads `index.json` whole (at most `MAX_INDEX_SIZE` bytes).
    fn index_bytes(&self) -> Result<Vec<u8>> {
        read_file(&self.root, "index.json", MAX_INDEX_SIZE).map_err(|e| {
            CoreError::InvalidImage(format!(
                "the index (index.json) of {} {e}",
                self.dir.display()
            ))
        })
    }

    /// Where the blob of `digest` is, or would be, in the layout:
    /// `blobs/sha256/<hex>` under [`dir`](Self::dir). InvalidImage if the
    /// digest is not `sha256:` and 64 lowercase hex digits.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self
            .dir
            .join("blobs/sha256")
            .join(layout_digest(digest)?.encoded()))
    }

    /// Opens the blob `descriptor` names, checking it is a regular file in
    /// the layout of the declared size; `what` says what it is in errors
    /// ("layer 2 of 5"). What is read from it stops at the declared size.
    pub fn open_blob(&self, descriptor: &Descriptor, what: &str) -> Result<BlobReader> {
        let digest = digest_of(descriptor)?;
        let declared = descriptor.size();
        let named = || format!("blob {digest} ({what}) in {}", self.dir.display());
        let (file, size) = self
            .root
            .open_regular(&format!("blobs/sha256/{}", digest.encoded()))
            .map_err(|refusal| CoreError::InvalidImage(format!("{} {refusal}", named())))?;
        if size != declared {
            return Err(CoreError::InvalidImage(format!(
                "blob {digest} ({what}) is {size} bytes, {} than the {declared} bytes its descriptor declares: refused",
                if size > declared { "longer" } else { "shorter" },
            )));
        }
        Ok(BlobReader::new(file, declared))
    }

    /// The error for a blob whose read stopped at a size fault.
    pub fn size_fault(descriptor: &Descriptor, what: &str, fault: SizeFault) -> CoreError {
        CoreError::InvalidImage(match fault {
            SizeFault::Longer => format!(
                "blob {} ({what}) is longer than the {} bytes its descriptor declares (it grew while being read): refused",
                descriptor.digest(),
                descriptor.size()
            ),
            SizeFault::Shorter(read) => format!(
                "blob {} ({what}) ends after {read} bytes, shorter than the {} bytes its descriptor declares (it shrank while being read): refused",
                descriptor.digest(),
                descriptor.size()
            ),
        })
    }

    /// Reads a small blob (manifest, config, index) whole, of at most
    /// `limit` bytes (refused from its descriptor, before it is opened),
    /// checking its digest.
    pub fn read_blob(&self, descriptor: &Descriptor, what: &str, limit: u64) -> Result<Vec<u8>> {
        let digest = digest_of(descriptor)?;
        if descriptor.size() > limit {
            return Err(CoreError::InvalidImage(format!(
                "blob {digest} ({what}) declares {} bytes; strata reads at most {} of it: refused",
                descriptor.size(),
                shown::size(limit)
            )));
        }
        let mut reader = self.open_blob(descriptor, what)?;
        let mut bytes = Vec::with_capacity(descriptor.size() as usize);
        if let Err(e) = reader.read_to_end(&mut bytes) {
            return Err(match reader.fault() {
                Some(fault) => Layout::size_fault(descriptor, what, fault),
                None => {
                    CoreError::InvalidImage(format!("blob {digest} ({what}) cannot be read: {e}"))
                }
            });
        }
        let actual = Digest::of_bytes(&bytes);
        if actual != digest {
            return Err(CoreError::InvalidImage(format!(
                "blob {digest} ({what}) does not match its digest: its content hashes to {actual}"
            )));
        }
        Ok(bytes)
    }

    /// Reads a small blob and parses it as JSON of type `T`; returns the bytes
    /// too (they are what the digest is of). Parsed only once its digest
    /// matched, and a parse error says where, never what it found.
    pub fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        descriptor: &Descriptor,
        what: &str,
        limit: u64,
    ) -> Result<(Vec<u8>, T)> {
        let bytes = self.read_blob(descriptor, what, limit)?;
        let value = serde_json::from_slice(&bytes).map_err(|e| {
            CoreError::InvalidImage(format!(
                "blob {} is not a valid {what}: {}",
                descriptor.digest(),
                json_error(&e)
            ))
        })?;
        Ok((bytes, value))
    }

    /// Finds the image manifest `tag` names (or the only one, without a
    /// tag), following nested indexes to the one for this machine's
    /// platform. Its digest is checked to be a sha256 before it is returned.
    pub fn find_manifest(&self, tag: Option<&str>) -> Result<Descriptor> {
        let bytes = self.index_bytes()?;
        let choose: &dyn Fn(&Listed) -> bool = match tag {
            Some(tag) => &move |d: &Listed| d.ref_name.as_deref() == Some(tag),
            None => &|_: &Listed| true,
        };
        let picked = parse::pick(&bytes, choose).map_err(|e| {
            CoreError::InvalidImage(format!(
                "the index (index.json) of {} is not a valid OCI index: {}",
                self.dir.display(),
                json_error(&e)
            ))
        })?;
        drop(bytes);
        let chosen = match (tag, picked.count) {
            (Some(tag), _) => picked.chosen.clone().ok_or_else(|| {
                CoreError::InvalidImage(format!(
                    "{} has no image tagged '{}' (tags: {})",
                    self.dir.display(),
                    shown(tag),
                    tag_list(&picked)
                ))
            })?,
            (None, 1) => picked.chosen.clone().expect("the only entry is chosen"),
            (None, 0) => {
                return Err(CoreError::InvalidImage(format!(
                    "{} holds no images (index.json lists no manifests)",
                    self.dir.display()
                )));
            }
            (None, many) => {
                return Err(CoreError::InvalidImage(format!(
                    "{} holds {many} images; name one as DIR:TAG (tags: {})",
                    self.dir.display(),
                    tag_list(&picked)
                )));
            }
        };
        self.platform_manifest(chosen, 0)
    }

    fn platform_manifest(&self, listed: Listed, depth: usize) -> Result<Descriptor> {
        // Checked here, so that every message after shows a digest that is
        // one (64 hex digits), not whatever the index held.
        let descriptor = listed.descriptor()?;
        let media_type = descriptor.media_type().as_ref();
        if media_type != MEDIA_TYPE_INDEX && media_type != DOCKER_MANIFEST_LIST {
            return Ok(descriptor);
        }
        if depth > 4 {
            return Err(CoreError::InvalidImage(format!(
                "index {} nests indexes too deeply",
                descriptor.digest()
            )));
        }
        let what = "image index";
        let bytes = self.read_blob(&descriptor, what, MAX_MANIFEST_SIZE)?;
        let arch = oci_arch();
        let picked = parse::pick(&bytes, &|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .map_err(|e| {
            CoreError::InvalidImage(format!(
                "blob {} is not a valid {what}: {}",
                descriptor.digest(),
                json_error(&e)
            ))
        })?;
        let found = picked.chosen.ok_or_else(|| {
            CoreError::InvalidImage(format!(
                "index {} has no image for linux/{arch}",
                descriptor.digest()
            ))
        })?;
        self.platform_manifest(found, depth + 1)
    }
}

/// The tags an index pass kept, for a message: each escaped, with how many
/// more there are.
fn tag_list(picked: &Picked) -> String {
    let tags: Vec<String> = picked
        .tags
        .iter()
        .map(|t| format!("'{}'", shown(t)))
        .collect();
    match picked.tag_count {
        0 => "none".to_string(),
        n if n > tags.len() => format!("{} and {} more", tags.join(", "), n - tags.len()),
        _ => tags.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        use sha2::{Digest as _, Sha256};
        let a = Digest::new(&format!("sha256:{}", "a".repeat(64))).unwrap();
        let b = Digest::new(&format!("sha256:{}", "b".repeat(64))).unwrap();
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        let expected = format!("sha256:{}", hex::encode(Sha256::digest(format!("{a} {b}"))));
        assert_eq!(chain[1].as_str(), expected);
    }

    #[test]
    fn digests_other_than_sha256_hex_are_refused() {
        assert!(layout_digest(&format!("sha256:{}", "0".repeat(64))).is_ok());
        for bad in [
            "sha512:00",
            "sha256:../../etc/passwd",
            "sha256:ABC",
            "",
            "sha256:",
        ] {
            let refused = layout_digest(bad).unwrap_err();
            assert_eq!(refused.kind(), crate::ErrorKind::InvalidInput, "{bad}");
        }
    }

    #[test]
    fn transports_as_skopeo_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        let text = format!("oci:{}:app", layout.display());
        let location = ImageLocation::from_transport(&text).unwrap();
        assert_eq!(
            (location.dir, location.tag.as_deref()),
            (layout.clone(), Some("app"))
        );
        let bare = ImageLocation::from_transport(layout.to_str().unwrap()).unwrap();
        assert_eq!((bare.dir, bare.tag), (layout, None));
        let registry = ImageLocation::from_transport("docker://example/app:1").unwrap_err();
        assert!(
            registry
                .to_string()
                .contains("skopeo copy docker://example/app:1 oci:DIR:TAG"),
            "{registry}"
        );
        let archive = ImageLocation::from_transport("oci-archive:/tmp/a.tar:app").unwrap();
        assert!(archive.kind == LocationKind::OciArchive && archive.tag.as_deref() == Some("app"));
        for other in ["dir:/tmp/x", "containers-storage:app"] {
            let err = ImageLocation::from_transport(other).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("skopeo copy {other} oci:DIR:TAG")),
                "{err}"
            );
        }
    }

    #[test]
    fn locations_split_a_tag_only_when_the_whole_is_not_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let with_colon = dir.path().join("odd:name");
        fs::create_dir(&with_colon).unwrap();
        let text = with_colon.to_str().unwrap();
        assert_eq!(ImageLocation::parse(text).tag, None);
        let tagged = format!("{}:v1", dir.path().join("img").display());
        let location = ImageLocation::parse(&tagged);
        assert_eq!(location.tag.as_deref(), Some("v1"));
        assert_eq!(location.dir, dir.path().join("img"));
    }
}
