//! The plain Rust values a driver receives and returns.

use std::path::PathBuf;

use crate::error::{DriverError, Result};

/// What a driver can do beyond the required operations. The host honours these:
/// it asks for a native diff only from a driver with `NATIVE_DIFF`, hands the
/// whole diff stream to a driver with `OWNS_DIFF_FORMAT`, and so on.
///
/// Bits are never reused; bits this host does not know are kept, not dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Capabilities(u64);

impl Capabilities {
    /// Read-only layers really reject writes (overlay, btrfs, zfs, dm).
    pub const READ_ONLY_LAYERS: Capabilities = Capabilities(1 << 0);
    /// The per-layer `size` storage option is enforced as a quota.
    pub const QUOTA: Capabilities = Capabilities(1 << 1);
    /// `native_diff` describes a directory holding exactly a layer's changes.
    pub const NATIVE_DIFF: Capabilities = Capabilities(1 << 2);
    /// The driver must produce and consume layer streams itself (`diff`,
    /// `apply_diff`, `diff_size`), as the Windows driver does through the OS.
    pub const OWNS_DIFF_FORMAT: Capabilities = Capabilities(1 << 3);
    /// Mounts can shift owners through the uid/gid maps of `MountOptions`.
    pub const ID_MAPPED_MOUNTS: Capabilities = Capabilities(1 << 4);
    /// `remove` may finish later (devicemapper's deferred removal); the layer
    /// is gone from `exists` and `list` as soon as `remove` returns.
    pub const DEFERRED_REMOVAL: Capabilities = Capabilities(1 << 5);
    /// Creating a child copies its parent (vfs): cost grows with the parent's size.
    pub const COPIES_PARENT: Capabilities = Capabilities(1 << 6);

    const NAMES: [(Capabilities, &'static str); 7] = [
        (Self::READ_ONLY_LAYERS, "read-only-layers"),
        (Self::QUOTA, "quota"),
        (Self::NATIVE_DIFF, "native-diff"),
        (Self::OWNS_DIFF_FORMAT, "owns-diff-format"),
        (Self::ID_MAPPED_MOUNTS, "id-mapped-mounts"),
        (Self::DEFERRED_REMOVAL, "deferred-removal"),
        (Self::COPIES_PARENT, "copies-parent"),
    ];

    /// No capabilities: a driver with only the required operations.
    pub const fn empty() -> Self {
        Capabilities(0)
    }

    /// The set with exactly `bits`, as read from the wire; unknown bits are
    /// kept.
    pub const fn from_bits(bits: u64) -> Self {
        Capabilities(bits)
    }

    /// The set as its wire number.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Both sets together; the same as `self | other`, usable in a `const`.
    pub const fn union(self, other: Capabilities) -> Self {
        Capabilities(self.0 | other.0)
    }

    /// Whether every bit of `other` is set here.
    pub const fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    /// Human names of the set bits; unknown bits appear as `bit-N`.
    pub fn names(self) -> Vec<String> {
        let mut names = Vec::new();
        let mut known = 0;
        for (cap, name) in Self::NAMES {
            known |= cap.0;
            if self.contains(cap) {
                names.push(name.to_string());
            }
        }
        for bit in 0..64 {
            if self.0 & !known & (1 << bit) != 0 {
                names.push(format!("bit-{bit}"));
            }
        }
        names
    }
}

impl std::ops::BitOr for Capabilities {
    type Output = Capabilities;
    fn bitor(self, rhs: Capabilities) -> Capabilities {
        self.union(rhs)
    }
}

/// One range of a user-namespace id mapping, as in `/proc/PID/uid_map`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IdMap {
    /// The first id of the range inside the user namespace.
    pub container_id: u32,
    /// The id `container_id` stands for outside it.
    pub host_id: u32,
    /// How many consecutive ids the range covers.
    pub size: u32,
}

/// An ordered list of `key=value` options with a way to take the known ones and
/// refuse the rest, so every driver rejects a misspelt option the same way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValues(pub Vec<(String, String)>);

impl KeyValues {
    /// An empty list.
    pub fn new() -> Self {
        KeyValues(Vec::new())
    }

    /// Appends `key=value`, keeping any earlier value of `key` (which
    /// [`get`](KeyValues::get) then no longer returns).
    pub fn push(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.push((key.into(), value.into()));
    }

