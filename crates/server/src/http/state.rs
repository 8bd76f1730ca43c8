//! What every handler shares: the core, the control parts and the admin token.

use std::sync::Arc;

use moe_core::data::DataArgs;
use moe_core::service::Core;

use super::{error, prometheus};
use crate::control::feedback::FeedbackLog;
use crate::control::fleet::{Fleet, Replica};
use crate::control::jobs::Jobs;
use crate::control::unknowns::Unknowns;

#[derive(Clone)]
pub struct AppState {
    pub core: Arc<Core>,
    /// Selection jobs (evaluate on the validation split of the configured data).
    pub jobs: Arc<Jobs>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Bearer token of the admin routes; None disables them (403).
    pub admin_token: Option<Arc<str>>,
    /// Labelled texts sent back by callers, with each expert's live metrics on them.
    pub feedback: Arc<FeedbackLog>,
    /// This replica and, with a shared registry, the others (`GET /fleet`).
    pub fleet: Arc<Fleet>,
    /// The texts this replica declined, for `GET /unknowns`.
    pub unknowns: Arc<Unknowns>,
}

impl AppState {
    /// State without selection data (selection jobs answer 400) and without admin routes (403).
    pub fn new(core: Arc<Core>) -> AppState {
        error::hide_paths(&core.paths.models, &core.paths.state);
        let jobs = Jobs::new(core.clone(), None);
        let feedback = FeedbackLog::open(&core.paths.state, core.limits.feedback_cap);
        let unknowns = Unknowns::open(&core.paths.state, core.limits.unknowns_cap);
        let fleet = Fleet::new(core.clone(), None, Replica { id: "local".into(), address: String::new() });
        AppState { core, jobs, metrics: prometheus::recorder(), admin_token: None, feedback, fleet, unknowns }
    }

    /// This replica's part in a fleet (its identity; following starts with `Fleet::start`).
    pub fn with_fleet(mut self, fleet: Arc<Fleet>) -> AppState {
        self.fleet = fleet;
        self
    }

    /// Labelled data whose validation split selection jobs evaluate on.
    pub fn with_data(mut self, data: Option<DataArgs>) -> AppState {
        self.jobs = Jobs::new(self.core.clone(), data);
        self
    }

    pub fn with_admin_token(mut self, token: Option<String>) -> AppState {
        self.admin_token = token.filter(|t| !t.is_empty()).map(Arc::from);
        self
    }
}
