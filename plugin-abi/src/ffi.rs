//! Everything that crosses the library boundary, in abi_stable's types.
//!
//! This module, `export` and `host` are the only places that know about
//! abi_stable; drivers and the host see the plain types of `types`, `error`
//! and `driver`. Layout rules for ABI 1.x are in the crate documentation.

// `#[sabi_trait]` expands to impl blocks inside consts, which this lint flags
// in code we do not write.
#![allow(non_local_definitions)]

use std::path::PathBuf;

use abi_stable::{
    StableAbi, declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, ROption, RResult, RSliceMut, RStr, RString, RVec},
};

use crate::error::{DriverError, ErrorKind};
use crate::types::{
    CreateOptions, IdMap, InitArgs, KeyValues, MountOptions, MountSpec, NativeDiff, WhiteoutFormat,
};

/// A `DriverError` on the wire.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiError {
    /// The `ErrorKind`'s wire code (`ErrorKind::code`); a code the receiver
    /// does not know arrives as `ErrorKind::Unknown`.
    pub kind: u32,
    /// 0 when no system call is involved.
    pub errno: i32,
    /// The error's message, naming the layer and the operation.
    pub message: RString,
}

/// One `key=value` pair of a `KeyValues` list on the wire; lists keep their
/// order and their repeated keys.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiKeyValue {
    /// The option or fact's name.
    pub key: RString,
    /// Its value, as text.
    pub value: RString,
}

/// An `IdMap` range on the wire, field for field.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct FfiIdMap {
    /// The first id of the range inside the user namespace.
    pub container_id: u32,
    /// The id `container_id` stands for outside it.
    pub host_id: u32,
    /// How many consecutive ids the range covers.
    pub size: u32,
}

/// A path as bytes: the OS bytes on Unix, UTF-8 elsewhere.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiPath {
    /// The path's bytes, unterminated.
    pub bytes: RVec<u8>,
}

/// `CreateOptions` on the wire, field for field.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiCreateOptions {
    /// Whether the layer is a container's read-write layer.
    pub read_write: bool,
    /// SELinux label for the layer's mounts.
    pub mount_label: ROption<RString>,
    /// Per-layer storage options (`size=10G`), in order.
    pub storage_opts: RVec<FfiKeyValue>,
}

/// `MountOptions` on the wire, field for field.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiMountOptions {
    /// SELinux label for this mount.
    pub mount_label: ROption<RString>,
    /// Mount options such as `ro` or `nodev`.
    pub options: RVec<RString>,
    /// Uid mapping for an id-mapped mount; empty for a plain one.
    pub uid_maps: RVec<FfiIdMap>,
    /// Gid mapping for an id-mapped mount; empty for a plain one.
    pub gid_maps: RVec<FfiIdMap>,
}

/// `NativeDiff` on the wire.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiNativeDiff {
    /// The directory holding exactly the layer's changes.
    pub path: FfiPath,
    /// The `WhiteoutFormat`'s wire code (`WhiteoutFormat::code`).
    pub whiteouts: u32,
}

/// A `MountSpec` on the wire (added in ABI 1.1 with `describe_mount`).
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiMountSpec {
    /// The filesystem type; `bind` for a bind mount.
    pub kind: RString,
    /// The device or directory mounted.
    pub source: RString,
    /// `mount(8)` options, one per entry, in order.
    pub options: RVec<RString>,
}

/// One log event from a driver, re-emitted by the host through its own
/// `tracing` subscriber.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiLogRecord {
    /// 1 error, 2 warn, 3 info, 4 debug, 5 trace.
    pub level: u8,
    /// The event's target in the driver (its module path unless it set one).
    pub target: RString,
    /// The event's message (its `message` field).
    pub message: RString,
    /// The event's other fields, formatted as `key=value` pairs.
    pub fields: RString,
}

