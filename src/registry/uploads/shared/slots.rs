//! The chunks a process streams into backends at once, and each tenant's share of them.

use super::*;

/// Bounds the chunks this process streams into backends at once, and each tenant's share of
/// them (half, at least one), so no tenant's slow chunks hold them all. A chunk waits for a
/// slot up to [`SLOT_WAIT`], then is refused as busy (429).
pub(crate) struct StreamingSlots {
    slots: Arc<tokio::sync::Semaphore>,
    shares: crate::registry::shares::TenantShares,
}

/// How long a chunk waits for a streaming slot.
const SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A slot (and its tenant's share), given back when dropped.
pub(crate) struct StreamingSlot {
    _slot: tokio::sync::OwnedSemaphorePermit,
    _share: tokio::sync::OwnedSemaphorePermit,
}

impl StreamingSlots {
    pub(crate) fn new(max: usize) -> Self {
        StreamingSlots {
            slots: Arc::new(tokio::sync::Semaphore::new(max)),
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
        let share = self.shares.of_tenant(tenant.as_str());
        let taken = tokio::time::timeout(wait, async {
            let share = share.acquire_owned().await.ok()?;
            let slot = self.slots.clone().acquire_owned().await.ok()?;
            Some(StreamingSlot {
                _slot: slot,
                _share: share,
            })
        })
        .await;
        taken.ok().flatten().ok_or_else(|| {
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

    /// A tenant takes at most half the slots (at least one); slots come back when dropped;
    /// a chunk waits for one, within its bound.
    #[tokio::test]
    async fn no_tenant_holds_every_streaming_slot() {
        let slots = StreamingSlots::new(4);
        let none = std::time::Duration::ZERO;
        let (a, b) = (TenantId::new("a").unwrap(), TenantId::new("b").unwrap());
        let first = slots.take_within(&a, none).await.unwrap();
        let _second = slots.take_within(&a, none).await.unwrap();
        assert!(matches!(
            slots.take_within(&a, none).await,
            Err(Error::Busy(_))
        ));
        let _b1 = slots.take_within(&b, none).await.unwrap();
        let _b2 = slots.take_within(&b, none).await.unwrap();
        assert!(matches!(
            slots.take_within(&b, none).await,
            Err(Error::Busy(_))
        ));
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
