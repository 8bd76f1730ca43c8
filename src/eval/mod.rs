//! Evaluation shared by the CLI and the service: ROC / AUC / EER, thresholds, classification
//! metrics, gate fitting, calibration and selection.

pub mod cli;
pub mod data;
pub mod fit;
pub mod metrics;
pub mod report;
