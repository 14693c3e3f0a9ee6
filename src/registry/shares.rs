//! Each tenant's share of a bounded resource: half of it (at least one unit), so that no one
//! tenant's slow or many requests can hold all of it and starve the others. It bounds each
//! tenant, not their sum: two tenants at their share together hold everything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// One semaphore per tenant of `per_tenant` permits, made when the tenant first asks.
#[derive(Debug)]
pub(crate) struct TenantShares {
    per_tenant: usize,
    tenants: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl TenantShares {
    /// Shares of a resource of `total` units: half each, at least one.
    pub(crate) fn of(total: usize) -> Self {
        TenantShares {
            per_tenant: (total / 2).max(1),
            tenants: Mutex::default(),
        }
    }

    /// `tenant`'s share, to take permits from.
    pub(crate) fn of_tenant(&self, tenant: &str) -> Arc<Semaphore> {
        self.tenants
            .lock()
            .expect("tenant shares")
            .entry(tenant.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant)))
            .clone()
    }
}
