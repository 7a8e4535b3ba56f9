//! Mounts as data (`describe_mount`, ABI 1.1): what a driver describes,
//! performed as containerd performs a snapshotter's mounts, shows the tree
//! `get` shows, takes writes into the same layer, and refuses writes where
//! it says `ro`. A driver that does not describe its mounts is skipped with
//! that reason: the host then binds what `get` returns.

use std::fs;
use std::path::{Path, PathBuf};

use strata_driver_kit::copy::{CopyOptions, DataCopy, copy_tree};
use strata_plugin_abi::{
    Capabilities, CreateOptions, ErrorKind, GraphDriver, MountOptions, MountSpec,
};

use super::{Layers, check, expect_kind, io, needs_root};
use crate::tree::{self, Compare, compare_trees_with};
use crate::{Check, CheckOutcome, Suite, Verdict, ensure};

pub fn checks() -> Vec<Check> {
    vec![
        check(
            "described-mount/same-tree-as-get",
            "A layer's described mount, performed on an empty directory, shows the tree get shows (read-write and read-only, parent and child), every kind of file included.",
            same_tree_as_get,
        ),
        check(
            "described-mount/writes-reach-the-layer",
            "Files written, removed and made through a read-write layer's described mount are the layer's: a later get shows them.",
            writes_reach_the_layer,
        ),
        check(
            "described-mount/read-only-refuses-writes",
            "A mount described with ro (and, for drivers claiming read-only-layers, any image layer's) refuses writes; describing a layer that does not exist is NotFound.",
            read_only_refuses_writes,
        ),
    ]
}

/// A performed description, unmounted when dropped (a failing check leaves
/// no mount behind).
struct Performed {
    target: PathBuf,
    mounted: usize,
}

impl Performed {
    fn new(target: &Path, mounts: &[MountSpec]) -> Result<Performed, Verdict> {
        io("create the mount target", fs::create_dir_all(target))?;
        let mut performed = Performed {
            target: target.to_path_buf(),
            mounted: 0,
        };
        for spec in mounts {
            io(
                format!(
                    "perform the described mount {spec:?} on {}",
                    target.display()
                ),
                strata_driver_kit::mounts::perform(spec, target),
            )?;
            performed.mounted += 1;
        }
        Ok(performed)
    }
}

impl Drop for Performed {
    fn drop(&mut self) {
        for _ in 0..self.mounted {
            if let Err(e) =
                rustix::mount::unmount(&self.target, rustix::mount::UnmountFlags::DETACH)
            {
                tracing::warn!(target = %self.target.display(), error = %e, "conformance: could not unmount a described mount");
            }
        }
    }
}

/// The description of `id`, or the skip that says the driver gives none.
fn describe(
    driver: &dyn GraphDriver,
    id: &str,
    read_only: bool,
) -> Result<Vec<MountSpec>, Verdict> {
    let options = MountOptions {
        options: if read_only {
            vec!["ro".into()]
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    match driver.describe_mount(id, &options) {
        Ok(mounts) if mounts.is_empty() => Err(Verdict::Fail(format!(
            "describe the mount of {id}: no mounts described (a driver that cannot describe answers NotSupported)"
        ))),
        Ok(mounts) => Ok(mounts),
        Err(e) if e.kind() == ErrorKind::NotSupported => Err(Verdict::Skip(format!(
            "the driver does not describe its mounts as data ({e}); the host binds what get returns instead"
        ))),
        Err(e) => Err(Verdict::Fail(format!("describe the mount of {id}: {e}"))),
    }
}

/// Where a check performs descriptions: a directory of its own, named for
/// what it is (`strata-described-*` in the temporary directory), apart from
/// the driver's home and from scratch filesystems other checks and tests
/// watch for leftovers.
fn scratch() -> Result<tempfile::TempDir, Verdict> {
    io(
        "make a scratch directory",
        tempfile::Builder::new()
            .prefix("strata-described-")
            .tempdir(),
    )
}

fn same_tree_as_get(suite: &Suite) -> CheckOutcome {
    needs_root()?;
    let driver = suite.driver;
    let mut layers = Layers::new(driver);
    let (base, child) = ("conformance-described-base", "conformance-described-child");
    layers.create(base, None)?;
    // Asked first, so a driver that does not describe is skipped before
    // anything is built.
    describe(driver, base, true)?;
    let path = layers.mount(base)?;
    let omitted = tree::build_every_kind_that_fits(&path);
    layers.unmount(base)?;
    layers.create(child, Some(base))?;
    let path = layers.mount(child)?;
    io(
        "write in the child",
        fs::write(path.join("child-file"), b"the child's"),
    )?;
    io(
        "remove in the child",
        fs::remove_file(path.join("etc/hostname")).or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(e)
            }
        }),
    )?;
    layers.unmount(child)?;

    let scratch = scratch()?;
    for (n, (id, read_only)) in [(child, false), (child, true), (base, true)]
        .into_iter()
        .enumerate()
    {
        // What get shows, copied aside, so the layer is never mounted twice
        // at once (two overlays on one upper directory are undefined).
        let reference = scratch.path().join(format!("reference-{n}"));
        let shown = layers.mount(id)?;
        let copied = copy_tree(
            &shown,
            &reference,
            CopyOptions {
                data: DataCopy::Full,
                ignore_chown_errors: false,
            },
        );
        layers.unmount(id)?;
        io(
            format!("copy what get shows of {id}"),
            copied.map_err(std::io::Error::other),
        )?;
        let mounts = describe(driver, id, read_only)?;
        let target = scratch.path().join(format!("described-{n}"));
        let performed = Performed::new(&target, &mounts)?;
        let differences = compare_trees_with(&reference, &target, Compare { atime: false });
        drop(performed);
        ensure!(
            differences.is_empty(),
            "{id} described {} ({mounts:?}) differs from what get shows:\n{}",
            if read_only { "read-only" } else { "read-write" },
            differences.join("\n")
        );
    }
    if omitted.iter().any(|o| !o.contains("file capability")) {
        return Err(Verdict::Skip(format!(
            "the trees matched, but the filesystem under the home could not hold: {}",
            omitted.join(", ")
        )));
    }
    Ok(())
}

