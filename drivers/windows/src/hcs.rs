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

use std::path::Path;
use std::sync::OnceLock;

use strata_plugin_abi::{DriverError, Result};
use windows_sys::Win32::Foundation::{
    CloseHandle, ERROR_NOT_ALL_ASSIGNED, GetLastError, HANDLE, HMODULE,
};
use windows_sys::Win32::Security::{
    AdjustTokenPrivileges, LookupPrivilegeValueW, SE_PRIVILEGE_ENABLED, TOKEN_ADJUST_PRIVILEGES,
    TOKEN_PRIVILEGES, TOKEN_QUERY,
};
use windows_sys::Win32::System::HostComputeSystem as declared;
use windows_sys::Win32::System::LibraryLoader::{
    GetProcAddress, LOAD_LIBRARY_SEARCH_SYSTEM32, LoadLibraryExW,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};
use windows_sys::core::{GUID, HRESULT, PCWSTR};

use crate::layer_data::{LayerData, guid_text};
use crate::store::Hcs;

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
pub struct ComputeStorage {
    pub import_layer: ImportLayer,
    pub export_layer: ExportLayer,
    pub destroy_layer: DestroyLayer,
    pub initialize_writable_layer: InitializeWritableLayer,
    pub attach_layer_storage_filter: AttachLayerStorageFilter,
    pub detach_layer_storage_filter: DetachLayerStorageFilter,
    /// Not called by this version (base layers are imported like any
    /// other); looked up so a Windows too old to have it is told so.
    #[allow(dead_code)]
    pub setup_base_os_layer: SetupBaseOsLayer,
}

/// A NUL-terminated UTF-16 string.
fn wide(text: &str) -> Vec<u16> {
    text.encode_utf16().chain(Some(0)).collect()
}

impl ComputeStorage {
    /// The functions, loaded once per process; the error says what is
    /// missing.
    pub fn get() -> std::result::Result<&'static ComputeStorage, String> {
        static LOADED: OnceLock<std::result::Result<ComputeStorage, String>> = OnceLock::new();
        LOADED.get_or_init(load).as_ref().map_err(Clone::clone)
    }
}

/// Loads `name` from System32 only (never the current directory), for the
/// life of the process.
fn load_system_dll(name: &str) -> std::result::Result<HMODULE, String> {
    let wide_name = wide(name);
    // SAFETY: `wide_name` is a NUL-terminated UTF-16 string that outlives
    // the call; no file handle is passed (the second argument must be null).
    let module = unsafe {
        LoadLibraryExW(
            wide_name.as_ptr(),
            std::ptr::null_mut(),
            LOAD_LIBRARY_SEARCH_SYSTEM32,
        )
    };
    if module.is_null() {
        return Err(format!(
            "{name} not found ({})",
            std::io::Error::last_os_error()
        ));
    }
    Ok(module)
}

