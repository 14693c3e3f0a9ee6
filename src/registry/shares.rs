//! Tenants' shares of a bounded resource of `total` places, so that no tenant's slow or many
//! requests starve the others:
//!
//! - a tenant holds at most half the places (at least one);
//! - a quarter of them (at least one when there are two or more) is a reserve for tenants
//!   holding none: a request of a tenant holding no place (one such request of a tenant at a
//!   time) takes a common place while there are any, else a reserved one; every other
//!   request takes a common place.
//!
//! So however many tenants stall while holding places, a tenant holding none finds one
//! unless every reserved place is held, each by a different tenant's only request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The shares of one resource.
#[derive(Debug)]
pub(crate) struct TenantShares {
    per_tenant: usize,
    /// Each tenant's state, made when the tenant first asks (tenants are the configured
    /// tokens' tenants: a bounded set).
    tenants: Mutex<HashMap<String, Arc<Tenant>>>,
    /// The places any request may take.
    common: Arc<Semaphore>,
    /// The places only a tenant's first request may take.
    reserve: Arc<Semaphore>,
}

/// One tenant's share.
#[derive(Debug)]
struct Tenant {
    /// `per_tenant` permits: the tenant's requests holding or waiting for a place.
    permits: Arc<Semaphore>,
    /// Places the tenant holds.
    held: AtomicUsize,
    /// Set while one of its requests, made when it held none, may wait for the reserve: one
    /// at a time, so that two requests of a tenant holding none neither both take reserved
    /// places nor both count as later ones.
    first_waiting: AtomicBool,
}

/// A place taken (and its tenant's share of it), given back when dropped.
#[derive(Debug)]
pub(crate) struct Share {
    tenant: Arc<Tenant>,
    _permit: OwnedSemaphorePermit,
    _place: OwnedSemaphorePermit,
}

impl Drop for Share {
    fn drop(&mut self) {
        self.tenant.held.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Gives the first-request claim back however its request ends (granted, or dropped while
/// waiting).
struct FirstClaim<'a>(&'a AtomicBool);

impl Drop for FirstClaim<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
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
        let state = self
            .tenants
            .lock()
            .expect("tenant shares")
            .entry(tenant.to_owned())
            .or_insert_with(|| {
                Arc::new(Tenant {
                    permits: Arc::new(Semaphore::new(self.per_tenant)),
                    held: AtomicUsize::new(0),
                    first_waiting: AtomicBool::new(false),
                })
            })
            .clone();
        let permit = state.permits.clone().acquire_owned().await;
        // A request of a tenant holding no place may take a reserved one, if no other request
        // of the tenant already may.
        let claim = (state.held.load(Ordering::SeqCst) == 0
            && state
                .first_waiting
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok())
        .then(|| FirstClaim(&state.first_waiting));
        let place = if claim.is_some() {
            tokio::select! {
                biased;
                common = self.common.clone().acquire_owned() => common,
                reserve = self.reserve.clone().acquire_owned() => reserve,
            }
        } else {
            self.common.clone().acquire_owned().await
        };
        state.held.fetch_add(1, Ordering::SeqCst);
        drop(claim);
        Share {
            tenant: state,
            _permit: permit.expect("never closed"),
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

    /// Two requests at once of a tenant holding none, the common places all held: one takes
    /// a reserved place, not both (the other reserved place stays for another tenant).
    #[tokio::test]
    async fn a_tenants_requests_at_once_take_one_reserved_place() {
        let shares = TenantShares::of(8);
        let mut held = Vec::new();
        for tenant in ["a", "a", "a", "a", "b", "b"] {
            held.push(now(&shares, tenant).await.expect("common places"));
        }
        let (one, other) = tokio::join!(now(&shares, "c"), now(&shares, "c"));
        assert_eq!(
            [one.is_some(), other.is_some()]
                .iter()
                .filter(|x| **x)
                .count(),
            1
        );
        let d = now(&shares, "d").await.expect("the other reserved place");
        drop((one, other, d));
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
