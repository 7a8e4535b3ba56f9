//! Mounting: the mount contract (the host counts, get and put pair up),
//! mount options, root modes, read-only layers, deep stacks.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use strata_plugin_abi::{Capabilities, CreateOptions, ErrorKind, MountOptions};

use super::{Layers, check, expect_kind, io, mounts_on, mounts_under};
use crate::{Check, CheckOutcome, Suite, Verdict, ensure};

/// How deep the deep-stack check builds.
pub const DEEP_STACK: usize = 128;

pub fn checks() -> Vec<Check> {
    vec![
        check(
            "mount/get-put-counts-references",
            "The host counts mounts across processes, drivers do not: a get of a mounted layer returns the same path and tree without mounting again, and one put releases what get made (a path get made a mount point is one no longer).",
            get_put_counts_references,
        ),
        check(
            "mount/last-put-unmounts",
            "When get makes a mount point, the put after it leaves the path unmounted, and a later get shows the layer's files again.",
            last_put_unmounts,
        ),
        check(
            "mount/options-honoured-or-refused",
            "Get with \"ro\" either gives a tree that refuses writes or is refused with NotSupported or InvalidInput; an unknown option is refused with InvalidInput or NotSupported; after every refusal nothing is mounted.",
            options_honoured_or_refused,
        ),
        check(
            "mount/unknown-layer-refused",
            "Get and remove of a layer that does not exist fail with NotFound.",
            unknown_layer_refused,
        ),
        check(
            "mount/new-layer-root-mode",
            "The root of a new layer without parent has mode 0755.",
            new_layer_root_mode,
        ),
        check(
            "mount/changed-root-mode-reaches-children",
            "A mode set on a parent's root is the mode of its child's root.",
            changed_root_mode_reaches_children,
        ),
        check(
            "mount/read-only-layer-rejects-writes",
            "For drivers claiming read-only-layers: a layer created read-only refuses new files and overwrites, and its files keep their content.",
            read_only_layer_rejects_writes,
        ),
        check(
            "mount/read-only-layer-is-filled-once",
            "For drivers claiming read-only-layers without native diffs: the host fills an image layer through one get with 'rw'; the put after it seals the layer (writes fail, its files stay) and a later 'rw' is refused.",
            read_only_layer_is_filled_once,
        ),
        check(
            "mount/deep-stack-reads-back-every-layer",
            "Each layer of a 128-layer stack mounts and reads exactly its own and its ancestors' files, the nearest layer's write winning.",
            deep_stack,
        ),
    ]
}

fn get_put_counts_references(suite: &Suite) -> CheckOutcome {
    let id = "conformance-mount";
    let mut layers = Layers::new(suite.driver);
    layers.create(id, None)?;
    let first = layers.mount(id)?;
    io(
        "write",
        fs::write(first.join("here"), b"through the first get"),
    )?;
    let mounts_after_first = mounts_on(&first)?;
    let second = layers.mount(id)?;
    let mounts_after_second = mounts_on(&first)?;
    let content = fs::read(second.join("here")).unwrap_or_default();
    // One put: the host calls it once for all the gets it counted.
    layers.unmount(id)?;
    let mounts_after_put = mounts_on(&first)?;
    ensure!(first == second, "two gets gave {first:?} and {second:?}");
    ensure!(
        content == b"through the first get",
        "the second get shows {content:?} where the first wrote a file"
    );
    ensure!(
        mounts_after_second == mounts_after_first,
        "the second get of a mounted layer mounted again: {mounts_after_first} mount(s) on {} after the first get, {mounts_after_second} after the second",
        first.display()
    );
    ensure!(
        mounts_after_put == 0,
        "after put, {} is still a mount point ({mounts_after_put} mount(s)): the driver counts gets itself, but the host counts mounts across processes and calls put once to release",
        first.display()
    );
    // What was written is the layer's, not the mount's.
    let again = layers.mount(id)?;
    let kept = fs::read(again.join("here")).unwrap_or_default();
    layers.unmount(id)?;
    ensure!(
        kept == b"through the first get",
        "after put and a new get the layer's file reads {kept:?}"
    );
    Ok(())
}

fn last_put_unmounts(suite: &Suite) -> CheckOutcome {
    let id = "conformance-last-put";
    let mut layers = Layers::new(suite.driver);
    layers.create(id, None)?;
    let path = layers.mount(id)?;
    if !path.is_dir() {
        layers.unmount(id)?;
        return Err(Verdict::Fail(format!(
            "get returned {}, which is not a directory",
            path.display()
        )));
    }
    if mounts_on(&path)? == 0 {
        layers.unmount(id)?;
        return Err(Verdict::Skip(
            "get returned a plain directory, not a mount point: the driver does not claim to mount, so there is no unmount to check".into(),
        ));
    }
    io("write", fs::write(path.join("kept"), b"across mounts"))?;
    layers.unmount(id)?;
    let left = mounts_on(&path)?;
    ensure!(
        left == 0,
        "after the last put {} is still a mount point ({left} mount(s))",
        path.display()
    );
    let again = layers.mount(id)?;
    let kept = fs::read(again.join("kept")).unwrap_or_default();
    layers.unmount(id)?;
    let left = mounts_on(&again)?;
    ensure!(
        kept == b"across mounts",
        "mounted again, the layer's file reads {kept:?}"
    );
    ensure!(
        left == 0,
        "after the second last put {} is still a mount point",
        again.display()
    );
    Ok(())
}

