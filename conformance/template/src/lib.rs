//! The library a strata host loads: one driver type, exported once.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod driver;

pub use driver::ExampleDriver;

strata_plugin_abi::export_driver!(ExampleDriver);
