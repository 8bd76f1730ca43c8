//! Expert bundles (cards, files, validation) and the registry that names the active set.

pub mod card;
pub mod registry;

pub use card::{BundleFiles, Card, Kind, TrunkCard};
pub use registry::{GateSpec, RegistryFile};
