//! # strata-plugin-abi
//!
//! The stable boundary between strata and its storage drivers. A driver is a
//! dynamic library (`libstrata_driver_<name>.so`) that the host loads at run
//! time; this crate is the only thing both sides share.
//!
//! * Driver authors implement [`GraphDriver`] and [`DriverPlugin`] with plain
//!   Rust types and write `export_driver!(MyDriver);` in the library crate
//!   (`crate-type = ["cdylib", "rlib"]`).
//! * The host calls [`PluginLibrary::open`] / [`load_driver`] and gets a
//!   [`LoadedDriver`], which is itself a [`GraphDriver`]: code written against
//!   the trait cannot tell a plugin from a driver linked in-process.
//!
//! What the boundary guarantees:
//!
//! * A panic inside a driver comes back as an error of kind
//!   [`ErrorKind::Panicked`] naming the operation; the host carries on.
//! * A driver's `tracing` events reach the host's subscriber (target
//!   `strata::driver`, with `driver` and `origin` fields), filtered at the
//!   host's level before they cross.
//! * Byte streams cross both ways (the host's reader into `apply_diff`, a
//!   driver's reader out of `diff`), and an error on either side reaches the
//!   other with its kind, errno and message.
//! * A library built against another major version, or whose types do not have
//!   the layout this host expects, is refused when opened, with an error that
//!   names the file and the mismatch.
//!
//! ## How the ABI grows (rules for every change to this crate)
//!
//! The crate is versioned 1.x; a host loads any driver whose major version
//! matches, older or newer minor.
//!
//! 1. **Append only.** A new driver method goes after the last method of
//!    `ffi::DriverObject`, *below* the one marked `#[sabi(last_prefix_field)]`,
//!    and has a default body that answers `NotSupported`. A new root-module
//!    field goes after `init` in `ffi::DriverModule`, likewise optional.
//!    Nothing is reordered, removed, or changed in type. abi_stable itself
//!    accepts a library only if its vtables have at least the host's
//!    methods (a newer driver in an older host is fine; the reverse is
//!    refused), so the minor that appends also freezes the previous minor's
//!    `DriverObject` and `DriverModule` in a module of their own (`abi_1_0`
//!    for 1.0): the host loads an older driver through those types, checked
//!    field by field as always, and wraps its object so that the methods it
//!    never had answer their defaults. 1.1 appended `describe_mount`; the
//!    boundary tests build a driver against 1.0's sources, as released, from
//!    this repository's history and load it.
//! 2. **Frozen records.** The `Ffi*` structs never change within a major
//!    version. New information travels through new methods or through the
//!    key/value lists that exist for it (`storage_opts`, `options`, `status`,
//!    `metadata`).
//! 3. **Open codes.** Error kinds, whiteout formats and capability bits are
//!    numbers on the wire. New codes may be added; a host that does not know one
//!    sees `Unknown(code)` (or a `bit-N` capability) instead of failing.
//! 4. **Major bumps** move `last_prefix_field` to the current last method and
//!    may clean up; every driver must then be rebuilt.
//! 5. Everything abi_stable-specific stays inside this crate (`ffi`, `export`,
//!    `host`), so its backend could change without touching any driver's code.

#![deny(missing_docs)]

mod abi_1_0;
mod driver;
mod error;
mod export;
pub mod ffi;
mod host;
mod log_codes;
mod types;

pub use driver::{DriverPlugin, GraphDriver};
pub use error::{DriverError, ErrorKind, Result};
pub use host::{HOST_ABI_VERSION, LoadError, LoadedDriver, PluginLibrary, load_driver};
pub use types::{
    Capabilities, CreateOptions, IdMap, InitArgs, KeyValues, MountOptions, MountSpec,
    NATIVE_DIFF_WHITEOUTS_KEY, NativeDiff, WhiteoutFormat, is_valid_layer_id, validate_layer_id,
};

/// The symbol abi_stable looks up in a library: the library header. Spelled out
/// because an attribute needs a literal; a unit test checks it against
/// abi_stable's own constant.
#[doc(hidden)]
pub const ROOT_MODULE_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

/// Items the `export_driver!` expansion uses; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::export::root_module;
    pub use crate::ffi::DriverModuleRef;
    pub use abi_stable::library::{
        __call_root_module_loader, CheckTypeLayout, LibHeader, RootModuleResult,
    };
}

/// Makes the driver type `$driver` (a [`DriverPlugin`]) the driver of this
/// library. Use it once, in a crate built as a `cdylib`.
///
/// ```ignore
/// strata_plugin_abi::export_driver!(MyDriver);
/// ```
#[macro_export]
macro_rules! export_driver {
    ($driver:ty) => {
        #[doc(hidden)]
        #[unsafe(export_name = "_1as_0lib_1header_0root_bmodule_bloader")]
        pub static STRATA_DRIVER_LIBRARY_HEADER: $crate::__private::LibHeader = {
            extern "C" fn strata_driver_root_module() -> $crate::__private::RootModuleResult {
                $crate::__private::__call_root_module_loader(
                    $crate::__private::root_module::<$driver>,
                )
            }
            // SAFETY: the constructor returns the module built by `root_module`,
            // whose type is `DriverModuleRef`, the type named here.
            unsafe {
                $crate::__private::LibHeader::from_constructor::<$crate::__private::DriverModuleRef>(
                    strata_driver_root_module,
                    $crate::__private::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a payload that is not text".to_string()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_module_symbol_is_abi_stables() {
        assert_eq!(
            super::ROOT_MODULE_SYMBOL,
            abi_stable::library::ROOT_MODULE_LOADER_NAME
        );
    }
}
