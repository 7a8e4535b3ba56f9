//! The layer data document HCS takes with every layer call: the layers
//! under the one at hand, nearest first, each by its GUID and folder.
//!
//! ```json
//! {"SchemaVersion":{"Major":2,"Minor":1},
//!  "Layers":[{"Id":"a1b2c3d4-...","Path":"C:\\ProgramData\\strata\\root\\windows\\layers\\<parent>"}]}
//! ```

use std::path::{Path, PathBuf};

use serde::Serialize;

/// The layers under a layer, nearest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerData {
    /// (GUID, folder) of each layer.
    pub layers: Vec<(String, PathBuf)>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Document<'a> {
    schema_version: SchemaVersion,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    layers: Vec<Layer<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SchemaVersion {
    major: u32,
    minor: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Layer<'a> {
    id: &'a str,
    path: String,
}

impl LayerData {
    /// Adds the next layer down.
    pub fn push(&mut self, guid: String, folder: PathBuf) {
        self.layers.push((guid, folder));
    }

    /// The JSON document (schema 2.1).
    pub fn to_json(&self) -> String {
        let document = Document {
            schema_version: SchemaVersion { major: 2, minor: 1 },
            layers: self
                .layers
                .iter()
                .map(|(id, path)| Layer {
                    id,
                    path: display(path),
                })
                .collect(),
        };
        serde_json::to_string(&document).expect("layer data serialises")
    }
}

/// A folder as HCS reads it: the path's text as the platform gives it.
fn display(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// A GUID (`Data1` u32, `Data2` u16, `Data3` u16, `Data4` 8 bytes) as HCS's
/// documents write it: lowercase, hyphenated, no braces.
pub fn guid_text(data1: u32, data2: u16, data3: u16, data4: [u8; 8]) -> String {
    format!(
        "{data1:08x}-{data2:04x}-{data3:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        data4[0], data4[1], data4[2], data4[3], data4[4], data4[5], data4[6], data4[7]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_list_the_layers_nearest_first() {
        let mut data = LayerData::default();
        assert_eq!(data.to_json(), r#"{"SchemaVersion":{"Major":2,"Minor":1}}"#);
        data.push(
            guid_text(0x0102_0304, 0x0506, 0x0708, [9, 10, 11, 12, 13, 14, 15, 16]),
            PathBuf::from(r"C:\layers\parent"),
        );
        data.push(
            "00000000-0000-0000-0000-000000000001".into(),
            PathBuf::from(r"C:\layers\base"),
        );
        assert_eq!(
            data.to_json(),
            r#"{"SchemaVersion":{"Major":2,"Minor":1},"Layers":[{"Id":"01020304-0506-0708-090a-0b0c0d0e0f10","Path":"C:\\layers\\parent"},{"Id":"00000000-0000-0000-0000-000000000001","Path":"C:\\layers\\base"}]}"#
        );
    }
}
