//! Tenants' shares of a bounded resource of `total` places, so that no tenant's slow or many
//! requests starve the others:
//!
//! - a tenant holds at most half the places (at least one);
//! - a quarter of them (at least one when there are two or more) is a reserve for tenants
//!   holding none: a tenant's first place comes from the common places while there are any,
//!   else from the reserve; its later places only ever come from the common places.
//!
//! So however many tenants stall while holding places, a tenant holding none finds one
//! unless every reserved place is held, each by a different tenant's only request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The shares of one resource.
#[derive(Debug)]
pub(crate) struct TenantShares {
    per_tenant: usize,
    /// One semaphore of `per_tenant` permits per tenant, made when the tenant first asks.
    tenants: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// The places any request may take.
    common: Arc<Semaphore>,
    /// The places only a tenant's first request may take.
    reserve: Arc<Semaphore>,
}

/// A place taken (and its tenant's share of it), given back when dropped.
#[derive(Debug)]
pub(crate) struct Share {
    _tenant: OwnedSemaphorePermit,
    _place: OwnedSemaphorePermit,
}

impl TenantShares {
    /// Shares of a resource of `total` places (at least one).
    pub(crate) fn of(total: usize) -> Self {
        let total = total.max(1);
        let reserve = if total >= 2 { (total / 4).max(1) } else { 0 };
        TenantShares {
            per_tenant: (total / 2).max(1),
            tenants: Mutex::default(),
            common: Arc::new(Semaphore::new(total - reserve)),
            reserve: Arc::new(Semaphore::new(reserve)),
        }
    }

    /// A place for one of `tenant`'s requests, waiting for one as long as it takes (callers
    /// bound the wait).
    pub(crate) async fn take(&self, tenant: &str) -> Share {
        let share = self
            .tenants
            .lock()
            .expect("tenant shares")
            .entry(tenant.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant)))
            .clone();
        let tenant_permit = share.clone().acquire_owned().await.expect("never closed");
        // Whether this is the only place the tenant holds now. Two of its requests taking
        // places at once may both count as later ones: the reserve is only ever spared.
        let first = share.available_permits() + 1 == self.per_tenant;
        let place = if first {
            tokio::select! {
                biased;
                common = self.common.clone().acquire_owned() => common,
                reserve = self.reserve.clone().acquire_owned() => reserve,
            }
        } else {
            self.common.clone().acquire_owned().await
        };
        Share {
            _tenant: tenant_permit,
            _place: place.expect("never closed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn now(shares: &TenantShares, tenant: &str) -> Option<Share> {
        tokio::time::timeout(Duration::from_millis(20), shares.take(tenant))
            .await
            .ok()
    }

    /// Two tenants stalling with every place they may take leave a third a place (the
    /// reserve); each tenant holds at most half; places come back when dropped.
    #[tokio::test]
    async fn stalled_tenants_leave_a_place_for_a_tenant_holding_none() {
        // 8 places: 4 per tenant, 2 in reserve, 6 common.
        let shares = TenantShares::of(8);
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(now(&shares, "a").await.expect("a's share"));
        }
        assert!(now(&shares, "a").await.is_none(), "a holds half");
        held.push(now(&shares, "b").await.expect("b's first"));
        held.push(now(&shares, "b").await.expect("b's second"));
        // The common places are all held: b's third may not take the reserve.
        assert!(
            now(&shares, "b").await.is_none(),
            "b's later places are common only"
        );
        let c = now(&shares, "c")
            .await
            .expect("c's first, from the reserve");
        assert!(
            now(&shares, "c").await.is_none(),
            "c's second is common only"
        );
        let d = now(&shares, "d")
            .await
            .expect("d's first, the last reserved place");
        assert!(now(&shares, "e").await.is_none(), "every place is held");
        drop(c);
        assert!(
            now(&shares, "e").await.is_some(),
            "a place given back is taken again"
        );
        drop((d, held));
        for tenant in ["a", "b"] {
            let mut again = Vec::new();
            for _ in 0..4 {
                again.push(now(&shares, tenant).await.expect("all given back"));
            }
        }
    }

    /// Small resources: one place is one tenant's at a time; two places are one common, one
    /// reserved, and a tenant may hold one.
    #[tokio::test]
    async fn small_resources_still_have_shares() {
        let one = TenantShares::of(1);
        let only = now(&one, "a").await.expect("the one place");
        assert!(now(&one, "b").await.is_none());
        drop(only);
        assert!(now(&one, "b").await.is_some());
        let two = TenantShares::of(2);
        let _a = now(&two, "a").await.expect("a's place");
        assert!(now(&two, "a").await.is_none(), "a holds half");
        let _b = now(&two, "b").await.expect("b's place, the reserve");
        assert!(now(&two, "c").await.is_none());
    }
}
