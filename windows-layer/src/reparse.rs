//! Reparse points as a backup stream carries them (`REPARSE_DATA_BUFFER`):
//! symbolic links and mount points (junctions), the two kinds a layer tar
//! can hold. Layout: tag u32, data length u16, reserved u16, then substitute
//! name offset and length, print name offset and length (u16 each, bytes,
//! offsets from the path buffer), for a symbolic link a flags u32, then the
//! path buffer: the substitute (NT) name and the print name in UTF-16LE, each
//! with a NUL.

/// `IO_REPARSE_TAG_SYMLINK`.
pub const TAG_SYMLINK: u32 = 0xA000_000C;
/// `IO_REPARSE_TAG_MOUNT_POINT`.
pub const TAG_MOUNT_POINT: u32 = 0xA000_0003;
/// `SYMLINK_FLAG_RELATIVE`.
const FLAG_RELATIVE: u32 = 1;

/// A symbolic link or mount point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReparsePoint {
    /// The target as people write it (the print name), backslashes kept.
    pub target: String,
    /// A mount point (junction) rather than a symbolic link.
    pub mount_point: bool,
}

fn utf16(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// The NT name of `target`, and whether it is relative.
fn nt_name(target: &str) -> (String, bool) {
    if let Some(rest) = target.strip_prefix(r"\\?\") {
        (format!(r"\??\{rest}"), false)
    } else if let Some(rest) = target.strip_prefix(r"\\") {
        (format!(r"\??\UNC\{rest}"), false)
    } else if target.len() >= 2
        && target.as_bytes()[1] == b':'
        && target.as_bytes()[0].is_ascii_alphabetic()
    {
        (format!(r"\??\{target}"), false)
    } else {
        (target.to_string(), true)
    }
}

/// The reparse buffer of `point`.
pub fn encode(point: &ReparsePoint) -> Result<Vec<u8>, String> {
    let target = point.target.replace('/', "\\");
    let (nt, relative) = nt_name(&target);
    let nt_bytes = utf16(&nt);
    let print_bytes = utf16(&target);
    let too_long = || format!("a link target of {} characters", target.chars().count());
    let subst_len = u16::try_from(nt_bytes.len()).map_err(|_| too_long())?;
    let print_off = u16::try_from(nt_bytes.len() + 2).map_err(|_| too_long())?;
    let print_len = u16::try_from(print_bytes.len()).map_err(|_| too_long())?;
    let flags_len = if point.mount_point { 0 } else { 4 };
    let data_len = u16::try_from(8 + flags_len + nt_bytes.len() + 2 + print_bytes.len() + 2)
        .map_err(|_| too_long())?;
    let tag = if point.mount_point {
        TAG_MOUNT_POINT
    } else {
        TAG_SYMLINK
    };
    let mut out = Vec::with_capacity(8 + usize::from(data_len));
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    for field in [0, subst_len, print_off, print_len] {
        out.extend_from_slice(&field.to_le_bytes());
    }
    if !point.mount_point {
        let flags = if relative { FLAG_RELATIVE } else { 0 };
        out.extend_from_slice(&flags.to_le_bytes());
    }
    out.extend_from_slice(&nt_bytes);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&print_bytes);
    out.extend_from_slice(&[0, 0]);
    Ok(out)
}

