//! A member's metadata from its header and PAX records: mode, owner (through
//! the id maps), nanosecond times, the xattrs a layer may set, and GNU's PAX
//! sparse records.

use std::collections::BTreeMap;

use rustix::fs::Timespec;

use super::{Applier, Meta, PaxSparse};
use crate::members::{MAX_SPARSE_REGIONS, Member, lossy};
use crate::{ArchiveError, IdMap};

impl Applier<'_> {
    pub(super) fn meta(&mut self, member: &Member, shown: &str) -> Result<Meta, ArchiveError> {
        let header = &member.header;
        let bad = |why: String| ArchiveError::entry(shown, why);
        // The tar crate's messages for a bad field quote the field's bytes
        // (and the raw name): only which field it was is said.
        let field = |name: &'static str| move |_| bad(format!("its {name} field is not a number"));
        let mode = header.mode().map_err(field("mode"))? & 0o7777;
        let uid = match member.pax_uid {
            Some(uid) => uid,
            None => header.uid().map_err(field("uid"))?,
        };
        let gid = match member.pax_gid {
            Some(gid) => gid,
            None => header.gid().map_err(field("gid"))?,
        };
        let mtime_secs = header.mtime().map_err(field("mtime"))?;
        let mut mtime = Timespec {
            tv_sec: mtime_secs as i64,
            tv_nsec: 0,
        };
        let mut atime = None;
        let mut xattrs = Vec::new();
        let mut sparse: Option<PaxSparse> = None;
        for (key, value) in member.pax_records() {
            if key == b"mtime" {
                mtime = parse_pax_time(value).ok_or_else(|| bad("bad PAX mtime".into()))?;
            } else if key == b"atime" {
                atime = parse_pax_time(value);
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if layer_may_set_xattr(name) {
                    xattrs.push((name.to_vec(), value.to_vec()));
                } else {
                    self.dropped.note(name, shown);
                }
            } else if let Some(field) = key.strip_prefix(b"GNU.sparse.") {
                let info = sparse.get_or_insert_with(PaxSparse::default);
                match field {
                    b"name" => info.name = Some(value.to_vec()),
                    b"realsize" | b"size" => info.real_size = parse_u64(value),
                    b"major" => info.major = parse_u64(value),
                    b"map" => info.map = Some(parse_sparse_map(value).map_err(bad)?),
                    _ => {}
                }
            }
        }
        let uid = u32::try_from(uid)
            .ok()
            .and_then(|u| map_id(u, &self.options.uid_maps));
        let gid = u32::try_from(gid)
            .ok()
            .and_then(|g| map_id(g, &self.options.gid_maps));
        let (Some(uid), Some(gid)) = (uid, gid) else {
            return Err(bad("its owner is outside the uid/gid maps".into()));
        };
        Ok(Meta {
            mode,
            uid,
            gid,
            atime: atime.unwrap_or(mtime),
            mtime,
            xattrs,
            sparse,
        })
    }
}

pub(super) fn parse_u64(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// A PAX 0.1 sparse map, `offset,length,offset,length...`.
pub(super) fn parse_sparse_map(value: &[u8]) -> Result<Vec<(u64, u64)>, String> {
    let bad = || "bad GNU.sparse.map".to_string();
    let text = std::str::from_utf8(value).map_err(|_| bad())?;
    let mut numbers = text.split(',').filter(|s| !s.is_empty());
    let mut map = Vec::new();
    while let Some(offset) = numbers.next() {
        let length = numbers.next().ok_or_else(bad)?;
        if map.len() >= MAX_SPARSE_REGIONS {
            return Err(format!(
                "more than {MAX_SPARSE_REGIONS} regions in GNU.sparse.map"
            ));
        }
        map.push((
            offset.parse().map_err(|_| bad())?,
            length.parse().map_err(|_| bad())?,
        ));
    }
    Ok(map)
}

/// Whether a layer may set the xattr `name` (the part after
/// `SCHILY.xattr.`).
///
/// What a layer means comes from its members and its whiteout entries,
/// never from xattr records, so only xattrs that are part of a file's
/// content are kept: `user.*`, file capabilities (`security.capability`)
/// and POSIX ACLs (`system.posix_acl_access`, `system.posix_acl_default`).
/// The rest is dropped, because
///
/// * `trusted.overlay.*` (and any `trusted.*`) in a tar is overlay
///   bookkeeping leaked from an upper directory, or an attack. On overlay a
///   smuggled `redirect` makes a directory show another part of the lower
///   tree (the kernel follows redirects even with `redirect_dir=off`),
///   `opaque` hides lower content, `metacopy` makes reads fail with EIO,
///   `origin` points file handles elsewhere. Opaque directories come only
///   from `.wh..wh..opq`: the applier sets that xattr itself;
/// * `security.selinux`, `security.ima`, `security.evm` and the other
///   `security.*` labels are assigned by the host's policy, not by an image;
/// * an unknown namespace has no meaning a layer could rely on.
///
/// Dropping (not refusing) keeps real images that carry such records
/// (tars of overlay uppers, of SELinux hosts) importable, while the attack
/// does nothing.
pub(super) fn layer_may_set_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.")
        || matches!(
            name,
            b"security.capability" | b"system.posix_acl_access" | b"system.posix_acl_default"
        )
}

