//! containerd's snapshotter testsuite, case by case, run through the proxy:
//! a `strata-snapshotter` process serves a fresh store of each driver, and
//! the cases call it over gRPC as containerd does, mounting what it answers
//! as containerd's mount helper would. The case names are containerd's
//! (snapshots/testsuite); CloseTwice is containerd's own client's, which a
//! proxy does not have.
//!
//! Then what a proxy adds: containerd's error codes, List filters, Usage,
//! another process sharing the store, and a snapshotter killed and started
//! again.

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use common::client::{Snap, kind, labels};
use common::{Mounted, Served, differences};
use containerd_snapshots::api::snapshots::v1::Kind;
use tonic::Code;

type Step = fn(&Path);

/// One case: its name and its body.
type Case = (
    &'static str,
    for<'a> fn(&'a mut Snap, &'a Path) -> CaseFuture<'a>,
);
type CaseFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;

macro_rules! case {
    ($name:literal, $f:ident) => {
        ($name, |snap, work| Box::pin($f(snap, work)))
    };
}

fn cases() -> Vec<Case> {
    vec![
        case!("Basic", basic),
        case!("StatActive", stat_active),
        case!("StatComitted", stat_committed),
        case!("TransitivityTest", transitivity),
        case!("PreareViewFailingtest", prepare_view_failing),
        case!("Update", update),
        case!("Remove", remove),
        case!("LayerFileupdate", layer_file_update),
        case!(
            "RemoveDirectoryInLowerLayer",
            remove_directory_in_lower_layer
        ),
        case!("Chown", chown),
        case!(
            "DirectoryPermissionOnCommit",
            directory_permission_on_commit
        ),
        case!("RemoveIntermediateSnapshot", remove_intermediate_snapshot),
        case!(
            "DeletedFilesInChildSnapshot",
            deleted_files_in_child_snapshot
        ),
        case!("MoveFileFromLowerLayer", move_file_from_lower_layer),
        case!("Rename", rename),
        case!("ViewReadonly", view_readonly),
        case!("StatInWalk", stat_in_walk),
        case!("ErrorCodes", error_codes),
        case!("ListFilters", list_filters),
        case!("Usage", usage),
    ]
}

fn run_suite(driver: &str) {
    if let Some(why) = common::cannot_run_here() {
        strata_testkit::skip::cannot_run(&format!("testsuite_{driver}"), &why);
        return;
    }
    let served = Served::start(driver);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut failed = Vec::new();
    for (name, body) in cases() {
        // Each case in its own work directory and with keys of its own, as
        // containerd's suite gives each a fresh snapshotter root.
        let work = served.dir.join("work").join(name);
        fs::create_dir_all(&work).unwrap();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(async {
                let mut snap = Snap(served.client().await);
                body(&mut snap, &work).await;
            })
        }));
        match outcome {
            Ok(()) => eprintln!("passed {driver} {name}"),
            Err(_) => failed.push(name),
        }
    }
    assert!(
        failed.is_empty(),
        "{driver}: containerd testsuite cases failed: {failed:?}"
    );
}

#[test]
fn testsuite_vfs() {
    run_suite("vfs");
}

#[test]
fn testsuite_overlay() {
    run_suite("overlay");
}

#[test]
fn testsuite_btrfs() {
    run_suite("btrfs");
}

/// zfs describes no mounts (a dataset is mounted by `get`): the held-mount
/// bind again, on a real mounting driver.
#[test]
fn testsuite_zfs() {
    run_suite("zfs");
}

/// The template a third party starts from describes no mounts: the
/// snapshotter holds the store's mount of each snapshot's layer and gives
/// containerd a bind of it, and the same cases hold.
#[test]
fn testsuite_driver_without_described_mounts() {
    run_suite("example");
}

fn key(work: &Path, name: &str) -> String {
    work.join(name).display().to_string()
}

