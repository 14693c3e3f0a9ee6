//! The chunks a process streams into backends at once, and each tenant's share of them.

use super::*;

/// Bounds the chunks this process streams into backends at once, and each tenant's share of
/// them (half, at least one, and a quarter kept for tenants streaming none:
/// [`TenantShares`](crate::registry::shares::TenantShares)), so no tenant's slow chunks hold
/// them all. A chunk waits for a slot up to [`SLOT_WAIT`], then is refused as busy (429).
pub(crate) struct StreamingSlots {
    shares: crate::registry::shares::TenantShares,
}

/// How long a chunk waits for a streaming slot.
const SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A slot (and its tenant's share), given back when dropped.
pub(crate) struct StreamingSlot {
    _share: crate::registry::shares::Share,
}

impl StreamingSlots {
    pub(crate) fn new(max: usize) -> Self {
        StreamingSlots {
            shares: crate::registry::shares::TenantShares::of(max),
        }
    }

    /// A slot for one of `tenant`'s chunks, waiting up to `wait` for its share and a slot;
    /// `Busy` (429) after that.
    async fn take_within(
        &self,
        tenant: &TenantId,
        wait: std::time::Duration,
    ) -> Result<StreamingSlot> {
        let taken = tokio::time::timeout(wait, async {
            StreamingSlot {
                _share: self.shares.take(tenant.as_str()).await,
            }
        })
        .await;
        taken.map_err(|_| {
            Error::Busy(
                "this server is streaming as many upload chunks as it may; retry shortly".into(),
            )
        })
    }

    pub(super) async fn take(&self, tenant: &TenantId) -> Result<StreamingSlot> {
        self.take_within(tenant, SLOT_WAIT).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tenant takes at most half the slots (at least one), a quarter are kept for tenants
    /// streaming none; slots come back when dropped; a chunk waits for one, within its bound.
    #[tokio::test]
    async fn no_tenant_holds_every_streaming_slot() {
        let slots = StreamingSlots::new(4);
        let none = std::time::Duration::ZERO;
        let [a, b, c] = ["a", "b", "c"].map(|t| TenantId::new(t).unwrap());
        let first = slots.take_within(&a, none).await.unwrap();
        let _second = slots.take_within(&a, none).await.unwrap();
        assert!(matches!(
            slots.take_within(&a, none).await,
            Err(Error::Busy(_))
        ));
        let _b1 = slots.take_within(&b, none).await.unwrap();
        // The last slot is kept for a tenant streaming none: not b's second, c's first.
        assert!(matches!(
            slots.take_within(&b, none).await,
            Err(Error::Busy(_))
        ));
        let _c1 = slots.take_within(&c, none).await.unwrap();
        // A waiting chunk gets the slot given back.
        let waiting = slots.take_within(&a, std::time::Duration::from_secs(5));
        let giving = async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            drop(first);
        };
        let (taken, ()) = tokio::join!(waiting, giving);
        assert!(taken.is_ok());
        // One slot in all: its one tenant may take it.
        let one = StreamingSlots::new(1);
        let _only = one.take_within(&a, none).await.unwrap();
        assert!(matches!(
            one.take_within(&b, none).await,
            Err(Error::Busy(_))
        ));
    }
}
