//! An in-memory [`Dataplane`] for other modules' unit tests: it validates like the
//! real one (skipping and reporting invalid services) and records every sync. Not
//! a data plane.

use std::sync::Mutex;

use super::ServiceEntry;
use super::{plan, Dataplane, DataplaneError, DataplaneStatus, ServiceStats, SkippedService, SyncReport};

/// Records the services of the last successful [`Dataplane::sync`].
#[derive(Debug, Default)]
pub struct FakeDataplane {
    state: Mutex<FakeState>,
}

#[derive(Debug, Default)]
struct FakeState {
    last: Option<Vec<ServiceEntry>>,
    skipped: Vec<SkippedService>,
    syncs: usize,
    fail_next: Option<String>,
}

impl FakeDataplane {
    pub fn new() -> Self {
        Self::default()
    }

    /// The services of the last successful sync, less the skipped ones.
    pub fn last_sync(&self) -> Option<Vec<ServiceEntry>> {
        self.lock().last.clone()
    }

    /// How many syncs succeeded.
    pub fn sync_count(&self) -> usize {
        self.lock().syncs
    }

    /// Makes the next sync fail with an I/O error carrying `message`.
    pub fn fail_next_sync(&self, message: impl Into<String>) {
        self.lock().fail_next = Some(message.into());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Dataplane for FakeDataplane {
    fn sync(&self, services: &[ServiceEntry]) -> Result<SyncReport, DataplaneError> {
        let skipped = plan::plan(services).skipped;
        let mut st = self.lock();
        if let Some(msg) = st.fail_next.take() {
            return Err(DataplaneError::io("fake data plane", std::io::Error::other(msg)));
        }
        st.last = Some(
            services
                .iter()
                .filter(|s| !skipped.iter().any(|k| k.id == s.id && k.name == s.name))
                .cloned()
                .collect(),
        );
        st.skipped = skipped.clone();
        st.syncs += 1;
        Ok(SyncReport { skipped })
    }

    fn status(&self) -> DataplaneStatus {
        let st = self.lock();
        DataplaneStatus {
            node_name: "fake".into(),
            services: st
                .last
                .iter()
                .flatten()
                .map(|s| ServiceStats {
                    id: s.id,
                    name: s.name.clone(),
                    connections: 0,
                    packets: 0,
                    bytes: 0,
                    drops: Default::default(),
                })
                .collect(),
            skipped: st.skipped.clone(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::dataplane::{Backend, BackendGroup};

    fn web() -> ServiceEntry {
        ServiceEntry {
            id: 1,
            name: "web".into(),
            vip: Some(Ipv4Addr::new(10, 99, 0, 1)),
            ports: vec![],
            backends: vec![Backend {
                addr: Ipv4Addr::new(10, 1, 0, 2),
                group: BackendGroup::Stable,
                local: true,
                draining: false,
            }],
            canary_weight: 0,
            rate_limit: None,
            prefer_local: false,
        }
    }

    #[test]
    fn records_syncs_and_skips_invalid_services() {
        let dp = FakeDataplane::new();
        assert!(dp.sync(&[web()]).unwrap().skipped.is_empty());
        assert_eq!(dp.last_sync().unwrap(), vec![web()]);
        let mut bad = web();
        bad.canary_weight = 200;
        bad.id = 2;
        bad.vip = None;
        bad.name = "bad".into();
        let report = dp.sync(&[bad, web()]).unwrap();
        assert_eq!(report.skipped.len(), 1);
        assert_eq!(report.skipped[0].field, "canary_weight", "{:?}", report.skipped);
        assert_eq!(dp.sync_count(), 2);
        assert_eq!(dp.last_sync().unwrap(), vec![web()]);
        assert_eq!(dp.status().services.len(), 1);
        assert_eq!(dp.status().skipped, report.skipped);
        dp.fail_next_sync("boom");
        assert!(dp.sync(&[web()]).is_err());
        assert!(dp.sync(&[]).is_ok());
        assert_eq!(dp.last_sync().unwrap(), vec![]);
    }
}