fn write(path: &Path, content: &str, mode: u32) {
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mkdir(path: &Path, mode: u32) {
    fs::create_dir_all(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Prepares `name` on `parent`, mounts it, and returns the mount.
async fn prepare_mounted(snap: &mut Snap, work: &Path, name: &str, parent: &str) -> Mounted {
    let mounts = snap.prepare(&key(work, name), parent).await.unwrap();
    Mounted::new(&mounts, &work.join(format!("{name}.mnt")))
}

/// containerd's checkSnapshots: each step is applied in a snapshot of its
/// own on the previous one and committed; a view of the last must show
/// every step applied in order to a plain directory.
async fn check_snapshots(snap: &mut Snap, work: &Path, steps: &[Step]) {
    let expected = work.join("expected");
    fs::create_dir_all(&expected).unwrap();
    let mut parent = String::new();
    for (n, step) in steps.iter().enumerate() {
        let name = format!("layer-{n}");
        {
            let mounted = prepare_mounted(snap, work, &name, &parent).await;
            step(mounted.path());
        }
        step(&expected);
        let committed = key(work, &format!("committed-{n}"));
        snap.commit(&committed, &key(work, &name)).await.unwrap();
        parent = committed;
    }
    let mounts = snap.view(&key(work, "check"), &parent).await.unwrap();
    let view = Mounted::new(&mounts, &work.join("check.mnt"));
    let found = differences(&expected, view.path());
    drop(view);
    assert!(
        found.is_empty(),
        "the view differs from the steps applied:\n{}",
        found.join("\n")
    );
    snap.remove(&key(work, "check")).await.unwrap();
    for n in (0..steps.len()).rev() {
        snap.remove(&key(work, &format!("committed-{n}")))
            .await
            .unwrap();
    }
}

async fn basic(snap: &mut Snap, work: &Path) {
    let preparing = key(work, "preparing");
    {
        let mounted = prepare_mounted(snap, work, "preparing", "").await;
        write(&mounted.path().join("foo"), "foo\n", 0o777);
        mkdir(&mounted.path().join("a/b/c"), 0o755);
    }
    let committed = key(work, "committed");
    snap.commit(&committed, &preparing).await.unwrap();
    let si = snap.stat(&committed).await.unwrap();
    assert_eq!(si.parent, "");
    assert_eq!(kind(&si), Kind::Committed);
    assert_eq!(
        snap.stat(&preparing).await.unwrap_err().code(),
        Code::NotFound
    );

    let next = key(work, "nextlayer");
    {
        let mounted = prepare_mounted(snap, work, "nextlayer", &committed).await;
        let root = mounted.path();
        assert_eq!(fs::read_to_string(root.join("foo")).unwrap(), "foo\n");
        assert!(root.join("a/b/c").is_dir());
        write(&root.join("bar"), "bar\n", 0o777);
        write(&root.join("foo"), "bar\n", 0o777);
        fs::remove_dir_all(root.join("a/b")).unwrap();
    }
    let ni = snap.stat(&next).await.unwrap();
    assert_eq!(ni.parent, committed);
    assert_eq!(kind(&ni), Kind::Active);
    let next_committed = key(work, "committed-next");
    snap.commit(&next_committed, &next).await.unwrap();
    let si2 = snap.stat(&next_committed).await.unwrap();
    assert_eq!(si2.parent, committed);
    assert_eq!(kind(&si2), Kind::Committed);
    assert_eq!(snap.stat(&next).await.unwrap_err().code(), Code::NotFound);

    let walked = snap.list(&[]).await.unwrap();
    for expected in [&si, &si2] {
        let found = walked.iter().find(|i| i.name == expected.name);
        assert_eq!(found, Some(expected), "list gives what stat gives");
    }

    let nextnext = key(work, "nextnextlayer");
    {
        let mounts = snap.view(&nextnext, &next_committed).await.unwrap();
        let view = Mounted::new(&mounts, &work.join("nextnext.mnt"));
        let root = view.path();
        assert_eq!(fs::read_to_string(root.join("foo")).unwrap(), "bar\n");
        assert_eq!(fs::read_to_string(root.join("bar")).unwrap(), "bar\n");
        assert!(root.join("a").is_dir() && !root.join("a/b").exists());
    }
    snap.remove(&nextnext).await.unwrap();
    let refused = snap.remove(&committed).await.unwrap_err();
    assert!(refused.message().contains("remove"), "{refused:?}");
    snap.remove(&next_committed).await.unwrap();
    snap.remove(&committed).await.unwrap();
}

async fn stat_active(snap: &mut Snap, work: &Path) {
    let preparing = key(work, "preparing");
    {
        let mounted = prepare_mounted(snap, work, "preparing", "").await;
        write(&mounted.path().join("foo"), "foo\n", 0o777);
    }
    let si = snap.stat(&preparing).await.unwrap();
    assert_eq!(si.name, preparing);
    assert_eq!(kind(&si), Kind::Active);
    assert_eq!(si.parent, "");
}

async fn stat_committed(snap: &mut Snap, work: &Path) {
    let preparing = key(work, "preparing");
    {
        let mounted = prepare_mounted(snap, work, "preparing", "").await;
        write(&mounted.path().join("foo"), "foo\n", 0o777);
    }
    let committed = key(work, "committed");
    snap.commit(&committed, &preparing).await.unwrap();
    let si = snap.stat(&committed).await.unwrap();
    assert_eq!(si.name, committed);
    assert_eq!(kind(&si), Kind::Committed);
    assert_eq!(si.parent, "");
}

async fn transitivity(snap: &mut Snap, work: &Path) {
    {
        let mounted = prepare_mounted(snap, work, "preparing", "").await;
        write(&mounted.path().join("foo"), "foo\n", 0o777);
    }
    let snap_a = key(work, "snapA");
    snap.commit(&snap_a, &key(work, "preparing")).await.unwrap();
    {
        let mounted = prepare_mounted(snap, work, "next", &snap_a).await;
        write(&mounted.path().join("foo"), "foo bar\n", 0o777);
    }
    let snap_b = key(work, "snapB");
    snap.commit(&snap_b, &key(work, "next")).await.unwrap();
    let si_a = snap.stat(&snap_a).await.unwrap();
    let si_b = snap.stat(&snap_b).await.unwrap();
    let si_parent_b = snap.stat(&si_b.parent).await.unwrap();
    assert_eq!(si_a.parent, "");
    assert_eq!(si_b.parent, snap_a);
    assert_eq!(si_parent_b.parent, "");
}

async fn prepare_view_failing(snap: &mut Snap, work: &Path) {
    drop(prepare_mounted(snap, work, "preparing", "").await);
    let snap_a = key(work, "snapA");
    snap.commit(&snap_a, &key(work, "preparing")).await.unwrap();
    let new_layer = key(work, "newlayer");
    snap.prepare(&new_layer, &snap_a).await.unwrap();
    assert_eq!(
        snap.view(&new_layer, &snap_a).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    let prep_layer = key(work, "prepLayer");
    snap.prepare(&prep_layer, &snap_a).await.unwrap();
    assert_eq!(
        snap.prepare(&prep_layer, &snap_a).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    let view_layer = key(work, "viewLayer");
    snap.view(&view_layer, &snap_a).await.unwrap();
    assert_eq!(
        snap.view(&view_layer, &snap_a).await.unwrap_err().code(),
        Code::AlreadyExists
    );
}

async fn update(snap: &mut Snap, work: &Path) {
    let active = key(work, "active");
    let first_labels = labels(&[("l1", "v1"), ("l2", "v2"), ("l3", "v3")]);
    snap.prepare_labelled(&active, "", first_labels.clone())
        .await
        .unwrap();
    let committed = key(work, "committed");
    snap.commit_labelled(&committed, &active, first_labels.clone())
        .await
        .unwrap();
    let before = snap.stat(&committed).await.unwrap();
    assert_eq!(before.labels, first_labels);

    // No field paths: the labels are replaced whole.
    let mut info = before.clone();
    info.labels = labels(&[("l1", "updated"), ("l4", "v4")]);
    let after = snap.update(info.clone(), &[]).await.unwrap();
    assert_eq!(after.labels, labels(&[("l1", "updated"), ("l4", "v4")]));
    assert_eq!(after.created_at, before.created_at, "created stays");
    let (b, a) = (
        before.updated_at.clone().unwrap(),
        after.updated_at.clone().unwrap(),
    );
    assert!(
        (a.seconds, a.nanos) > (b.seconds, b.nanos),
        "updated moves: {b:?} -> {a:?}"
    );
    assert_eq!(
        snap.stat(&committed).await.unwrap(),
        after,
        "stat gives what update gave"
    );

    // One label by path: set one, remove another (absent from the info).
    info.labels = labels(&[("l2", "v2-again")]);
    let after = snap
        .update(info.clone(), &["labels.l2", "labels.l4"])
        .await
        .unwrap();
    assert_eq!(
        after.labels,
        labels(&[("l1", "updated"), ("l2", "v2-again")])
    );

    // "labels" replaces them all.
    info.labels = labels(&[("only", "this")]);
    let after = snap.update(info.clone(), &["labels"]).await.unwrap();
    assert_eq!(after.labels, labels(&[("only", "this")]));

    // Other fields cannot change; a missing snapshot is NotFound.
    assert_eq!(
        snap.update(info.clone(), &["name"])
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        snap.update(info.clone(), &["parent"])
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let mut missing = info.clone();
    missing.name = key(work, "missing");
    assert_eq!(
        snap.update(missing, &[]).await.unwrap_err().code(),
        Code::NotFound
    );
    // Oversized labels are refused, naming the key only.
    let mut huge = info;
    huge.labels = labels(&[("big", &"x".repeat(5000))]);
    let refused = snap.update(huge, &[]).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("\"big\"") && !refused.message().contains("xxxx"),
        "{refused:?}"
    );
}

async fn remove(snap: &mut Snap, work: &Path) {
    let active = key(work, "active");
    snap.prepare(&active, "").await.unwrap();
    let committed = key(work, "committed");
    snap.commit(&committed, &active).await.unwrap();
    let view = key(work, "view");
    snap.view(&view, &committed).await.unwrap();
    let active2 = key(work, "active2");
    snap.prepare(&active2, &committed).await.unwrap();
    for removed in [&view, &active2, &committed] {
        snap.remove(removed).await.unwrap();
        assert_eq!(snap.stat(removed).await.unwrap_err().code(), Code::NotFound);
    }
    assert_eq!(snap.remove(&view).await.unwrap_err().code(), Code::NotFound);
}

async fn layer_file_update(snap: &mut Snap, work: &Path) {
    check_snapshots(
        snap,
        work,
        &[
            |r| write(&r.join("foo"), "foo\n", 0o777),
            |r| write(&r.join("foo"), "bar\n", 0o777),
            |_| {},
        ],
    )
    .await;
}

async fn remove_directory_in_lower_layer(snap: &mut Snap, work: &Path) {
    check_snapshots(
        snap,
        work,
        &[
            |r| {
                mkdir(&r.join("lib"), 0o700);
                write(&r.join("lib/hidden"), "hidden\n", 0o644);
            },
            |r| fs::remove_dir_all(r.join("lib")).unwrap(),
            |r| {
                mkdir(&r.join("lib"), 0o755);
                write(&r.join("lib/new"), "new\n", 0o644);
            },
        ],
    )
    .await;
}

async fn chown(snap: &mut Snap, work: &Path) {
    check_snapshots(
        snap,
        work,
        &[
            |r| {
                mkdir(&r.join("opt"), 0o755);
                mkdir(&r.join("opt/a"), 0o700);
                write(&r.join("opt/a/file"), "a\n", 0o644);
                std::os::unix::fs::chown(r.join("opt/a"), Some(2), Some(2)).unwrap();
            },
            |r| {
                std::os::unix::fs::chown(r.join("opt"), Some(1), Some(1)).unwrap();
                std::os::unix::fs::chown(r.join("opt/a/file"), Some(3), Some(4)).unwrap();
            },
        ],
    )
    .await;
}

async fn directory_permission_on_commit(snap: &mut Snap, work: &Path) {
    check_snapshots(
        snap,
        work,
        &[
            |r| {
                mkdir(&r.join("dir-a"), 0o700);
                mkdir(&r.join("dir-b"), 0o755);
                write(&r.join("dir-b/file"), "b\n", 0o640);
            },
            |r| {
                fs::set_permissions(r.join("dir-a"), fs::Permissions::from_mode(0o750)).unwrap();
                mkdir(&r.join("dir-c"), 0o711);
            },
        ],
    )
    .await;
}

async fn remove_intermediate_snapshot(snap: &mut Snap, work: &Path) {
    drop(prepare_mounted(snap, work, "base", "").await);
    let committed_base = key(work, "committed-base");
    snap.commit(&committed_base, &key(work, "base"))
        .await
        .unwrap();
    let intermediate = key(work, "intermediate");
    snap.prepare(&intermediate, &committed_base).await.unwrap();
    let committed_inter = key(work, "committed-inter");
    snap.commit(&committed_inter, &intermediate).await.unwrap();
    let top = key(work, "toplayer");
    snap.prepare(&top, &committed_inter).await.unwrap();
    assert_eq!(
        snap.remove(&committed_inter).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    snap.remove(&top).await.unwrap();
    snap.remove(&committed_inter).await.unwrap();
    snap.remove(&committed_base).await.unwrap();
}

async fn deleted_files_in_child_snapshot(snap: &mut Snap, work: &Path) {
    check_snapshots(
        snap,
        work,
        &[
            |r| {
                write(&r.join("foo"), "foo\n", 0o777);
                write(&r.join("foobar"), "foobar\n", 0o777);
            },
            |r| fs::remove_file(r.join("foobar")).unwrap(),
            |_| {},
        ],
    )
    .await;
}

async fn move_file_from_lower_layer(snap: &mut Snap, work: &Path) {
    check_snapshots(
        snap,
        work,
        &[
            |r| {
                write(&r.join("foo"), "foo\n", 0o777);
                mkdir(&r.join("a"), 0o755);
                write(&r.join("a/b"), "b\n", 0o644);
            },
            |r| {
                fs::rename(r.join("foo"), r.join("bar")).unwrap();
                fs::rename(r.join("a/b"), r.join("a/c")).unwrap();
            },
            |_| {},
        ],
    )
    .await;
}

async fn rename(snap: &mut Snap, work: &Path) {
    check_snapshots(
        snap,
        work,
        &[
            |r| {
                mkdir(&r.join("dir1/subdir"), 0o755);
                write(&r.join("dir1/subdir/f"), "f\n", 0o644);
                symlink("dir1/subdir/f", r.join("link")).unwrap();
            },
            |r| {
                move_path(&r.join("dir1"), &r.join("dir2"));
                mkdir(&r.join("dir1"), 0o755);
            },
            |r| {
                move_path(&r.join("dir2/subdir"), &r.join("dir1/subdir"));
                fs::remove_file(r.join("link")).unwrap();
                symlink("dir1/subdir/f", r.join("link")).unwrap();
            },
        ],
    )
    .await;
}

/// Renames as `mv` does: overlay answers EXDEV for a directory that comes
/// from a lower layer (strata mounts it without redirect_dir, so a layer's
/// diff stays exact), and `mv` then copies and removes. containerd's suite
/// leaves directory renames out on overlay for the same reason.
fn move_path(from: &Path, to: &Path) {
    match fs::rename(from, to) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            copy_dir(from, to);
            fs::remove_dir_all(from).unwrap();
        }
        Err(e) => panic!("rename {}: {e}", from.display()),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let mode = fs::symlink_metadata(from).unwrap().permissions().mode();
    fs::create_dir(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_dir(&entry.path(), &target);
        } else if kind.is_symlink() {
            symlink(fs::read_link(entry.path()).unwrap(), &target).unwrap();
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).unwrap();
}

async fn view_readonly(snap: &mut Snap, work: &Path) {
    {
        let mounted = prepare_mounted(snap, work, "preparing", "").await;
        write(&mounted.path().join("foo"), "foo\n", 0o777);
    }
    let committed = key(work, "committed");
    snap.commit(&committed, &key(work, "preparing"))
        .await
        .unwrap();
    let mounts = snap.view(&key(work, "view"), &committed).await.unwrap();
    let view = Mounted::new(&mounts, &work.join("view.mnt"));
    assert!(
        fs::write(view.path().join("testfile"), "x").is_err(),
        "a view took a new file"
    );
    assert!(
        fs::remove_file(view.path().join("foo")).is_err(),
        "a view let a file be removed"
    );
    assert_eq!(
        fs::read_to_string(view.path().join("foo")).unwrap(),
        "foo\n"
    );
}

async fn stat_in_walk(snap: &mut Snap, work: &Path) {
    snap.prepare(&key(work, "prepare-1"), "").await.unwrap();
    let committed = key(work, "committed-1");
    snap.commit(&committed, &key(work, "prepare-1"))
        .await
        .unwrap();
    snap.prepare(&key(work, "prepare-2"), &committed)
        .await
        .unwrap();
    snap.view(&key(work, "view-1"), &committed).await.unwrap();
    let listed = snap.list(&[]).await.unwrap();
    let mine: Vec<_> = listed
        .iter()
        .filter(|i| i.name.starts_with(&work.display().to_string()))
        .collect();
    assert_eq!(mine.len(), 3, "{mine:?}");
    for info in mine {
        assert_eq!(&snap.stat(&info.name).await.unwrap(), info);
    }
}

async fn error_codes(snap: &mut Snap, work: &Path) {
    let active = key(work, "active");
    snap.prepare(&active, "").await.unwrap();
    // A snapshot is made on a committed one only.
    let refused = snap
        .prepare(&key(work, "on-active"), &active)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert_eq!(
        snap.prepare(&key(work, "on-missing"), &key(work, "missing"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let committed = key(work, "committed");
    snap.commit(&committed, &active).await.unwrap();
    // Only an active snapshot is committed, and not onto a name taken.
    let view = key(work, "view");
    snap.view(&view, &committed).await.unwrap();
    assert_eq!(
        snap.commit(&key(work, "from-view"), &view)
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );
    let second = key(work, "second");
    snap.prepare(&second, &committed).await.unwrap();
    assert_eq!(
        snap.commit(&committed, &second).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    assert_eq!(
        snap.commit(&view, &second).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    assert_eq!(
        snap.stat(&second).await.map(|i| kind(&i)).unwrap(),
        Kind::Active,
        "a refused commit changes nothing"
    );
    assert_eq!(
        snap.mounts(&key(work, "missing")).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        snap.usage(&key(work, "missing")).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        snap.prepare("", "").await.unwrap_err().code(),
        Code::InvalidArgument
    );
    // Mounts: active read-write, view and committed read-only.
    let ro = |mounts: &[containerd_snapshots::api::types::Mount]| {
        mounts.iter().any(|m| m.options.iter().any(|o| o == "ro"))
    };
    assert!(!ro(&snap.mounts(&second).await.unwrap()));
    assert!(ro(&snap.mounts(&view).await.unwrap()));
    assert!(ro(&snap.mounts(&committed).await.unwrap()));
}

async fn list_filters(snap: &mut Snap, work: &Path) {
    let a = key(work, "a");
    snap.prepare_labelled(&a, "", labels(&[("team", "storage")]))
        .await
        .unwrap();
    let base = key(work, "base");
    snap.commit_labelled(&base, &a, labels(&[("containerd.io/gc.root", "x")]))
        .await
        .unwrap();
    let b = key(work, "b");
    snap.prepare_labelled(&b, &base, labels(&[("team", "runtime")]))
        .await
        .unwrap();
    let v = key(work, "v");
    snap.view(&v, &base).await.unwrap();
    let names = |infos: Vec<containerd_snapshots::api::snapshots::v1::Info>| {
        let mut names: Vec<String> = infos
            .into_iter()
            .map(|i| i.name)
            .filter(|n| n.starts_with(&work.display().to_string()))
            .collect();
        names.sort();
        names
    };
    let mine = format!("name~=^{}/", regex_escape(&work.display().to_string()));
    assert_eq!(
        names(
            snap.list(&[&format!("{mine},kind==committed")])
                .await
                .unwrap()
        ),
        vec![base.clone()]
    );
    assert_eq!(
        names(snap.list(&[&format!("{mine},kind==view")]).await.unwrap()),
        vec![v.clone()]
    );
    assert_eq!(
        names(
            snap.list(&[&format!("{mine},labels.team==runtime")])
                .await
                .unwrap()
        ),
        vec![b.clone()]
    );
    assert_eq!(
        names(
            snap.list(&[&format!("{mine},labels.\"containerd.io/gc.root\"")])
                .await
                .unwrap()
        ),
        vec![base.clone()]
    );
    assert_eq!(
        names(snap.list(&[&format!("parent=={base}")]).await.unwrap()),
        vec![b.clone(), v.clone()]
    );
    // Two filters: either may hold.
    assert_eq!(
        names(
            snap.list(&[
                &format!("{mine},kind==view"),
                &format!("{mine},kind==committed")
            ])
            .await
            .unwrap()
        ),
        vec![base.clone(), v.clone()]
    );
    let refused = snap.list(&["kind==\"open"]).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_alphanumeric() || c == '/' || c == '-' || c == '_' {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}

async fn usage(snap: &mut Snap, work: &Path) {
    let active = key(work, "active");
    let before = {
        let mounted = prepare_mounted(snap, work, "active", "").await;
        let before = snap.usage(&active).await.unwrap();
        // Data no filesystem compresses away (zfs compresses runs).
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..4 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        fs::write(mounted.path().join("big"), noise).unwrap();
        mkdir(&mounted.path().join("d/e"), 0o755);
        let root = fs::File::open(mounted.path()).unwrap();
        rustix::fs::syncfs(&root).unwrap();
        before
    };
    // Usage counts allocated blocks: where allocation is delayed (ZFS
    // allocates when its transaction group commits), they show up to half
    // a minute after the write.
    let started = std::time::Instant::now();
    // zfs-fuse commits a transaction group every 30 s.
    let deadline = started + std::time::Duration::from_secs(60);
    let after = loop {
        let after = snap.usage(&active).await.unwrap();
        if after.size >= before.size + (4 << 20) || std::time::Instant::now() > deadline {
            break after;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert!(
        after.size >= before.size + (4 << 20),
        "{before:?} -> {after:?}"
    );
    assert_eq!(after.inodes, before.inodes + 3, "{before:?} -> {after:?}");
    let committed = key(work, "committed");
    snap.commit(&committed, &active).await.unwrap();
    let child = key(work, "child");
    snap.prepare(&child, &committed).await.unwrap();
    let committed_usage = snap.usage(&committed).await.unwrap();
    assert!(committed_usage.size >= 4 << 20, "{committed_usage:?}");
}

/// The snapshotter is one process on the store; another (here the test,
/// through strata-core, as the `strata` command would) reads and changes
/// the same store meanwhile, and sees containerd's snapshots as named
/// layers.
#[test]
fn another_process_shares_the_store() {
    if let Some(why) = common::cannot_run_here() {
        strata_testkit::skip::cannot_run("another_process_shares_the_store", &why);
        return;
    }
    let served = Served::start("overlay");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let work = served.dir.join("work");
    runtime.block_on(async {
        let mut snap = Snap(served.client().await);
        snap.prepare(&key(&work, "a"), "").await.unwrap();
        snap.commit(&key(&work, "base"), &key(&work, "a"))
            .await
            .unwrap();
    });
    let store = served.open_store();
    let layers = store.layers.list().unwrap();
    let base = layers
        .iter()
        .find(|l| l.names.iter().any(|n| n.ends_with("/work/base")))
        .expect("the committed snapshot is a named layer");
    assert!(base.read_only, "a committed snapshot's layer is read-only");
    // The store's own commands leave containerd's layers alone, naming who
    // holds them: deleting refuses, pruning keeps them.
    let refused = store.delete_layer(&base.id).unwrap_err().to_string();
    assert!(refused.contains("containerd snapshot"), "{refused}");
    assert!(
        store.prune(false).unwrap().is_empty(),
        "prune deleted containerd's snapshots"
    );
    // The other process makes a layer of its own while the snapshotter serves.
    let own = strata_core::LayerId::new("made-by-another-process").unwrap();
    store
        .layers
        .create(&own, None, &Default::default(), None)
        .unwrap();
    runtime.block_on(async {
        let mut snap = Snap(served.client().await);
        snap.prepare(&key(&work, "b"), &key(&work, "base"))
            .await
            .unwrap();
        let listed = snap.list(&[]).await.unwrap();
        assert_eq!(
            listed.len(),
            2,
            "the other process's layer is not a snapshot: {listed:?}"
        );
        snap.remove(&key(&work, "b")).await.unwrap();
        snap.remove(&key(&work, "base")).await.unwrap();
    });
    store.layers.delete(&own).unwrap();
    assert!(store.layers.list().unwrap().is_empty());
}

/// The snapshotter killed (SIGKILL) in the middle of a stream of Prepare,
/// Commit and Remove calls, at several moments, and started again: every
/// call it answered before the kill holds, the store checks clean, and
/// every snapshot listed has its layer (and no layer of containerd's is
/// left without its snapshot).
#[test]
fn killed_snapshotter_leaves_a_consistent_store() {
    if let Some(why) = common::cannot_run_here() {
        strata_testkit::skip::cannot_run("killed_snapshotter_leaves_a_consistent_store", &why);
        return;
    }
    let mut served = Served::start("overlay");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let work = served.dir.join("work");
    let mut answered: std::collections::BTreeMap<String, Kind> = Default::default();
    // Each round kills after a different number of answered calls and a
    // different delay, so the kill lands at different steps (counted, not
    // timed: a loaded machine answers slower, not fewer).
    for (round, (after_calls, after_ms)) in
        [(2usize, 3u64), (5, 11), (9, 23)].into_iter().enumerate()
    {
        let socket = served.socket.clone();
        let work_round = work.join(format!("round-{round}"));
        let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = progress.clone();
        // The calls run on their own thread; the kill comes from here.
        let calls = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async move {
                let mut snap = Snap(common::client_on(&socket).await);
                let mut answered = Vec::new();
                for i in 0.. {
                    seen.store(i, std::sync::atomic::Ordering::SeqCst);
                    let active = key(&work_round, &format!("active-{i}"));
                    let Ok(mounts) = snap.prepare(&active, "").await else {
                        break;
                    };
                    // Write through the mount, as an unpack would.
                    let target = work_round.join(format!("mnt-{i}"));
                    {
                        let mounted = Mounted::new(&mounts, &target);
                        fs::write(mounted.path().join("file"), format!("{i}")).unwrap();
                    }
                    // A call the kill cut off may or may not have happened:
                    // only answered calls are held to.
                    let committed = key(&work_round, &format!("committed-{i}"));
                    if snap.commit(&committed, &active).await.is_err() {
                        break;
                    }
                    if i % 3 == 0 {
                        if snap.remove(&committed).await.is_err() {
                            break;
                        }
                    } else {
                        answered.push((committed.clone(), Kind::Committed));
                    }
                }
                answered
            })
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while progress.load(std::sync::atomic::Ordering::SeqCst) < after_calls {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: the calls made no progress"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        std::thread::sleep(std::time::Duration::from_millis(after_ms));
        served.kill();
        // The calls only stop when one fails: the kill cut one off.
        let held = calls.join().unwrap();
        assert!(
            !held.is_empty(),
            "round {round}: no call was answered before the kill ({after_ms} ms)"
        );
        answered.extend(held);
        served.launch();
    }
    runtime.block_on(async {
        let mut snap = Snap(served.client().await);
        let listed = snap.list(&[]).await.unwrap();
        for (name, expected) in &answered {
            let info = listed.iter().find(|i| &i.name == name);
            assert!(
                info.is_some_and(|i| kind(i) == *expected),
                "{name}: answered as {expected:?} before the kill, now {info:?}"
            );
            if *expected == Kind::Committed {
                // Its content is whole: a view shows the file written.
                let view = format!("{name}-view");
                let mounts = snap.view(&view, name).await.unwrap();
                let mounted = Mounted::new(&mounts, &served.dir.join("check-view"));
                assert!(
                    mounted.path().join("file").is_file(),
                    "{name} lost its file"
                );
                drop(mounted);
                snap.remove(&view).await.unwrap();
            }
        }
        assert!(listed.len() >= answered.len());
        // Calls cut by a kill are either whole or gone: nothing half made.
        for info in &listed {
            snap.mounts(&info.name).await.unwrap();
        }
        snap.cleanup().await.unwrap();
    });
    let store = served.open_store();
    let report = store.check().unwrap();
    assert!(
        report.is_clean(),
        "strata check after the kills: {report:?}"
    );
    let layers = store.layers.list().unwrap();
    let listed = runtime.block_on(async { Snap(served.client().await).list(&[]).await.unwrap() });
    assert_eq!(
        layers.len(),
        listed.len(),
        "every layer is a snapshot's and every snapshot has its layer"
    );
    eprintln!(
        "killed three times: {} answered calls held, {} snapshots",
        answered.len(),
        listed.len()
    );
}