fn load() -> std::result::Result<ComputeStorage, String> {
    let module = load_system_dll("computestorage.dll")?;
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

/// `vmcompute.dll!NameToGuid(name, guid)`: the GUID HCS derives from a
/// layer folder's name. Undocumented, so no Microsoft declaration exists to
/// check this type against; it is the one hcsshim declares and every Windows
/// container tool relies on (the layer data names each layer by this GUID).
type NameToGuid = unsafe extern "system" fn(PCWSTR, *mut GUID) -> HRESULT;

/// The Host Compute Service as the driver uses it.
#[derive(Clone, Copy)]
pub struct HostComputeService {
    storage: &'static ComputeStorage,
    name_to_guid: NameToGuid,
}

impl HostComputeService {
    /// The service's functions, or what is missing.
    pub fn get() -> std::result::Result<HostComputeService, String> {
        static NAME_TO_GUID: OnceLock<std::result::Result<NameToGuid, String>> = OnceLock::new();
        let storage = ComputeStorage::get()?;
        let name_to_guid = NAME_TO_GUID
            .get_or_init(|| {
                let module = load_system_dll("vmcompute.dll")?;
                // SAFETY: `module` is loaded (never freed) and the name is a
                // NUL-terminated ASCII string.
                let found = unsafe { GetProcAddress(module, c"NameToGuid".as_ptr().cast()) };
                match found {
                    // SAFETY: vmcompute's NameToGuid has the type above (see
                    // its comment: the one hcsshim declares).
                    Some(pointer) => Ok(unsafe {
                        std::mem::transmute::<unsafe extern "system" fn() -> isize, NameToGuid>(
                            pointer,
                        )
                    }),
                    None => Err("vmcompute.dll has no NameToGuid".to_string()),
                }
            })
            .clone()?;
        Ok(HostComputeService {
            storage,
            name_to_guid,
        })
    }
}

/// A path as a NUL-terminated UTF-16 string.
fn wide_path(path: &Path) -> Vec<u16> {
    use std::os::windows::ffi::OsStrExt;
    path.as_os_str().encode_wide().chain(Some(0)).collect()
}

/// An HRESULT as the driver's error: the call, the code, and the system's
/// message for a Win32 code.
fn check(call: &str, target: &Path, hr: HRESULT) -> Result<()> {
    if hr >= 0 {
        return Ok(());
    }
    let code = hr as u32;
    // FACILITY_WIN32 (7): the low 16 bits are a Win32 error.
    let message = if (code >> 16) & 0x1fff == 7 {
        std::io::Error::from_raw_os_error((code & 0xffff) as i32).to_string()
    } else {
        "see the Host Compute Service's event log".to_string()
    };
    Err(DriverError::other(format!(
        "{call} on {}: HRESULT {code:#010x}: {message}",
        target.display()
    )))
}

/// Enables SeBackupPrivilege and SeRestorePrivilege for the process, once:
/// importing and exporting layers read and write files whatever their ACLs
/// say, as Windows' own tools do. The process must run as an administrator.
fn backup_privileges() -> Result<()> {
    static ENABLED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    ENABLED
        .get_or_init(|| {
            let mut token: HANDLE = std::ptr::null_mut();
            // SAFETY: the pseudo-handle of this process; `token` receives a
            // handle closed below.
            if unsafe {
                OpenProcessToken(
                    GetCurrentProcess(),
                    TOKEN_ADJUST_PRIVILEGES | TOKEN_QUERY,
                    &mut token,
                )
            } == 0
            {
                return Err(format!(
                    "open this process's token: {}",
                    std::io::Error::last_os_error()
                ));
            }
            let enabled = (|| {
                for name in ["SeBackupPrivilege", "SeRestorePrivilege"] {
                    let wide_name = wide(name);
                    let mut privileges = TOKEN_PRIVILEGES {
                        PrivilegeCount: 1,
                        ..Default::default()
                    };
                    privileges.Privileges[0].Attributes = SE_PRIVILEGE_ENABLED;
                    // SAFETY: NUL-terminated name; the LUID is written into
                    // our struct.
                    if unsafe {
                        LookupPrivilegeValueW(
                            std::ptr::null(),
                            wide_name.as_ptr(),
                            &mut privileges.Privileges[0].Luid,
                        )
                    } == 0
                    {
                        return Err(format!(
                            "look up {name}: {}",
                            std::io::Error::last_os_error()
                        ));
                    }
                    // SAFETY: `token` is open with TOKEN_ADJUST_PRIVILEGES; one
                    // privilege in a struct that outlives the call.
                    let adjusted = unsafe {
                        AdjustTokenPrivileges(
                            token,
                            0,
                            &privileges,
                            0,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                        )
                    };
                    // SAFETY: reads this thread's last error.
                    let last = unsafe { GetLastError() };
                    if adjusted == 0 || last == ERROR_NOT_ALL_ASSIGNED {
                        return Err(format!(
                            "enable {name}: the process does not hold it (run strata as an \
                             administrator)"
                        ));
                    }
                }
                Ok(())
            })();
            // SAFETY: opened above, closed once.
            unsafe { CloseHandle(token) };
            enabled
        })
        .clone()
        .map_err(DriverError::not_supported)
}

impl Hcs for HostComputeService {
    fn layer_guid(&self, name: &str) -> Result<String> {
        let wide_name = wide(name);
        let mut guid = GUID {
            data1: 0,
            data2: 0,
            data3: 0,
            data4: [0; 8],
        };
        // SAFETY: NUL-terminated name; `guid` is written by the call.
        let hr = unsafe { (self.name_to_guid)(wide_name.as_ptr(), &mut guid) };
        check("NameToGuid", Path::new(name), hr)?;
        Ok(guid_text(guid.data1, guid.data2, guid.data3, guid.data4))
    }

    fn initialize_writable_layer(&self, layer: &Path, data: &LayerData) -> Result<()> {
        let (path, json, options) = (wide_path(layer), wide(&data.to_json()), wide(""));
        // SAFETY: NUL-terminated strings that outlive the call.
        let hr = unsafe {
            (self.storage.initialize_writable_layer)(path.as_ptr(), json.as_ptr(), options.as_ptr())
        };
        check("HcsInitializeWritableLayer", layer, hr)
    }

    fn import_layer(&self, layer: &Path, source: &Path, data: &LayerData) -> Result<()> {
        backup_privileges()?;
        let (path, source_path, json) =
            (wide_path(layer), wide_path(source), wide(&data.to_json()));
        // SAFETY: NUL-terminated strings that outlive the call.
        let hr = unsafe {
            (self.storage.import_layer)(path.as_ptr(), source_path.as_ptr(), json.as_ptr())
        };
        check("HcsImportLayer", layer, hr)
    }

    fn export_layer(
        &self,
        layer: &Path,
        target: &Path,
        data: &LayerData,
        writable: bool,
    ) -> Result<()> {
        backup_privileges()?;
        let options = if writable {
            r#"{"IsWritableLayer":true}"#
        } else {
            "{}"
        };
        let (path, target_path, json, options) = (
            wide_path(layer),
            wide_path(target),
            wide(&data.to_json()),
            wide(options),
        );
        // SAFETY: NUL-terminated strings that outlive the call.
        let hr = unsafe {
            (self.storage.export_layer)(
                path.as_ptr(),
                target_path.as_ptr(),
                json.as_ptr(),
                options.as_ptr(),
            )
        };
        check("HcsExportLayer", layer, hr)
    }

    fn attach_filter(&self, layer: &Path, data: &LayerData) -> Result<()> {
        let (path, json) = (wide_path(layer), wide(&data.to_json()));
        // SAFETY: NUL-terminated strings that outlive the call.
        let hr =
            unsafe { (self.storage.attach_layer_storage_filter)(path.as_ptr(), json.as_ptr()) };
        check("HcsAttachLayerStorageFilter", layer, hr)
    }

    fn detach_filter(&self, layer: &Path) -> Result<()> {
        let path = wide_path(layer);
        // SAFETY: a NUL-terminated string that outlives the call.
        let hr = unsafe { (self.storage.detach_layer_storage_filter)(path.as_ptr()) };
        check("HcsDetachLayerStorageFilter", layer, hr)
    }

    fn destroy_layer(&self, layer: &Path) -> Result<()> {
        let path = wide_path(layer);
        // SAFETY: a NUL-terminated string that outlives the call.
        let hr = unsafe { (self.storage.destroy_layer)(path.as_ptr()) };
        check("HcsDestroyLayer", layer, hr)
    }
}
