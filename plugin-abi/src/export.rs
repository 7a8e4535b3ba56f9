//! The plugin side: turning a `DriverPlugin` into the root module of a library.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Once, RwLock};

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{ROption, RResult, RStr, RString, RVec};

use crate::driver::DriverPlugin;
use crate::error::{DriverError, ErrorKind, Result};
use crate::ffi::{
    ByteSource_TO, ByteSourceAsRead, ByteSourceBox, ByteSourceMut, DriverBox, DriverModule,
    DriverModuleRef, DriverObject, DriverObject_TO, FfiCreateOptions, FfiError, FfiInitArgs,
    FfiKeyValue, FfiLogRecord, FfiMountOptions, FfiMountSpec, FfiNativeDiff, FfiPath, LogSinkBox,
    ReadAsByteSource, key_values_to_ffi,
};
use crate::log_codes::level_code;
use crate::types::MountOptions;

/// Builds the root module for driver type `T`. Called once per library, by the
/// loader function `export_driver!` generates.
pub fn root_module<T: DriverPlugin>() -> DriverModuleRef {
    DriverModule {
        name: RStr::from_str(T::NAME),
        description: RStr::from_str(T::DESCRIPTION),
        init: init_shim::<T>,
    }
    .leak_into_prefix()
}

extern "C" fn init_shim<T: DriverPlugin>(args: FfiInitArgs) -> RResult<DriverBox, FfiError> {
    let plain_args = args.to_init_args();
    install_log_forwarding(args.log_sink, args.max_log_level);
    let started = guard(
        || format!("init {} driver", T::NAME),
        || T::init(&plain_args),
    );
    match started {
        Ok(driver) => {
            tracing::debug!(home = %plain_args.home.display(), "driver started");
            RResult::ROk(DriverObject_TO::from_value(
                DriverAdapter(driver),
                TD_Opaque,
            ))
        }
        Err(err) => RResult::RErr(err.into()),
    }
}

/// Runs `f`, turning a panic into a `Panicked` error that names the operation,
/// so a driver bug never unwinds into the host (which would abort it).
fn guard<R>(operation: impl FnOnce() -> String, f: impl FnOnce() -> Result<R>) -> Result<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => Err(DriverError::new(
            ErrorKind::Panicked,
            format!(
                "{}: driver panicked: {}",
                operation(),
                crate::panic_message(&*payload)
            ),
        )),
    }
}

fn to_ffi<R, F>(result: Result<R>, map: impl FnOnce(R) -> F) -> RResult<F, FfiError> {
    match result {
        Ok(value) => RResult::ROk(map(value)),
        Err(err) => RResult::RErr(err.into()),
    }
}

fn opt<'a>(parent: &'a ROption<RStr<'a>>) -> Option<&'a str> {
    match parent {
        ROption::RSome(p) => Some(p.as_str()),
        ROption::RNone => None,
    }
}

/// Wraps a driver so the host can call it through the `DriverObject` vtable.
struct DriverAdapter<T>(T);

impl<T: DriverPlugin> DriverObject for DriverAdapter<T> {
    fn name(&self) -> RString {
        // A driver whose name() panics is still called by the name it exported.
        guard(|| "name".into(), || Ok(self.0.name()))
            .unwrap_or_else(|_| T::NAME.to_string())
            .into()
    }

    fn status(&self) -> RVec<FfiKeyValue> {
        match guard(|| "status".into(), || Ok(self.0.status())) {
            Ok(status) => key_values_to_ffi(&status),
            Err(err) => key_values_to_ffi(&[("error", err.message())].into_iter().collect()),
        }
    }

    fn capabilities(&self) -> u64 {
        guard(|| "capabilities".into(), || Ok(self.0.capabilities()))
            .map(|c| c.bits())
            .unwrap_or(0)
    }

    fn metadata(&self, id: RStr<'_>) -> RResult<RVec<FfiKeyValue>, FfiError> {
        let r = guard(
            || format!("metadata of layer {id}"),
            || self.0.metadata(&id),
        );
        to_ffi(r, |kv| key_values_to_ffi(&kv))
    }

    fn create(
        &self,
        id: RStr<'_>,
        parent: ROption<RStr<'_>>,
        options: &FfiCreateOptions,
    ) -> RResult<(), FfiError> {
        let r = guard(
            || format!("create layer {id}"),
            || self.0.create(&id, opt(&parent), &options.into()),
        );
        to_ffi(r, |()| ())
    }

    fn remove(&self, id: RStr<'_>) -> RResult<(), FfiError> {
        to_ffi(
            guard(|| format!("remove layer {id}"), || self.0.remove(&id)),
            |()| (),
        )
    }

    fn get(&self, id: RStr<'_>, options: &FfiMountOptions) -> RResult<FfiPath, FfiError> {
        let r = guard(
            || format!("mount layer {id}"),
            || self.0.get(&id, &options.into()),
        );
        to_ffi(r, |path| FfiPath::from_path(&path))
    }

    fn put(&self, id: RStr<'_>) -> RResult<(), FfiError> {
        to_ffi(
            guard(|| format!("unmount layer {id}"), || self.0.put(&id)),
            |()| (),
        )
    }