/// Nothing mounted on the layer's path nor new under the driver's home.
fn nothing_mounted(
    what: &str,
    path: &std::path::Path,
    home: Option<&std::path::Path>,
    home_mounts: &[std::path::PathBuf],
) -> CheckOutcome {
    let on_path = mounts_on(path)?;
    ensure!(
        on_path == 0,
        "{what}: {} is left a mount point",
        path.display()
    );
    if let Some(home) = home {
        let now = mounts_under(home)?;
        ensure!(
            now == home_mounts,
            "{what}: mounts under the driver's home went from {home_mounts:?} to {now:?}"
        );
    }
    Ok(())
}

fn mount_with(options: &[&str]) -> MountOptions {
    MountOptions {
        options: options.iter().map(|o| o.to_string()).collect(),
        ..Default::default()
    }
}

fn options_honoured_or_refused(suite: &Suite) -> CheckOutcome {
    let driver = suite.driver;
    let id = "conformance-mount-options";
    let mut layers = Layers::new(driver);
    layers.create(id, None)?;
    let plain = layers.mount(id)?;
    io("write", fs::write(plain.join("file"), b"original"))?;
    layers.unmount(id)?;
    let home = suite.options.home.as_deref();
    let home_mounts = match home {
        Some(home) => mounts_under(home)?,
        None => Vec::new(),
    };

    match driver.get(id, &mount_with(&["ro"])) {
        Ok(path) => {
            let new_file = fs::write(path.join("new"), b"x");
            let overwrite = fs::write(path.join("file"), b"changed");
            let content = fs::read(path.join("file")).unwrap_or_default();
            layers.unmount(id)?;
            ensure!(
                new_file.is_err(),
                "a file could be created through a get with \"ro\""
            );
            ensure!(
                overwrite.is_err(),
                "a file could be overwritten through a get with \"ro\""
            );
            ensure!(
                content == b"original",
                "a get with \"ro\" shows the file as {content:?}"
            );
            nothing_mounted(
                "after the put of a get with \"ro\"",
                &path,
                home,
                &home_mounts,
            )?;
        }
        Err(e) if matches!(e.kind(), ErrorKind::NotSupported | ErrorKind::InvalidInput) => {
            nothing_mounted("after \"ro\" was refused", &plain, home, &home_mounts)?;
        }
        Err(e) => {
            return Err(Verdict::Fail(format!(
                "get with \"ro\" failed as {} ({e}), expected it honoured or refused as not supported or invalid input",
                e.kind()
            )));
        }
    }

    let bogus = driver.get(id, &mount_with(&["conformance-bogus"]));
    if bogus.is_ok() {
        let _ = driver.put(id);
    }
    match bogus {
        Ok(path) => {
            return Err(Verdict::Fail(format!(
                "get with the unknown option \"conformance-bogus\" succeeded ({})",
                path.display()
            )));
        }
        Err(e) if matches!(e.kind(), ErrorKind::NotSupported | ErrorKind::InvalidInput) => {
            nothing_mounted(
                "after an unknown option was refused",
                &plain,
                home,
                &home_mounts,
            )?;
        }
        Err(e) => {
            return Err(Verdict::Fail(format!(
                "get with an unknown option failed as {} ({e}), expected invalid input or not supported",
                e.kind()
            )));
        }
    }

    // The refusals left the layer usable and unchanged.
    let path = layers.mount(id)?;
    let content = fs::read(path.join("file")).unwrap_or_default();
    layers.unmount(id)?;
    ensure!(
        content == b"original",
        "after the mount option checks the layer's file reads {content:?}"
    );
    Ok(())
}

fn unknown_layer_refused(suite: &Suite) -> CheckOutcome {
    expect_kind(
        "mount of an unknown layer",
        suite
            .driver
            .get("conformance-ghost", &MountOptions::default()),
        ErrorKind::NotFound,
    )?;
    expect_kind(
        "remove of an unknown layer",
        suite.driver.remove("conformance-ghost"),
        ErrorKind::NotFound,
    )
}

fn root_mode(path: &std::path::Path) -> Result<u32, Verdict> {
    Ok(io("stat", fs::metadata(path))?.permissions().mode() & 0o7777)
}

fn new_layer_root_mode(suite: &Suite) -> CheckOutcome {
    let mut layers = Layers::new(suite.driver);
    layers.create("conformance-root-mode", None)?;
    let path = layers.mount("conformance-root-mode")?;
    let mode = root_mode(&path)?;
    layers.unmount("conformance-root-mode")?;
    ensure!(
        mode == 0o755,
        "a new layer's root has mode {mode:o}, expected 755"
    );
    Ok(())
}

