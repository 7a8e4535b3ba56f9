//! strata and podman exchange images through archives: podman loads what
//! strata exports as an OCI archive, and strata imports what `podman save`
//! writes, in both formats, with the image id it has from the layout. The
//! podman here keeps its images in a private store (vfs, in a scratch
//! directory), so nothing of the machine's is touched.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use strata_testkit::fixtures;
use strata_testkit::plugins::build_plugin;

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn succeed(what: &str, out: Output) -> String {
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{what}: {stderr}");
    stdout
}

#[test]
fn podman_loads_strata_archives_and_strata_imports_podman_saves() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let drivers = dir.join("drivers");
    fs::create_dir(&drivers).unwrap();
    fs::copy(
        build_plugin("strata-driver-vfs"),
        drivers.join("libstrata_driver_vfs.so"),
    )
    .unwrap();
    let strata = |root: &str, args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
        for (key, _) in std::env::vars() {
            if key.starts_with("STRATA_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("STRATA_DRIVER_PATH", &drivers)
            .arg("--root")
            .arg(dir.join(root).join("graph"))
            .arg("--run-root")
            .arg(dir.join(root).join("run"))
            .args(args)
            .output()
            .unwrap()
    };
    let storage_conf = dir.join("storage.conf");
    fs::write(
        &storage_conf,
        format!(
            "[storage]\ndriver = \"vfs\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
            dir.join("podman-run").display(),
            dir.join("podman-graph").display()
        ),
    )
    .unwrap();
    let podman = |args: &[&str]| {
        Command::new("podman")
            .env("CONTAINERS_STORAGE_CONF", &storage_conf)
            .args(["--root"])
            .arg(dir.join("podman-graph"))
            .arg("--runroot")
            .arg(dir.join("podman-run"))
            .args(args)
            .output()
            .expect("podman (a Debian package: scripts/install-deps.sh installs it)")
    };

    let layout = dir.join("layout");
    let base = fixtures::RawTar::new()
        .file("etc/hostname", b"base\n")
        .finish();
    let app = fixtures::RawTar::new().file("srv/app", b"app\n").finish();
    fixtures::layout::write_image(
        &layout,
        "v1",
        &[
            fixtures::layout::Layer::gzip(&base),
            fixtures::layout::Layer::plain(&app),
        ],
        "app",
    );
    let id = succeed(
        "strata import the layout",
        strata(
            "a",
            &[
                "image",
                "import",
                &format!("oci:{}:v1", layout.display()),
                "--name",
                "app",
            ],
        ),
    );
    let id = id.trim();

    // strata's OCI archive, loaded by podman: the same image id.
    let exported = dir.join("exported.tar");
    succeed(
        "strata export",
        strata(
            "a",
            &[
                "image",
                "export",
                "app",
                &format!("oci-archive:{}:app", exported.display()),
            ],
        ),
    );
    succeed(
        "podman load",
        podman(&["load", "-i", exported.to_str().unwrap()]),
    );
    let images = succeed(
        "podman images",
        podman(&["images", "--no-trunc", "--format", "{{.ID}}"]),
    );
    assert!(
        images
            .lines()
            .any(|l| l.trim_start_matches("sha256:") == id),
        "podman has {images}, strata {id}"
    );

    // What podman saves, in both formats, imported by strata: the same id.
    let listed = succeed(
        "podman images",
        podman(&["images", "--format", "{{.Repository}}:{{.Tag}}"]),
    );
    let name = listed.lines().next().unwrap().trim().to_string();
    for (format, transport) in [
        ("oci-archive", "oci-archive"),
        ("docker-archive", "docker-archive"),
    ] {
        let saved = dir.join(format!("saved-{format}.tar"));
        succeed(
            "podman save",
            podman(&[
                "save",
                "--format",
                format,
                "-o",
                saved.to_str().unwrap(),
                &name,
            ]),
        );
        let root = format!("from-{format}");
        let imported = succeed(
            "strata import podman's archive",
            strata(
                &root,
                &[
                    "image",
                    "import",
                    &format!("{transport}:{}", saved.display()),
                ],
            ),
        );
        assert_eq!(imported.trim(), id, "{format}");
    }
    let _ = podman(&["rmi", "--all", "--force"]);
    assert!(!Path::new(&dir.join("podman-run")).join("overlay").exists());
}