    fn exists(&self, id: RStr<'_>) -> RResult<bool, FfiError> {
        to_ffi(
            guard(|| format!("exists layer {id}"), || self.0.exists(&id)),
            |b| b,
        )
    }

    fn list(&self) -> RResult<RVec<RString>, FfiError> {
        to_ffi(guard(|| "list layers".into(), || self.0.list()), |ids| {
            ids.into_iter().map(RString::from).collect()
        })
    }

    fn cleanup(&self) -> RResult<(), FfiError> {
        to_ffi(guard(|| "cleanup".into(), || self.0.cleanup()), |()| ())
    }

    fn native_diff(&self, id: RStr<'_>) -> RResult<ROption<FfiNativeDiff>, FfiError> {
        let r = guard(
            || format!("native diff of layer {id}"),
            || self.0.native_diff(&id),
        );
        to_ffi(r, |d| d.as_ref().map(FfiNativeDiff::from).into())
    }

    fn diff(&self, id: RStr<'_>, parent: ROption<RStr<'_>>) -> RResult<ByteSourceBox, FfiError> {
        let r = guard(
            || format!("diff of layer {id}"),
            || self.0.diff(&id, opt(&parent)),
        );
        to_ffi(r, |reader| {
            ByteSource_TO::from_value(ReadAsByteSource(reader), TD_Opaque)
        })
    }

    fn apply_diff(
        &self,
        id: RStr<'_>,
        parent: ROption<RStr<'_>>,
        diff: ByteSourceMut<'_>,
    ) -> RResult<u64, FfiError> {
        let mut reader = ByteSourceAsRead(diff);
        let r = guard(
            || format!("apply diff to layer {id}"),
            || self.0.apply_diff(&id, opt(&parent), &mut reader),
        );
        to_ffi(r, |n| n)
    }

    fn diff_size(&self, id: RStr<'_>, parent: ROption<RStr<'_>>) -> RResult<u64, FfiError> {
        let r = guard(
            || format!("diff size of layer {id}"),
            || self.0.diff_size(&id, opt(&parent)),
        );
        to_ffi(r, |n| n)
    }

    fn describe_mount(
        &self,
        id: RStr<'_>,
        options: &FfiMountOptions,
    ) -> RResult<RVec<FfiMountSpec>, FfiError> {
        let options = MountOptions::from(options);
        let r = guard(
            || format!("describe the mount of layer {id}"),
            || self.0.describe_mount(&id, &options),
        );
        to_ffi(r, |mounts| mounts.iter().map(FfiMountSpec::from).collect())
    }
}

// ---- log forwarding, plugin side ----
//
// A cdylib carries its own copy of tracing's globals, so events a driver emits
// never reach the host's subscriber by themselves. At init the plugin installs,
// in its own copy, a subscriber that hands every enabled event to the host's
// sink. The sink is replaced on every init, so a library started twice logs to
// the latest host sink. Spans are not forwarded in ABI 1.0; their events are.

static LOG_SINK: RwLock<Option<LogSinkBox>> = RwLock::new(None);
static MAX_LEVEL: AtomicU8 = AtomicU8::new(0);
static SUBSCRIBER_INSTALLED: Once = Once::new();

fn install_log_forwarding(sink: LogSinkBox, max_level: u8) {
    *LOG_SINK.write().unwrap_or_else(|e| e.into_inner()) = Some(sink);
    MAX_LEVEL.store(max_level, Ordering::Relaxed);
    SUBSCRIBER_INSTALLED.call_once(|| {
        // Fails only if the driver installed its own global subscriber; then its
        // choice stands.
        let _ = tracing::subscriber::set_global_default(ForwardToHost);
        tracing::callsite::rebuild_interest_cache();
        // The plugin's own panic hook (its own copy of std) would write to stderr;
        // send the message through the host's log instead. The panic still becomes
        // an error at the boundary.
        std::panic::set_hook(Box::new(|info| {
            tracing::error!(target: "strata::panic", "{info}");
        }));
    });
}

struct ForwardToHost;

impl tracing::Subscriber for ForwardToHost {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        // The host's level may change when the library is started again, so
        // decide per event rather than caching a callsite's answer.
        tracing::subscriber::Interest::sometimes()
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        level_code(*metadata.level()) <= MAX_LEVEL.load(Ordering::Relaxed)
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = FieldCollector::default();
        event.record(&mut fields);
        let record = FfiLogRecord {
            level: level_code(*event.metadata().level()),
            target: event.metadata().target().into(),
            message: fields.message.into(),
            fields: fields.others.into(),
        };
        if let Some(sink) = LOG_SINK.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            crate::ffi::LogSink::log(sink, record);
        }
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

#[derive(Default)]
struct FieldCollector {
    message: String,
    others: String,
}

impl tracing::field::Visit for FieldCollector {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            if !self.others.is_empty() {
                self.others.push(' ');
            }
            let _ = write!(self.others, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        use std::fmt::Write;
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            if !self.others.is_empty() {
                self.others.push(' ');
            }
            let _ = write!(self.others, "{}={value}", field.name());
        }
    }
}
