//! Every kind of event, declared once.
//!
//! A kind is a payload type implementing [`EventKind`] (what it is about, and when) and one row
//! of the `event_kinds!` table below (its type name in the log, which becomes the type's
//! `TYPE`). The table yields the [`Payload`] enum, decoding by type name, and the dispatch
//! every event goes through; the views match on [`Payload`], so a kind without a view function
//! does not compile. Adding a kind: its payload type, a row here, a view function.
//!
//! Whose event it is sits in one place for every kind: [`DomainEvent::tenant`]. Kinds whose
//! payload names the owner (or that belong to the reserved tenant `system`) implement
//! [`OwnerInPayload`] and are built with [`DomainEvent::new`]; the rest are built with
//! [`DomainEvent::of`], which takes the owner.

use super::payloads::{
    BlobCollected, ClassChanged, ClassDefined, FileIngested, FileRemoved, HoldReleased, HoldSet,
    LocationAdded, LocationRemoved, LocationVerified, PackageAbandoned, PackageCreated,
    PackageExpired, PackageFinalized, PackageWithdrawn, QuotaSet,
};
use crate::domain::{TenantId, Timestamp};
use crate::error::{Error, Result};
use crate::manifest::{CodecError, from_canonical_cbor, to_canonical_cbor};
use uuid::Uuid;

/// What every event payload says of itself.
pub trait EventKind: PayloadCodec + Into<Payload> {
    /// The id of the thing the event is about: every event about one package, blob or tenant
    /// shares it.
    fn subject_id(&self) -> Uuid;

    /// When it happened.
    fn occurred_at(&self) -> Timestamp;
}

/// How a payload is stored in the log: canonical CBOR. Every serde payload gets it from the
/// blanket implementation; a payload stored in another form (the manifest) implements it.
pub trait PayloadCodec: Sized {
    /// The payload's bytes in the log.
    fn encode(&self) -> std::result::Result<Vec<u8>, CodecError>;
    /// The payload from its bytes in the log.
    fn decode(bytes: &[u8]) -> std::result::Result<Self, CodecError>;
}

impl<T: serde::Serialize + serde::de::DeserializeOwned> PayloadCodec for T {
    fn encode(&self) -> std::result::Result<Vec<u8>, CodecError> {
        to_canonical_cbor(self)
    }

    fn decode(bytes: &[u8]) -> std::result::Result<Self, CodecError> {
        from_canonical_cbor(bytes)
    }
}

/// A kind whose owner is known from the payload alone: it names its tenant, or it belongs to
/// the reserved tenant `system` (storage and retention-class events).
pub trait OwnerInPayload: EventKind {
    /// The owning tenant.
    fn owner(&self) -> TenantId;
}

