//! Which daemon each master.cf command names, and what they share (the queue, cleanup).

use std::sync::Arc;
use std::time::Duration;

use super::supervisor::{ServiceSpec, Starter};
use super::MasterError;
use crate::config::Config;

/// What every service of one master shares: opened once at start, kept across reloads.
pub struct Shared {}

impl Shared {
    pub async fn open(_cfg: &Config) -> Result<Arc<Shared>, MasterError> {
        Ok(Arc::new(Shared {}))
    }

    pub fn reload(&self, _cfg: &Config) {}

    pub async fn shutdown(&self, _grace: Duration) {}
}

/// The master.cf rows relais runs, with their `-o` overrides.
pub fn load_specs(_cfg: &Config) -> Result<Vec<ServiceSpec>, MasterError> {
    Ok(Vec::new())
}

pub fn starter(_shared: Arc<Shared>) -> Starter {
    Arc::new(|spec, _cfg| Err(format!("command {} is not implemented", spec.command)))
}
