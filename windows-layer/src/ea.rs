//! Extended attributes as a backup stream carries them: a chain of
//! `FILE_FULL_EA_INFORMATION` entries (next-entry offset u32, flags u8, name
//! length u8, value length u16, the name, a NUL, the value), each padded to
//! four bytes, the last one too; the last entry's offset is zero.

/// One extended attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtendedAttribute {
    /// Its name (at most 255 bytes, no NUL).
    pub name: Vec<u8>,
    /// Its value (at most 65535 bytes).
    pub value: Vec<u8>,
    /// `FILE_NEED_EA` and such; layer tars do not carry them.
    pub flags: u8,
}

const FIXED: usize = 8;

fn padded(len: usize) -> usize {
    (len + 3) & !3
}

/// The entries of an EA stream, in order.
pub fn decode(mut buf: &[u8]) -> Result<Vec<ExtendedAttribute>, String> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        if buf.len() < FIXED {
            return Err(format!(
                "an extended attribute entry of {} bytes",
                buf.len()
            ));
        }
        let next = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let flags = buf[4];
        let name_len = usize::from(buf[5]);
        let value_len = usize::from(u16::from_le_bytes([buf[6], buf[7]]));
        let end = FIXED + name_len + 1 + value_len;
        if end > buf.len() {
            return Err("an extended attribute runs past its stream".to_string());
        }
        if buf[FIXED + name_len] != 0 {
            return Err("an extended attribute name without its NUL".to_string());
        }
        let name = buf[FIXED..FIXED + name_len].to_vec();
        if name.is_empty() || name.contains(&0) {
            return Err("an extended attribute with an empty name or a NUL in it".to_string());
        }
        out.push(ExtendedAttribute {
            name,
            value: buf[FIXED + name_len + 1..end].to_vec(),
            flags,
        });
        if next == 0 {
            break;
        }
        if next < end || next > buf.len() {
            return Err(format!(
                "an extended attribute whose next entry is at {next}, outside its stream"
            ));
        }
        buf = &buf[next..];
    }
    Ok(out)
}

/// An EA stream holding `eas`, in the order given.
pub fn encode(eas: &[ExtendedAttribute]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for (i, ea) in eas.iter().enumerate() {
        let name_len = u8::try_from(ea.name.len())
            .map_err(|_| format!("an extended attribute name of {} bytes", ea.name.len()))?;
        let value_len = u16::try_from(ea.value.len())
            .map_err(|_| format!("an extended attribute value of {} bytes", ea.value.len()))?;
        if ea.name.is_empty() || ea.name.contains(&0) {
            return Err("an extended attribute with an empty name or a NUL in it".to_string());
        }
        let len = padded(FIXED + ea.name.len() + 1 + ea.value.len());
        let next = if i + 1 == eas.len() { 0 } else { len as u32 };
        let start = out.len();
        out.extend_from_slice(&next.to_le_bytes());
        out.push(ea.flags);
        out.push(name_len);
        out.extend_from_slice(&value_len.to_le_bytes());
        out.extend_from_slice(&ea.name);
        out.push(0);
        out.extend_from_slice(&ea.value);
        out.resize(start + len, 0);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ea(name: &str, value: &str) -> ExtendedAttribute {
        ExtendedAttribute {
            name: name.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            flags: 0,
        }
    }

    // Derived by hand from the documented FILE_FULL_EA_INFORMATION layout.
    #[test]
    fn golden_one_and_two_entries() {
        let one = encode(&[ea("FOO", "bar")]).unwrap();
        assert_eq!(
            one,
            [
                0, 0, 0, 0, 0, 3, 3, 0, b'F', b'O', b'O', 0, b'b', b'a', b'r', 0
            ]
        );
        let two = encode(&[ea("A", "12345"), ea("FOO", "bar")]).unwrap();
        assert_eq!(
            two,
            [
                0x10, 0, 0, 0, 0, 1, 5, 0, b'A', 0, b'1', b'2', b'3', b'4', b'5', 0, //
                0, 0, 0, 0, 0, 3, 3, 0, b'F', b'O', b'O', 0, b'b', b'a', b'r', 0
            ]
        );
        assert_eq!(
            decode(&two).unwrap(),
            vec![ea("A", "12345"), ea("FOO", "bar")]
        );
    }

    #[test]
    fn malformed_chains_are_refused() {
        let good = encode(&[ea("A", "1"), ea("B", "2")]).unwrap();
        assert!(decode(&good[..5]).is_err());
        assert!(decode(&good[..10]).is_err());
        let mut loops = good.clone();
        loops[0] = 4; // the next entry inside this one
        assert!(decode(&loops).is_err());
        let mut no_nul = good.clone();
        no_nul[9] = b'x';
        assert!(decode(&no_nul).is_err());
        assert!(encode(&[ea("", "x")]).is_err());
        assert!(
            encode(&[ExtendedAttribute {
                name: vec![b'a'; 256],
                value: vec![],
                flags: 0
            }])
            .is_err()
        );
    }
}