/// Declares the kinds: `Variant(PayloadType) = "type name"`.
macro_rules! event_kinds {
    ($($(#[$doc:meta])* $variant:ident($payload:ident) = $name:literal,)+) => {
        /// The payload of an event of any kind.
        #[derive(Debug, Clone)]
        pub enum Payload {
            $($(#[$doc])* $variant($payload),)+
        }

        $(
            impl From<$payload> for Payload {
                fn from(payload: $payload) -> Self {
                    Payload::$variant(payload)
                }
            }

            impl $payload {
                /// The event type name.
                pub const TYPE: &'static str = $name;
            }
        )+

        /// Every type name, in declaration order.
        pub const TYPES: &[&str] = &[$($name),+];

        impl Payload {
            /// The event type name.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $(Payload::$variant(_) => $name,)+
                }
            }

            /// See [`EventKind::subject_id`].
            pub fn subject_id(&self) -> Uuid {
                match self {
                    $(Payload::$variant(p) => p.subject_id(),)+
                }
            }

            /// See [`EventKind::occurred_at`].
            pub fn occurred_at(&self) -> Timestamp {
                match self {
                    $(Payload::$variant(p) => p.occurred_at(),)+
                }
            }

            /// The bytes stored in the log.
            pub fn encode(&self) -> std::result::Result<Vec<u8>, CodecError> {
                match self {
                    $(Payload::$variant(p) => p.encode(),)+
                }
            }

            /// Decodes a stored payload by its type name; `None` for a type this build does
            /// not know.
            pub fn decode(
                type_name: &str,
                bytes: &[u8],
            ) -> std::result::Result<Option<Self>, CodecError> {
                Ok(Some(match type_name {
                    $($name => Payload::$variant($payload::decode(bytes)?),)+
                    _ => return Ok(None),
                }))
            }
        }
    };
}

event_kinds! {
    /// `v1.package.created`: a package was opened.
    PackageCreated(PackageCreated) = "v1.package.created",
    /// `v1.file.ingested`: bytes are stored and a file of an open package names them.
    FileIngested(FileIngested) = "v1.file.ingested",
    /// `v1.package.finalized`: the payload *is* the manifest's canonical CBOR.
    PackageFinalized(PackageFinalized) = "v1.package.finalized",
    /// `v1.storage.location_verified`: a stored copy was re-read and checked.
    LocationVerified(LocationVerified) = "v1.storage.location_verified",
    /// `v1.storage.location_added`: a copy now exists on another backend.
    LocationAdded(LocationAdded) = "v1.storage.location_added",
    /// `v1.storage.location_removed`: a copy was removed on purpose.
    LocationRemoved(LocationRemoved) = "v1.storage.location_removed",
    /// `v1.blob.collected`: an unreferenced blob's bytes were deleted.
    BlobCollected(BlobCollected) = "v1.blob.collected",
    /// `v1.retention.class_defined`: a retention class was defined or redefined.
    ClassDefined(ClassDefined) = "v1.retention.class_defined",
    /// `v1.retention.hold_set`: a legal hold was put on a package.
    HoldSet(HoldSet) = "v1.retention.hold_set",
    /// `v1.retention.hold_released`: a package's legal hold was lifted.
    HoldReleased(HoldReleased) = "v1.retention.hold_released",
    /// `v1.retention.class_changed`: a package moved to another retention class.
    ClassChanged(ClassChanged) = "v1.retention.class_changed",
    /// `v1.package.expired`: a package's retention ran out.
    PackageExpired(PackageExpired) = "v1.package.expired",
    /// `v1.tenant.quota_set`: a tenant's limits were set.
    QuotaSet(QuotaSet) = "v1.tenant.quota_set",
    /// `v1.file.removed`: a file was taken out of an open package.
    FileRemoved(FileRemoved) = "v1.file.removed",
    /// `v1.package.abandoned`: an open package was given up.
    PackageAbandoned(PackageAbandoned) = "v1.package.abandoned",
    /// `v1.package.withdrawn`: a finalized package was withdrawn.
    PackageWithdrawn(PackageWithdrawn) = "v1.package.withdrawn",
}

/// An event before it is appended: whose it is, and its payload.
#[derive(Debug, Clone)]
pub struct DomainEvent {
    tenant: TenantId,
    payload: Payload,
}

impl DomainEvent {
    /// An event of a kind that knows its owner.
    pub fn new<K: OwnerInPayload>(payload: K) -> Self {
        DomainEvent {
            tenant: payload.owner(),
            payload: payload.into(),
        }
    }

    /// An event of `tenant`'s.
    pub fn of<K: EventKind>(tenant: &TenantId, payload: K) -> Self {
        DomainEvent {
            tenant: tenant.clone(),
            payload: payload.into(),
        }
    }

    /// The owning tenant.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The payload.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// The event type name.
    pub fn type_name(&self) -> &'static str {
        self.payload.type_name()
    }

    /// The payload's bytes in the log.
    pub fn encode(&self) -> Result<Vec<u8>> {
        self.payload
            .encode()
            .map_err(|e| Error::Integrity(format!("encoding event payload: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_unique_and_each_kind_carries_its_own() {
        let mut unique = TYPES.to_vec();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), TYPES.len());
        assert_eq!(PackageCreated::TYPE, "v1.package.created");
        assert!(TYPES.contains(&QuotaSet::TYPE));
    }

    #[test]
    fn unknown_types_decode_to_none_and_known_ones_check_their_bytes() {
        assert!(Payload::decode("v9.unheard.of", b"").unwrap().is_none());
        assert!(Payload::decode(HoldSet::TYPE, b"\xff").is_err());
    }
}