/// Distinct keys reported one by one; more are only counted.
pub(super) const MAX_DROPPED_KEYS: usize = 64;

/// The xattr records a layer carried that were dropped, for one warning per
/// key (not per file: a tar of an overlay upper can carry one per directory).
#[derive(Default)]
pub(super) struct DroppedXattrs {
    /// Key, the first member that carried it, and how many did.
    keys: BTreeMap<String, (String, u64)>,
    /// Records of keys beyond the first `MAX_DROPPED_KEYS`.
    others: u64,
}

impl DroppedXattrs {
    pub(super) fn note(&mut self, key: &[u8], member: &str) {
        let key = lossy(key);
        if let Some((_, count)) = self.keys.get_mut(&key) {
            *count += 1;
        } else if self.keys.len() < MAX_DROPPED_KEYS {
            self.keys.insert(key, (member.to_string(), 1));
        } else {
            self.others += 1;
        }
    }

    /// Logs what was dropped (names and keys escaped: they are the stream's).
    pub(super) fn warn(&mut self) {
        for (key, (member, count)) in std::mem::take(&mut self.keys) {
            tracing::warn!(
                "layer xattr {key:?} dropped from {count} member(s), first {member:?}: a layer \
                 may set only user.*, security.capability and POSIX ACL xattrs"
            );
        }
        if self.others > 0 {
            tracing::warn!(
                "{} more layer xattr record(s) of other keys dropped",
                std::mem::take(&mut self.others)
            );
        }
    }
}

pub(super) fn parse_pax_time(value: &[u8]) -> Option<Timespec> {
    let text = std::str::from_utf8(value).ok()?;
    let (secs, frac) = match text.split_once('.') {
        Some((s, f)) => (s, f),
        None => (text, ""),
    };
    let tv_sec: i64 = secs.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nanos: i64 = if frac.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    // A negative time with a fraction counts the fraction towards zero.
    let (tv_sec, tv_nsec) = if tv_sec < 0 && nanos > 0 {
        (tv_sec - 1, 1_000_000_000 - nanos)
    } else {
        (tv_sec, nanos)
    };
    Some(Timespec {
        tv_sec,
        tv_nsec: tv_nsec as _,
    })
}

pub(super) fn map_id(id: u32, maps: &[IdMap]) -> Option<u32> {
    if maps.is_empty() {
        return Some(id);
    }
    maps.iter().find_map(|m| {
        (id >= m.container_id && id - m.container_id < m.size)
            .then(|| m.host_id + (id - m.container_id))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_keep_nanoseconds() {
        let t = parse_pax_time(b"1700000000.123456789").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 123_456_789));
        let t = parse_pax_time(b"1700000000.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 500_000_000));
        let t = parse_pax_time(b"-1.25").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (-2, 750_000_000));
        assert!(parse_pax_time(b"soon").is_none());
    }

    #[test]
    fn ids_map_through_ranges_or_are_refused() {
        let maps = [IdMap {
            container_id: 0,
            host_id: 100_000,
            size: 65536,
        }];
        assert_eq!(map_id(0, &maps), Some(100_000));
        assert_eq!(map_id(1000, &maps), Some(101_000));
        assert_eq!(map_id(70_000, &maps), None);
        assert_eq!(map_id(70_000, &[]), Some(70_000));
    }
}
