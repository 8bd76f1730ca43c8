//! Expert bundles (cards, files, validation), the metrics a card records, and the registry that
//! names the active set.

pub mod card;
pub mod metrics;
pub mod registry;
pub mod store;

pub use card::{BundleFiles, Card, Kind, TrunkCard};
pub use metrics::{BinaryReport, Metric};
pub use registry::{GateSpec, RegistryFile};
pub use store::{Store, Stored, Written};
