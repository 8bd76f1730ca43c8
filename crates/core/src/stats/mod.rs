//! The statistics the service and the offline tools share: binary ROC / AUC / EER and
//! classification metrics (`roc`), L2 logistic regression and cross-validation (`logreg`), many
//! one-vs-rest logistic regressions fitted together (`ovr`), Platt maps (`platt`), the multinomial
//! gate fit (`softmax`), the gate on a labelled split (`gating`), unlabelled embeddings grouped
//! into candidate classes (`groups`) and the one checked matrix product they use (`linalg`). Pure
//! functions of numbers: no I/O, no ONNX Runtime.

pub mod gating;
pub mod groups;
pub mod linalg;
pub mod logreg;
pub mod ovr;
pub mod platt;
pub mod roc;
pub mod softmax;