    /// The value of `key`; when it is given more than once, the last one
    /// wins, as a later line of configuration overrides an earlier one.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether there are no pairs at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every pair in order, repeated keys included.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Fails with `InvalidInput` naming the first key not in `known`; `what`
    /// says where the options came from ("vfs driver option").
    pub fn reject_unknown(&self, what: &str, known: &[&str]) -> Result<()> {
        for (key, _) in &self.0 {
            if !known.contains(&key.as_str()) {
                let known = if known.is_empty() {
                    "none are accepted".to_string()
                } else {
                    format!("known: {}", known.join(", "))
                };
                return Err(DriverError::invalid_input(format!(
                    "unknown {what} '{key}' ({known})"
                )));
            }
        }
        Ok(())
    }

    /// The boolean value of `key`, if given; anything but true/false is refused.
    pub fn get_bool(&self, what: &str, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some("true" | "1" | "yes") => Ok(Some(true)),
            Some("false" | "0" | "no") => Ok(Some(false)),
            Some(other) => Err(DriverError::invalid_input(format!(
                "{what} '{key}' must be true or false, not '{other}'"
            ))),
        }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for KeyValues {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        KeyValues(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// Checks that `id` can name a layer: 1 to 128 characters from `[A-Za-z0-9_.-]`,
/// not starting with `.` or `-`. Drivers use ids as file and dataset names, so
/// anything that could escape a directory or confuse a tool is refused here,
/// once, for every driver.
pub fn validate_layer_id(id: &str) -> Result<()> {
    if is_valid_layer_id(id) {
        return Ok(());
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    let problem = if id.is_empty() {
        Some("it is empty")
    } else if id.len() > 128 {
        Some("it is longer than 128 characters")
    } else if id.starts_with('.') || id.starts_with('-') {
        Some("it starts with '.' or '-'")
    } else if !id.chars().all(ok_char) {
        Some("only letters, digits, '_', '.' and '-' are allowed")
    } else {
        None
    };
    match problem {
        Some(why) => Err(DriverError::invalid_input(format!(
            "invalid layer id {id:?}: {why}"
        ))),
        None => Ok(()),
    }
}

/// Whether `id` passes `validate_layer_id`, without building an error (for hot
/// paths such as `exists`).
pub fn is_valid_layer_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with(['.', '-'])
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// What a driver is given when it starts.
#[derive(Clone, Debug, Default)]
pub struct InitArgs {
    /// The driver's own directory, `<graphroot>/<driver>`; it may lay it out as it likes.
    pub home: PathBuf,
    /// Where the driver keeps state that must not survive a reboot (mount points).
    pub run_root: PathBuf,
    /// `[storage.options.<driver>]` from the configuration.
    pub options: KeyValues,
    /// The store's user-namespace uid mapping, as ranges; empty when the
    /// store is not mapped.
    pub uid_maps: Vec<IdMap>,
    /// The store's gid mapping, like `uid_maps`.
    pub gid_maps: Vec<IdMap>,
}

/// How a layer is created.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// A container's layer is read-write; an image layer is read-only once written.
    pub read_write: bool,
    /// SELinux label for the layer's mounts.
    pub mount_label: Option<String>,
    /// Per-layer storage options, such as `size=10G`; a driver refuses the ones it
    /// does not know.
    pub storage_opts: KeyValues,
}

/// How a layer is mounted by `get`.
#[derive(Clone, Debug, Default)]
pub struct MountOptions {
    /// SELinux label for this mount; the host passes the layer's own label
    /// when the caller gives none.
    pub mount_label: Option<String>,
    /// Mount options such as `ro` or `nodev`.
    pub options: Vec<String>,
    /// Uid mapping to shift owners by in this mount; only sent to a driver
    /// with [`Capabilities::ID_MAPPED_MOUNTS`].
    pub uid_maps: Vec<IdMap>,
    /// Gid mapping for this mount, like `uid_maps`.
    pub gid_maps: Vec<IdMap>,
}

/// The `status` key by which a driver claiming
/// [`Capabilities::NATIVE_DIFF`] names the whiteout format of its diff
/// directories (`overlay` or `aufs`). The host refuses, when it opens the
/// driver, a format it cannot read; a driver that does not declare one is
/// checked layer by layer instead.
pub const NATIVE_DIFF_WHITEOUTS_KEY: &str = "native-diff-whiteouts";

/// How deletions are written in a native diff directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WhiteoutFormat {
    /// `.wh.NAME` files and `.wh..wh..opq` markers (OCI image layers, AUFS).
    Aufs,
    /// 0:0 character devices and the `trusted.overlay.opaque=y` xattr (overlayfs).
    Overlay,
    /// A format added by a newer ABI minor version than this host knows.
    Unknown(u32),
}

impl WhiteoutFormat {
    /// The stable wire code of this format. Codes are never reused.
    pub const fn code(self) -> u32 {
        match self {
            WhiteoutFormat::Aufs => 1,
            WhiteoutFormat::Overlay => 2,
            WhiteoutFormat::Unknown(code) => code,
        }
    }

    /// The format a wire code stands for; an unknown code is kept as
    /// `Unknown(code)`.
    pub const fn from_code(code: u32) -> Self {
        match code {
            1 => WhiteoutFormat::Aufs,
            2 => WhiteoutFormat::Overlay,
            other => WhiteoutFormat::Unknown(other),
        }
    }
}

/// Where a layer's own changes live, for drivers that keep them apart from
/// their parent's (overlay's `diff/`): core reads and writes the layer format
/// there directly instead of comparing whole trees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NativeDiff {
    /// Directory holding exactly this layer's changes.
    pub path: PathBuf,
    /// How deletions are recorded in it.
    pub whiteouts: WhiteoutFormat,
}

/// One mount, as data: what `mount(8)` would be given to make it. A driver
/// that can describe a layer's mount this way lets a caller that mounts for
/// itself (containerd, through `strata-snapshotter`) perform it in its own
/// mount namespace, as containerd does for its built-in snapshotters.
///
/// The fields mean what containerd's `Mount` message means: `kind` is the
/// filesystem type (`overlay`, `bind`, `ext4`, ...), `source` the device or
/// directory (a bind's source is the directory bound), `options` the
/// `mount(8)` options in order, flags (`ro`, `rbind`, `nodev`) and
/// filesystem data (`lowerdir=...`) alike.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountSpec {
    /// The filesystem type; `bind` for a bind mount.
    pub kind: String,
    /// The device, directory or filesystem name the mount is made from.
    pub source: String,
    /// Options as `mount -o` takes them, one per entry.
    pub options: Vec<String>,
}