/// What `DriverModule::init` receives: `InitArgs` on the wire, plus where to
/// send log events and how verbose to be.
#[repr(C)]
#[derive(StableAbi)]
pub struct FfiInitArgs {
    /// The driver's own directory (`InitArgs::home`).
    pub home: FfiPath,
    /// Where the driver keeps state that must not survive a reboot.
    pub run_root: FfiPath,
    /// The driver's options from the configuration, in order.
    pub options: RVec<FfiKeyValue>,
    /// The store's uid mapping; empty when it is not mapped.
    pub uid_maps: RVec<FfiIdMap>,
    /// The store's gid mapping; empty when it is not mapped.
    pub gid_maps: RVec<FfiIdMap>,
    /// The host's sink: the plugin installs a `tracing` subscriber that hands
    /// every enabled event to it, replacing the sink of any earlier `init`.
    pub log_sink: LogSinkBox,
    /// The most verbose level the host records, coded as in `FfiLogRecord`
    /// (0 = nothing), so the driver does not send what would be dropped.
    pub max_log_level: u8,
}

/// Where a driver's log events go: implemented by the host.
#[sabi_trait]
pub trait LogSink: Send + Sync {
    /// Records one event. Called from whichever driver thread emitted it,
    /// so it must not block for long and must never panic.
    #[sabi(last_prefix_field)]
    fn log(&self, record: FfiLogRecord);
}

/// An owned `LogSink` trait object, as passed to the driver in
/// `FfiInitArgs`.
pub type LogSinkBox = LogSink_TO<'static, RBox<()>>;