fn changed_root_mode_reaches_children(suite: &Suite) -> CheckOutcome {
    let mut layers = Layers::new(suite.driver);
    layers.create("conformance-root-parent", None)?;
    let parent = layers.mount("conformance-root-parent")?;
    io(
        "chmod",
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o710)),
    )?;
    layers.unmount("conformance-root-parent")?;
    layers.create("conformance-root-child", Some("conformance-root-parent"))?;
    let child = layers.mount("conformance-root-child")?;
    let mode = root_mode(&child)?;
    layers.unmount("conformance-root-child")?;
    ensure!(
        mode == 0o710,
        "the child's root has mode {mode:o}, its parent's is 710"
    );
    Ok(())
}

fn read_only_layer_rejects_writes(suite: &Suite) -> CheckOutcome {
    if !suite
        .driver
        .capabilities()
        .contains(Capabilities::READ_ONLY_LAYERS)
    {
        return Err(Verdict::Skip(
            "the driver does not claim read-only layers (capability read-only-layers)".into(),
        ));
    }
    let mut layers = Layers::new(suite.driver);
    layers.create("conformance-ro-source", None)?;
    let source = layers.mount("conformance-ro-source")?;
    io("write", fs::write(source.join("file"), b"original"))?;
    layers.unmount("conformance-ro-source")?;
    layers.create_with(
        "conformance-ro",
        Some("conformance-ro-source"),
        &CreateOptions::default(),
    )?;
    let path = layers.mount("conformance-ro")?;
    let new_file = fs::write(path.join("new"), b"x");
    let overwrite = fs::write(path.join("file"), b"changed");
    let content = fs::read(path.join("file")).unwrap_or_default();
    layers.unmount("conformance-ro")?;
    ensure!(
        new_file.is_err(),
        "a file could be created in a read-only layer"
    );
    ensure!(
        overwrite.is_err(),
        "a file could be overwritten in a read-only layer"
    );
    ensure!(content == b"original", "a read-only layer's file changed");
    Ok(())
}

fn read_only_layer_is_filled_once(suite: &Suite) -> CheckOutcome {
    let capabilities = suite.driver.capabilities();
    if !capabilities.contains(Capabilities::READ_ONLY_LAYERS) {
        return Err(Verdict::Skip(
            "the driver does not claim read-only layers (capability read-only-layers)".into(),
        ));
    }
    if capabilities.contains(Capabilities::NATIVE_DIFF) {
        return Err(Verdict::Skip(
            "the host fills this driver's image layers through their native diffs".into(),
        ));
    }
    let mut layers = Layers::new(suite.driver);
    layers.create("conformance-fill-base", None)?;
    layers.create_with(
        "conformance-fill",
        Some("conformance-fill-base"),
        &CreateOptions::default(),
    )?;
    let fill = MountOptions {
        options: vec!["rw".to_string()],
        ..Default::default()
    };
    let path = suite
        .driver
        .get("conformance-fill", &fill)
        .map_err(|e| Verdict::Fail(format!("the filling get ('rw') was refused: {e}")))?;
    let filled = fs::write(path.join("filled"), b"by the host");
    layers.unmount("conformance-fill")?;
    io("write into the layer being filled", filled)?;
    let path = layers.mount("conformance-fill")?;
    let after = fs::write(path.join("after"), b"x");
    let kept = fs::read(path.join("filled")).unwrap_or_default();
    layers.unmount("conformance-fill")?;
    ensure!(after.is_err(), "a sealed image layer took a new file");
    ensure!(
        kept == b"by the host",
        "what the host filled in was lost at the seal"
    );
    match suite.driver.get("conformance-fill", &fill) {
        Ok(_) => {
            let _ = suite.driver.put("conformance-fill");
            Err(Verdict::Fail(
                "a sealed image layer was opened read-write again".into(),
            ))
        }
        Err(_) => Ok(()),
    }
}

/// 128 layers, each adding a file of its own and shadowing one file of its
/// parent; every layer must read back exactly its own view.
fn deep_stack(suite: &Suite) -> CheckOutcome {
    let mut layers = Layers::new(suite.driver);
    let id = |i: usize| format!("conformance-deep-{i:03}");
    for i in 0..DEEP_STACK {
        let parent = (i > 0).then(|| id(i - 1));
        layers.create(&id(i), parent.as_deref())?;
        let path = layers.mount(&id(i))?;
        io(
            "write",
            fs::write(path.join(format!("own-{i:03}")), i.to_string()),
        )?;
        io("write", fs::write(path.join("shadowed"), i.to_string()))?;
        layers.unmount(&id(i))?;
    }
    for i in 0..DEEP_STACK {
        let path = layers.mount(&id(i))?;
        let shadowed = fs::read_to_string(path.join("shadowed")).unwrap_or_default();
        let mut own: Vec<String> = io("list", fs::read_dir(&path))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("own-"))
            .collect();
        own.sort();
        layers.unmount(&id(i))?;
        ensure!(
            shadowed == i.to_string(),
            "layer {i} reads 'shadowed' as {shadowed:?}"
        );
        let expected: Vec<String> = (0..=i).map(|k| format!("own-{k:03}")).collect();
        ensure!(
            own == expected,
            "layer {i} holds {} own-* files, expected {}",
            own.len(),
            i + 1
        );
    }
    Ok(())
}
