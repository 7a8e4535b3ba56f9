//! The Host Compute Service's storage functions, found at run time.
//!
//! computestorage.dll exists only where the Windows Containers feature is
//! enabled (Windows Server, Windows 10/11 Pro with Containers), and not under
//! Wine. Calling the functions through Microsoft's bindings directly would
//! make the DLL an import of this library, which then would not load at all
//! on those systems; a driver that cannot say why it does not work there is
//! no use to selection. So the DLL is loaded with `LoadLibraryExW` (from
//! System32 only, never from the current directory) and each function found
//! with `GetProcAddress`.
//!
//! The function types are written here, but each is checked against
//! windows-sys's declaration (generated from Microsoft's metadata) by a
//! constant, beside its lookup, that coerces the declared function to our
//! type: a mismatch is a compile error, and an unused constant is never
//! code-generated, so no import of computestorage.dll is emitted.

use std::sync::OnceLock;

use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::System::HostComputeSystem as declared;
use windows_sys::Win32::System::LibraryLoader::{
    GetProcAddress, LOAD_LIBRARY_SEARCH_SYSTEM32, LoadLibraryExW,
};
use windows_sys::core::{HRESULT, PCWSTR};

/// `HcsImportLayer(layerPath, sourceFolderPath, layerData)`.
pub type ImportLayer = unsafe extern "system" fn(PCWSTR, PCWSTR, PCWSTR) -> HRESULT;
/// `HcsExportLayer(layerPath, exportFolderPath, layerData, options)`.
pub type ExportLayer = unsafe extern "system" fn(PCWSTR, PCWSTR, PCWSTR, PCWSTR) -> HRESULT;
/// `HcsDestroyLayer(layerPath)`.
pub type DestroyLayer = unsafe extern "system" fn(PCWSTR) -> HRESULT;
/// `HcsInitializeWritableLayer(writableLayerPath, layerData, options)`.
pub type InitializeWritableLayer = unsafe extern "system" fn(PCWSTR, PCWSTR, PCWSTR) -> HRESULT;
/// `HcsAttachLayerStorageFilter(layerPath, layerData)`.
pub type AttachLayerStorageFilter = unsafe extern "system" fn(PCWSTR, PCWSTR) -> HRESULT;
/// `HcsDetachLayerStorageFilter(layerPath)`.
pub type DetachLayerStorageFilter = unsafe extern "system" fn(PCWSTR) -> HRESULT;
/// `HcsSetupBaseOSLayer(layerPath, vhdHandle, options)`.
pub type SetupBaseOsLayer = unsafe extern "system" fn(PCWSTR, HANDLE, PCWSTR) -> HRESULT;

/// The storage functions of computestorage.dll.
#[allow(dead_code)] // Called by the layer operations, which come next.
pub struct ComputeStorage {
    pub import_layer: ImportLayer,
    pub export_layer: ExportLayer,
    pub destroy_layer: DestroyLayer,
    pub initialize_writable_layer: InitializeWritableLayer,
    pub attach_layer_storage_filter: AttachLayerStorageFilter,
    pub detach_layer_storage_filter: DetachLayerStorageFilter,
    pub setup_base_os_layer: SetupBaseOsLayer,
}

/// A NUL-terminated UTF-16 string.
fn wide(text: &str) -> Vec<u16> {
    text.encode_utf16().chain(Some(0)).collect()
}

impl ComputeStorage {
    /// The functions, loaded once per process; the error says what is
    /// missing.
    pub fn get() -> Result<&'static ComputeStorage, String> {
        static LOADED: OnceLock<Result<ComputeStorage, String>> = OnceLock::new();
        LOADED.get_or_init(load).as_ref().map_err(Clone::clone)
    }
}

fn load() -> Result<ComputeStorage, String> {
    let name = wide("computestorage.dll");
    // SAFETY: `name` is a NUL-terminated UTF-16 string that outlives the
    // call; no file handle is passed (the second argument must be null).
    let module = unsafe {
        LoadLibraryExW(
            name.as_ptr(),
            std::ptr::null_mut(),
            LOAD_LIBRARY_SEARCH_SYSTEM32,
        )
    };
    if module.is_null() {
        return Err(format!(
            "computestorage.dll not found ({})",
            std::io::Error::last_os_error()
        ));
    }
    // The module stays loaded for the life of the process (never freed), so
    // the pointers below stay valid. One identifier names both the export
    // looked up and Microsoft's declaration it is checked against, so no
    // function can be looked up under another's type.
    macro_rules! function {
        ($name:ident, $type:ty) => {{
            // Checked at compile time, never code-generated: no import.
            const _: $type = declared::$name;
            // SAFETY: `module` is a loaded module and the name is a
            // NUL-terminated ASCII string.
            let found =
                unsafe { GetProcAddress(module, concat!(stringify!($name), "\0").as_ptr()) };
            match found {
                // SAFETY: the export $name has the type of Microsoft's
                // declaration of it, which the constant above proves equal
                // to $type.
                Some(pointer) => unsafe {
                    std::mem::transmute::<unsafe extern "system" fn() -> isize, $type>(pointer)
                },
                None => {
                    return Err(format!(
                        "computestorage.dll has no {}: this Windows is too old for the driver",
                        stringify!($name)
                    ));
                }
            }
        }};
    }
    Ok(ComputeStorage {
        import_layer: function!(HcsImportLayer, ImportLayer),
        export_layer: function!(HcsExportLayer, ExportLayer),
        destroy_layer: function!(HcsDestroyLayer, DestroyLayer),
        initialize_writable_layer: function!(HcsInitializeWritableLayer, InitializeWritableLayer),
        attach_layer_storage_filter: function!(
            HcsAttachLayerStorageFilter,
            AttachLayerStorageFilter
        ),
        detach_layer_storage_filter: function!(
            HcsDetachLayerStorageFilter,
            DetachLayerStorageFilter
        ),
        setup_base_os_layer: function!(HcsSetupBaseOSLayer, SetupBaseOsLayer),
    })
}
