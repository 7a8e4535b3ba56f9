//! Round trips and refusals across the whole format: backup streams ->
//! layer tar -> backup streams -> layer tar.

use std::io::Write;

use crate::backup::{BackupStreamWriter, SPARSE_ATTRIBUTE, StreamHeader, id};
use crate::ea::{self, ExtendedAttribute};
use crate::reparse::{self, ReparsePoint};
use crate::*;

/// What a sink saw, in order.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Whiteout(String),
    Link(String, String),
    File(String, FileBasicInfo, Vec<u8>),
}

#[derive(Default)]
struct Collect(Vec<Seen>);

impl LayerSink for Collect {
    fn whiteout(&mut self, path: &str) -> std::io::Result<()> {
        self.0.push(Seen::Whiteout(path.into()));
        Ok(())
    }
    fn hard_link(&mut self, path: &str, target: &str) -> std::io::Result<()> {
        self.0.push(Seen::Link(path.into(), target.into()));
        Ok(())
    }
    fn begin_file(&mut self, path: &str, info: &FileBasicInfo) -> std::io::Result<()> {
        self.0.push(Seen::File(path.into(), *info, Vec::new()));
        Ok(())
    }
    fn stream(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self.0.last_mut() {
            Some(Seen::File(_, _, stream)) => stream.extend_from_slice(bytes),
            _ => panic!("stream bytes outside a file"),
        }
        Ok(())
    }
    fn end_file(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A self-relative security descriptor: owner S-1-5-18, an empty DACL.
const SD: [u8; 40] = [
    1, 0, 4, 0x80, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0, 0, //
    1, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0, //
    2, 0, 8, 0, 0, 0, 0, 0,
];

fn info(attributes: u32, seconds: i64) -> FileBasicInfo {
    let t = filetime::from_unix(seconds, 123_456_700).unwrap();
    FileBasicInfo {
        creation_time: t - 10,
        last_access_time: t + 20,
        last_write_time: t,
        change_time: t + 30,
        file_attributes: attributes,
    }
}

/// Builds a backup stream from (header, body) pairs.
fn stream(parts: &[(StreamHeader, &[u8])]) -> Vec<u8> {
    let mut w = BackupStreamWriter::new(Vec::new());
    for (header, body) in parts {
        w.write_stream(header, body).unwrap();
    }
    w.finish().unwrap()
}

enum Item {
    File(&'static str, u64, FileBasicInfo, Vec<u8>),
    Whiteout(&'static str),
    Link(&'static str, &'static str, FileBasicInfo),
}

/// A layer with every kind of record the format has.
fn every_kind() -> Vec<Item> {
    let eas = ea::encode(&[
        ExtendedAttribute {
            name: b"$KERNEL.PURGE.X".to_vec(),
            value: vec![0, 1, 2, 255],
            flags: 0,
        },
        ExtendedAttribute {
            name: b"USER.NOTE".to_vec(),
            value: b"kept".to_vec(),
            flags: 0,
        },
    ])
    .unwrap();
    let symlink = reparse::encode(&ReparsePoint {
        target: r"..\config\app.ini".into(),
        mount_point: false,
    })
    .unwrap();
    let junction = reparse::encode(&ReparsePoint {
        target: r"C:\ProgramData".into(),
        mount_point: true,
    })
    .unwrap();
    let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let long_name: &'static str =
        Box::leak(format!("Files/{}/deep.txt", "long-directory-name".repeat(8)).into_boxed_str());
    vec![
        Item::File(
            "Files",
            0,
            info(0x10, 1_600_000_000),
            stream(&[(StreamHeader::new(id::SECURITY_DATA, 40), &SD)]),
        ),
        Item::File(
            "Files/Windows",
            0,
            info(0x10, 1_600_000_001),
            stream(&[
                (StreamHeader::new(id::SECURITY_DATA, 40), &SD),
                (StreamHeader::alternate(":dirstream:$DATA", 3), b"dir"),
            ]),
        ),
        Item::Whiteout("Files/Windows/old.log"),
        Item::File(
            "Files/Windows/app.exe",
            big.len() as u64,
            info(0x20, 1_700_000_000),
            stream(&[
                (StreamHeader::new(id::SECURITY_DATA, 40), &SD),
                (StreamHeader::new(id::EA_DATA, eas.len() as u64), &eas),
                (StreamHeader::new(id::DATA, big.len() as u64), &big),
                (
                    StreamHeader::alternate(":Zone.Identifier:$DATA", 26),
                    b"[ZoneTransfer]\r\nZoneId=3\r\n",
                ),
                (StreamHeader::alternate(":empty:$DATA", 0), b""),
            ]),
        ),
        Item::File(
            "Files/Windows/empty.txt",
            0,
            info(0x80, 1_700_000_100),
            stream(&[(StreamHeader::new(id::DATA, 0), b"")]),
        ),
        Item::File(
            "Files/Windows/link.ini",
            0,
            info(0x420, 1_700_000_200),
            stream(&[(
                StreamHeader::new(id::REPARSE_DATA, symlink.len() as u64),
                &symlink,
            )]),
        ),
        Item::File(
            "Files/ProgramDataLink",
            0,
            info(0x410, 1_700_000_300),
            stream(&[(
                StreamHeader::new(id::REPARSE_DATA, junction.len() as u64),
                &junction,
            )]),
        ),
        Item::Link(
            "Files/Windows/app-copy.exe",
            "Files/Windows/app.exe",
            info(0x20, 1_700_000_000),
        ),
        Item::File(
            long_name,
            5,
            info(0x20, 1_700_000_400),
            stream(&[(StreamHeader::new(id::DATA, 5), "ünï".as_bytes())]),
        ),
        Item::File(
            "Files/Pré-1970.txt",
            1,
            FileBasicInfo {
                last_write_time: filetime::UNIX_EPOCH - 5_000_000,
                ..info(0x20, 0)
            },
            stream(&[(StreamHeader::new(id::DATA, 1), b"x")]),
        ),
        Item::File("Hives", 0, info(0x10, 1_700_000_500), Vec::new()),
        Item::File(
            "Hives/System_Delta",
            4,
            info(0x20, 1_700_000_500),
            stream(&[(StreamHeader::new(id::DATA, 4), b"regf")]),
        ),
        Item::File("UtilityVM", 0, info(0x10, 1_700_000_600), Vec::new()),
        Item::File("UtilityVM/Files", 0, info(0x10, 1_700_000_600), Vec::new()),
        Item::Whiteout("UtilityVM/Files/gone.sys"),
    ]
}

fn write_layer(items: &[Item]) -> Vec<u8> {
    let mut w = LayerTarWriter::new(Vec::new());
    for item in items {
        match item {
            Item::File(path, size, info, backup) => w.file(path, *size, info, &backup[..]).unwrap(),
            Item::Whiteout(path) => w.whiteout(path).unwrap(),
            Item::Link(path, target, info) => w.hard_link(path, target, info).unwrap(),
        }
    }
    w.finish().unwrap()
}

fn read(tar: &[u8]) -> Result<Vec<Seen>, FormatError> {
    let mut sink = Collect::default();
    read_layer(tar, &mut sink)?;
    Ok(sink.0)
}

#[test]
fn tar_to_backup_streams_to_tar_is_byte_identical() {
    let items = every_kind();
    let tar = write_layer(&items);
    let seen = read(&tar).unwrap();
    // Every file's backup stream comes back exactly as it went in (the
    // order the reader writes streams in is the order BackupRead gives).
    let mut again = LayerTarWriter::new(Vec::new());
    let mut expected = items.iter();
    for seen in &seen {
        let item = expected.next().expect("no more than was written");
        match (seen, item) {
            (Seen::File(path, got_info, got), Item::File(want_path, size, want_info, want)) => {
                assert_eq!(path, want_path);
                assert_eq!(got_info, want_info, "{path}");
                assert_eq!(got, want, "the backup stream of {path}");
                again.file(path, *size, got_info, &got[..]).unwrap();
            }
            (Seen::Whiteout(path), Item::Whiteout(want)) => {
                assert_eq!(path, want);
                again.whiteout(path).unwrap();
            }
            (Seen::Link(path, target), Item::Link(want, want_target, info)) => {
                assert_eq!(
                    (path, target),
                    (&want.to_string(), &want_target.to_string())
                );
                again.hard_link(path, target, info).unwrap();
            }
            (seen, _) => panic!("out of order: {seen:?}"),
        }
    }
    assert!(expected.next().is_none(), "the reader saw fewer items");
    assert_eq!(
        again.finish().unwrap(),
        tar,
        "the second tar differs from the first"
    );
}

#[test]
fn the_tar_carries_the_documented_records() {
    let tar = write_layer(&every_kind());
    let mut archive = tar::Archive::new(&tar[..]);
    let mut found = std::collections::BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap();
        let mut records = Vec::new();
        if let Some(pax) = entry.pax_extensions().unwrap() {
            for r in pax {
                let r = r.unwrap();
                records.push(format!("{}={}", r.key().unwrap(), r.value().unwrap()));
            }
        }
        let link = entry
            .link_name()
            .unwrap()
            .map(|l| l.to_string_lossy().into_owned());
        found.insert(name, (kind, mode, records, link));
    }
    let app = &found["Files/Windows/app.exe"];
    assert_eq!((app.0, app.1), (tar::EntryType::Regular, 0o100000));
    assert!(
        app.2.contains(&"MSWINDOWS.fileattr=32".to_string()),
        "{:?}",
        app.2
    );
    assert!(app.2.contains(
        &"MSWINDOWS.rawsd=AQAEgBQAAAAAAAAAAAAAACAAAAABAQAAAAAABRIAAAACAAgAAAAAAA==".to_string()
    ));
    assert!(
        app.2
            .contains(&"MSWINDOWS.xattr.USER.NOTE=a2VwdA==".to_string())
    );
    assert!(
        app.2
            .contains(&"LIBARCHIVE.creationtime=1700000000.1234557".to_string()),
        "{:?}",
        app.2
    );
    assert!(app.2.contains(&"mtime=1700000000.1234567".to_string()));
    assert!(found.contains_key("Files/Windows/app.exe:Zone.Identifier"));
    assert!(found.contains_key("Files/Windows:dirstream"));
    let link = &found["Files/Windows/link.ini"];
    assert_eq!(
        (link.0, link.3.as_deref()),
        (tar::EntryType::Symlink, Some(r"..\config\app.ini"))
    );
    let junction = &found["Files/ProgramDataLink"];
    assert_eq!(junction.1, 0o160000);
    assert!(junction.2.contains(&"MSWINDOWS.mountpoint=1".to_string()));
    let whiteout = &found["Files/Windows/.wh.old.log"];
    assert_eq!(
        (whiteout.0, whiteout.1, whiteout.2.len()),
        (tar::EntryType::Regular, 0, 0)
    );
    assert_eq!(found["Files/Windows/app-copy.exe"].0, tar::EntryType::Link);
    assert_eq!(found["Files"].0, tar::EntryType::Directory);
}

#[test]
fn sparse_data_is_written_whole() {
    let end = StreamHeader {
        offset: 8192,
        ..StreamHeader::new(id::SPARSE_BLOCK, 0)
    };
    let block = StreamHeader {
        offset: 4096,
        ..StreamHeader::new(id::SPARSE_BLOCK, 2)
    };
    let data = StreamHeader {
        attributes: SPARSE_ATTRIBUTE,
        ..StreamHeader::new(id::DATA, 0)
    };
    let backup = stream(&[(data, b""), (block, b"xy"), (end, b"")]);
    let mut w = LayerTarWriter::new(Vec::new());
    w.file(
        "Files/sparse.bin",
        8192,
        &info(0x220, 1_700_000_000),
        &backup[..],
    )
    .unwrap();
    let tar = w.finish().unwrap();
    let seen = read(&tar).unwrap();
    let Seen::File(_, _, back) = &seen[0] else {
        panic!()
    };
    let mut expected = vec![0u8; 8192];
    expected[4096..4098].copy_from_slice(b"xy");
    let whole = stream(&[(StreamHeader::new(id::DATA, 8192), &expected)]);
    assert_eq!(back, &whole);
}

/// PAX records as a test writes them.
type Records<'a> = &'a [(&'a str, &'a [u8])];

/// A hand-made tar of `members` (name, type, PAX records, data).
fn hostile(members: &[(&str, tar::EntryType, Records<'_>, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, records, data) in members {
        if !records.is_empty() {
            b.append_pax_extensions(records.iter().copied()).unwrap();
        }
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn refusal(tar: &[u8]) -> String {
    read(tar)
        .expect_err("a hostile layer was accepted")
        .to_string()
}

#[test]
fn members_outside_the_layer_roots_are_refused_and_named() {
    use tar::EntryType::*;
    for (name, kind, expect) in [
        ("Files/../../etc/passwd", Regular, "'..'"),
        ("/Files/x", Regular, "absolute"),
        ("Windows/System32/x", Regular, "outside Files/"),
        ("UtilityVM/boot.sys", Regular, "UtilityVM/Files"),
        ("Files/a\\..\\..\\b", Regular, "cannot hold"),
        ("Files/dev", Char, "no form"),
        ("Files/.wh..wh..opq", Regular, "opaque"),
        ("Hives/.wh.System", Regular, "whiteout outside"),
    ] {
        let message = refusal(&hostile(&[(name, kind, &[], b"")]));
        assert!(message.contains(expect), "{name}: {message}");
        assert!(
            message.contains(&format!("{name:?}")) || message.contains("refused member"),
            "{message}"
        );
    }
    let link = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        b.append_link(&mut h, "Files/link", "../../etc/shadow")
            .unwrap();
        b.into_inner().unwrap()
    };
    assert!(
        refusal(&link).contains("outside the layer"),
        "{}",
        refusal(&link)
    );
}

#[test]
fn malformed_windows_records_are_refused_and_named() {
    use tar::EntryType::*;
    let cases: [(Records<'_>, &str); 7] = [
        (&[("MSWINDOWS.fileattr", b"0x20")], "32-bit decimal"),
        (&[("MSWINDOWS.rawsd", b"not base64!")], "base64"),
        (&[("MSWINDOWS.xattr.A", b"%%%")], "base64"),
        (&[("LIBARCHIVE.creationtime", b"yesterday")], "not a time"),
        (&[("MSWINDOWS.sd", b"O:SYG:SYD:")], "SDDL"),
        (
            &[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")],
            "GNU sparse",
        ),
        (
            &[
                ("MSWINDOWS.xattr.A", b"YQ=="),
                ("MSWINDOWS.xattr.A", b"Yg=="),
            ],
            "twice",
        ),
    ];
    for (records, expect) in cases {
        let message = refusal(&hostile(&[("Files/x.txt", Regular, records, b"data")]));
        assert!(
            message.contains(expect) && message.contains("Files/x.txt"),
            "{message}"
        );
        assert!(!message.contains("data\""), "contents echoed: {message}");
    }
    // An alternate stream that does not follow its file.
    let message = refusal(&hostile(&[
        ("Files/a.txt", Regular, &[], b"a"),
        ("Files/b.txt", Regular, &[], b"b"),
        ("Files/a.txt:s", Regular, &[], b"s"),
    ]));
    assert!(message.contains("does not directly follow"), "{message}");
    // A tar cut inside a member's data.
    let whole = hostile(&[("Files/a.txt", Regular, &[], &[7u8; 2000])]);
    assert!(read(&whole[..1200]).is_err());
    // A PAX header past strata-archive's limit is refused before it is read.
    let mut huge = tar::Header::new_ustar();
    huge.set_entry_type(tar::EntryType::XHeader);
    huge.set_size(1 << 40);
    huge.set_cksum();
    let message = refusal(huge.as_bytes());
    assert!(message.contains("more than"), "{message}");
}

#[test]
fn malformed_backup_streams_are_refused_when_writing() {
    let w = |backup: Vec<u8>, size: u64| {
        let mut w = LayerTarWriter::new(Vec::new());
        w.file("Files/x", size, &info(0x20, 1), &backup[..])
            .map(drop)
            .map_err(|e| e.to_string())
    };
    let data = |n: u64, body: &[u8]| stream(&[(StreamHeader::new(id::DATA, n), body)]);
    assert!(
        w(data(3, b"abc"), 4)
            .unwrap_err()
            .contains("data stream of 3 bytes")
    );
    let mut cut = data(3, b"abc");
    cut.pop();
    assert!(w(cut, 3).unwrap_err().contains("Files/x"));
    let late_sd = stream(&[
        (StreamHeader::new(id::DATA, 1), b"a"),
        (StreamHeader::new(id::SECURITY_DATA, 40), &SD),
    ]);
    assert!(w(late_sd, 1).unwrap_err().contains("cannot carry"));
    let unknown = stream(&[(StreamHeader::new(42, 1), b"?")]);
    assert!(w(unknown, 0).unwrap_err().contains("id 42"));
    let bad_reparse = stream(&[(StreamHeader::new(id::REPARSE_DATA, 4), b"\x01\x02\x03\x04")]);
    assert!(w(bad_reparse, 0).unwrap_err().contains("reparse"));
    let mut sink = Vec::new();
    let mut lw = LayerTarWriter::new(&mut sink);
    // A name the reader would take for a whiteout.
    assert!(
        lw.file("Files/.wh.x", 0, &FileBasicInfo::default(), &b""[..])
            .is_err()
    );
    assert!(lw.whiteout("Files/.wh.x").is_err());
    assert!(
        lw.hard_link("Files/.wh.l", "Files/a", &FileBasicInfo::default())
            .is_err()
    );
    assert!(lw.whiteout("Hives/x").is_err());
    assert!(
        lw.hard_link("Files/a", "Hives/b", &FileBasicInfo::default())
            .is_err()
    );
    assert!(
        lw.file("Files/../x", 0, &FileBasicInfo::default(), &b""[..])
            .is_err()
    );
    let _ = sink.flush();
}

/// The layer of [`every_kind`] without its UtilityVM part, which the
/// transport folder of this version refuses.
fn without_utility_vm() -> Vec<Item> {
    every_kind()
        .into_iter()
        .filter(|item| match item {
            Item::File(path, ..) | Item::Whiteout(path) => !path.starts_with("UtilityVM"),
            Item::Link(..) => true,
        })
        .collect()
}

/// The file entries a tar's reading gives, by path: attributes, write time
/// and backup stream (the other times are the platform's to keep).
fn files_by_path(seen: Vec<Seen>) -> std::collections::BTreeMap<String, (u32, i64, Vec<u8>)> {
    seen.into_iter()
        .filter_map(|s| match s {
            Seen::File(path, info, stream) => {
                Some((path, (info.file_attributes, info.last_write_time, stream)))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn import_folder_has_the_transport_layout() {
    let tar = write_layer(&without_utility_vm());
    let read_back = files_by_path(read(&tar).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("import");
    let plan = transport::write_import_folder(&tar[..], &folder).unwrap();

    assert_eq!(plan.tombstones, vec!["Files/Windows/old.log".to_string()]);
    assert_eq!(
        plan.hard_links,
        vec![(
            "Files/Windows/app-copy.exe".to_string(),
            "Files/Windows/app.exe".to_string()
        )]
    );
    assert!(folder.join("Files").is_dir() && folder.join("Hives").is_dir());
    // A directory: real, its attributes and stream beside it.
    assert!(folder.join("Files/Windows").is_dir());
    let record = std::fs::read(folder.join("Files/Windows.$wcidirs$")).unwrap();
    let (attributes, _, stream) = &read_back["Files/Windows"];
    assert_eq!(record[..4], attributes.to_le_bytes());
    assert_eq!(&record[4..], &stream[..]);
    // A file: its attributes, then its whole backup stream.
    for path in [
        "Files/Windows/app.exe",
        "Files/Windows/link.ini",
        "Files/Windows/empty.txt",
    ] {
        let file = std::fs::read(folder.join(path)).unwrap();
        let (attributes, write_time, stream) = &read_back[path];
        assert_eq!(file[..4], attributes.to_le_bytes(), "{path}");
        assert_eq!(&file[4..], &stream[..], "{path}");
        let modified = std::fs::metadata(folder.join(path))
            .unwrap()
            .modified()
            .unwrap();
        let since = modified.duration_since(std::time::UNIX_EPOCH).unwrap();
        let expected = filetime::to_unix(*write_time);
        assert_eq!(
            (since.as_secs() as i64, since.subsec_nanos()),
            expected,
            "{path}: the transport file keeps the entry's write time"
        );
    }
    // A hive: a real file holding its data.
    assert_eq!(
        std::fs::read(folder.join("Hives/System_Delta")).unwrap(),
        b"regf"
    );
    let names: Vec<_> = std::fs::read_dir(folder.join("Hives"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec!["System_Delta"],
        "nothing else is left in Hives/"
    );
    assert_eq!(plan.summary.whiteouts, 1);
    assert_eq!(plan.summary.hard_links, 1);

    // Applied to an imported layer: the whiteout deletes, the link is made.
    let layer = dir.path().join("layer");
    std::fs::create_dir_all(layer.join("Files/Windows")).unwrap();
    std::fs::write(layer.join("Files/Windows/old.log"), b"lower").unwrap();
    std::fs::write(layer.join("Files/Windows/app.exe"), b"app").unwrap();
    plan.apply_to(&layer).unwrap();
    assert!(!layer.join("Files/Windows/old.log").exists());
    assert_eq!(
        std::fs::read(layer.join("Files/Windows/app-copy.exe")).unwrap(),
        b"app"
    );
    plan.apply_to(&layer)
        .expect_err("a second link onto an existing name is refused");
}

#[test]
fn export_folder_reads_back_as_the_layer() {
    let tar = write_layer(&without_utility_vm());
    let original = files_by_path(read(&tar).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("export");
    transport::write_import_folder(&tar[..], &folder).unwrap();
    // What an export adds: its deletions, listed.
    std::fs::write(
        folder.join(transport::TOMBSTONES_FILE),
        "\u{feff}Version 1.0\r\n\\Windows\\old.log\r\n",
    )
    .unwrap();
    let mut exported = Vec::new();
    transport::write_tar_from_export_folder(&folder, &mut exported).unwrap();
    let seen = read(&exported).unwrap();
    // The whiteout comes right after its directory.
    let at = seen
        .iter()
        .position(|s| matches!(s, Seen::File(p, ..) if p == "Files/Windows"))
        .unwrap();
    assert_eq!(seen[at + 1], Seen::Whiteout("Files/Windows/old.log".into()));
    let exported = files_by_path(seen);
    for (path, (attributes, write_time, stream)) in &original {
        // The layer roots and hives are real files: their security and
        // alternate streams are not the transport's to carry.
        if !path.starts_with("Files/") {
            continue;
        }
        let Some((a, w, s)) = exported.get(path) else {
            panic!("{path} is missing from the export's tar");
        };
        assert_eq!((a, w), (attributes, write_time), "{path}");
        assert_eq!(s, stream, "{path}: its backup stream");
    }
    let (_, _, hive) = &exported["Hives/System_Delta"];
    assert_eq!(hive, &original["Hives/System_Delta"].2);
    // Extra entries are only the directories the layer's paths imply.
    for path in exported.keys().filter(|p| !original.contains_key(*p)) {
        assert!(
            original.keys().any(|o| o.starts_with(&format!("{path}/"))),
            "{path} was not in the layer"
        );
    }
}

#[test]
fn transport_refusals_name_the_member() {
    let dir = tempfile::tempdir().unwrap();
    let uvm = write_layer(&[Item::File("UtilityVM", 0, info(0x10, 1), Vec::new())]);
    let err = transport::write_import_folder(&uvm[..], &dir.path().join("a")).unwrap_err();
    assert!(
        err.to_string().contains("\"UtilityVM\"") && err.to_string().contains("not supported"),
        "{err}"
    );
    let outside_link = write_layer(&[
        Item::File("Files", 0, info(0x10, 1), Vec::new()),
        Item::Link("Files/a", "Files/lower.dll", info(0x20, 1)),
    ]);
    let err = transport::write_import_folder(&outside_link[..], &dir.path().join("b")).unwrap_err();
    assert!(err.to_string().contains("Files/lower.dll"), "{err}");
    // An export whose tombstones file is not one.
    let folder = dir.path().join("c");
    std::fs::create_dir_all(folder.join("Files")).unwrap();
    std::fs::write(folder.join(transport::TOMBSTONES_FILE), "Version 2\n").unwrap();
    let err = transport::write_tar_from_export_folder(&folder, Vec::new()).unwrap_err();
    assert!(err.to_string().contains("tombstones.txt"), "{err}");
}

#[test]
fn a_stream_cut_between_members_is_refused() {
    let tar = write_layer(&without_utility_vm());
    // Cut after the first member (a 512-byte PAX header, its records, then
    // the directory's header): whole members, no end-of-archive blocks.
    let mut members = tar::Archive::new(&tar[..]);
    let first_end = {
        let mut entries = members.entries().unwrap();
        let first = entries.next().unwrap().unwrap();
        (first.raw_file_position() + first.size()).div_ceil(512) * 512
    };
    let err = read(&tar[..first_end as usize]).unwrap_err();
    assert!(err.to_string().contains("cut short"), "{err}");
    read(&tar).expect("the whole stream reads");
}