fn writes_reach_the_layer(suite: &Suite) -> CheckOutcome {
    // Performing a description mounts.
    needs_root()?;
    let driver = suite.driver;
    let mut layers = Layers::new(driver);
    let (base, child) = (
        "conformance-described-wbase",
        "conformance-described-wchild",
    );
    layers.create(base, None)?;
    let path = layers.mount(base)?;
    io(
        "write in the base",
        fs::write(path.join("from-base"), b"base"),
    )?;
    io("write in the base", fs::write(path.join("doomed"), b"base"))?;
    layers.unmount(base)?;
    layers.create(child, Some(base))?;
    let mounts = describe(driver, child, false)?;
    let scratch = scratch()?;
    let target = scratch.path().join("described");
    {
        let _performed = Performed::new(&target, &mounts)?;
        io(
            "write through the described mount",
            fs::write(target.join("new"), b"through the description"),
        )?;
        io(
            "remove through the described mount",
            fs::remove_file(target.join("doomed")),
        )?;
        io(
            "make a directory through the described mount",
            fs::create_dir(target.join("dir")),
        )?;
        io(
            "overwrite through the described mount",
            fs::write(target.join("from-base"), b"changed"),
        )?;
    }
    let shown = layers.mount(child)?;
    let new = fs::read(shown.join("new")).ok();
    let doomed = shown.join("doomed").exists();
    let dir = shown.join("dir").is_dir();
    let changed = fs::read(shown.join("from-base")).ok();
    layers.unmount(child)?;
    ensure!(
        new.as_deref() == Some(&b"through the description"[..]),
        "get of {child} shows 'new' as {new:?} after it was written through the described mount"
    );
    ensure!(
        !doomed,
        "get of {child} still shows 'doomed', removed through the described mount"
    );
    ensure!(
        dir,
        "get of {child} has no 'dir', made through the described mount"
    );
    ensure!(
        changed.as_deref() == Some(&b"changed"[..]),
        "get of {child} shows 'from-base' as {changed:?} after it was overwritten through the described mount"
    );
    // The parent is untouched.
    let base_path = layers.mount(base)?;
    let base_kept = fs::read(base_path.join("from-base")).ok();
    let base_doomed = base_path.join("doomed").exists();
    layers.unmount(base)?;
    ensure!(
        base_kept.as_deref() == Some(&b"base"[..]) && base_doomed,
        "the child's writes through its described mount reached its parent {base}"
    );
    Ok(())
}

fn read_only_refuses_writes(suite: &Suite) -> CheckOutcome {
    needs_root()?;
    let driver = suite.driver;
    let mut layers = Layers::new(driver);
    let id = "conformance-described-ro";
    layers.create(id, None)?;
    let path = layers.mount(id)?;
    io("write", fs::write(path.join("file"), b"original"))?;
    layers.unmount(id)?;
    let scratch = scratch()?;
    let mounts = describe(driver, id, true)?;
    ensure!(
        mounts.iter().any(MountSpec::is_read_only),
        "the description of {id} asked read-only says no ro: {mounts:?}"
    );
    {
        let target = scratch.path().join("ro");
        let _performed = Performed::new(&target, &mounts)?;
        let written = fs::write(target.join("new"), b"x");
        let overwritten = fs::write(target.join("file"), b"changed");
        ensure!(
            written.is_err() && overwritten.is_err(),
            "the read-only described mount of {id} took writes"
        );
    }
    let shown = layers.mount(id)?;
    let kept = fs::read(shown.join("file")).ok();
    layers.unmount(id)?;
    ensure!(
        kept.as_deref() == Some(&b"original"[..]),
        "after writes to its read-only described mount, {id}'s file reads {kept:?}"
    );

    if driver
        .capabilities()
        .contains(Capabilities::READ_ONLY_LAYERS)
    {
        let image = "conformance-described-image";
        layers.create_with(image, None, &CreateOptions::default())?;
        // Filled as the host fills a layer it is making: through the native
        // diff directory where the driver has one, else one get with rw.
        let native = driver
            .native_diff(image)
            .map_err(|e| Verdict::Fail(format!("native diff of {image}: {e}")))?;
        match native {
            Some(native) => io(
                "fill the image layer's native diff",
                fs::write(native.path.join("file"), b"image"),
            )?,
            None => {
                let filled = driver
                    .get(
                        image,
                        &MountOptions {
                            options: vec!["rw".into()],
                            ..Default::default()
                        },
                    )
                    .map_err(|e| Verdict::Fail(format!("fill {image}: {e}")))?;
                io(
                    "fill the image layer",
                    fs::write(filled.join("file"), b"image"),
                )?;
                layers.unmount(image)?;
            }
        }
        let mounts = describe(driver, image, false)?;
        let target = scratch.path().join("image");
        let _performed = Performed::new(&target, &mounts)?;
        ensure!(
            fs::write(target.join("new"), b"x").is_err(),
            "the described mount of image layer {image}, asked without ro, took a write ({mounts:?})"
        );
    }
    expect_kind(
        "describe the mount of a layer that does not exist",
        driver.describe_mount("conformance-described-missing", &MountOptions::default()),
        ErrorKind::NotFound,
    )
}
