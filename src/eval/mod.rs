//! Evaluation on the served artefacts, in the serving runtime: ROC / AUC / EER and classification
//! metrics (`metrics`), one bundle on a split and calibration (`evaluate`), the gate on a split
//! (`gating`, `fit`), selection of a model root (`select`) and the MoE-vs-global report (`report`).

pub mod data;
pub mod evaluate;
pub mod fit;
pub mod fit_set;
pub mod gating;
pub mod logreg;
pub mod metrics;
pub mod platt;
pub mod report;
pub mod select;
