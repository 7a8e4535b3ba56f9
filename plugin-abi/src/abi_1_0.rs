//! The driver object and root module exactly as ABI 1.0 laid them out,
//! frozen, so this host loads drivers built before 1.1.
//!
//! abi_stable accepts a library only if its vtables have at least the
//! methods the host's own types have: a host whose `DriverObject` grew
//! (1.1 appended `describe_mount`) would refuse every 1.0 driver. So the
//! host keeps each earlier minor's types here, loads an older library
//! through them (same type names, same layout: abi_stable still checks it
//! field by field), and wraps its object in an adapter that answers the
//! methods the driver never had with their "not supported" defaults.
//!
//! Never edit these types: they are what 1.0 drivers were built with.

// `#[sabi_trait]` expands to impl blocks inside consts, which this lint flags
// in code we do not write.
#![allow(non_local_definitions)]

use abi_stable::{
    StableAbi, declare_root_module_statics,
    library::RootModule,
    sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, ROption, RResult, RStr, RString, RVec},
};

use crate::ffi::{
    ByteSourceBox, ByteSourceMut, FfiCreateOptions, FfiError, FfiInitArgs, FfiKeyValue,
    FfiMountOptions, FfiNativeDiff, FfiPath,
};

/// ABI 1.0's driver object (see `ffi::DriverObject` for each method).
#[sabi_trait]
pub trait DriverObject: Send + Sync {
    /// `GraphDriver::name`.
    fn name(&self) -> RString;
    /// `GraphDriver::status`.
    fn status(&self) -> RVec<FfiKeyValue>;
    /// `GraphDriver::capabilities`.
    fn capabilities(&self) -> u64;
    /// `GraphDriver::metadata`.
    fn metadata(&self, id: RStr<'_>) -> RResult<RVec<FfiKeyValue>, FfiError>;
    /// `GraphDriver::create`.
    fn create(
        &self,
        id: RStr<'_>,
        parent: ROption<RStr<'_>>,
        options: &FfiCreateOptions,
    ) -> RResult<(), FfiError>;
    /// `GraphDriver::remove`.
    fn remove(&self, id: RStr<'_>) -> RResult<(), FfiError>;
    /// `GraphDriver::get`.
    fn get(&self, id: RStr<'_>, options: &FfiMountOptions) -> RResult<FfiPath, FfiError>;
    /// `GraphDriver::put`.
    fn put(&self, id: RStr<'_>) -> RResult<(), FfiError>;
    /// `GraphDriver::exists`.
    fn exists(&self, id: RStr<'_>) -> RResult<bool, FfiError>;
    /// `GraphDriver::list`.
    fn list(&self) -> RResult<RVec<RString>, FfiError>;
    /// `GraphDriver::cleanup`.
    fn cleanup(&self) -> RResult<(), FfiError>;
    /// `GraphDriver::native_diff`.
    fn native_diff(&self, id: RStr<'_>) -> RResult<ROption<FfiNativeDiff>, FfiError>;
    /// `GraphDriver::diff`.
    fn diff(&self, id: RStr<'_>, parent: ROption<RStr<'_>>) -> RResult<ByteSourceBox, FfiError>;
    /// `GraphDriver::apply_diff`.
    fn apply_diff(
        &self,
        id: RStr<'_>,
        parent: ROption<RStr<'_>>,
        diff: ByteSourceMut<'_>,
    ) -> RResult<u64, FfiError>;
    /// `GraphDriver::diff_size`: the end of ABI 1.0's prefix.
    #[sabi(last_prefix_field)]
    fn diff_size(&self, id: RStr<'_>, parent: ROption<RStr<'_>>) -> RResult<u64, FfiError>;
}

/// An owned ABI 1.0 driver object.
pub type DriverBox = DriverObject_TO<'static, RBox<()>>;

/// ABI 1.0's root module.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = DriverModuleRef)))]
#[sabi(missing_field(panic))]
pub struct DriverModule {
    /// The driver's name in configuration.
    pub name: RStr<'static>,
    /// One line for `strata drivers`.
    pub description: RStr<'static>,
    /// Starts a driver on a home.
    #[sabi(last_prefix_field)]
    pub init: extern "C" fn(args: FfiInitArgs) -> RResult<DriverBox, FfiError>,
}

impl RootModule for DriverModuleRef {
    declare_root_module_statics! {DriverModuleRef}
    const BASE_NAME: &'static str = "strata_driver";
    const NAME: &'static str = "strata_driver";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new("1.0.0");
}

/// An ABI 1.0 driver object seen through this host's `DriverObject`: each
/// 1.0 method forwarded, the later ones left to their defaults.
pub struct Release1_0Object(pub DriverBox);

impl crate::ffi::DriverObject for Release1_0Object {
    fn name(&self) -> RString {
        self.0.name()
    }
    fn status(&self) -> RVec<FfiKeyValue> {
        self.0.status()
    }
    fn capabilities(&self) -> u64 {
        self.0.capabilities()
    }
    fn metadata(&self, id: RStr<'_>) -> RResult<RVec<FfiKeyValue>, FfiError> {
        self.0.metadata(id)
    }
    fn create(
        &self,
        id: RStr<'_>,
        parent: ROption<RStr<'_>>,
        options: &FfiCreateOptions,
    ) -> RResult<(), FfiError> {
        self.0.create(id, parent, options)
    }
    fn remove(&self, id: RStr<'_>) -> RResult<(), FfiError> {
        self.0.remove(id)
    }
    fn get(&self, id: RStr<'_>, options: &FfiMountOptions) -> RResult<FfiPath, FfiError> {
        self.0.get(id, options)
    }
    fn put(&self, id: RStr<'_>) -> RResult<(), FfiError> {
        self.0.put(id)
    }
    fn exists(&self, id: RStr<'_>) -> RResult<bool, FfiError> {
        self.0.exists(id)
    }
    fn list(&self) -> RResult<RVec<RString>, FfiError> {
        self.0.list()
    }
    fn cleanup(&self) -> RResult<(), FfiError> {
        self.0.cleanup()
    }
    fn native_diff(&self, id: RStr<'_>) -> RResult<ROption<FfiNativeDiff>, FfiError> {
        self.0.native_diff(id)
    }
    fn diff(&self, id: RStr<'_>, parent: ROption<RStr<'_>>) -> RResult<ByteSourceBox, FfiError> {
        self.0.diff(id, parent)
    }
    fn apply_diff(
        &self,
        id: RStr<'_>,
        parent: ROption<RStr<'_>>,
        diff: ByteSourceMut<'_>,
    ) -> RResult<u64, FfiError> {
        self.0.apply_diff(id, parent, diff)
    }
    fn diff_size(&self, id: RStr<'_>, parent: ROption<RStr<'_>>) -> RResult<u64, FfiError> {
        self.0.diff_size(id, parent)
    }
}
