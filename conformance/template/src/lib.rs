//! The library a strata host loads: one driver type, exported once.

pub mod driver;

pub use driver::ExampleDriver;

strata_plugin_abi::export_driver!(ExampleDriver);
