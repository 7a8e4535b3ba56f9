//! A container runtime's use of strata, start to finish, with one crate: open
//! the store its configuration describes, import an OCI image, make a
//! container on it, mount it, look inside, unmount it and delete it.
//!
//! `cargo run -p strata-core --example runtime -- CONFIG OCI-LAYOUT[:TAG]`

use strata_core::oci::{ImageLocation, NoProgress};
use strata_core::{Config, CoreError, MountOptions, Overrides, Store};

fn main() -> Result<(), CoreError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, image] = args.as_slice() else {
        eprintln!("usage: runtime CONFIG OCI-LAYOUT[:TAG]");
        std::process::exit(2);
    };
    let config = Config::load(&Overrides {
        config: Some(config.into()),
        ..Default::default()
    })?;
    let store = Store::open(&config)?;
    let imported = store.import_image(&ImageLocation::parse(image), &[], &NoProgress)?;
    let names = ["example".to_string()];
    let container = store.create_container(&imported.image.id, &names, &Default::default())?;
    let root = store.mount_container(&container.id, &MountOptions::default())?;
    println!("container {} mounted at {}", container.id, root.display());
    let entries = std::fs::read_dir(&root).map_err(|e| CoreError::io("read", &root, e))?;
    for entry in entries.flatten() {
        println!("  {}", entry.file_name().to_string_lossy());
    }
    store.unmount_container(&container.id)?;
    store.delete_container(&container.id)?;
    println!("container {} deleted", container.id);
    Ok(())
}
