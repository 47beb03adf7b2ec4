//! Per-account state shared by the sessions of one account and its worker: the COI
//! configuration as last seen, and a way to start the worker when COI gets enabled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};

use super::metadata::CoiConfig;
use crate::account::Verdicts;

/// One account (one login name).
pub struct Account {
    pub login: String,
    /// The COI configuration; sessions publish every change, the worker follows it.
    pub config: watch::Sender<CoiConfig>,
    /// Wakes the worker: a client changed flags (seen mode) or mail may have arrived.
    pub nudge: Notify,
    /// What the worker decided about new INBOX messages (for the quiet INBOX).
    pub verdicts: watch::Sender<Verdicts>,
    /// Whether a worker task runs for this account.
    pub worker_running: std::sync::atomic::AtomicBool,
}

/// All accounts the proxy has seen since it started.
#[derive(Default)]
pub struct Hub {
    accounts: Mutex<HashMap<String, Arc<Account>>>,
}

impl Hub {
    pub fn account(&self, login: &str) -> Arc<Account> {
        let key = login.to_ascii_lowercase();
        self.accounts
            .lock()
            .expect("hub")
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Account {
                    login: key,
                    config: watch::channel(CoiConfig::default()).0,
                    nudge: Notify::new(),
                    verdicts: watch::channel(Verdicts::default()).0,
                    worker_running: Default::default(),
                })
            })
            .clone()
    }

    pub fn accounts(&self) -> Vec<Arc<Account>> {
        self.accounts.lock().expect("hub").values().cloned().collect()
    }
}

impl Account {
    /// Publishes a configuration read from or written to wherever it lives.
    pub fn set_config(&self, config: CoiConfig) {
        self.config.send_if_modified(|current| {
            let changed = *current != config;
            *current = config;
            changed
        });
    }

    pub fn current(&self) -> CoiConfig {
        *self.config.borrow()
    }
}
