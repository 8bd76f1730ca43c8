//! Expert bundles on disk: cards, files and their validation (`card`), the quality figures a card
//! records and the one `Metric` vocabulary (`quality`), and the registry document that names the
//! active set (`registry`).

pub mod card;
pub mod quality;
pub mod registry;

pub use card::{BundleFiles, Card, Kind, TrunkCard};
pub use quality::{BinaryReport, Metric};
pub use registry::{GateSpec, RegistryFile};

use std::path::Path;

use crate::{Error, Result};

/// Bundle folders (holding a card.json) directly under a model root.
pub fn bundle_names(root: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(root).map_err(|e| Error::io(root, e))?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name != "trunks" && !name.starts_with('.') && e.path().join("card.json").is_file() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}