/// A byte stream read across the boundary, in either direction: the host hands
/// the driver one to apply, a driver that owns the format hands the host one
/// to export.
#[sabi_trait]
pub trait ByteSource: Send {
    /// Fills the front of `buf`; 0 means the end of the stream.
    #[sabi(last_prefix_field)]
    fn read(&mut self, buf: RSliceMut<'_, u8>) -> RResult<usize, FfiError>;
}

/// An owned `ByteSource` trait object: what a driver's `diff` returns, read
/// by the host until it ends or is dropped.
pub type ByteSourceBox = ByteSource_TO<'static, RBox<()>>;
/// A stream borrowed for one call (the host's reader inside `apply_diff`).
pub type ByteSourceMut<'a> = ByteSource_TO<'a, RBox<()>>;

/// The driver object. Methods are only ever appended, after the last one, with
/// a default that answers "not supported" (see the crate documentation).
#[sabi_trait]
///
/// Each method carries the `GraphDriver` method of the same name, with the
/// same contract; the plugin side catches a panic in any of them and answers
/// with a `Panicked` error instead.
pub trait DriverObject: Send + Sync {
    /// `GraphDriver::name`; a driver whose `name` panics answers its
    /// exported `DriverPlugin::NAME`.
    fn name(&self) -> RString;
    /// `GraphDriver::status`; a panic comes back as a single `error` pair.
    fn status(&self) -> RVec<FfiKeyValue>;
    /// `GraphDriver::capabilities` as its bits; 0 if the driver panicked.
    fn capabilities(&self) -> u64;
    /// `GraphDriver::metadata`: the layer's facts as key/value pairs.
    fn metadata(&self, id: RStr<'_>) -> RResult<RVec<FfiKeyValue>, FfiError>;
    /// `GraphDriver::create`; `parent` is `RNone` for a base layer.
    fn create(
        &self,
        id: RStr<'_>,
        parent: ROption<RStr<'_>>,
        options: &FfiCreateOptions,
    ) -> RResult<(), FfiError>;
    /// `GraphDriver::remove`; the host has checked that no layer has this
    /// one as parent.
    fn remove(&self, id: RStr<'_>) -> RResult<(), FfiError>;
    /// `GraphDriver::get`: mounts (or exposes) the layer and returns where.
    fn get(&self, id: RStr<'_>, options: &FfiMountOptions) -> RResult<FfiPath, FfiError>;
    /// `GraphDriver::put`, called when the layer's last user, in any
    /// process, lets go.
    fn put(&self, id: RStr<'_>) -> RResult<(), FfiError>;
    /// `GraphDriver::exists`; an invalid id answers `false` or
    /// `InvalidInput`.
    fn exists(&self, id: RStr<'_>) -> RResult<bool, FfiError>;
    /// `GraphDriver::list`: every layer id the driver holds, in no order.
    fn list(&self) -> RResult<RVec<RString>, FfiError>;
    /// `GraphDriver::cleanup`, when the host's driver instance shuts down.
    fn cleanup(&self) -> RResult<(), FfiError>;
    /// `GraphDriver::native_diff`; `RNone` when the layer's changes are not
    /// kept apart or not exact now.
    fn native_diff(&self, id: RStr<'_>) -> RResult<ROption<FfiNativeDiff>, FfiError>;
    /// `GraphDriver::diff`: the driver's own stream, read by the host.
    fn diff(&self, id: RStr<'_>, parent: ROption<RStr<'_>>) -> RResult<ByteSourceBox, FfiError>;
    /// `GraphDriver::apply_diff`: `diff` is the host's stream, borrowed for
    /// this call only.
    fn apply_diff(
        &self,
        id: RStr<'_>,
        parent: ROption<RStr<'_>>,
        diff: ByteSourceMut<'_>,
    ) -> RResult<u64, FfiError>;
    /// `GraphDriver::diff_size`. The end of the prefix every 1.x driver
    /// has: methods added later go below it, with a default answering
    /// `NotSupported`.
    #[sabi(last_prefix_field)]
    fn diff_size(&self, id: RStr<'_>, parent: ROption<RStr<'_>>) -> RResult<u64, FfiError>;

    // ---- ABI 1.1 ----
    /// `GraphDriver::describe_mount`. A driver built against ABI 1.0 has no
    /// entry for it, and a host calling it gets this default: not supported.
    fn describe_mount(
        &self,
        id: RStr<'_>,
        options: &FfiMountOptions,
    ) -> RResult<RVec<FfiMountSpec>, FfiError> {
        let _ = options;
        RResult::RErr(
            DriverError::not_supported(format!(
                "describe the mount of layer {id}: the driver was built before ABI 1.1, \
                 which added describing mounts as data; the host binds what get returns"
            ))
            .into(),
        )
    }
}

/// An owned `DriverObject` trait object: a started driver, as
/// `DriverModule::init` returns it and `LoadedDriver` holds it.
pub type DriverBox = DriverObject_TO<'static, RBox<()>>;

/// The root module every driver library exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = DriverModuleRef)))]
#[sabi(missing_field(panic))]
pub struct DriverModule {
    /// The driver's name in configuration.
    pub name: RStr<'static>,
    /// One line for `strata drivers`.
    pub description: RStr<'static>,
    /// Starts a driver on a home. Fields are only ever appended after this one.
    #[sabi(last_prefix_field)]
    pub init: extern "C" fn(args: FfiInitArgs) -> RResult<DriverBox, FfiError>,
}

impl RootModule for DriverModuleRef {
    declare_root_module_statics! {DriverModuleRef}
    const BASE_NAME: &'static str = "strata_driver";
    const NAME: &'static str = "strata_driver";
    // The version of this crate: abi_stable refuses a library whose major differs.
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

// ---- conversions between the wire types and the plain ones ----

impl From<DriverError> for FfiError {
    fn from(err: DriverError) -> FfiError {
        FfiError {
            kind: err.kind().code(),
            errno: err.errno().unwrap_or(0),
            message: err.message().into(),
        }
    }
}

impl From<FfiError> for DriverError {
    fn from(err: FfiError) -> DriverError {
        let errno = (err.errno != 0).then_some(err.errno);
        DriverError::from_parts(ErrorKind::from_code(err.kind), errno, err.message.into())
    }
}

/// A `KeyValues` list as it crosses the boundary, in order.
pub fn key_values_to_ffi(values: &KeyValues) -> RVec<FfiKeyValue> {
    values
        .iter()
        .map(|(key, value)| FfiKeyValue {
            key: key.into(),
            value: value.into(),
        })
        .collect()
}

/// The `KeyValues` list a wire list carries, taking it over.
pub fn key_values_from_ffi(values: RVec<FfiKeyValue>) -> KeyValues {
    values
        .into_iter()
        .map(|kv| (String::from(kv.key), String::from(kv.value)))
        .collect()
}

/// The `KeyValues` list a borrowed wire list carries (copied out of a record
/// the other side still owns, such as `FfiCreateOptions`).
pub fn key_values_from_ffi_ref(values: &[FfiKeyValue]) -> KeyValues {
    values
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_str()))
        .collect()
}

fn id_maps_to_ffi(maps: &[IdMap]) -> RVec<FfiIdMap> {
    maps.iter()
        .map(|m| FfiIdMap {
            container_id: m.container_id,
            host_id: m.host_id,
            size: m.size,
        })
        .collect()
}

fn id_maps_from_ffi(maps: &[FfiIdMap]) -> Vec<IdMap> {
    maps.iter()
        .map(|m| IdMap {
            container_id: m.container_id,
            host_id: m.host_id,
            size: m.size,
        })
        .collect()
}

impl FfiPath {
    /// The path's OS bytes, exactly: non-UTF-8 names survive.
    #[cfg(unix)]
    pub fn from_path(path: &std::path::Path) -> FfiPath {
        use std::os::unix::ffi::OsStrExt;
        FfiPath {
            bytes: path.as_os_str().as_bytes().into(),
        }
    }

    /// The path as UTF-8; characters that are not are replaced.
    #[cfg(not(unix))]
    pub fn from_path(path: &std::path::Path) -> FfiPath {
        FfiPath {
            bytes: path.to_string_lossy().as_bytes().into(),
        }
    }

    /// The path the bytes name, as they are.
    #[cfg(unix)]
    pub fn to_path_buf(&self) -> PathBuf {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::OsStr::from_bytes(self.bytes.as_slice()).into()
    }

    /// The path the bytes name, read as UTF-8 (invalid sequences replaced).
    #[cfg(not(unix))]
    pub fn to_path_buf(&self) -> PathBuf {
        String::from_utf8_lossy(self.bytes.as_slice())
            .into_owned()
            .into()
    }
}

impl From<&CreateOptions> for FfiCreateOptions {
    fn from(o: &CreateOptions) -> Self {
        FfiCreateOptions {
            read_write: o.read_write,
            mount_label: o.mount_label.as_deref().map(RString::from).into(),
            storage_opts: key_values_to_ffi(&o.storage_opts),
        }
    }
}

impl From<&FfiCreateOptions> for CreateOptions {
    fn from(o: &FfiCreateOptions) -> Self {
        CreateOptions {
            read_write: o.read_write,
            mount_label: o.mount_label.as_ref().map(|s| s.to_string()).into(),
            storage_opts: key_values_from_ffi_ref(&o.storage_opts),
        }
    }
}

impl From<&MountOptions> for FfiMountOptions {
    fn from(o: &MountOptions) -> Self {
        FfiMountOptions {
            mount_label: o.mount_label.as_deref().map(RString::from).into(),
            options: o
                .options
                .iter()
                .map(|s| RString::from(s.as_str()))
                .collect(),
            uid_maps: id_maps_to_ffi(&o.uid_maps),
            gid_maps: id_maps_to_ffi(&o.gid_maps),
        }
    }
}

impl From<&FfiMountOptions> for MountOptions {
    fn from(o: &FfiMountOptions) -> Self {
        MountOptions {
            mount_label: o.mount_label.as_ref().map(|s| s.to_string()).into(),
            options: o.options.iter().map(|s| s.to_string()).collect(),
            uid_maps: id_maps_from_ffi(&o.uid_maps),
            gid_maps: id_maps_from_ffi(&o.gid_maps),
        }
    }
}

impl From<&MountSpec> for FfiMountSpec {
    fn from(m: &MountSpec) -> Self {
        FfiMountSpec {
            kind: m.kind.as_str().into(),
            source: m.source.as_str().into(),
            options: m
                .options
                .iter()
                .map(|o| RString::from(o.as_str()))
                .collect(),
        }
    }
}

impl From<FfiMountSpec> for MountSpec {
    fn from(m: FfiMountSpec) -> Self {
        MountSpec {
            kind: m.kind.into(),
            source: m.source.into(),
            options: m.options.into_iter().map(String::from).collect(),
        }
    }
}

impl From<&NativeDiff> for FfiNativeDiff {
    fn from(d: &NativeDiff) -> Self {
        FfiNativeDiff {
            path: FfiPath::from_path(&d.path),
            whiteouts: d.whiteouts.code(),
        }
    }
}

impl From<FfiNativeDiff> for NativeDiff {
    fn from(d: FfiNativeDiff) -> Self {
        NativeDiff {
            path: d.path.to_path_buf(),
            whiteouts: WhiteoutFormat::from_code(d.whiteouts),
        }
    }
}

impl FfiInitArgs {
    /// The host's side: `args` on the wire, with the sink the driver's log
    /// events go to and the most verbose level the host records (a
    /// `FfiLogRecord::level` code, 0 for nothing).
    pub fn new(args: &InitArgs, log_sink: LogSinkBox, max_log_level: u8) -> Self {
        FfiInitArgs {
            home: FfiPath::from_path(&args.home),
            run_root: FfiPath::from_path(&args.run_root),
            options: key_values_to_ffi(&args.options),
            uid_maps: id_maps_to_ffi(&args.uid_maps),
            gid_maps: id_maps_to_ffi(&args.gid_maps),
            log_sink,
            max_log_level,
        }
    }

    /// The plugin's side: the plain `InitArgs` handed to `DriverPlugin::init`
    /// (the log sink and level are installed separately).
    pub fn to_init_args(&self) -> InitArgs {
        InitArgs {
            home: self.home.to_path_buf(),
            run_root: self.run_root.to_path_buf(),
            options: key_values_from_ffi_ref(&self.options),
            uid_maps: id_maps_from_ffi(&self.uid_maps),
            gid_maps: id_maps_from_ffi(&self.gid_maps),
        }
    }
}

/// Lets a `std::io::Read` be read from across the boundary.
pub struct ReadAsByteSource<R>(pub R);

impl<R: std::io::Read + Send> ByteSource for ReadAsByteSource<R> {
    fn read(&mut self, mut buf: RSliceMut<'_, u8>) -> RResult<usize, FfiError> {
        // A panic must not unwind through the extern "C" shim (that aborts the
        // process); it becomes an error for the reader on the other side.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            loop {
                match self.0.read(buf.as_mut_slice()) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(DriverError::io("read stream", &e)),
                }
            }
        }));
        match outcome {
            Ok(Ok(n)) => RResult::ROk(n),
            Ok(Err(e)) => RResult::RErr(e.into()),
            Err(payload) => RResult::RErr(
                DriverError::new(
                    ErrorKind::Panicked,
                    format!("read stream: panicked: {}", crate::panic_message(&*payload)),
                )
                .into(),
            ),
        }
    }
}

/// Reads a `ByteSource` from across the boundary as a `std::io::Read`; an error
/// from the other side arrives as an `io::Error` carrying its `DriverError`.
pub struct ByteSourceAsRead<S>(pub S);

impl<S: ByteSourceLike> std::io::Read for ByteSourceAsRead<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.0.read_into(buf) {
            RResult::ROk(n) => Ok(n),
            RResult::RErr(e) => Err(DriverError::from(e).into()),
        }
    }
}

/// A `ByteSource` trait object, owned (`'static`) or borrowed for a call.
pub trait ByteSourceLike {
    /// Reads into the front of `buf` through the trait object; `ROk(0)` is
    /// the end of the stream, as with `ByteSource::read`.
    fn read_into(&mut self, buf: &mut [u8]) -> RResult<usize, FfiError>;
}

impl ByteSourceLike for ByteSourceMut<'_> {
    fn read_into(&mut self, buf: &mut [u8]) -> RResult<usize, FfiError> {
        ByteSource::read(self, RSliceMut::from_mut_slice(buf))
    }
}