impl MountSpec {
    /// A recursive bind of `dir`, read-only when `read_only`.
    pub fn bind(dir: &std::path::Path, read_only: bool) -> MountSpec {
        MountSpec {
            kind: "bind".into(),
            source: dir.display().to_string(),
            options: vec!["rbind".into(), if read_only { "ro" } else { "rw" }.into()],
        }
    }

    /// Whether the options ask for a read-only mount.
    pub fn is_read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn a_bind_says_whether_it_is_read_only() {
        let ro = MountSpec::bind(std::path::Path::new("/a/b"), true);
        assert_eq!(ro.kind, "bind");
        assert_eq!(ro.source, "/a/b");
        assert!(ro.is_read_only());
        assert!(!MountSpec::bind(std::path::Path::new("/a"), false).is_read_only());
    }

    #[test]
    fn unknown_option_is_refused_by_name() {
        let opts: KeyValues = [("size", "1G"), ("colour", "red")].into_iter().collect();
        let err = opts.reject_unknown("vfs option", &["size"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.message().contains("'colour'"), "{err}");
        assert!(err.message().contains("known: size"), "{err}");
        assert!(opts.reject_unknown("x", &["size", "colour"]).is_ok());
    }

    #[test]
    fn layer_ids_that_could_escape_are_refused() {
        for good in ["a", "abc-123", "0123456789abcdef", "layer_1.2"] {
            assert!(validate_layer_id(good).is_ok(), "{good}");
            assert!(is_valid_layer_id(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "-rf",
            "a b",
            "a\0b",
            &"x".repeat(129),
        ] {
            let err = validate_layer_id(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}");
            assert!(!is_valid_layer_id(bad), "{bad}");
        }
    }

    #[test]
    fn booleans_are_strict() {
        let opts: KeyValues = [("a", "true"), ("b", "no"), ("c", "maybe")]
            .into_iter()
            .collect();
        assert_eq!(opts.get_bool("o", "a").unwrap(), Some(true));
        assert_eq!(opts.get_bool("o", "b").unwrap(), Some(false));
        assert_eq!(opts.get_bool("o", "d").unwrap(), None);
        assert!(opts.get_bool("o", "c").is_err());
    }

    #[test]
    fn capability_names_keep_unknown_bits() {
        let caps = Capabilities::NATIVE_DIFF | Capabilities::from_bits(1 << 40);
        assert_eq!(caps.names(), vec!["native-diff", "bit-40"]);
        assert!(caps.contains(Capabilities::NATIVE_DIFF));
        assert!(!caps.contains(Capabilities::QUOTA));
    }
}