/// The symbolic link or mount point in a reparse buffer; other kinds of
/// reparse point have no form in a layer tar and are refused.
pub fn decode(buf: &[u8]) -> Result<ReparsePoint, String> {
    if buf.len() < 16 {
        return Err(format!("a reparse point of {} bytes", buf.len()));
    }
    let u16_at = |at: usize| usize::from(u16::from_le_bytes([buf[at], buf[at + 1]]));
    let tag = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    let mount_point = match tag {
        TAG_SYMLINK => false,
        TAG_MOUNT_POINT => true,
        other => {
            return Err(format!(
                "a reparse point of tag {other:#010x}, neither a symbolic link nor a mount point"
            ));
        }
    };
    let data_len = u16_at(4);
    if 8 + data_len > buf.len() {
        return Err("a reparse point whose data runs past its stream".to_string());
    }
    let paths = 16 + if mount_point { 0 } else { 4 };
    let (print_off, print_len) = (u16_at(12), u16_at(14));
    let start = paths + print_off;
    let end = start + print_len;
    if print_len % 2 != 0 || end > 8 + data_len {
        return Err("a reparse point whose print name lies outside it".to_string());
    }
    let units: Vec<u16> = buf[start..end]
        .chunks_exact(2)
        .map(|p| u16::from_le_bytes([p[0], p[1]]))
        .collect();
    let target = String::from_utf16(&units)
        .map_err(|_| "a reparse point whose print name is not UTF-16".to_string())?;
    Ok(ReparsePoint {
        target,
        mount_point,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex;

    // Derived by hand from the documented REPARSE_DATA_BUFFER layout.
    #[test]
    fn golden_relative_symlink() {
        let point = ReparsePoint {
            target: "foo".into(),
            mount_point: false,
        };
        let bytes = encode(&point).unwrap();
        assert_eq!(
            bytes,
            hex(
                "0c 00 00 a0 1c 00 00 00 | 00 00 06 00 08 00 06 00 | 01 00 00 00 | \
                 66 00 6f 00 6f 00 00 00 | 66 00 6f 00 6f 00 00 00"
            )
        );
        assert_eq!(decode(&bytes).unwrap(), point);
    }

    #[test]
    fn golden_absolute_symlink_and_mount_point() {
        let names =
            "5c 00 3f 00 3f 00 5c 00 43 00 3a 00 5c 00 78 00 00 00 | 43 00 3a 00 5c 00 78 00 00 00";
        let link = ReparsePoint {
            target: r"C:\x".into(),
            mount_point: false,
        };
        let bytes = encode(&link).unwrap();
        assert_eq!(
            bytes,
            hex(&format!(
                "0c 00 00 a0 28 00 00 00 00 00 10 00 12 00 08 00 00 00 00 00 | {names}"
            ))
        );
        assert_eq!(decode(&bytes).unwrap(), link);
        let junction = ReparsePoint {
            target: r"C:\x".into(),
            mount_point: true,
        };
        let bytes = encode(&junction).unwrap();
        assert_eq!(
            bytes,
            hex(&format!(
                "03 00 00 a0 24 00 00 00 00 00 10 00 12 00 08 00 | {names}"
            ))
        );
        assert_eq!(decode(&bytes).unwrap(), junction);
    }

    #[test]
    fn slashes_become_backslashes_and_unc_paths_get_their_prefix() {
        let bytes = encode(&ReparsePoint {
            target: "a/b".into(),
            mount_point: false,
        })
        .unwrap();
        assert_eq!(decode(&bytes).unwrap().target, r"a\b");
        let bytes = encode(&ReparsePoint {
            target: r"\\srv\share".into(),
            mount_point: false,
        })
        .unwrap();
        let text = String::from_utf16_lossy(
            &bytes[20..]
                .chunks_exact(2)
                .map(|p| u16::from_le_bytes([p[0], p[1]]))
                .collect::<Vec<_>>(),
        );
        assert!(text.starts_with(r"\??\UNC\srv\share"), "{text}");
    }

    #[test]
    fn other_tags_and_broken_buffers_are_refused() {
        let mut other = encode(&ReparsePoint {
            target: "x".into(),
            mount_point: false,
        })
        .unwrap();
        other[3] = 0x80;
        assert!(decode(&other).unwrap_err().contains("tag"));
        let good = encode(&ReparsePoint {
            target: "xyz".into(),
            mount_point: false,
        })
        .unwrap();
        assert!(decode(&good[..12]).is_err());
        assert!(decode(&good[..good.len() - 4]).is_err());
        let mut outside = good.clone();
        outside[14] = 0xff;
        assert!(decode(&outside).is_err());
    }
}
