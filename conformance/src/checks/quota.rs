//! Size limits, for drivers that claim them; refusal for those that do not.

use std::fs;
use std::io::Write;

use strata_plugin_abi::{Capabilities, CreateOptions, ErrorKind};

use super::{Layers, check, io};
use crate::{Check, CheckOutcome, Suite, Verdict, ensure};

pub fn checks() -> Vec<Check> {
    vec![
        check(
            "quota/size-option-refused-without-quota",
            "A driver not claiming quota refuses the size option with NotSupported or InvalidInput, never accepting a limit it would not enforce.",
            refused_without_quota,
        ),
        check(
            "quota/writes-over-the-limit-fail",
            "For drivers claiming quota: writes under a layer's size limit succeed and 40 MiB into a 20 MiB layer fail.",
            writes_over_the_limit_fail,
        ),
    ]
}

fn sized(size: &str) -> CreateOptions {
    let mut options = CreateOptions {
        read_write: true,
        ..Default::default()
    };
    options.storage_opts.push("size", size);
    options
}

fn refused_without_quota(suite: &Suite) -> CheckOutcome {
    if suite.driver.capabilities().contains(Capabilities::QUOTA) {
        return Err(Verdict::Skip(
            "the driver claims quota; see quota/writes-over-the-limit-fail".into(),
        ));
    }
    let result = suite
        .driver
        .create("conformance-sized", None, &sized("10M"));
    if result.is_ok() {
        let _ = suite.driver.remove("conformance-sized");
        return Err(Verdict::Fail(
            "a size limit was accepted by a driver that does not claim quota: it would not be enforced".into(),
        ));
    }
    let kind = result.unwrap_err().kind();
    ensure!(
        matches!(kind, ErrorKind::NotSupported | ErrorKind::InvalidInput),
        "the size option was refused as {kind}, expected not supported"
    );
    Ok(())
}

fn writes_over_the_limit_fail(suite: &Suite) -> CheckOutcome {
    if !suite.driver.capabilities().contains(Capabilities::QUOTA) {
        return Err(Verdict::Skip(
            "the driver does not claim quota (capability quota)".into(),
        ));
    }
    let mut layers = Layers::new(suite.driver);
    layers.create_with("conformance-quota", None, &sized("20M"))?;
    let path = layers.mount("conformance-quota")?;
    let under = fs::write(path.join("under"), vec![1u8; 5 << 20]);
    let over = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(path.join("over"))?;
        for _ in 0..40 {
            f.write_all(&[2u8; 1 << 20])?;
        }
        f.sync_all()
    })();
    layers.unmount("conformance-quota")?;
    io("a write under the limit", under)?;
    ensure!(
        over.is_err(),
        "40 MiB were written into a layer limited to 20 MiB"
    );
    Ok(())
}
